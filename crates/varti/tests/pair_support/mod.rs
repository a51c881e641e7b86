//! Two real `varti serve` processes, varti-a and varti-b, talking AS4 over TLS with the
//! repository's test PKI and PModes (endpoints rewritten to free local ports), each with a
//! backend API client `portal` (token `token-a` / `token-b`).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use varti::pair;

use super::serve_support::{http_request, spawn_serve_in, wait_for_state, HttpResponse, Served};

pub use super::serve_support::repo;

pub use varti::pair::free_port as try_free_port;

/// `len` pseudo-random bytes covering every byte value (xorshift from `seed`): what gzip
/// cannot shrink.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    try_free_port().unwrap()
}

/// Extra PMode file used by the exchange tests: a one-way leg with fast retries, a
/// two-way (push-and-push) request/response pair, and a one-way/pull leg on its own MPC
/// (varti-a holds the messages, varti-b pulls them).
pub fn exchange_pmodes() -> String {
    let reception = "retry_intervals = [\"1s\", \"2s\", \"2s\"]\nduplicate_detection = true\n";
    let pull = pair::process_toml(
        "pull",
        "pull",
        [&["varti-a"], &["varti-b"]],
        &[["pull", "urn:varti:test:pull", "Pull"]],
        "mpc = \"urn:varti:test:mpc:pull\"\n",
    );
    let services = ["urn:varti:test:exchange", "urn:varti:test:question"];
    pair::settings_toml("default", "as4-1.15", reception, Some(""))
        + &pair::exchange_toml(["exchange", "question"], services)
        + &pull
}

/// Where the pair lives (see `varti::pair` for the layout).
pub struct Pair {
    pub root: tempfile::TempDir,
    pub layout: varti::pair::PairLayout,
}

impl Pair {
    /// Writes PModes and both configurations (nothing started yet).
    pub fn new() -> Pair {
        Pair::with_b_endpoint(None)
    }

    /// Like [`Pair::new`], but varti-b's endpoint in the PModes is `b_endpoint_port`
    /// (a proxy in front of b) instead of b's own port.
    pub fn with_b_endpoint(b_endpoint_port: Option<u16>) -> Pair {
        let pmodes = ("exchange.toml", exchange_pmodes());
        Pair::create(pmodes, b_endpoint_port, SENDER_CONFIG)
    }

    /// A pair with the fast test sender, one extra PMode file `(name, TOML)` and b's
    /// endpoint at `b_endpoint_port` (a proxy or tap in front of b; see [`Pair::move_b_to`]).
    pub fn with_pmodes_via(pmodes: (&str, String), b_endpoint_port: u16) -> Pair {
        Pair::create(pmodes, Some(b_endpoint_port), SENDER_CONFIG)
    }

    /// A pair with one extra PMode file `(name, TOML)`, varti-b's endpoint in the PModes
    /// at `b_endpoint_port` when given, and `extra_config` in both configurations.
    pub fn create(
        pmodes: (&str, String),
        b_endpoint_port: Option<u16>,
        extra_config: &str,
    ) -> Pair {
        let root = tempfile::tempdir().unwrap();
        let options = pair::PairOptions {
            extra_pmodes: vec![(pmodes.0.into(), pmodes.1)],
            b_endpoint_port,
            extra_config: extra_config.into(),
        };
        let layout = pair::PairLayout::create(root.path(), &repo(), &options).unwrap();
        Pair { root, layout }
    }

    /// Moves b's MSH listener to `port` (a proxy forwards there).
    pub fn move_b_to(&mut self, port: u16) {
        self.layout.b.ports.msh = port;
        self.layout
            .rewrite_config(&self.layout.b, SENDER_CONFIG)
            .unwrap();
    }

    /// Starts node `a` or `b`.
    pub fn start(&self, node: &str) -> Node {
        let layout = if node == "a" {
            &self.layout.a
        } else {
            &self.layout.b
        };
        let served = spawn_serve_in(&layout.dir, &["--config", "varti.toml"]);
        Node {
            served,
            backend: layout.backend(),
            token: layout.token.clone(),
            dir: layout.dir.clone(),
        }
    }
}

/// Fast retries and polling for tests.
const SENDER_CONFIG: &str = "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
    [sender]\npoll_interval_ms = 100\nlease_secs = 30\n";

/// A running node.
pub struct Node {
    pub served: Served,
    pub backend: SocketAddr,
    pub token: String,
    pub dir: PathBuf,
}

impl Node {
    /// A backend API call with this node's token.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> HttpResponse {
        self.api_as(&self.token, method, path, content_type, body)
    }

    /// A backend API call with another backend client's `token`.
    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> HttpResponse {
        let mut tcp = TcpStream::connect(self.backend).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut headers = format!("Authorization: Bearer {token}\r\n");
        if let Some(ct) = content_type {
            headers.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        http_request(&mut tcp, method, path, &headers, body).unwrap()
    }

    /// Submits a message: `metadata` JSON plus files (name, mime type, bytes). Returns the
    /// MessageId.
    pub fn submit(&self, metadata: serde_json::Value, files: &[(&str, &str, &[u8])]) -> String {
        self.submit_as(&self.token, metadata, files)
    }

    /// [`Node::submit`] as another backend client (its `token`).
    pub fn submit_as(
        &self,
        token: &str,
        metadata: serde_json::Value,
        files: &[(&str, &str, &[u8])],
    ) -> String {
        let boundary = "varti-test-boundary-7f3a";
        let mut meta = metadata;
        // Payload specs the caller gave (with part properties) are kept.
        if meta.get("payloads").is_none() {
            meta["payloads"] = files
                .iter()
                .map(|(name, mime, _)| serde_json::json!({"part": name, "mime_type": mime}))
                .collect();
        }
        let mut body = Vec::new();
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n"
            )
            .as_bytes(),
        );
        for (name, mime, bytes) in files {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let r = self.api_as(
            token,
            "POST",
            "/api/v1/messages",
            Some(&format!("multipart/form-data; boundary={boundary}")),
            &body,
        );
        assert_eq!(r.status, 201, "submit refused: {} {}", r.head, r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["message_id"].as_str().unwrap().to_owned()
    }

    /// The message as the API shows it (`None`: 404).
    pub fn message(&self, id: &str) -> Option<serde_json::Value> {
        let r = self.api(
            "GET",
            &format!("/api/v1/messages/{}", urlencode(id)),
            None,
            b"",
        );
        match r.status {
            200 => Some(serde_json::from_str(&r.body).unwrap()),
            404 => None,
            s => panic!("GET message {id}: {s} {}", r.body),
        }
    }

    /// Waits until the message reaches `state`.
    pub fn wait_state(&self, id: &str, state: &str, within: Duration) -> serde_json::Value {
        wait_for_state(&self.served, id, state, within, || self.message(id))
    }

    /// Inbound messages for the portal (newest first).
    pub fn inbound(&self) -> Vec<serde_json::Value> {
        let r = self.api(
            "GET",
            "/api/v1/messages?direction=inbound&limit=1000",
            None,
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Downloads payload `n` of a message.
    pub fn payload(&self, id: &str, n: usize) -> Vec<u8> {
        let r = self.api(
            "GET",
            &format!("/api/v1/messages/{}/payloads/{n}", urlencode(id)),
            None,
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.bytes
    }
}

/// Percent-encodes a path segment or query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A TCP proxy (network fault injection) that forwards connections to `target`, but
/// loses the answer on the first connection: once the client has sent more than
/// `request_bytes` on it (the TLS handshake passes; the AS4 request is larger), nothing the
/// server sends is forwarded any more, and [`LossyProxy::lose_answer`] cuts the connection.
///
/// Why held rather than cut at the server's first byte: TLS 1.3 servers send session
/// tickets after the handshake, which can reach the proxy while the request is still
/// flowing; cutting then would lose the request, not the receipt. The test calls
/// `lose_answer` once the receiver shows the message stored, so the receipt is what is lost.
pub struct LossyProxy {
    pub port: u16,
    /// The first connection's two sockets, to cut them.
    first: std::sync::Arc<std::sync::Mutex<Option<(TcpStream, TcpStream)>>>,
}

impl LossyProxy {
    pub fn start(target: SocketAddr, request_bytes: usize) -> LossyProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let first: Arc<Mutex<Option<(TcpStream, TcpStream)>>> = Arc::default();
        let first_conn = first.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                if n == 0 {
                    *first_conn.lock().unwrap() =
                        Some((client.try_clone().unwrap(), server.try_clone().unwrap()));
                }
                let sent = Arc::new(AtomicUsize::new(0));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counter = sent.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match c_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                counter.fetch_add(k, Ordering::SeqCst);
                                if s_out.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut holding = false;
                    loop {
                        match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                holding |= n == 0 && sent.load(Ordering::SeqCst) > request_bytes;
                                // Held: swallowed until `lose_answer` cuts the connection.
                                if !holding && c_out.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        LossyProxy { port, first }
    }

    /// Cuts the first connection, with the server's answer to it unsent. Returns whether
    /// there was a first connection to cut.
    pub fn lose_answer(&self) -> bool {
        match self.first.lock().unwrap().take() {
            Some((client, server)) => {
                let _ = client.shutdown(std::net::Shutdown::Both);
                let _ = server.shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }
}

/// A TLS server config with varti-b's TLS certificate (SAN localhost, 127.0.0.1), for a
/// stand-in server where varti-b would be.
pub fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use varti_access_point::server::tls;
    let repo = repo();
    let chain = tls::load_certs(&repo.join("certs/varti-b/tls.cert.pem"), "cert").unwrap();
    let key = tls::load_key(&repo.join("certs/varti-b/tls.key.pem"), "key").unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
