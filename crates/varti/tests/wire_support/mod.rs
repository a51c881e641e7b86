//! A TLS-terminating tap between two `varti serve` processes, to see an exchange as it is
//! on the wire: towards the sender it is the receiver (its TLS certificate from the test
//! PKI), towards the receiver it is the sender (its TLS client certificate), and it passes
//! each HTTP request and answer through whole, keeping a copy of every request as a
//! message dump (request line, headers, body as sent) that `varti_as4::message::dump`
//! reads like `varti message inspect` does.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use varti_as4::message::dump::{read_dump, MessageDump};
use varti_as4::message::mime::MimeLimits;
use varti_as4::message::soap::{parse_envelope, Envelope};

/// The tap; requests it forwarded are in [`TlsTap::requests`].
pub struct TlsTap {
    /// Where the sender connects (the receiver's endpoint port in the sender's PModes).
    pub port: u16,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TlsTap {
    /// Starts a tap on a free port forwarding to `target`, presenting `certs/<server>`'s
    /// TLS certificate to senders and `certs/<client>`'s to the target.
    pub fn start(target: SocketAddr, certs: &Path, server: &str, client: &str) -> TlsTap {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor
            .set_certificate_chain_file(certs.join(server).join("tls.cert.pem"))
            .unwrap();
        acceptor
            .set_private_key_file(certs.join(server).join("tls.key.pem"), SslFiletype::PEM)
            .unwrap();
        let acceptor = acceptor.build();
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector
            .set_certificate_chain_file(certs.join(client).join("tls.cert.pem"))
            .unwrap();
        connector
            .set_private_key_file(certs.join(client).join("tls.key.pem"), SslFiletype::PEM)
            .unwrap();
        connector.set_ca_file(certs.join("ca.cert.pem")).unwrap();
        connector.set_verify(SslVerifyMode::PEER);
        let connector = connector.build();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let keep = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (acceptor, connector, keep) =
                    (acceptor.clone(), connector.clone(), keep.clone());
                std::thread::spawn(move || {
                    let Ok(client) = acceptor.accept(tcp) else {
                        return;
                    };
                    let Ok(upstream) = TcpStream::connect(target) else {
                        return;
                    };
                    let Ok(server) = connector.connect("localhost", upstream) else {
                        return;
                    };
                    let _ = relay(client, server, &keep);
                });
            }
        });
        TlsTap { port, seen }
    }

    /// The requests forwarded so far, as dumps (bytes as they were sent).
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }

    /// The AS4 messages among the forwarded requests: each dump read and its envelope
    /// parsed, in the order they were sent.
    pub fn messages(&self) -> Vec<(MessageDump, Envelope)> {
        self.requests()
            .iter()
            .filter_map(|raw| {
                let dump = read_dump(raw.as_slice(), &MimeLimits::default()).ok()?;
                let envelope = parse_envelope(&dump.package.root().content).ok()?;
                Some((dump, envelope))
            })
            .collect()
    }
}

/// Passes requests and answers through, one HTTP exchange at a time, until either side
/// closes.
fn relay(
    client: impl Read + Write,
    server: impl Read + Write,
    keep: &Mutex<Vec<Vec<u8>>>,
) -> io::Result<()> {
    let mut client = BufReader::new(client);
    let mut server = BufReader::new(server);
    loop {
        let Some(request) = read_http_message(&mut client)? else {
            return Ok(());
        };
        keep.lock().unwrap().push(request.clone());
        server.get_mut().write_all(&request)?;
        server.get_mut().flush()?;
        let Some(answer) = read_http_message(&mut server)? else {
            return Ok(());
        };
        client.get_mut().write_all(&answer)?;
        client.get_mut().flush()?;
    }
}

/// One HTTP/1.1 message as its bytes (head and body, chunked or with a Content-Length);
/// `None` at a clean end of the stream.
fn read_http_message(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    let mut content_length = 0usize;
    let mut chunked = false;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
        if let Some(v) = text.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if text.starts_with("transfer-encoding:") && text.contains("chunked") {
            chunked = true;
        }
        if line == b"\r\n" {
            break;
        }
    }
    if chunked {
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line)?;
            raw.extend_from_slice(&size_line);
            let size_text = String::from_utf8_lossy(&size_line);
            let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut line = Vec::new();
                    r.read_until(b'\n', &mut line)?;
                    raw.extend_from_slice(&line);
                    if line == b"\r\n" || line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
        }
    } else {
        let mut body = vec![0u8; content_length];
        r.read_exact(&mut body)?;
        raw.extend_from_slice(&body);
    }
    Ok(Some(raw))
}

/// The `eb:Property` `name` of a user message as it was on the wire: (value, type).
pub fn wire_property(envelope: &Envelope, name: &str) -> Option<(String, Option<String>)> {
    let um = envelope.messaging.user_message.as_ref()?;
    um.properties
        .iter()
        .find(|p| p.name == name)
        .map(|p| (p.value.clone(), p.type_.clone()))
}
