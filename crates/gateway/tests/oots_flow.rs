//! The OOTS evidence exchange end to end: two real `varti serve` processes (varti-a the
//! requester state, varti-b the provider state) over AS4 with TLS and the test PKI, and a
//! fake national register (a small real HTTP server: the test double at the far edge).
//!
//! A portal POSTs the request's data to a's backend API; a builds the EDM request and sends
//! it on the OOTS PMode; b validates it, calls its data service connector for the evidence
//! type, and answers over AS4; the portal GETs the outcome from a and downloads the
//! evidence; a's portal has a webhook and is notified once when each request settles.
//! Named after the member-state test events where one fits (TC01 basic request,
//! TC02 no match, TC03 base-registry error or timeout).

mod pair_support;
mod register_support;
mod serve_support;

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pair_support::{repo, Node};
use register_support::{pdf, Register};
use serde_json::{json, Value};

/// The secret of the portal's webhook on a.
const WEBHOOK_SECRET: &str = "oots-portal-webhook-secret";

/// The requests a webhook receiver got: (head, body).
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// The portal's webhook receiver (a real HTTP server standing in for the portal): answers
/// 200 and records each request's head and body.
struct PortalHook {
    port: u16,
    seen: Requests,
}

impl PortalHook {
    fn start() -> PortalHook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Requests = Arc::default();
        let recorder = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = recorder.clone();
                std::thread::spawn(move || {
                    if let Some(request) = register_support::read_request(&mut conn) {
                        seen.lock().unwrap().push(request);
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                });
            }
        });
        PortalHook { port, seen }
    }

    /// The notifications received so far: (`X-Varti-Event`, `X-Varti-Delivery`, body
    /// JSON), each checked to carry a valid signature of its exact body.
    fn notifications(&self) -> Vec<(String, String, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(head, body)| {
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_else(|| panic!("webhook request without {name}:\n{head}"))
                };
                let signature = header("x-varti-signature");
                assert!(
                    varti_gateway::webhooks::verify_signature(
                        WEBHOOK_SECRET.as_bytes(),
                        body,
                        &signature
                    ),
                    "the webhook signature {signature} does not verify for {}",
                    String::from_utf8_lossy(body)
                );
                assert!(
                    !varti_gateway::webhooks::verify_signature(b"another secret", body, &signature),
                    "the signature verifies under any secret"
                );
                (
                    header("x-varti-event"),
                    header("x-varti-delivery"),
                    serde_json::from_slice(body).unwrap(),
                )
            })
            .collect()
    }

    /// The notifications about request `id`.
    fn about(&self, id: &str) -> Vec<Value> {
        self.notifications()
            .into_iter()
            .filter(|(_, _, v)| v["request_id"] == id)
            .map(|(_, _, v)| v)
            .collect()
    }
}

/// Starts both nodes with the OOTS gateway on (both roles), b's connectors pointing at
/// the register (`EV-DOWN` at a closed port) and a's portal notified at `hook`.
fn start(register: &Register, hook: &PortalHook) -> (tempfile::TempDir, Node, Node) {
    let closed = pair_support::free_port();
    let root = tempfile::tempdir().unwrap();
    // The pair's configuration ends with the `portal` backend client's table: these first
    // lines of the extra configuration are the portal's webhook.
    let extra = format!(
        "webhook_url = \"http://127.0.0.1:{hook}/varti\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
         [client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
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
        hook = hook.port,
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
/// one that is down (TC03); a request whose answer comes too late. The portal's webhook gets
/// exactly one signed notification per request.
#[test]
fn evidence_request_response_and_every_error_over_as4() {
    let register = Register::start();
    let hook = PortalHook::start();
    let (_root, a, b) = start(&register, &hook);

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

    // The portal's webhook: exactly one signed `oots_request` notification per request, when
    // it settled, naming its final state (the late answer above added none). The refused
    // request (400) was never created, so it has none.
    let settled_ids: Vec<&String> = std::iter::once(&id).chain(&ids).chain([&late_id]).collect();
    let start = Instant::now();
    while hook.notifications().len() < settled_ids.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} webhook notifications for {} settled requests: {:#?}",
            hook.notifications().len(),
            settled_ids.len(),
            hook.notifications()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = hook.notifications();
    assert_eq!(all.len(), settled_ids.len(), "{all:#?}");
    let deliveries: std::collections::BTreeSet<&String> = all.iter().map(|(_, d, _)| d).collect();
    assert_eq!(deliveries.len(), all.len(), "delivery ids repeat: {all:#?}");
    for id in settled_ids {
        let about = hook.about(id);
        assert_eq!(about.len(), 1, "request {id}: {about:#?}");
        let n = &about[0];
        assert_eq!(n["event"], "oots_request", "{n:#}");
        assert_eq!(n["state"], get_request(&a, id)["state"], "{n:#}");
        assert!(n["at"].as_str().is_some_and(|t| !t.is_empty()), "{n:#}");
    }
    assert!(
        all.iter().all(|(event, ..)| event == "oots_request"),
        "{all:#?}"
    );
}
