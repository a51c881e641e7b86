//! Shared by the console tests: a real `varti serve` (varti-a, its partner varti-b not
//! running) with console accounts of every role made by `varti console user add`, and an
//! outbound message waiting for its retry (its first attempt failed; the next is an hour
//! away).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::serve_support::{repo, spawn_serve_in, Served};

pub const ADMIN_TOKEN: &str = "console-test-admin-token";
pub const EXCHANGE: &str = "urn:varti:test:exchange";
/// Every account's password (one per role, named after it).
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Node {
    pub served: Served,
    pub backend: SocketAddr,
    /// Where the console is (the backend listener, or its own).
    pub console: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The id of the outbound message waiting for its retry.
    pub waiting: String,
}

/// Starts the node; `console_table` is appended to the configuration (`[console]`).
pub fn start(console_table: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo();
    std::os::unix::fs::symlink(repo.join("certs"), dir.path().join("certs")).unwrap();
    let pmodes = dir.path().join("pmodes");
    std::fs::create_dir_all(&pmodes).unwrap();
    for entry in std::fs::read_dir(repo.join("pmodes")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, pmodes.join(path.file_name().unwrap())).unwrap();
    }
    let reception = "retry_intervals = [\"1h\", \"1h\", \"1h\"]\nduplicate_detection = true\n";
    let exchange = varti::pair::settings_toml("default", "as4-1.15", reception, Some(""))
        + &varti::pair::exchange_toml(
            ["exchange", "question"],
            [EXCHANGE, "urn:varti:test:question"],
        );
    std::fs::write(pmodes.join("exchange.toml"), exchange).unwrap();
    let config = format!(
        r#"data_dir = "data"
pmodes_dir = "pmodes"
[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 5
[ops]
listen = "127.0.0.1:0"
[tls]
cert = "certs/varti-a/tls.cert.pem"
key = "certs/varti-a/tls.key.pem"
client_ca = "certs/ca.cert.pem"
[identity]
party = "varti-a"
signing_key = "certs/varti-a/sign.key.pem"
signing_cert = "certs/varti-a/sign.cert.pem"
encryption_key = "certs/varti-a/enc.key.pem"
encryption_cert = "certs/varti-a/enc.cert.pem"
trust_anchors = ["certs/ca.cert.pem"]
[client]
connect_timeout_secs = 2
request_timeout_secs = 20
[sender]
poll_interval_ms = 100
lease_secs = 30
[backend]
listen = "127.0.0.1:0"
[[backend.clients]]
name = "portal"
token_sha256 = "{}"
admin = true
{console_table}
"#,
        varti::pair::token_sha256(ADMIN_TOKEN),
    );
    let config_path = dir.path().join("varti.toml");
    std::fs::write(&config_path, config).unwrap();
    // The accounts, with the command an administrator uses (before serve: sled is
    // one process's).
    for role in ["viewer", "operator", "admin"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_varti"))
            .current_dir(dir.path())
            .args(["console", "user", "add", role, "--role", role, "--config"])
            .arg(&config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "console user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("added console user {role}"))
        );
    }
    let served = spawn_serve_in(
        dir.path(),
        &["--config", config_path.to_str().unwrap(), "--insecure-http"],
    );
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ready.json")).unwrap())
            .unwrap();
    let backend: SocketAddr = ready["backend"].as_str().unwrap().parse().unwrap();
    let console: SocketAddr = ready["console"]
        .as_str()
        .expect("the ready file names the console's listener")
        .parse()
        .unwrap();
    let mut node = Node {
        served,
        backend,
        console,
        dir,
        waiting: String::new(),
    };
    node.waiting = submit_waiting(&node);
    node
}

/// Submits a message to varti-b (not running) and waits until its first attempt failed.
fn submit_waiting(node: &Node) -> String {
    let boundary = "console-test-boundary";
    let metadata = json!({
        "to_party": "varti-b",
        "service": EXCHANGE,
        "action": "Deliver",
        "properties": [{"name": "originalSender", "value": "urn:test:c1"}],
        "payloads": [{"part": "file0", "mime_type": "text/plain"}],
    });
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file0\"; filename=\"a.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nhello from the console test\r\n--{boundary}--\r\n"
    );
    let r = http(
        node.backend,
        "POST",
        "/api/v1/messages",
        &[
            ("Authorization", format!("Bearer {ADMIN_TOKEN}")),
            (
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            ),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["message_id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let m = api_message(node, &id);
        if m["state"] == "waiting_for_retry" && m["attempts"] == 1 {
            return id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first attempt did not fail in time: {m:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The message as the backend API shows it.
pub fn api_message(node: &Node, id: &str) -> Value {
    let r = http(
        node.backend,
        "GET",
        &format!("/api/v1/messages/{}", enc(id)),
        &[("Authorization", format!("Bearer {ADMIN_TOKEN}"))],
        b"",
    );
    r.json()
}

/// The audit trail as the backend API shows it.
pub fn audit_entries(node: &Node) -> Vec<Value> {
    let r = http(
        node.backend,
        "GET",
        "/api/v1/audit?limit=1000",
        &[("Authorization", format!("Bearer {ADMIN_TOKEN}"))],
        b"",
    );
    r.json()["entries"].as_array().cloned().unwrap_or_default()
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        format!("{}\n{}", self.head, String::from_utf8_lossy(&self.body))
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The value of header `name` (first), lower-case name match.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
    /// The value the answer sets cookie `name` to (`None` when it sets none).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers("set-cookie").into_iter().find_map(|c| {
            let (k, rest) = c.split_once('=')?;
            (k == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
        })
    }
}

/// A raw HTTP/1.1 exchange over plain TCP.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(body).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    parse_answer(&raw)
}

pub fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

/// The value of the first hidden `csrf` field of a page.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A path segment, percent-encoded (everything but RFC 3986 unreserved).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
