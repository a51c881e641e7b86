//! The outbound client against an in-process TLS server (the gateway's own listener):
//! connection reuse, per-partner TLS (trusted CA, client certificate), streaming request
//! bodies, bounded responses.

mod serve_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serve_support::make_pki;
use tokio_util::sync::CancellationToken;
use varti::config::ClientAuth;
use varti_access_point::client::{
    ClientError, ClientSettings, OutboundBody, OutboundClient, PartnerTls,
};
use varti_access_point::ops::Metrics;
use varti_access_point::server::{
    tls, Listener, ListenerOptions, MshHandler, MshRequest, MshResponse, MshResponseBody, MshRoutes,
};

/// Answers with what it received: byte count, a checksum, the Content-Type and whether a
/// client certificate was presented. `?big` in the Content-Type asks for a large answer.
struct Echo;

impl MshHandler for Echo {
    fn handle(&self, mut request: MshRequest) -> MshResponse {
        let mut total = 0u64;
        let mut sum = 0u64;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = request.body.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
            sum = buf[..n]
                .iter()
                .fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(b as u64));
        }
        let content_type = request
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if content_type.contains("reader") {
            // A streamed response (as a pulled message with payloads would be).
            let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
            return MshResponse {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: MshResponseBody::Reader(Box::new(std::io::Cursor::new(data))),
            };
        }
        let body = if content_type.contains("big") {
            vec![b'r'; 100_000]
        } else {
            format!(
                "len={total} sum={sum} ct={content_type} cert={}",
                !request.peer.client_certificates.is_empty()
            )
            .into_bytes()
        };
        MshResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: MshResponseBody::Bytes(body.into()),
        }
    }
}

fn checksum(data: &[u8]) -> u64 {
    data.iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(b as u64))
}

async fn start_server(dir: &std::path::Path) -> (SocketAddr, Arc<AtomicU64>, CancellationToken) {
    let tls = tls::server_config(
        &dir.join("server.crt"),
        &dir.join("server.key"),
        ClientAuth::Required,
        &dir.join("ca.crt"),
    )
    .unwrap();
    let listener = Listener::bind(
        "test",
        "127.0.0.1:0".parse().unwrap(),
        ListenerOptions {
            tls: Some(tls),
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 16,
            ..ListenerOptions::default()
        },
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = listener.accepted_counter();
    let token = CancellationToken::new();
    let routes = Arc::new(MshRoutes::new(
        Arc::new(Echo),
        64 * 1024 * 1024,
        Arc::new(Metrics::new()),
    ));
    tokio::spawn(listener.serve(routes, token.clone(), Duration::from_secs(2)));
    (addr, accepted, token)
}

fn settings() -> ClientSettings {
    ClientSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        pool_idle_timeout: Duration::from_secs(30),
        max_response_bytes: 10_000,
        allow_plain_http: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_stream_over_one_reused_tls_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (addr, accepted, token) = start_server(dir.path()).await;

    let client = OutboundClient::new(settings());
    client
        .set_partner(
            "blue",
            PartnerTls::from_pem_files(&pki.ca_cert, Some((&pki.client_cert, &pki.client_key)))
                .unwrap(),
        )
        .unwrap();
    let url = format!("https://localhost:{}/msh", addr.port());

    // A 3 MB file body, streamed.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&data).unwrap();
    let mut reopened = file.try_clone().unwrap();
    std::io::Seek::rewind(&mut reopened).unwrap();
    let ct = "multipart/related; boundary=\"x\"; type=\"application/soap+xml\"";
    let r1 = client
        .post("blue", &url, ct, OutboundBody::from_file(reopened).unwrap())
        .await
        .unwrap();
    assert_eq!(r1.status, StatusCode::OK);
    let text = String::from_utf8(r1.body.to_vec()).unwrap();
    assert_eq!(
        text,
        format!(
            "len={} sum={} ct={ct} cert=true",
            data.len(),
            checksum(&data)
        )
    );

    // A reader of unknown length (chunked), on the same connection.
    let r2 = client
        .post(
            "blue",
            &url,
            "application/soap+xml",
            OutboundBody::from_reader(std::io::Cursor::new(b"hello".to_vec()), None),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(r2.body.to_vec()).unwrap(),
        format!(
            "len=5 sum={} ct=application/soap+xml cert=true",
            checksum(b"hello")
        )
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "two requests should share one pooled TLS connection"
    );

    // A response streamed by the server from a reader arrives whole.
    let r3 = client
        .post(
            "blue",
            &url,
            "application/reader",
            OutboundBody::from_bytes(&b"x"[..]),
        )
        .await
        .unwrap();
    let expected: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    assert_eq!(r3.body.as_ref(), expected.as_slice());

    // Responses are bounded.
    let err = client
        .post(
            "blue",
            &url,
            "application/big",
            OutboundBody::from_bytes(&b"x"[..]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ResponseTooLarge { limit: 10_000, .. }),
        "{err}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partner_tls_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (addr, _accepted, token) = start_server(dir.path()).await;
    let url = format!("https://localhost:{}/msh", addr.port());
    let client = OutboundClient::new(settings());

    // Unknown partner.
    let err = client
        .post(
            "nobody",
            &url,
            "text/plain",
            OutboundBody::from_bytes(&b"x"[..]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UnknownPartner(_)), "{err}");

    // Partner whose server certificate we do not trust.
    client
        .set_partner(
            "untrusted",
            PartnerTls::from_pem_files(
                &pki.other_ca_cert,
                Some((&pki.client_cert, &pki.client_key)),
            )
            .unwrap(),
        )
        .unwrap();
    let err = client
        .post(
            "untrusted",
            &url,
            "text/plain",
            OutboundBody::from_bytes(&b"x"[..]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Exchange { detail, .. } if detail.contains("certificate")),
        "{err}"
    );

    // Trusted server, but we present no client certificate: the server refuses.
    client
        .set_partner(
            "nocert",
            PartnerTls::from_pem_files(&pki.ca_cert, None).unwrap(),
        )
        .unwrap();
    let err = client
        .post(
            "nocert",
            &url,
            "text/plain",
            OutboundBody::from_bytes(&b"x"[..]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Exchange { .. }), "{err}");

    // Plain http is refused unless allowed.
    let err = client
        .post(
            "nocert",
            &format!("http://127.0.0.1:{}/msh", addr.port()),
            "text/plain",
            OutboundBody::from_bytes(&b"x"[..]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Url { .. }), "{err}");
    token.cancel();
}
