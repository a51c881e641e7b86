//! Issue 13: no connection can be held forever. A real `varti serve` (TLS, client
//! certificates optional, short bounds) under 1,100 connections that stall in every way
//! seen in the attacks — HTTP/1.1 bodies that stop after 0 or 1,000 bytes or fall 100 kB
//! short of their Content-Length, HTTP/2 connections that send only the preface or HEADERS
//! without END_HEADERS, and clients without a certificate — from four source addresses.
//! A partner's message is still acknowledged within 2 s, and every stalled connection is
//! closed within its bound.

mod serve_support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::ssl::SslVersion;
use openssl::x509::X509;
use rustls::pki_types::ServerName;
use serve_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use varti_access_point::server::tls;
use varti_as4::message::model::{
    CollaborationInfo, MessageInfo, Party, PartyId, PartyInfo, Service, UserMessage,
};
use varti_as4::outbound::{send, SendPolicy};
use varti_as4::security::profile::AS4_1_15;
use varti_as4::security::token::TokenReference;

/// Header-read and body-read bound of the server under test (seconds): longer than it
/// takes to open every attacker on a busy 2-core machine, so that all stall at once.
const BOUND_SECS: u64 = 6;
/// How late a close may come after its bound (a loaded 2-core CI machine).
const SLACK: Duration = Duration::from_secs(2);
const ATTACKERS: usize = 1100;
/// Attackers come from 127.0.0.2 ..= 127.0.0.(1 + SOURCES).
const SOURCES: u8 = 4;
const PER_IP: usize = 200;
const ANONYMOUS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Stall {
    /// HTTP/1.1 POST /msh, headers complete, no body byte.
    H1NoBody,
    /// HTTP/1.1 POST /msh, 1,000 body bytes, then nothing.
    H1Partial,
    /// HTTP/1.1 POST /msh announcing 100 kB more than the 1,000 bytes it sends.
    H1LongLength,
    /// HTTP/2: the connection preface (and SETTINGS), then nothing.
    H2Preface,
    /// HTTP/2: HEADERS without END_HEADERS, and no CONTINUATION.
    H2OpenHeaders,
    /// No client certificate; then nothing.
    NoCertificate,
}

const STALLS: [Stall; 6] = [
    Stall::H1NoBody,
    Stall::H1Partial,
    Stall::H1LongLength,
    Stall::H2Preface,
    Stall::H2OpenHeaders,
    Stall::NoCertificate,
];

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

impl Stall {
    /// What the attacker sends before it stalls.
    fn bytes(self) -> Vec<u8> {
        let post = |length: usize, sent: usize| {
            let mut b = format!(
                "POST /msh HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/related; \
                 boundary=x\r\nContent-Length: {length}\r\n\r\n"
            )
            .into_bytes();
            b.extend(std::iter::repeat_n(b'a', sent));
            b
        };
        match self {
            Stall::H1NoBody => post(1000, 0),
            Stall::H1Partial => post(2000, 1000),
            Stall::H1LongLength => post(101_000, 1000),
            Stall::H2Preface => [H2_PREFACE, &H2_SETTINGS].concat(),
            Stall::H2OpenHeaders => {
                // HEADERS on stream 1, flags 0 (neither END_STREAM nor END_HEADERS):
                // :method POST, :scheme https, :path / (HPACK static table).
                let headers = [0, 0, 3, 0x1, 0, 0, 0, 0, 1, 0x83, 0x87, 0x84];
                [H2_PREFACE, &H2_SETTINGS, &headers].concat()
            }
            Stall::NoCertificate => Vec::new(),
        }
    }

    fn h2(self) -> bool {
        matches!(self, Stall::H2Preface | Stall::H2OpenHeaders)
    }
}

#[derive(Debug)]
enum Outcome {
    /// Closed before the TLS handshake completed (over the per-address limit).
    Refused,
    /// Closed `after` the stall began and `since_connect` after the TCP connection was
    /// made (the server's timers cannot start earlier); `head` is what the server sent.
    Closed {
        after: Duration,
        since_connect: Duration,
        head: String,
    },
    /// Still open long after its bound.
    StillOpen,
}

/// Raises the soft limit of open files (the child inherits it): 1,100 attackers and the
/// server's side of them need more than the common 1,024.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let want = 8192.min(limit.rlim_max);
        if limit.rlim_cur < want {
            limit.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// A test-service message from varti-b to varti-a, signed and encrypted: (Content-Type,
/// body).
fn partner_message(id: &str) -> (String, Vec<u8>) {
    let read = |rel: &str| std::fs::read(repo().join(rel)).unwrap();
    let party = |id: &str, role: &str| Party {
        party_ids: vec![PartyId {
            value: id.to_owned(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered".to_owned()),
        }],
        role: role.to_owned(),
    };
    let ebms = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704";
    let um = UserMessage {
        mpc: None,
        message_info: MessageInfo::new(id.to_owned()),
        party_info: PartyInfo {
            from: party("varti-b", &format!("{ebms}/initiator")),
            to: party("varti-a", &format!("{ebms}/responder")),
        },
        collaboration_info: CollaborationInfo {
            agreement_ref: None,
            service: Service {
                value: format!("{ebms}/service"),
                type_: None,
            },
            action: format!("{ebms}/test"),
            conversation_id: "conv-1".into(),
        },
        properties: Vec::new(),
        parts: Vec::new(),
    };
    let sign_key = PKey::private_key_from_pem(&read("certs/varti-b/sign.key.pem")).unwrap();
    let sign_cert = X509::from_pem(&read("certs/varti-b/sign.cert.pem")).unwrap();
    let enc = X509::from_pem(&read("certs/varti-a/enc.cert.pem")).unwrap();
    let bst = TokenReference::BinarySecurityToken;
    let policy = SendPolicy::new(&AS4_1_15, bst, &sign_key, &sign_cert, Some(&enc), true);
    let mut body = Vec::new();
    let sent = send(&um, Vec::new(), &policy, &mut body).unwrap();
    (sent.content_type, body)
}

/// TLS client settings: trusting the test CA, with or without our client certificate.
fn connector(pki: &Pki, certificate: bool, alpn: &[u8]) -> TlsConnector {
    let ca = tls::load_certs(&pki.ca_cert, "test CA").unwrap();
    let identity = certificate.then(|| {
        (
            tls::load_certs(&pki.client_cert, "client certificate").unwrap(),
            tls::load_key(&pki.client_key, "client key").unwrap(),
        )
    });
    let mut config = tls::client_config(&ca, identity).unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Connections that stalled and are not closed yet, by the client's count.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Attackers that have stalled or were refused.
static SETTLED: AtomicUsize = AtomicUsize::new(0);

async fn attack(
    stall: Stall,
    source: Ipv4Addr,
    target: SocketAddr,
    connector: TlsConnector,
) -> Outcome {
    let settled = || {
        SETTLED.fetch_add(1, Ordering::SeqCst);
    };
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let tcp = match tokio::time::timeout(Duration::from_secs(20), socket.connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        other => panic!("{stall:?} from {source}: cannot connect: {other:?}"),
    };
    let connected = Instant::now();
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp));
    let mut tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) => {
            settled();
            return Outcome::Refused;
        }
        Err(_) => panic!("{stall:?} from {source}: the TLS handshake neither ended nor failed"),
    };
    let started = Instant::now();
    // A write may fail when the server has already closed (quota): that is a close at 0.
    let _ = tls.write_all(&stall.bytes()).await;
    let _ = tls.flush().await;
    OPEN.fetch_add(1, Ordering::SeqCst);
    settled();
    let give_up = started + Duration::from_secs(BOUND_SECS) + SLACK + Duration::from_secs(5);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let outcome = loop {
        match tokio::time::timeout_at(give_up.into(), tls.read(&mut buf)).await {
            Err(_) => break Outcome::StillOpen,
            Ok(Ok(0)) | Ok(Err(_)) => {
                break Outcome::Closed {
                    after: started.elapsed(),
                    since_connect: connected.elapsed(),
                    head: String::from_utf8_lossy(&head).into_owned(),
                }
            }
            Ok(Ok(n)) => {
                if head.len() < 512 {
                    head.extend_from_slice(&buf[..n]);
                }
            }
        }
    };
    OPEN.fetch_sub(1, Ordering::SeqCst);
    outcome
}

#[test]
fn stalled_connections_are_closed_in_time_and_partners_get_through() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let config = tls_config("optional").replace(
        "shutdown_grace_secs = 5",
        &format!(
            "shutdown_grace_secs = 5\nhandshake_timeout_secs = 15\n\
             header_read_timeout_secs = {BOUND_SECS}\nbody_read_timeout_secs = {BOUND_SECS}"
        ),
    ) + &format!(
        "[limits]\nmax_connections_per_ip = {PER_IP}\nmax_anonymous_connections = {ANONYMOUS}\n"
    );
    let served = spawn_serve(dir.path(), &config, &[]);
    let target = served.msh;
    let message = partner_message("slowloris-partner@test");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h1 = connector(&pki, true, b"http/1.1");
    let h2 = connector(&pki, true, b"h2");
    let anonymous = connector(&pki, false, b"http/1.1");
    let opening = Instant::now();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let stall = STALLS[i % STALLS.len()];
            let source = Ipv4Addr::new(127, 0, 0, 2 + (i / STALLS.len()) as u8 % SOURCES);
            let connector = match stall {
                Stall::NoCertificate => anonymous.clone(),
                s if s.h2() => h2.clone(),
                _ => h1.clone(),
            };
            (
                stall,
                runtime.spawn(attack(stall, source, target, connector)),
            )
        })
        .collect();

    // Once every attacker has stalled (or been refused), a partner sends a message.
    while SETTLED.load(Ordering::SeqCst) < ATTACKERS {
        assert!(
            opening.elapsed() < Duration::from_secs(60),
            "only {} of {ATTACKERS} attackers connected; log:\n{}",
            SETTLED.load(Ordering::SeqCst),
            served.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let opened_in = opening.elapsed();
    let open_at_partner = OPEN.load(Ordering::SeqCst);
    let sending = Instant::now();
    let mut partner = openssl_connect(
        target,
        SslVersion::TLS1_3,
        &pki.ca_cert,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .unwrap_or_else(|e| panic!("the partner cannot connect: {e}\n{}", served.log_text()));
    let (content_type, body) = &message;
    let answer = http_request(
        &mut partner,
        "POST",
        "/msh",
        &format!("Content-Type: {content_type}\r\n"),
        body,
    )
    .unwrap();
    let partner_took = sending.elapsed();
    eprintln!(
        "{ATTACKERS} attackers settled in {opened_in:?}; {open_at_partner} held open when \
         the partner sent; its receipt took {partner_took:?}"
    );
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(
        answer.body.contains("Receipt"),
        "the partner's message was not acknowledged: {}",
        answer.body
    );
    assert!(
        partner_took < Duration::from_secs(2),
        "the partner's message took {partner_took:?} under attack"
    );
    assert!(
        open_at_partner >= 500,
        "only {open_at_partner} attackers were holding connections when the partner sent: \
         the attack did not load the server"
    );

    // Every stalled connection was closed within its bound.
    let bound = Duration::from_secs(BOUND_SECS);
    let mut refused = 0;
    let mut by_timer: HashMap<Stall, (usize, Duration)> = HashMap::new();
    let mut at_once: HashMap<Stall, usize> = HashMap::new();
    for (stall, task) in attackers {
        match runtime.block_on(task).unwrap() {
            Outcome::Refused => refused += 1,
            Outcome::StillOpen => panic!(
                "a {stall:?} connection was still open {:?} after its stall began",
                bound + SLACK + Duration::from_secs(5)
            ),
            Outcome::Closed {
                after,
                since_connect,
                head,
            } => {
                assert!(
                    after <= bound + SLACK,
                    "a {stall:?} connection was closed only after {after:?} (bound {bound:?})"
                );
                if after < bound / 2 {
                    // Only clients without a certificate over their quota go at once.
                    assert_eq!(
                        stall,
                        Stall::NoCertificate,
                        "a {stall:?} connection was closed at once ({after:?}): {head}"
                    );
                    *at_once.entry(stall).or_default() += 1;
                    continue;
                }
                // A timer closed it, not an error: the server's timers start after the
                // connection was made (the client notes its connect up to a second late
                // while 1,100 handshakes share two threads, hence the margin).
                assert!(
                    since_connect >= bound * 3 / 4,
                    "a {stall:?} connection was closed {since_connect:?} after it was made, \
                     before its bound"
                );
                if matches!(
                    stall,
                    Stall::H1NoBody | Stall::H1Partial | Stall::H1LongLength
                ) {
                    assert!(
                        head.starts_with("HTTP/1.1 408"),
                        "a {stall:?} connection was not answered 408: {head:?}"
                    );
                }
                let entry = by_timer.entry(stall).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(after);
            }
        }
    }
    eprintln!(
        "refused on accept (over {PER_IP} per address): {refused}; closed by their bound \
         (count, latest): {by_timer:?}; closed at once: {at_once:?}"
    );
    for stall in STALLS {
        assert!(
            by_timer.get(&stall).is_some_and(|(n, _)| *n > 0),
            "no {stall:?} connection reached its bound: the stall was not tested"
        );
    }
    let anonymous_held = by_timer.get(&Stall::NoCertificate).map_or(0, |(n, _)| *n);
    assert!(
        anonymous_held <= ANONYMOUS,
        "{anonymous_held} connections without a certificate were held (quota {ANONYMOUS})"
    );
    assert!(
        at_once.get(&Stall::NoCertificate).copied().unwrap_or(0) > 0,
        "the quota of connections without a certificate never closed one"
    );

    // One address gets at most PER_IP connections: the next is closed on accept, while
    // another address still connects.
    runtime.block_on(async {
        let from = |last: u8| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))
                .unwrap();
            socket.connect(target)
        };
        let mut held = Vec::new();
        for _ in 0..PER_IP {
            held.push(from(20).await.unwrap());
        }
        let mut buf = [0u8; 16];
        let mut over = from(20).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection {} from one address was not closed on accept: {read:?}",
            PER_IP + 1
        );
        let mut other = from(21).await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(500), other.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "a connection from another address was closed at once: {read:?}"
        );
    });
}
