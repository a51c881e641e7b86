//! OOTS preview through two gateways and a real headless Chromium: varti-a the requester
//! state, varti-b the provider state whose connector for `EV-PREVIEW` needs the citizen's
//! preview, its preview space served over HTTPS (`preview.tls`, OOTS preview links must be
//! https) with the built-in test identity provider, and the fake national register.
//!
//! The exchange: the portal asks a; b fetches the evidence, opens a preview and answers
//! EDM:ERR:0002 PreviewRequired with the link; the portal POSTs `preview-return`, a sends
//! the second request on the same conversation; the citizen logs in at the link and
//! approves (TC06: the portal gets the PDF) or cancels (TC08: the answer carries no
//! evidence); a request that does not allow preview never gets the evidence. TC06 and
//! TC08 run with EDM 1.0 and with EDM 2.0 messages (the ReturnLocation only in 2.0).

mod chromium_support;
mod oots_support;
mod pair_support;
mod register_support;
mod serve_support;

use std::path::Path;
use std::time::{Duration, Instant};

use chromium_support::{browser_trusting, log_in, preview_files, start_driver, submit, wait_for};
use oots_support::{get_request, post_request, request_body, settled, start_with};
use pair_support::{free_port, repo, Node};
use register_support::{pdf, Register};
use serde_json::{json, Value};

/// b's additions: the preview connector and the preview space on `port`.
fn provider_preview(register: &Register, port: u16) -> String {
    oots_support::preview_lines(register, ([127, 0, 0, 1], port).into(), port)
}

/// Files under the node's data directory whose bytes are the register's PDF: every copy
/// of the evidence the node still holds (payload store, preview space).
fn evidence_copies(node: &Node) -> usize {
    fn walk(p: &Path, wanted: &[u8]) -> usize {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, wanted)
                } else if e.metadata().map(|m| m.len()).ok() == Some(wanted.len() as u64) {
                    usize::from(std::fs::read(&p).ok().as_deref() == Some(wanted))
                } else {
                    0
                }
            })
            .sum()
    }
    walk(&node.dir.join("data"), &pdf())
}

/// Waits until `f` holds, or fails with `what` and the logs.
fn eventually(a: &Node, b: &Node, what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}\n--- a:\n{}\n--- b:\n{}",
            a.served.log_text(),
            b.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The EDM versions the preview events run with.
const EDM_VERSIONS: [&str; 2] = ["oots-edm:v1.0", "oots-edm:v2.0"];

/// A preview request for Ida (the person the test identity provider knows), in EDM
/// `version`.
fn preview_request(possibility_for_preview: bool, version: &str) -> Value {
    let mut body = request_body("EV-PREVIEW", "DK/LV/010190-1234");
    body["preview"] = json!(possibility_for_preview);
    body["edm_version"] = json!(version);
    body
}

/// The first request: b answers PreviewRequired with an https link to its preview space.
fn ask_until_preview(a: &Node, b: &Node, port: u16, version: &str) -> (String, String, Value) {
    let created = post_request(a, &preview_request(true, version));
    let id = created["id"].as_str().unwrap().to_owned();
    let v = settled(a, b, &id, Duration::from_secs(60));
    assert_eq!(v["state"], "preview_required", "{v:#}");
    assert_eq!(v["error"]["code"], "EDM:ERR:0002", "{v:#}");
    assert_eq!(v["error"]["exception_type"], "AuthorizationExceptionType");
    assert!(
        v["error"]["severity"]
            .as_str()
            .unwrap()
            .ends_with(":EDMErrorResponse:PreviewRequired"),
        "{v:#}"
    );
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
    let location = v["preview_location"].as_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("https://localhost:{port}/preview/")),
        "{location}"
    );
    (id, location, v)
}

/// `POST …/preview-return`: the second request, same conversation, new MessageId; with a
/// ReturnLocation `back` (EDM 2.0 only).
fn return_from_preview(a: &Node, id: &str, first: &Value, back: Option<&str>) -> Value {
    let body = match back {
        Some(back) => json!({ "return_location": back }),
        None => json!({}),
    };
    let r = a.api(
        "POST",
        &format!("/api/v1/oots/requests/{id}/preview-return"),
        Some("application/json"),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["state"], "sent", "{v:#}");
    assert_eq!(v["conversation_id"], first["conversation_id"]);
    assert_ne!(v["request_message_id"], first["request_message_id"]);
    assert!(
        v["error"].is_null() && v["response_message_id"].is_null(),
        "{v:#}"
    );
    // Only once: the record is no longer waiting for the preview.
    let again = a.api(
        "POST",
        &format!("/api/v1/oots/requests/{id}/preview-return"),
        None,
        b"",
    );
    assert_eq!(again.status, 409, "{}", again.body);
    v
}

/// One HTTP/1.1 GET to the preview listener over TLS (trusting the test CA): the raw
/// answer, head and body.
fn tls_get(port: u16, path: &str) -> String {
    use openssl::ssl::{SslConnector, SslMethod};
    use std::io::{Read, Write};
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder
        .set_ca_file(repo().join("certs/ca.cert.pem"))
        .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = builder.build().connect("localhost", tcp).unwrap();
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    // The server may close without close_notify: what was read is the answer.
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Over TLS every answer carries HSTS and pages let forms post to their own origin only;
/// the test identity provider sends no browser to an unregistered redirect URI.
fn assert_preview_headers_and_redirect_allow_list(port: u16) {
    let page = tls_get(port, "/preview/no-such-link");
    let lower = page.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nstrict-transport-security: max-age=31536000\r\n"),
        "{page}"
    );
    assert!(lower.contains("form-action 'self';"), "{page}");
    assert!(!lower.contains("http: https:"), "{page}");

    let authorize = |redirect_uri: &str| {
        let query = form_urlencoded_query(&[
            ("client_id", "varti-preview"),
            ("response_type", "code"),
            ("code_challenge_method", "S256"),
            ("code_challenge", "c"),
            ("state", "s"),
            ("nonce", "n"),
            ("redirect_uri", redirect_uri),
        ]);
        tls_get(port, &format!("/test-idp/authorize?{query}"))
    };
    let evil = authorize("https://evil.example/cb");
    assert!(evil.starts_with("HTTP/1.1 400"), "{evil}");
    assert!(evil.contains("is not registered"), "{evil}");
    let own = authorize(&format!("https://localhost:{port}/preview/callback"));
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
}

/// How many second requests b's log says it held for the citizen's decision.
fn held_requests(b: &Node) -> usize {
    b.served
        .log_text()
        .matches("second request received; waiting for the user's decision")
        .count()
}

/// `a=b&c=d`, percent-encoded.
fn form_urlencoded_query(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_through_two_gateways_approve_cancel_and_no_preview_allowed() {
    let register = Register::start();
    let port = free_port();
    let (_root, a, b) =
        tokio::task::block_in_place(|| start_with(&register, &provider_preview(&register, port)));
    let driver = start_driver();
    let tls_cert = repo().join("certs/varti-b/tls.cert.pem");

    for version in EDM_VERSIONS {
        let asked_before = register.calls("/ok").len();
        let held_before = held_requests(&b);
        // The ReturnLocation slot exists in EDM 2.0 only.
        let back = (version == "oots-edm:v2.0").then_some("https://portal.example.dk/oots/back");

        // TC06: preview, approved → the portal gets the PDF.
        let (id, link, first) =
            tokio::task::block_in_place(|| ask_until_preview(&a, &b, port, version));
        assert_eq!(
            register.calls("/ok").len(),
            asked_before + 1,
            "the register was asked once"
        );
        assert_eq!(register.calls("/ok")[asked_before]["edm_version"], version);
        // b holds the evidence (payload store) and the preview space shows a copy.
        assert_eq!(preview_files(&b.dir), 1);
        assert_eq!(evidence_copies(&b), 2);
        tokio::task::block_in_place(|| return_from_preview(&a, &id, &first, back));
        // b holds the second request until the citizen decides: its log says so once it has
        // taken the request and waits for the decision, and nothing answers it before then.
        tokio::task::block_in_place(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while held_requests(&b) == held_before {
                assert!(
                    Instant::now() < deadline,
                    "b never took the second request\n{}",
                    b.served.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        assert_eq!(get_request(&a, &id)["state"], "sent");

        tokio::task::block_in_place(|| assert_preview_headers_and_redirect_allow_list(port));
        let c = browser_trusting(&driver, Some(&tls_cert)).await;
        log_in(&c, &link, "Ida").await;
        submit(&c, "#approve", "#message").await;
        // The ReturnLocation of the second request reached the preview page.
        if let Some(back) = back {
            let href = wait_for(&c, "#back").await.attr("href").await.unwrap();
            assert_eq!(href.as_deref(), Some(back));
        }
        c.close().await.unwrap();

        let v = tokio::task::block_in_place(|| settled(&a, &b, &id, Duration::from_secs(60)));
        assert_eq!(v["state"], "answered", "{version}: {v:#}");
        let evidences = v["evidences"].as_array().unwrap();
        assert_eq!(evidences.len(), 1, "{v:#}");
        assert_eq!(evidences[0]["mime_type"], "application/pdf");
        let file = a.api("GET", evidences[0]["href"].as_str().unwrap(), None, b"");
        assert_eq!(file.status, 200, "{}", file.body);
        assert!(
            file.bytes == pdf(),
            "the evidence differs from the register's file"
        );
        // The register was not asked again for the second request.
        assert_eq!(register.calls("/ok").len(), asked_before + 1);
        // At b the preview copy is gone, and the sent evidence too once a acknowledged it
        // (handed over: oots.evidence_retention_secs = 0).
        assert_eq!(preview_files(&b.dir), 0);
        tokio::task::block_in_place(|| {
            eventually(&a, &b, "the sent evidence is still at b", || {
                evidence_copies(&b) == 0
            })
        });

        // TC08: preview rejected by the user → an answer without evidence.
        let (id, link, first) =
            tokio::task::block_in_place(|| ask_until_preview(&a, &b, port, version));
        assert_eq!(
            register.calls("/ok")[asked_before + 1]["edm_version"],
            version
        );
        assert_eq!(evidence_copies(&b), 2, "held + preview copy");
        tokio::task::block_in_place(|| return_from_preview(&a, &id, &first, back));
        let c = browser_trusting(&driver, Some(&tls_cert)).await;
        log_in(&c, &link, "Ida").await;
        submit(&c, "#cancel", "#message").await;
        c.close().await.unwrap();
        let v = tokio::task::block_in_place(|| settled(&a, &b, &id, Duration::from_secs(60)));
        // As test event TC08's second response: success status, an empty RegistryObjectList.
        assert_eq!(v["state"], "answered", "{version}: {v:#}");
        assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
        assert!(v["error"].is_null(), "{v:#}");
        // Nothing of this exchange's evidence is left at b: neither held nor previewed.
        tokio::task::block_in_place(|| {
            eventually(&a, &b, "the cancelled evidence is still at b", || {
                evidence_copies(&b) == 0
            })
        });
        assert_eq!(preview_files(&b.dir), 0);
    }

    // PossibilityForPreview false on an evidence type that needs preview: an error, no
    // evidence, and the register is not even asked.
    let created = post_request(&a, &preview_request(false, "oots-edm:v2.0"));
    let id = created["id"].as_str().unwrap().to_owned();
    let v = tokio::task::block_in_place(|| settled(&a, &b, &id, Duration::from_secs(60)));
    assert_eq!(v["state"], "error", "{v:#}");
    assert_eq!(v["error"]["code"], "EDM:ERR:0002", "{v:#}");
    assert_eq!(v["error"]["exception_type"], "AuthorizationExceptionType");
    assert!(
        v["error"]["severity"]
            .as_str()
            .unwrap()
            .ends_with(":ErrorSeverityType:Error"),
        "not a PreviewRequired: {v:#}"
    );
    assert!(v["preview_location"].is_null(), "{v:#}");
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(
        v["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("PossibilityForPreview"),
        "{v:#}"
    );
    assert_eq!(
        register.calls("/ok").len(),
        4,
        "asked for TC06 and TC08 in both EDM versions only, not for this request"
    );
    assert_eq!(evidence_copies(&b), 0);
    // preview-return on a request that is not waiting for a preview is refused.
    let r = a.api(
        "POST",
        &format!("/api/v1/oots/requests/{id}/preview-return"),
        None,
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("preview_required"), "{}", r.body);
}
