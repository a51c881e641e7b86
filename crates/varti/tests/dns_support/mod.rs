//! A far-edge DNS server on 127.0.0.1 (UDP): NAPTR answers from a name → records map,
//! NXDOMAIN for any other name; it keeps the names it was asked, for assertions.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::NAPTR;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

/// A running DNS server (its thread lives as long as the test process).
pub struct DnsServer {
    /// Where it answers.
    pub addr: SocketAddr,
    /// The names asked, in order.
    pub questions: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    /// Starts answering NAPTR questions for the names of `zone` (matched without case).
    pub fn start<N: AsRef<str> + Send + 'static>(zone: Vec<(N, Vec<NAPTR>)>) -> DnsServer {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let questions = Arc::new(Mutex::new(Vec::new()));
        let seen = questions.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response =
                    Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.metadata.authoritative = true;
                let mut found = false;
                for q in &request.queries {
                    let name = q.name().to_ascii();
                    seen.lock().unwrap().push(name.clone());
                    response.add_query(q.clone());
                    if let Some((_, records)) = zone
                        .iter()
                        .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name.trim_end_matches('.')))
                    {
                        found = true;
                        if q.query_type() == RecordType::NAPTR {
                            for r in records {
                                response.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    60,
                                    RData::NAPTR(r.clone()),
                                ));
                            }
                        }
                    }
                }
                if !found {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from);
            }
        });
        DnsServer { addr, questions }
    }
}
