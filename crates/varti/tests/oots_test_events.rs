//! The OOTS member-state test events TC04, TC07 and TC09 end to end through two gateways
//! (varti-a the requester state, varti-b the provider state, real `varti serve`
//! processes over AS4 with TLS), the citizen in a real headless Chromium where the event
//! has one. Each event runs with EDM 1.0 and EDM 2.0 messages.
//!
//! - TC04 access-point error: varti-b cannot decrypt what varti-a sends (its decryption key
//!   is not the one its PModes publish), so the request's AS4 message fails; the portal
//!   sees the request `failed` and why.
//! - TC07 preview at two providers in one procedure: two providers on varti-b, each
//!   needing the citizen's preview; the citizen approves both and the portal gets both
//!   evidences.
//! - TC09 preview error: the citizen does not decide before the link expires; the provider
//!   answers the held second request with EDM:ERR:0005 and the link shows it expired.
//! - TC10 preview with a human-readable transformation: the register sends XML evidence
//!   with an XSLT 1.0 stylesheet; the citizen sees the transformed page (sandboxed) and can
//!   fetch the original XML; a hostile stylesheet configured for another evidence type,
//!   calling `document('http://127.0.0.1:…')` and adding remote images, scripts and styles,
//!   makes nobody fetch anything (a listener on that address proves it).

mod chromium_support;
mod oots_support;
mod pair_support;
mod register_support;
mod serve_support;

use std::time::{Duration, Instant};

use chromium_support::{
    browser_trusting, log_in, preview_files, start_driver, submit, text_of, wait_for,
};
use oots_support::{expect_error, get_request, post_request, request_body, settled};
use pair_support::{free_port, repo, Node};
use register_support::{evidence_xml, evidence_xsl, pdf, pdf_b, Register};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The EDM versions every event runs with.
const EDM_VERSIONS: [&str; 2] = ["oots-edm:v1.0", "oots-edm:v2.0"];
/// The first provider (`request_body`'s) and a second one on varti-b.
const P1: &str = "LV90000011588";
const P2: &str = "LV40003000001";

/// A request for `evidence_type` from `provider`, in EDM `version`.
fn request(evidence_type: &str, provider: &str, version: &str, preview: bool) -> Value {
    let mut body = request_body(evidence_type, "DK/LV/010190-1234");
    body["provider"]["identifier"]["value"] = json!(provider);
    body["edm_version"] = json!(version);
    body["preview"] = json!(preview);
    body
}

/// b's preview space over HTTPS on `port` with links living `ttl` seconds, the test
/// identity provider knowing Ida, and `connectors` (TOML).
fn preview_space(port: u16, ttl: u64, connectors: &str) -> String {
    let extra = format!("link_ttl_secs = {ttl}\n");
    format!(
        "{connectors}\n{}",
        oots_support::preview_section(([127, 0, 0, 1], port).into(), port, &extra)
    )
}

/// Waits until `f` holds (30 s), or fails with `what` and both logs.
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

/// Sends the first request and waits for PreviewRequired; returns (id, link, record).
fn ask_until_preview(a: &Node, b: &Node, body: &Value) -> (String, String, Value) {
    let id = post_request(a, body)["id"].as_str().unwrap().to_owned();
    let v = settled(a, b, &id, Duration::from_secs(60));
    assert_eq!(v["state"], "preview_required", "{v:#}");
    assert_eq!(v["error"]["code"], "EDM:ERR:0002", "{v:#}");
    let link = v["preview_location"].as_str().unwrap().to_owned();
    assert!(link.starts_with("https://localhost:"), "{link}");
    (id, link, v)
}

/// `POST …/preview-return` (with a ReturnLocation in EDM 2.0 only, where the slot exists).
fn return_from_preview(a: &Node, id: &str, version: &str) {
    let body = if version == "oots-edm:v2.0" {
        json!({"return_location": "https://portal.example.dk/oots/back"})
    } else {
        json!({})
    };
    let r = a.api(
        "POST",
        &format!("/api/v1/oots/requests/{id}/preview-return"),
        Some("application/json"),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

/// How many times b's log says it holds a second request for the citizen's decision.
fn held_requests(b: &Node) -> usize {
    b.served
        .log_text()
        .matches("second request received; waiting for the user's decision")
        .count()
}

/// The EDM versions of the requests a register was called for (the connector request
/// names the version of the EDM request the provider received), in call order.
fn versions_called(register: &Register, path: &str) -> Vec<String> {
    register
        .calls(path)
        .iter()
        .map(|c| c["edm_version"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// TC04: varti-b decrypts with varti-c's key while the PModes publish varti-b's encryption
/// certificate, so every message varti-a sends fails at b's access point (EBMS:0102).
#[test]
fn tc04_access_point_error_fails_the_request_at_the_portal() {
    let register = Register::start();
    let (_root, a, b) = oots_support::start_full_via(
        &register,
        "",
        "",
        None,
        Some(|config| {
            config
                .replace("/varti-b/enc.key.pem", "/varti-c/enc.key.pem")
                .replace("/varti-b/enc.cert.pem", "/varti-c/enc.cert.pem")
        }),
    );
    let ids: Vec<(String, &str)> = EDM_VERSIONS
        .iter()
        .map(|version| {
            let created = post_request(&a, &request("EV-OK", P1, version, false));
            assert_eq!(created["state"], "sent", "{created:#}");
            (created["id"].as_str().unwrap().to_owned(), *version)
        })
        .collect();
    for (id, version) in &ids {
        let v = settled(&a, &b, id, Duration::from_secs(60));
        assert_eq!(v["state"], "failed", "{version}: {v:#}");
        // No EDM answer exists for an access-point error: no error document, no evidence,
        // and the portal is told what failed where.
        assert!(v["error"].is_null(), "{version}: {v:#}");
        assert!(
            v["evidences"].as_array().unwrap().is_empty(),
            "{version}: {v:#}"
        );
        assert!(v["response_message_id"].is_null(), "{version}: {v:#}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("could not be delivered to the provider's access point"),
            "{version}: {v:#}"
        );
        assert!(reason.contains("EBMS:0102"), "{version}: {reason}");
    }
    // Nothing reached the provider's register.
    assert!(register.calls("/ok").is_empty());
}

/// TC07: one procedure asks two providers (on varti-b) for evidence that needs the
/// citizen's preview; both answer PreviewRequired with their own link, the portal sends
/// both second requests, the citizen logs in and approves at each, and the portal gets
/// each provider's evidence. Once with EDM 1.0, once with EDM 2.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc07_preview_at_two_providers_in_one_procedure_in_headless_chromium() {
    let register = Register::start();
    let port = free_port();
    let connectors = format!(
        "[[oots.connectors]]\nevidence_type = \"EV-PREVIEW\"\nprovider = \"{P1}\"\nurl = \"{}\"\npreview = true\n\
         [[oots.connectors]]\nevidence_type = \"EV-PREVIEW\"\nprovider = \"{P2}\"\nurl = \"{}\"\npreview = true\n",
        register.url("/reg-a"),
        register.url("/reg-b"),
    );
    let b_extra = preview_space(port, 600, &connectors);
    let (_root, a, b) = tokio::task::block_in_place(|| {
        oots_support::start_full_via(&register, "", &b_extra, None, None)
    });
    let driver = start_driver();
    let tls_cert = repo().join("certs/varti-b/tls.cert.pem");

    for version in EDM_VERSIONS {
        let held_before = held_requests(&b);
        // The procedure's two requests, one per provider, each answered PreviewRequired.
        let asked: Vec<(String, String, Value)> = tokio::task::block_in_place(|| {
            [P1, P2]
                .iter()
                .map(|p| ask_until_preview(&a, &b, &request("EV-PREVIEW", p, version, true)))
                .collect()
        });
        assert_ne!(asked[0].1, asked[1].1, "one link per provider");
        assert_ne!(asked[0].2["conversation_id"], asked[1].2["conversation_id"]);
        assert_eq!(
            preview_files(&b.dir),
            2,
            "{version}: one preview per provider"
        );
        tokio::task::block_in_place(|| {
            for (id, _, _) in &asked {
                return_from_preview(&a, id, version);
            }
            eventually(&a, &b, "b holds both second requests", || {
                held_requests(&b) == held_before + 2
            });
        });
        // The citizen approves at each provider, in a browser of its own each time.
        for (_, link, _) in &asked {
            let c = browser_trusting(&driver, Some(&tls_cert)).await;
            log_in(&c, link, "Ida").await;
            submit(&c, "#approve", "#message").await;
            c.close().await.unwrap();
        }
        for ((id, _, _), expected) in asked.iter().zip([pdf(), pdf_b()]) {
            let v = tokio::task::block_in_place(|| settled(&a, &b, id, Duration::from_secs(60)));
            assert_eq!(v["state"], "answered", "{version}: {v:#}");
            let evidences = v["evidences"].as_array().unwrap();
            assert_eq!(evidences.len(), 1, "{version}: {v:#}");
            let file = a.api("GET", evidences[0]["href"].as_str().unwrap(), None, b"");
            assert_eq!(file.status, 200, "{}", file.body);
            assert!(
                file.bytes == expected,
                "{version}: the evidence of the wrong provider"
            );
        }
        assert_eq!(preview_files(&b.dir), 0, "{version}: previews left at b");
    }
    // Each provider's register was asked once per procedure, for the EDM request in that
    // procedure's version: the second requests were answered from the held evidence.
    assert_eq!(versions_called(&register, "/reg-a"), EDM_VERSIONS);
    assert_eq!(versions_called(&register, "/reg-b"), EDM_VERSIONS);
}

/// TC09: the citizen does not decide before the link expires. The provider answers the
/// held second request with EDM:ERR:0005 (as the TC09 sample's second response), the
/// portal sees that error, the link shows it expired, and the evidence is gone at b. The
/// EDM 1.0 and 2.0 procedures run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc09_expired_preview_is_answered_with_timeout_through_two_gateways() {
    let register = Register::start();
    let port = free_port();
    let connectors = format!(
        "[[oots.connectors]]\nevidence_type = \"EV-PREVIEW\"\nurl = \"{}\"\npreview = true\n",
        register.url("/ok")
    );
    // Links live 6 s: long enough for the second request to reach b first (asserted
    // below), short enough for a quick test.
    let b_extra = preview_space(port, 6, &connectors);
    let (_root, a, b) = tokio::task::block_in_place(|| {
        oots_support::start_full_via(&register, "", &b_extra, None, None)
    });
    let driver = start_driver();
    let tls_cert = repo().join("certs/varti-b/tls.cert.pem");

    let asked: Vec<(String, String, Value)> = tokio::task::block_in_place(|| {
        let asked: Vec<_> = EDM_VERSIONS
            .iter()
            .map(|v| ask_until_preview(&a, &b, &request("EV-PREVIEW", P1, v, true)))
            .collect();
        for ((id, _, _), version) in asked.iter().zip(EDM_VERSIONS) {
            return_from_preview(&a, id, version);
        }
        // Both second requests are held at b before their links expire: the timeout
        // below is the preview's, not a refused late request.
        eventually(&a, &b, "b holds both second requests", || {
            held_requests(&b) == 2
        });
        asked
    });
    for ((id, _, _), version) in asked.iter().zip(EDM_VERSIONS) {
        let v = tokio::task::block_in_place(|| settled(&a, &b, id, Duration::from_secs(60)));
        expect_error(&v, "EDM:ERR:0005", "TimeoutExceptionType");
        assert!(
            v["evidences"].as_array().unwrap().is_empty(),
            "{version}: {v:#}"
        );
        let detail = v["error"]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("before the link expired"),
            "{version}: {v:#}"
        );
        assert_eq!(get_request(&a, id)["state"], v["state"]);
    }
    // The citizen comes too late: the link says it expired, and nothing is left at b.
    let c = browser_trusting(&driver, Some(&tls_cert)).await;
    c.goto(&asked[0].1).await.unwrap();
    assert_eq!(text_of(&c, "h1").await, "This link has expired");
    c.close().await.unwrap();
    assert_eq!(preview_files(&b.dir), 0);
    // Asked once per procedure, in its EDM version.
    let mut called = versions_called(&register, "/ok");
    called.sort();
    assert_eq!(called, EDM_VERSIONS, "asked once per procedure");
}

/// A listener that records the first bytes of every connection, in order: a fetch from
/// the provider or the browser shows up as one.
fn fetch_listener() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let mut buf = [0u8; 128];
            let n = conn.read(&mut buf).unwrap_or(0);
            record
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    (port, seen)
}

/// What reached the listener before a sentinel connection made now. It takes connections
/// one by one in order, so once it has the sentinel every earlier attempt is recorded.
fn fetched_before_sentinel(port: u16, seen: &Mutex<Vec<String>>) -> Vec<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"sentinel").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = seen.lock().unwrap().clone();
        if now.iter().any(|s| s == "sentinel") {
            return now.into_iter().filter(|s| s != "sentinel").collect();
        }
        assert!(
            Instant::now() < deadline,
            "the listener never saw the sentinel"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// TC10: XML evidence with the register's stylesheet, shown transformed in the preview
/// space (EDM 1.0 and 2.0), the original XML available; then a hostile stylesheet that
/// makes nothing fetch anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc10_xml_evidence_transformed_in_headless_chromium_and_a_hostile_stylesheet_fetches_nothing(
) {
    let register = Register::start();
    let (trap, seen) = fetch_listener();
    let dir = tempfile::tempdir().unwrap();
    let hostile = dir.path().join("hostile.xsl");
    let trap_url = format!("http://127.0.0.1:{trap}");
    std::fs::write(
        &hostile,
        evidence_xsl(&format!(
            r#"<p id="stolen"><xsl:value-of select="document('{trap_url}/document')"/></p>
<img id="pixel" src="{trap_url}/img"/><link rel="stylesheet" href="{trap_url}/css"/>
<script src="{trap_url}/js"></script><p style="background: url({trap_url}/bg)">styled</p>
<meta http-equiv="refresh" content="0;url={trap_url}/refresh"/><a id="away" href="{trap_url}/link">away</a>"#
        )),
    )
    .unwrap();
    let port = free_port();
    let connectors = format!(
        "[[oots.connectors]]\nevidence_type = \"EV-XML\"\nurl = \"{}\"\npreview = true\n\
         [[oots.connectors]]\nevidence_type = \"EV-XML-HOSTILE\"\nurl = \"{}\"\npreview = true\nstylesheet = \"{}\"\n",
        register.url("/xml-xsl"),
        register.url("/xml"),
        hostile.display()
    );
    let b_extra = preview_space(port, 600, &connectors);
    let (_root, a, b) = tokio::task::block_in_place(|| {
        oots_support::start_full_via(&register, "", &b_extra, None, None)
    });
    let driver = start_driver();
    let tls_cert = repo().join("certs/varti-b/tls.cert.pem");

    for version in EDM_VERSIONS {
        let (id, link, _) = tokio::task::block_in_place(|| {
            let asked = ask_until_preview(&a, &b, &request("EV-XML", P1, version, true));
            return_from_preview(&a, &asked.0, version);
            asked
        });
        let c = browser_trusting(&driver, Some(&tls_cert)).await;
        log_in(&c, &link, "Ida").await;
        // The transformed evidence, in a frame that may run nothing.
        let frame = wait_for(&c, "iframe#evidence-0.transformed").await;
        assert_eq!(frame.attr("sandbox").await.unwrap().as_deref(), Some(""));
        frame.enter_frame().await.unwrap();
        assert_eq!(text_of(&c, "#heading").await, "Birth record");
        assert_eq!(text_of(&c, "#child").await, "Child: Ida Jensen");
        assert_eq!(text_of(&c, "#born").await, "Born: 1990-01-01 in Rīga");
        c.enter_parent_frame().await.unwrap();
        // The original XML to download, and as it is.
        let download = wait_for(&c, "#evidence-0-xml").await;
        let href = download.attr("href").await.unwrap().unwrap_or_default();
        assert!(href.ends_with("/evidence/0?download=1"), "{href}");
        assert!(download.attr("download").await.unwrap().is_some());
        let raw = href.trim_end_matches("?download=1").to_owned();
        c.goto(&raw).await.unwrap();
        let source = c.source().await.unwrap();
        assert!(
            source.contains("Ida Jensen") && source.contains("BirthRecord"),
            "{source}"
        );
        // Back to the page, and share.
        c.goto(&link).await.unwrap();
        submit(&c, "#approve", "#message").await;
        c.close().await.unwrap();
        let v = tokio::task::block_in_place(|| settled(&a, &b, &id, Duration::from_secs(60)));
        assert_eq!(v["state"], "answered", "{version}: {v:#}");
        let evidences = v["evidences"].as_array().unwrap();
        assert_eq!(
            evidences.len(),
            1,
            "{version}: the stylesheet is no evidence: {v:#}"
        );
        assert_eq!(evidences[0]["mime_type"], "application/xml");
        let file = a.api("GET", evidences[0]["href"].as_str().unwrap(), None, b"");
        assert_eq!(file.bytes, evidence_xml().as_bytes(), "{version}");
        assert_eq!(
            preview_files(&b.dir),
            0,
            "{version}: the transformed copy is gone too"
        );
    }
    let mut called = versions_called(&register, "/xml-xsl");
    called.sort();
    assert_eq!(called, EDM_VERSIONS);

    // The hostile stylesheet (configured for EV-XML-HOSTILE): the page still shows what it
    // renders, and neither the provider transforming nor the browser showing it fetched
    // anything from the listener.
    let (id, link, _) = tokio::task::block_in_place(|| {
        let asked = ask_until_preview(
            &a,
            &b,
            &request("EV-XML-HOSTILE", P1, "oots-edm:v2.0", true),
        );
        return_from_preview(&a, &asked.0, "oots-edm:v2.0");
        asked
    });
    let c = browser_trusting(&driver, Some(&tls_cert)).await;
    log_in(&c, &link, "Ida").await;
    let b_log = b.served.log_text();
    assert!(
        !b_log.contains("stylesheet failed"),
        "the hostile stylesheet did not render: {b_log}"
    );
    let frame = wait_for(&c, "iframe#evidence-0.transformed").await;
    frame.enter_frame().await.unwrap();
    assert_eq!(text_of(&c, "#child").await, "Child: Ida Jensen");
    assert_eq!(text_of(&c, "#stolen").await, "");
    let page = c.source().await.unwrap();
    assert!(
        !page.contains(&trap_url),
        "a reference to the listener survived: {page}"
    );
    c.enter_parent_frame().await.unwrap();
    let fetched = tokio::task::block_in_place(|| fetched_before_sentinel(trap, &seen));
    assert!(fetched.is_empty(), "fetched from the listener: {fetched:?}");
    submit(&c, "#cancel", "#message").await;
    c.close().await.unwrap();
    let v = tokio::task::block_in_place(|| settled(&a, &b, &id, Duration::from_secs(60)));
    assert_eq!(v["state"], "answered", "{v:#}");
    assert!(v["evidences"].as_array().unwrap().is_empty(), "{v:#}");
}
