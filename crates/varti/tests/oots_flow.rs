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
//!
//! The intermediary platform test puts two portals on varti-a and two providers on
//! varti-b: each portal sees only its own requests, each request reaches its provider's
//! register, the platform is the `IP` agent of the sent EDM, and the evidence leaves the
//! disk once handed over.

mod oots_support;
mod pair_support;
mod register_support;
mod serve_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oots_support::{
    codelists_dir, edm_dir, expect_error, get_request, get_request_as, post_request, request_body,
    settled, settled_as, start_pair, FAST,
};
use pair_support::Node;
use register_support::{pdf, pdf_b, Register};
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
                    varti_access_point::webhooks::verify_signature(
                        WEBHOOK_SECRET.as_bytes(),
                        body,
                        &signature
                    ),
                    "the webhook signature {signature} does not verify for {}",
                    String::from_utf8_lossy(body)
                );
                assert!(
                    !varti_access_point::webhooks::verify_signature(
                        b"another secret",
                        body,
                        &signature
                    ),
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
    // The pair's configuration ends with the `portal` backend client's table: these lines
    // come first in a's extra configuration, so they are the portal's webhook.
    let portal = format!(
        "webhook_url = \"http://127.0.0.1:{}/varti\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n",
        hook.port
    );
    oots_support::start_full(register, &portal, "")
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
    // It has exactly the fields docs/register-connector.openapi.json tells registers of.
    assert_matches_register_schema(&calls[0]);
    // The answer is an AS4 message on the request's conversation, referring to it.
    let response_id = v["response_message_id"].as_str().unwrap();
    assert_ne!(response_id, v["request_message_id"].as_str().unwrap());
    // That was EDM 2.0 (the default); the same with EDM 1.0 messages.
    assert_eq!(calls[0]["edm_version"], "oots-edm:v2.0");
    let mut v1_body = request_body("EV-OK", "DK/LV/010190-1234");
    v1_body["edm_version"] = json!("oots-edm:v1.0");
    let v1_id = post_request(&a, &v1_body)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v1 = settled(&a, &b, &v1_id, Duration::from_secs(60));
    assert_eq!(v1["state"], "answered", "{v1:#}");
    let v1_evidences = v1["evidences"].as_array().unwrap();
    assert_eq!(v1_evidences.len(), 1, "{v1:#}");
    assert_eq!(v1_evidences[0]["title"], "Birth certificate");
    let file = a.api("GET", v1_evidences[0]["href"].as_str().unwrap(), None, b"");
    assert!(file.bytes == pdf(), "EDM 1.0: the evidence differs");
    let calls = register.calls("/ok");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1]["edm_version"], "oots-edm:v1.0");

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
    // Each case with EDM 1.0 and with EDM 2.0 messages.
    const VERSIONS: [&str; 2] = ["oots-edm:v1.0", "oots-edm:v2.0"];
    let ids: Vec<(String, &str)> = cases
        .iter()
        .flat_map(|(et, eidas, ..)| {
            VERSIONS.map(|version| {
                let mut body = request_body(et, eidas);
                body["edm_version"] = json!(version);
                let id = post_request(&a, &body)["id"].as_str().unwrap().to_owned();
                (id, version)
            })
        })
        .collect();
    // The answer that comes too late: the request waits 2 s, the register takes 8 s.
    let mut late = request_body("EV-SLOWER", "DK/LV/010190-1234");
    late["timeout_secs"] = json!(2);
    let late_id = post_request(&a, &late)["id"].as_str().unwrap().to_owned();

    let per_case = cases.iter().flat_map(|c| [c, c]);
    for ((et, _, code, ty, detail), (id, version)) in per_case.zip(&ids) {
        let v = settled(&a, &b, id, Duration::from_secs(60));
        expect_error(&v, code, ty);
        let d = v["error"]["detail"].as_str().unwrap_or_default();
        assert!(
            d.contains(detail),
            "{et} ({version}): detail {d:?} lacks {detail:?}"
        );
    }
    // The slow register was tried twice per request (one retry), each attempt cut after
    // its timeout, and asked in the request's EDM version.
    let slow: Vec<_> = register.calls("/slow");
    assert_eq!(slow.len(), 4);
    for version in VERSIONS {
        assert_eq!(
            slow.iter().filter(|c| c["edm_version"] == version).count(),
            2
        );
    }
    // The invalid requests never reached the register.
    assert_eq!(register.calls("/ok").len(), 2);

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
    let settled_ids: Vec<&String> = [&id, &v1_id]
        .into_iter()
        .chain(ids.iter().map(|(id, _)| id))
        .chain([&late_id])
        .collect();
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

/// Tokens of the platform test's other backend clients on varti-a (varti-a's own `portal`
/// uses the pair's token).
const PORTAL2: &str = "token-portal2";
const OUTSIDER: &str = "token-outsider";
const ADMIN: &str = "token-ops";
/// The providers on varti-b, and one nobody serves.
const P1: &str = "LV90000011588";
const P2: &str = "LV40003000001";
const P3: &str = "LV99999999999";

/// A portal's request for evidence `EV-OK` from `provider`; the requester is left to the
/// gateway (the client's `oots_party`).
fn platform_body(provider: &str) -> Value {
    let mut body = request_body("EV-OK", "DK/LV/010190-1234");
    body.as_object_mut().unwrap().remove("requester");
    body["provider"]["identifier"]["value"] = json!(provider);
    body
}

fn post_as(a: &Node, token: &str, body: &Value) -> serve_support::HttpResponse {
    a.api_as(
        token,
        "POST",
        "/api/v1/oots/requests",
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

fn created_id(r: &serve_support::HttpResponse) -> String {
    assert_eq!(r.status, 202, "{} {}", r.head, r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// The ids a client's `GET /oots/requests` lists.
fn listed(a: &Node, token: &str) -> BTreeSet<String> {
    let r = a.api_as(token, "GET", "/api/v1/oots/requests", None, b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A message as an admin sees it.
fn admin_message(node: &Node, id: &str) -> Value {
    let r = node.api_as(
        ADMIN,
        "GET",
        &format!("/api/v1/messages/{}", pair_support::urlencode(id)),
        None,
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn property(message: &Value, name: &str) -> Value {
    message["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Whether some file under `dir` holds exactly `bytes`.
fn on_disk(dir: &std::path::Path, bytes: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let p = e.path();
        if p.is_dir() {
            on_disk(&p, bytes)
        } else {
            p.metadata().is_ok_and(|m| m.len() == bytes.len() as u64)
                && std::fs::read(&p).is_ok_and(|b| b == bytes)
        }
    })
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool, logs: &[&Node]) {
    let start = Instant::now();
    while !done() {
        let logs: Vec<String> = logs.iter().map(|n| n.served.log_text()).collect();
        assert!(
            start.elapsed() < within,
            "{what}: not after {within:?}\n{}",
            logs.join("\n-----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One gateway as an intermediary platform: two portals on varti-a, two providers on
/// varti-b. Each portal sees only its own requests and webhooks; its configured identity is
/// the requester, the platform the `IP` agent; each request reaches its provider's
/// register, and the answer comes from that provider; a provider nobody serves is
/// EDM:ERR:0006; evidence leaves both disks once handed over, and records go after their
/// retention.
#[test]
fn intermediary_platform_serves_many_portals_and_providers_and_purges_evidence() {
    let register = Register::start();
    let sha = varti::pair::token_sha256;
    let extra_a = format!(
        "oots_party = {{ scheme = \"urn:cef.eu:names:identifier:EAS:0096\", id = \"DK22233223\", name = \"Danish university portal\", country = \"DK\" }}\n\
         webhook_url = \"{hook1}\"\nwebhook_secret = \"secret-1\"\n\
         [[backend.clients]]\nname = \"portal2\"\ntoken_sha256 = \"{p2}\"\n\
         oots_party = {{ scheme = \"urn:cef.eu:names:identifier:EAS:0184\", id = \"DK55443322\", name = \"Danish business portal\", country = \"DK\" }}\n\
         webhook_url = \"{hook2}\"\nwebhook_secret = \"secret-2\"\n\
         [[backend.clients]]\nname = \"outsider\"\ntoken_sha256 = \"{out}\"\n\
         [[backend.clients]]\nname = \"ops\"\ntoken_sha256 = \"{admin}\"\nadmin = true\n\
         {FAST}\
         [oots]\nrole = \"requester\"\nrequest_timeout_secs = 60\n\
         evidence_retention_secs = 0\nrecord_retention_secs = 30\n\
         codelists = \"{codelists}\"\n\
         platform = {{ scheme = \"urn:oasis:names:tc:ebcore:partyid-type:unregistered:DK\", id = \"VARTI-DK\", name = \"Danish OOTS platform\", country = \"DK\" }}\n",
        hook1 = register.url("/hook/portal"),
        hook2 = register.url("/hook/portal2"),
        p2 = sha(PORTAL2),
        out = sha(OUTSIDER),
        admin = sha(ADMIN),
        codelists = codelists_dir(),
    );
    let extra_b = format!(
        "[[backend.clients]]\nname = \"ops\"\ntoken_sha256 = \"{admin}\"\nadmin = true\n\
         {FAST}\
         [oots]\nrole = \"provider\"\nevidence_retention_secs = 0\n\
         codelists = \"{codelists}\"\n\
         platform = {{ scheme = \"urn:oasis:names:tc:ebcore:partyid-type:unregistered:LV\", id = \"VARTI-LV\", name = \"Latvian OOTS platform\", country = \"LV\" }}\n\
         [[oots.connectors]]\nevidence_type = \"EV-OK\"\nprovider = \"{P1}\"\nurl = \"{reg_a}\"\n\
         [[oots.connectors]]\nevidence_type = \"EV-OK\"\nprovider = \"{P2}\"\nurl = \"{reg_b}\"\n",
        admin = sha(ADMIN),
        codelists = codelists_dir(),
        reg_a = register.url("/reg-a"),
        reg_b = register.url("/reg-b"),
    );
    let (_root, a, b) = start_pair(&extra_a, &extra_b);
    let portal1 = a.token.clone();

    // The parties are the configuration's: a portal cannot speak for another, and a client
    // that is no portal of the platform cannot ask at all.
    let mut spoof = platform_body(P1);
    spoof["requester"] = json!({"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0184", "value": "DK55443322"}, "name": "Danish business portal"});
    let r = post_as(&a, &portal1, &spoof);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("`requester`"), "{}", r.body);
    let r = post_as(&a, OUTSIDER, &platform_body(P1));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("oots_party"), "{}", r.body);

    let r1 = created_id(&post_as(&a, &portal1, &platform_body(P1)));
    let r2 = created_id(&post_as(&a, PORTAL2, &platform_body(P2)));
    let r3 = created_id(&post_as(&a, &portal1, &platform_body(P3)));
    let within = Duration::from_secs(60);
    let v1 = settled_as(&a, &b, &portal1, &r1, within);
    let v2 = settled_as(&a, &b, PORTAL2, &r2, within);
    let v3 = settled_as(&a, &b, &portal1, &r3, within);
    assert_eq!(v1["state"], "answered", "{v1:#}");
    assert_eq!(v2["state"], "answered", "{v2:#}");
    expect_error(&v3, "EDM:ERR:0006", "UnresolvedReferenceExceptionType");
    assert!(
        v3["error"]["detail"].as_str().unwrap().contains(P3),
        "{v3:#}"
    );

    // Routed by provider: each register got only its provider's request, from the portal
    // that made it.
    let (to_a, to_b) = (register.calls("/reg-a"), register.calls("/reg-b"));
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    assert_eq!(to_a[0]["request_id"], format!("urn:uuid:{r1}"));
    assert_eq!(to_a[0]["requester"]["identifier"], "DK22233223");
    assert_eq!(to_b[0]["request_id"], format!("urn:uuid:{r2}"));
    assert_eq!(to_b[0]["requester"]["identifier"], "DK55443322");

    // Each portal sees only its own requests: another's is 404 like a made-up id.
    for (token, id) in [(PORTAL2, &r1), (portal1.as_str(), &r2)] {
        for path in [
            format!("/api/v1/oots/requests/{id}"),
            format!("/api/v1/oots/requests/{id}/evidence/0"),
        ] {
            let r = a.api_as(token, "GET", &path, None, b"");
            assert_eq!(r.status, 404, "{path}: {}", r.body);
        }
    }
    let set = |ids: &[&String]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(listed(&a, &portal1), set(&[&r1, &r3]));
    assert_eq!(listed(&a, PORTAL2), set(&[&r2]));
    assert!(listed(&a, ADMIN).is_superset(&set(&[&r1, &r2, &r3])));

    // The sent request: originalSender is the portal, and the EDM names the portal (ER)
    // and the platform (IP), as the official rules on requester agents want them.
    let sent = admin_message(&a, v1["request_message_id"].as_str().unwrap());
    assert_eq!(property(&sent, "originalSender")["value"], "DK22233223");
    assert_eq!(
        property(&sent, "originalSender")["type"],
        "urn:cef.eu:names:identifier:EAS:0096"
    );
    assert_eq!(property(&sent, "finalRecipient")["value"], P1);
    let edm = a.api_as(
        ADMIN,
        "GET",
        sent["payloads"][0]["href"].as_str().unwrap(),
        None,
        b"",
    );
    assert_eq!(edm.status, 200, "{}", edm.body);
    let Ok(varti_oots::edm::EdmDocument::Request(request)) =
        varti_oots::edm::EdmDocument::parse(&edm.bytes)
    else {
        panic!("the sent EDM is no request:\n{}", edm.body)
    };
    let agents: Vec<(String, String)> = request
        .evidence_requesters()
        .into_iter()
        .map(|a| {
            (
                a.identifier.unwrap().value,
                a.classification.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        agents,
        vec![
            ("DK22233223".to_owned(), "ER".to_owned()),
            ("VARTI-DK".to_owned(), "IP".to_owned())
        ]
    );
    check_requester_agent_rules(&edm.body);

    // The answers come from the provider served (originalSender), or from the platform
    // when it serves no such provider.
    let answer1 = admin_message(&a, v1["response_message_id"].as_str().unwrap());
    assert_eq!(property(&answer1, "originalSender")["value"], P1);
    assert_eq!(property(&answer1, "finalRecipient")["value"], "DK22233223");
    let answer3 = admin_message(&a, v3["response_message_id"].as_str().unwrap());
    assert_eq!(property(&answer3, "originalSender")["value"], "VARTI-LV");

    // Webhooks go to the owning portal only.
    let hooked = |path: &str| -> BTreeSet<String> {
        register
            .calls(path)
            .iter()
            .map(|v| v["request_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    wait_until(
        "webhooks of both portals",
        Duration::from_secs(30),
        || hooked("/hook/portal").len() == 2 && hooked("/hook/portal2").len() == 1,
        &[&a],
    );
    assert_eq!(hooked("/hook/portal"), set(&[&r1, &r3]));
    assert_eq!(hooked("/hook/portal2"), set(&[&r2]));

    // Evidence is purged once handed over, not before: both files are on a's disk until
    // portal 1 downloads its own.
    assert!(on_disk(&a.dir, &pdf()), "r1's evidence is not on a's disk");
    assert!(
        on_disk(&a.dir, &pdf_b()),
        "r2's evidence is not on a's disk"
    );
    let href = v1["evidences"][0]["href"].as_str().unwrap();
    // An admin looking is no hand-over.
    let looked = a.api_as(ADMIN, "GET", href, None, b"");
    assert!(
        looked.status == 200 && looked.bytes == pdf(),
        "{}",
        looked.head
    );
    assert!(get_request_as(&a, &portal1, &r1)["evidence_purged_at"].is_null());
    let file = a.api_as(&portal1, "GET", href, None, b"");
    assert_eq!(file.status, 200, "{}", file.body);
    assert!(
        file.bytes == pdf(),
        "the evidence differs from the register's file"
    );
    wait_until(
        "r1's evidence purged after its hand-over",
        Duration::from_secs(20),
        || !get_request_as(&a, &portal1, &r1)["evidence_purged_at"].is_null(),
        &[&a],
    );
    let v = get_request_as(&a, &portal1, &r1);
    assert_eq!(v["evidences"][0]["downloaded"], true, "{v:#}");
    let again = a.api_as(&portal1, "GET", href, None, b"");
    assert_eq!(again.status, 410, "{}", again.body);
    assert!(
        !on_disk(&a.dir, &pdf()),
        "r1's evidence is still on a's disk"
    );
    assert!(
        on_disk(&a.dir, &pdf_b()),
        "r2's evidence went before its hand-over"
    );
    assert!(
        !admin_message(&a, v1["response_message_id"].as_str().unwrap())["payloads_purged_at"]
            .is_null()
    );

    // The provider side let go of both answers once a acknowledged them.
    for v in [&v1, &v2] {
        let id = v["response_message_id"].as_str().unwrap().to_owned();
        wait_until(
            "b purges its answer after the receipt",
            Duration::from_secs(30),
            || !admin_message(&b, &id)["payloads_purged_at"].is_null(),
            &[&b],
        );
    }
    assert!(!on_disk(&b.dir, &pdf()) && !on_disk(&b.dir, &pdf_b()));

    // Records go after record_retention_secs, with any evidence never handed over.
    for (token, id) in [(portal1.as_str(), &r3), (PORTAL2, &r2)] {
        wait_until(
            "the record purged after its retention",
            Duration::from_secs(90),
            || {
                a.api_as(
                    token,
                    "GET",
                    &format!("/api/v1/oots/requests/{id}"),
                    None,
                    b"",
                )
                .status
                    == 404
            },
            &[&a],
        );
    }
    assert!(
        !on_disk(&a.dir, &pdf_b()),
        "r2's evidence outlived its record"
    );
    assert!(listed(&a, PORTAL2).is_empty());
}

/// The official Schematron rules on the EvidenceRequester agents find nothing in `xml`,
/// and do find a wrong classification (so they really ran on it).
fn check_requester_agent_rules(xml: &str) {
    use varti_oots::validate::schematron::RuleDir;
    use varti_oots::validate::Severity;
    const AGENT_RULES: &[&str] = &[
        "R-EDM-REQ-S028",
        "R-EDM-REQ-S029",
        "R-EDM-REQ-S039",
        "R-EDM-REQ-S040",
        "R-EDM-REQ-C010",
        "R-EDM-REQ-C012",
        "R-EDM-REQ-C013",
        "R-EDM-REQ-C014",
        "R-EDM-REQ-C015",
    ];
    let dir = edm_dir("sch");
    if !dir.is_dir() {
        return;
    }
    let rules = RuleDir::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let broken = |xml: &str| -> Vec<String> {
        rules
            .validate(xml)
            .unwrap()
            .into_iter()
            .filter(|f| f.severity == Severity::Fatal && AGENT_RULES.contains(&f.rule_id.as_str()))
            .map(|f| format!("{} at {}: {}", f.rule_id, f.location, f.message))
            .collect()
    };
    assert_eq!(broken(xml), Vec::<String>::new(), "{xml}");
    let wrong = xml.replace(">IP</", ">XX</");
    assert_ne!(wrong, xml);
    assert!(
        broken(&wrong)
            .iter()
            .any(|f| f.starts_with("R-EDM-REQ-C014")),
        "{:?}",
        broken(&wrong)
    );
}

/// Checks that `request` (what the register was sent) has exactly the properties of the
/// `EvidenceQuery` schema of docs/register-connector.openapi.json, and its objects those of
/// the schemas they refer to.
fn assert_matches_register_schema(request: &Value) {
    let doc: Value = serde_json::from_slice(
        &std::fs::read(pair_support::repo().join("docs/register-connector.openapi.json")).unwrap(),
    )
    .unwrap();
    let schemas = &doc["components"]["schemas"];
    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }
    let query = &schemas["EvidenceQuery"]["properties"];
    assert_eq!(keys(request), keys(query), "the request's fields");
    assert_eq!(
        keys(&request["evidence_type"]),
        keys(&query["evidence_type"]["properties"])
    );
    for (field, schema) in [
        ("natural_person", "NaturalPerson"),
        ("requester", "Requester"),
    ] {
        assert_eq!(
            keys(&request[field]),
            keys(&schemas[schema]["properties"]),
            "{field}"
        );
    }
}
