//! The preview space in a real headless Chromium (driven through chromedriver): a real
//! `varti serve` with the preview space and its built-in test identity provider, previews
//! opened through the backend API, and a citizen who logs in, sees the evidence and
//! approves (with the keyboard) or cancels; an expired link; the wrong person; a used link
//! opened in a second browser. Names follow the OOTS test events where one fits (TC06
//! preview, TC08 preview rejected, TC09 preview timeout).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/deps` installs them); without
//! them the test fails and says so.

mod chromium_support;
mod serve_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chromium_support::{browser, log_in, preview_files, start_driver, submit, text_of, wait_for};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use serde_json::{json, Value};
use serve_support::{plain_config, spawn_serve, Served};

const TOKEN: &str = "provider-token-1";

struct Node {
    _served: Served,
    backend: SocketAddr,
    dir: tempfile::TempDir,
}

fn start() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = varti::pair::free_port().unwrap();
    let config = plain_config(&format!(
        r#"[server]
listen = "127.0.0.1:0"
[ops]
listen = "127.0.0.1:0"
[[backend.clients]]
name = "provider"
token_sha256 = "{}"
[preview]
enabled = true
evidence_key_file = "{key}"
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[preview.test_idp]
enabled = true
[[preview.test_idp.persons]]
identifier = "LV/LV/010190-11111"
given_name = "Anna"
family_name = "Bērziņa"
birth_date = "1990-01-01"
[[preview.test_idp.persons]]
identifier = "LV/LV/020285-22222"
given_name = "Jānis"
family_name = "Kalniņš"
birth_date = "1985-02-02"
"#,
        varti::pair::token_sha256(TOKEN),
        key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oots_support/preview-evidence.key"
        ),
    ));
    // The config's [backend] table comes from plain_config; clients are appended to it.
    let served = spawn_serve(dir.path(), &config, &["--insecure-http"]);
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ready.json")).unwrap())
            .unwrap();
    assert_eq!(
        ready["preview"].as_str(),
        Some(format!("127.0.0.1:{port}").as_str()),
        "the ready file names the preview listener"
    );
    let backend = ready["backend"].as_str().unwrap().parse().unwrap();
    Node {
        _served: served,
        backend,
        dir,
    }
}

/// A raw HTTP/1.1 exchange with the backend API: (status, body).
fn api(
    node: &Node,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let mut tcp = TcpStream::connect(node.backend).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(body).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[..split])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let value = serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null);
    (status, value)
}

/// A minimal PDF (one empty page).
fn pdf() -> Vec<u8> {
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

const DIPLOMA_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<dip:Diploma xmlns:dip="urn:example:diploma"><dip:Holder>Anna Bērziņa</dip:Holder><dip:Degree>Maģistra grāds</dip:Degree></dip:Diploma>"#;

/// Opens a preview for Anna through the API: (id, url).
fn open_preview(node: &Node, reference: &str, ttl_secs: u64) -> (String, String) {
    let boundary = "preview-test-7f3a";
    let metadata = json!({
        "reference": reference,
        "person": {"identifier": "LV/LV/010190-11111", "given_name": "Anna", "family_name": "Bērziņa", "birth_date": "1990-01-01"},
        "requester": "Ministère de l'Enseignement supérieur (FR)",
        "procedure": "Applying for a study grant",
        "return_url": "https://portal.example.fr/return",
        "ttl_secs": ttl_secs,
        "evidences": [
            {"part": "pdf", "title": "Diploma (PDF)", "media_type": "application/pdf"},
            {"part": "xml", "title": "Diploma (data)", "media_type": "application/xml"}
        ]
    });
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n"
    )
    .into_bytes();
    for (name, bytes) in [("pdf", pdf()), ("xml", DIPLOMA_XML.as_bytes().to_vec())] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let (status, v) = api(
        node,
        "POST",
        "/api/v1/previews",
        Some(&format!("multipart/form-data; boundary={boundary}")),
        &body,
    );
    assert_eq!(status, 201, "open a preview: {v}");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["url"].as_str().unwrap().to_owned(),
    )
}

fn preview_state(node: &Node, id: &str) -> String {
    let (status, v) = api(node, "GET", &format!("/api/v1/previews/{id}"), None, b"");
    assert_eq!(status, 200, "{v}");
    v["state"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_in_headless_chromium_approve_cancel_expired_wrong_person_and_used_link() {
    let node = start();
    let driver = start_driver();

    // TC06 — preview, approved with the keyboard, in Latvian.
    let (id, url) = open_preview(&node, "req-approve", 600);
    assert_eq!(preview_state(&node, &id), "pending");
    let c = browser(&driver).await;
    log_in(&c, &format!("{url}?lang=lv"), "Anna").await;
    wait_for(&c, "#approve").await;
    let html = c.source().await.unwrap();
    assert!(
        html.contains(r#"<html lang="lv">"#),
        "the page is in Latvian"
    );
    assert!(html.contains("Priekšskatiet savu apliecinājumu"));
    assert_eq!(
        text_of(&c, "#requester").await,
        "Ministère de l'Enseignement supérieur (FR)",
        "the page says who asked"
    );
    assert_eq!(
        text_of(&c, "#procedure").await,
        "Applying for a study grant"
    );
    // The PDF is shown inline, the XML as a readable outline.
    let frame = wait_for(&c, "iframe#evidence-0").await;
    assert_eq!(
        frame.attr("title").await.unwrap().as_deref(),
        Some("Diploma (PDF)")
    );
    let outline = text_of(&c, "#evidence-1").await;
    assert!(
        outline.contains("Holder") && outline.contains("Anna Bērziņa"),
        "{outline}"
    );
    assert!(outline.contains("Maģistra grāds"), "{outline}");
    // Buttons have accessible names (their text) and the decision is a labelled group.
    assert_eq!(text_of(&c, "#approve").await, "Kopīgot šo apliecinājumu");
    assert_eq!(text_of(&c, "legend").await, "Jūsu lēmums");

    // The link is bound to this browser: a second browser gets "already used".
    let other = browser(&driver).await;
    other.goto(&url).await.unwrap();
    let used = text_of(&other, "h1").await;
    assert_eq!(used, "Šī saite jau ir izmantota", "in the link's language");
    assert!(
        !other.source().await.unwrap().contains("Diploma"),
        "no evidence shown"
    );
    other.close().await.unwrap();

    // Keyboard only: Tab until the approve button has focus, then Enter.
    // Key presses go to whatever has focus (WebDriver actions), as a keyboard's would.
    let press = |key: char| {
        KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key })
    };
    let mut focused = false;
    for _ in 0..40 {
        c.perform_actions(press('\u{E004}')).await.unwrap();
        let active = c.active_element().await.unwrap();
        if active.attr("id").await.unwrap().as_deref() == Some("approve") {
            c.perform_actions(press('\u{E007}')).await.unwrap();
            focused = true;
            break;
        }
    }
    assert!(focused, "the approve button is reachable with Tab");
    assert_eq!(
        text_of(&c, "#message").await,
        "Paldies. Apliecinājums tiks nosūtīts iestādei, kas to pieprasīja."
    );
    let back = wait_for(&c, "#back").await;
    assert_eq!(
        back.attr("href").await.unwrap().as_deref(),
        Some("https://portal.example.fr/return")
    );
    assert_eq!(preview_state(&node, &id), "approved");
    c.close().await.unwrap();

    // TC08 — preview rejected by the user.
    let (id, url) = open_preview(&node, "req-cancel", 600);
    let c = browser(&driver).await;
    log_in(&c, &url, "Anna").await;
    submit(&c, "#cancel", "#message").await;
    assert_eq!(
        text_of(&c, "#message").await,
        "The request was cancelled. Nothing was sent."
    );
    assert_eq!(preview_state(&node, &id), "cancelled");
    c.close().await.unwrap();

    // The wrong person: refused, no evidence, the preview still pending.
    let (id, url) = open_preview(&node, "req-wrong-person", 600);
    let c = browser(&driver).await;
    log_in(&c, &url, "Jānis").await;
    assert_eq!(text_of(&c, "h1").await, "This preview is for someone else");
    let html = c.source().await.unwrap();
    assert!(
        !html.contains("Diploma") && !html.contains("Holder"),
        "no evidence shown"
    );
    assert_eq!(preview_state(&node, &id), "pending");
    c.close().await.unwrap();

    // TC09 — an expired link.
    // When a link expires is proven on the injected clock (the preview space's unit
    // tests); this real process runs on the system clock, so wait for the API to say so.
    let (id, url) = open_preview(&node, "req-expired", 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while preview_state(&node, &id) != "expired" {
        assert!(
            std::time::Instant::now() < deadline,
            "a 1 s link still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = browser(&driver).await;
    c.goto(&url).await.unwrap();
    assert_eq!(text_of(&c, "h1").await, "This link has expired");
    assert_eq!(preview_state(&node, &id), "expired");
    c.close().await.unwrap();

    // A forged link (right id, wrong secret) shows nothing.
    let forged = format!("{}x", &url[..url.len() - 1]);
    let c = browser(&driver).await;
    c.goto(&forged).await.unwrap();
    assert_eq!(text_of(&c, "h1").await, "This link is not valid");
    c.close().await.unwrap();

    // Evidence does not linger: the decided and expired previews' files are gone; only the
    // wrong-person preview (still pending) keeps its two files.
    assert_eq!(preview_files(node.dir.path()), 2);
}
