//! Two real `varti serve` processes, varti-a and varti-b, talking AS4 over TLS with the
//! repository's test PKI and PModes (endpoints rewritten to free local ports), each with a
//! backend API client `portal` (token `token-a` / `token-b`).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::serve_support::{http_request, spawn_serve_in, HttpResponse, Served};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The ports of one node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub msh: u16,
    pub ops: u16,
    pub backend: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            msh: free_port(),
            ops: free_port(),
            backend: free_port(),
        }
    }
}

/// Extra PMode file used by the exchange tests: a one-way leg with fast retries, a
/// two-way (push-and-push) request/response pair, and a one-way/pull leg on its own MPC
/// (varti-a holds the messages, varti-b pulls them).
pub const EXCHANGE_PMODES: &str = r#"
[security.default]
profile = "as4-1.15"
sign = true
encrypt = true
token_reference = "bst"

[reception.default]
retry_intervals = ["1s", "2s", "2s"]
duplicate_detection = true

[compression.default]
enabled = true

[[process]]
name = "exchange"
mep = "oneWay"
binding = "push"
initiator = { parties = ["varti-a", "varti-b"] }
responder = { parties = ["varti-a", "varti-b"] }

[[process.leg]]
name = "deliver"
service = "urn:varti:test:exchange"
action = "Deliver"

[[process]]
name = "question"
mep = "twoWay"
binding = "pushAndPush"
initiator = { parties = ["varti-a", "varti-b"] }
responder = { parties = ["varti-a", "varti-b"] }

[[process.leg]]
name = "ask"
service = "urn:varti:test:question"
action = "Ask"

[[process.leg]]
name = "answer"
service = "urn:varti:test:question"
action = "Answer"
reply = true

[[process]]
name = "pull"
mep = "oneWay"
binding = "pull"
initiator = { parties = ["varti-a"] }
responder = { parties = ["varti-b"] }

[[process.leg]]
name = "pull"
service = "urn:varti:test:pull"
action = "Pull"
mpc = "urn:varti:test:mpc:pull"
"#;

/// Where the pair lives: `root/{certs -> repo certs, pmodes/, a/, b/}`.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub a: Ports,
    pub b: Ports,
}

impl Pair {
    /// Writes PModes and both configurations (nothing started yet).
    pub fn new() -> Pair {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (Ports::pick(), Ports::pick());
        let repo = repo();
        std::os::unix::fs::symlink(repo.join("certs"), root.path().join("certs")).unwrap();
        let pmodes = root.path().join("pmodes");
        std::fs::create_dir_all(&pmodes).unwrap();
        for (file, port) in [("varti-a.toml", a.msh), ("varti-b.toml", b.msh)] {
            let text = std::fs::read_to_string(repo.join("pmodes").join(file)).unwrap();
            let host = file.trim_end_matches(".toml");
            let text = text.replace(
                &format!(
                    "https://{host}.localhost:{}/msh",
                    if host == "varti-a" { 8443 } else { 9443 }
                ),
                &format!("https://localhost:{port}/msh"),
            );
            assert!(
                text.contains(&format!("localhost:{port}")),
                "endpoint not rewritten in {file}"
            );
            std::fs::write(pmodes.join(file), text).unwrap();
        }
        for file in ["test-service.toml", "connectivity-test.toml"] {
            std::fs::copy(repo.join("pmodes").join(file), pmodes.join(file)).unwrap();
        }
        std::fs::write(pmodes.join("exchange.toml"), EXCHANGE_PMODES).unwrap();
        let pair = Pair { root, a, b };
        pair.write_config("a", "varti-a", a, "token-a");
        pair.write_config("b", "varti-b", b, "token-b");
        pair
    }

    fn write_config(&self, node: &str, party: &str, ports: Ports, token: &str) {
        let dir = self.root.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        let token_sha256: String = openssl::sha::sha256(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            dir.join("varti.toml"),
            format!(
                r#"data_dir = "data"
pmodes_dir = "../pmodes"
[server]
listen = "127.0.0.1:{msh}"
shutdown_grace_secs = 5
[ops]
listen = "127.0.0.1:{ops}"
[tls]
cert = "../certs/{party}/tls.cert.pem"
key = "../certs/{party}/tls.key.pem"
client_ca = "../certs/ca.cert.pem"
client_auth = "required"
[identity]
party = "{party}"
signing_key = "../certs/{party}/sign.key.pem"
signing_cert = "../certs/{party}/sign.cert.pem"
encryption_key = "../certs/{party}/enc.key.pem"
encryption_cert = "../certs/{party}/enc.cert.pem"
trust_anchors = ["../certs/ca.cert.pem"]
[client]
connect_timeout_secs = 2
request_timeout_secs = 20
[sender]
poll_interval_ms = 100
lease_secs = 30
instance = "{party}-test"
[backend]
listen = "127.0.0.1:{backend}"
[[backend.clients]]
name = "portal"
token_sha256 = "{token_sha256}"
"#,
                msh = ports.msh,
                ops = ports.ops,
                backend = ports.backend,
            ),
        )
        .unwrap();
    }

    /// Starts node `a` or `b`.
    pub fn start(&self, node: &str) -> Node {
        let dir = self.root.path().join(node);
        let served = spawn_serve_in(&dir, &["--config", "varti.toml"]);
        let ports = if node == "a" { self.a } else { self.b };
        Node {
            served,
            backend: SocketAddr::from(([127, 0, 0, 1], ports.backend)),
            token: format!("token-{node}"),
            dir,
        }
    }
}

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
        let mut tcp = TcpStream::connect(self.backend).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut headers = format!("Authorization: Bearer {}\r\n", self.token);
        if let Some(ct) = content_type {
            headers.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        http_request(&mut tcp, method, path, &headers, body).unwrap()
    }

    /// Submits a message: `metadata` JSON plus files (name, mime type, bytes). Returns the
    /// MessageId.
    pub fn submit(&self, metadata: serde_json::Value, files: &[(&str, &str, &[u8])]) -> String {
        let boundary = "varti-test-boundary-7f3a";
        let mut meta = metadata;
        meta["payloads"] = files
            .iter()
            .map(|(name, mime, _)| serde_json::json!({"part": name, "mime_type": mime}))
            .collect();
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
        let r = self.api(
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
        let start = Instant::now();
        loop {
            if let Some(m) = self.message(id) {
                if m["state"] == state {
                    return m;
                }
                assert!(
                    start.elapsed() < within,
                    "{id} is {} after {within:?}, not {state}: {m:#}\nlog:\n{}",
                    m["state"],
                    self.served.log_text()
                );
            } else {
                assert!(
                    start.elapsed() < within,
                    "{id} never appeared\nlog:\n{}",
                    self.served.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
        r.body.into_bytes()
    }
}

/// Percent-encodes a path segment.
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
