//! The OOTS evidence exchange end to end: two real `varti serve` processes (varti-a the
//! requester state, varti-b the provider state) over AS4 with TLS and the test PKI, and a
//! fake national register (a small real HTTP server: the test double at the far edge).
//!
//! A portal POSTs the request's data to a's backend API; a builds the EDM request and sends
//! it on the OOTS PMode; b validates it, calls its data service connector for the evidence
//! type, and answers over AS4; the portal GETs the outcome from a and downloads the
//! evidence. Named after the member-state test events where one fits (TC01 basic request,
//! TC02 no match, TC03 base-registry error or timeout).

mod pair_support;
mod serve_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pair_support::{repo, Node};
use serde_json::{json, Value};

/// A PDF evidence file (a minimal document plus binary bytes, so nothing text-only passes).
fn pdf() -> Vec<u8> {
    let mut b = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n".to_vec();
    b.extend((0..70_000u32).map(|i| (i * 31 % 256) as u8));
    b.extend_from_slice(b"\n%%EOF\n");
    b
}

/// The fake national register: answers by path, records the JSON it was sent.
struct Register {
    port: u16,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Register {
    fn start() -> Register {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || serve_register(conn, &seen));
            }
        });
        Register { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn serve_register(mut conn: TcpStream, seen: &Mutex<Vec<(String, Value)>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while buf.len() < head_end + length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let body: Value =
        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    seen.lock().unwrap().push((path.clone(), body));
    let respond = |conn: &mut TcpStream, status: &str, ct: &str, body: &[u8]| {
        let _ = conn.write_all(
            format!("HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes(),
        );
        let _ = conn.write_all(body);
    };
    match path.as_str() {
        "/ok" => {
            let boundary = "register-boundary-41";
            let mut body = Vec::new();
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n").as_bytes());
            body.extend_from_slice(br#"{"evidences":[{"part":"birth","title":"Birth certificate","issuing_date":"2001-02-03"}]}"#);
            body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"birth\"; filename=\"birth.pdf\"\r\nContent-Type: application/pdf\r\n\r\n").as_bytes());
            body.extend_from_slice(&pdf());
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            respond(
                &mut conn,
                "200 OK",
                &format!("multipart/form-data; boundary={boundary}"),
                &body,
            );
        }
        "/none" => respond(
            &mut conn,
            "404 Not Found",
            "text/plain",
            b"no person matches the identity data",
        ),
        "/refuse" => respond(
            &mut conn,
            "422 Unprocessable Entity",
            "text/plain",
            b"date of birth is in the future",
        ),
        "/slow" | "/slower" => {
            // Longer than the connector's timeout (1 s) / the request's timeout (2 s).
            std::thread::sleep(Duration::from_secs(if path == "/slow" { 3 } else { 8 }));
            respond(&mut conn, "404 Not Found", "text/plain", b"late");
        }
        _ => respond(
            &mut conn,
            "500 Internal Server Error",
            "text/plain",
            b"unknown path",
        ),
    }
}

/// Starts both nodes with the OOTS gateway on (both roles) and b's connectors pointing at
/// the register (`EV-DOWN` at a closed port).
fn start(register: &Register) -> (tempfile::TempDir, Node, Node) {
    let closed = pair_support::free_port();
    let root = tempfile::tempdir().unwrap();
    let extra = format!(
        "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
         [sender]\npoll_interval_ms = 100\nlease_secs = 30\n\
         [oots]\nrole = \"both\"\nrequest_timeout_secs = 60\n\
         codelists = \"{codelists}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-OK\"\nurl = \"{ok}\"\ntimeout_secs = 10\n\
         [[oots.connectors]]\nevidence_type = \"EV-NONE\"\nurl = \"{none}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-REFUSE\"\nurl = \"{refuse}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-SLOW\"\nurl = \"{slow}\"\ntimeout_secs = 1\nretries = 1\nretry_delay_ms = 100\n\
         [[oots.connectors]]\nevidence_type = \"EV-SLOWER\"\nurl = \"{slower}\"\ntimeout_secs = 20\nretries = 0\n\
         [[oots.connectors]]\nevidence_type = \"EV-DOWN\"\nurl = \"http://127.0.0.1:{closed}/x\"\ntimeout_secs = 2\nretries = 1\nretry_delay_ms = 100\n",
        codelists = codelists_dir(),
        ok = register.url("/ok"),
        none = register.url("/none"),
        refuse = register.url("/refuse"),
        slow = register.url("/slow"),
        slower = register.url("/slower"),
    );
    let options = varti_gateway::pair::PairOptions {
        extra_pmodes: Vec::new(),
        b_endpoint_port: None,
        extra_config: extra,
    };
    let layout = varti_gateway::pair::PairLayout::create(root.path(), &repo(), &options).unwrap();
    let node = |l: &varti_gateway::pair::NodeLayout| Node {
        served: serve_support::spawn_serve_in(&l.dir, &["--config", "varti.toml"]),
        backend: l.backend(),
        token: l.token.clone(),
        dir: l.dir.clone(),
    };
    let a = node(&layout.a);
    let b = node(&layout.b);
    (root, a, b)
}

/// The OOTS code lists, read in place from the shared specs (`VARTI_SPECS`).
fn codelists_dir() -> String {
    let specs = std::env::var("VARTI_SPECS")
        .unwrap_or_else(|_| repo().join("../shared/specs").display().to_string());
    let dir = std::path::Path::new(&specs).join("oots-edm-v1/codelists");
    if !dir.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "OOTS code lists missing at {}",
            dir.display()
        );
        eprintln!(
            "WARNING: no OOTS code lists at {}; codes are not checked",
            dir.display()
        );
    }
    dir.display().to_string()
}

/// The portal's request data for evidence type `evidence_type`.
fn request_body(evidence_type: &str, eidas_id: &str) -> Value {
    json!({
        "provider_party": "varti-b",
        "procedure": "T1",
        "requirements": [{"identifier": "https://sr.oots.tech.ec.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099", "name": "Proof of birth"}],
        "evidence_type": {
            "identifier": evidence_type,
            "classification": "https://sr.oots.tech.ec.europa.eu/evidencetypeclassifications/LV/9a1e7f3c-0d6b-4e59-b8f5-0d8f6c1e2a33",
            "title": "Certificate of Birth",
            "format": "application/pdf"
        },
        "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "value": "DK22233223"}, "name": "Danish portal", "country": "DK"},
        "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:9939", "value": "LV90000011588"}, "name": "Latvian register", "country": "LV"},
        "natural_person": {"identifier": eidas_id, "family_name": "Jensen", "given_name": "Ida", "date_of_birth": "1990-01-01", "level_of_assurance": "High"},
        "preview": false
    })
}

fn post_request(a: &Node, body: &Value) -> Value {
    let r = a.api(
        "POST",
        "/api/v1/oots/requests",
        Some("application/json"),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{} {}", r.head, r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn get_request(a: &Node, id: &str) -> Value {
    let r = a.api("GET", &format!("/api/v1/oots/requests/{id}"), None, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Waits until the request leaves `sent`.
fn settled(a: &Node, b: &Node, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let v = get_request(a, id);
        if v["state"] != "sent" {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "request {id} still sent after {within:?}: {v:#}\n--- a:\n{}\n--- b:\n{}",
            a.served.log_text(),
            b.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn expect_error(v: &Value, code: &str, exception_type: &str) {
    assert_eq!(v["state"], "error", "{v:#}");
    assert_eq!(v["error"]["code"], code, "{v:#}");
    assert_eq!(v["error"]["exception_type"], exception_type, "{v:#}");
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
}

/// TC01 and the error cases, one pair of processes for all (each start costs seconds on a
/// two-core machine): evidence with a PDF attachment; no match (TC02); the register refusing;
/// an invalid request; an evidence type no connector serves; a register that times out and
/// one that is down (TC03); a request whose answer comes too late.
#[test]
fn evidence_request_response_and_every_error_over_as4() {
    let register = Register::start();
    let (_root, a, b) = start(&register);

    // TC01: evidence → response with the PDF, downloadable by the portal.
    let created = post_request(&a, &request_body("EV-OK", "DK/LV/010190-1234"));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "sent");
    let v = settled(&a, &b, &id, Duration::from_secs(60));
    assert_eq!(v["state"], "answered", "{v:#}");
    assert_eq!(v["conversation_id"], id.as_str());
    let evidences = v["evidences"].as_array().unwrap();
    assert_eq!(evidences.len(), 1, "{v:#}");
    assert_eq!(evidences[0]["mime_type"], "application/pdf");
    assert_eq!(evidences[0]["title"], "Birth certificate");
    assert_eq!(evidences[0]["classification"], "MainEvidence");
    let href = evidences[0]["href"].as_str().unwrap();
    let file = a.api("GET", href, None, b"");
    assert_eq!(file.status, 200, "{}", file.body);
    assert!(
        file.head
            .to_lowercase()
            .contains("content-type: application/pdf"),
        "{}",
        file.head
    );
    assert!(
        file.bytes == pdf(),
        "the evidence differs from the register's file"
    );
    // The register got the person and evidence type from the EDM request.
    let calls = register.calls("/ok");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["request_id"], format!("urn:uuid:{id}"));
    assert_eq!(
        calls[0]["natural_person"]["identifier"],
        "DK/LV/010190-1234"
    );
    assert_eq!(calls[0]["natural_person"]["family_name"], "Jensen");
    assert_eq!(calls[0]["evidence_type"]["identifier"], "EV-OK");
    assert_eq!(calls[0]["requester"]["identifier"], "DK22233223");
    // The answer is an AS4 message on the request's conversation, referring to it.
    let response_id = v["response_message_id"].as_str().unwrap();
    assert_ne!(response_id, v["request_message_id"].as_str().unwrap());

    // Another portal's id, a made-up id and a missing evidence index are 404.
    let r = a.api(
        "GET",
        "/api/v1/oots/requests/00000000-0000-4000-8000-000000000000",
        None,
        b"",
    );
    assert_eq!(r.status, 404);
    let r = a.api(
        "GET",
        &format!("/api/v1/oots/requests/{id}/evidence/1"),
        None,
        b"",
    );
    assert_eq!(r.status, 404);
    // And a request without a person is refused before anything is sent.
    let mut bad = request_body("EV-OK", "DK/LV/1");
    bad.as_object_mut().unwrap().remove("natural_person");
    let r = a.api(
        "POST",
        "/api/v1/oots/requests",
        Some("application/json"),
        bad.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("natural_person"), "{}", r.body);

    // Start every error case at once, then check each.
    let cases = [
        (
            "EV-NONE",
            "DK/LV/010190-1234",
            "EDM:ERR:0004",
            "ObjectNotFoundExceptionType",
            "no person matches",
        ),
        (
            "EV-REFUSE",
            "DK/LV/010190-1234",
            "EDM:ERR:0003",
            "InvalidRequestExceptionType",
            "date of birth",
        ),
        // Not an eIDAS identifier: b's model validation refuses it (rule VARTI-EDM-REQ-015).
        (
            "EV-OK",
            "not-an-eidas-id",
            "EDM:ERR:0003",
            "InvalidRequestExceptionType",
            "VARTI-EDM-REQ-015",
        ),
        (
            "EV-UNKNOWN",
            "DK/LV/010190-1234",
            "EDM:ERR:0007",
            "UnsupportedCapabilityExceptionType",
            "EV-UNKNOWN",
        ),
        (
            "EV-SLOW",
            "DK/LV/010190-1234",
            "EDM:ERR:0005",
            "TimeoutExceptionType",
            "did not answer within 1s",
        ),
        (
            "EV-DOWN",
            "DK/LV/010190-1234",
            "EDM:ERR:0008",
            "QueryExceptionType",
            "cannot reach",
        ),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(et, eidas, ..)| {
            post_request(&a, &request_body(et, eidas))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The answer that comes too late: the request waits 2 s, the register takes 8 s.
    let mut late = request_body("EV-SLOWER", "DK/LV/010190-1234");
    late["timeout_secs"] = json!(2);
    let late_id = post_request(&a, &late)["id"].as_str().unwrap().to_owned();

    for ((et, _, code, ty, detail), id) in cases.iter().zip(&ids) {
        let v = settled(&a, &b, id, Duration::from_secs(60));
        expect_error(&v, code, ty);
        let d = v["error"]["detail"].as_str().unwrap_or_default();
        assert!(d.contains(detail), "{et}: detail {d:?} lacks {detail:?}");
    }
    // The slow register was tried twice (one retry), each attempt cut after its timeout.
    assert_eq!(register.calls("/slow").len(), 2);
    // The invalid request never reached the register.
    assert_eq!(register.calls("/ok").len(), 1);

    let v = settled(&a, &b, &late_id, Duration::from_secs(30));
    assert_eq!(v["state"], "timed_out", "{v:#}");
    // The late answer (ERR:0004 from the register's 404) arrives and changes nothing.
    let start = Instant::now();
    while !a.served.log_text().contains("already settled") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the late answer never reached a:\n{}",
            a.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(register.calls("/slower").len(), 1);
    let v = get_request(&a, &late_id);
    assert_eq!(v["state"], "timed_out", "{v:#}");
    assert!(v["response_message_id"].is_null(), "{v:#}");
}
