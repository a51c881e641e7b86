//! The operations console in a real headless Chromium (driven through chromedriver),
//! served over HTTPS on its own listener by a real `varti serve`: each role logs in with
//! the form; the search finds a message by partner and time range; the message page
//! opens; the operator downloads its payload (a viewer is refused) and retries it; the
//! audit page shows it all. Screenshots of the dashboard and a message page are written
//! to docs/console/ (shown in docs/console.md).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/deps` installs them).

mod chromium_support;
mod console_support;
mod serve_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chromium_support::{start_driver, text_of, wait_for, Driver, CHROMIUM};
use console_support::{enc, parse_answer, start, PASSWORD};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A fresh browser trusting the node's TLS key, downloading into `downloads`.
async fn browser(driver: &Driver, downloads: &Path) -> Client {
    use base64::Engine;
    let pem = std::fs::read(serve_support::repo().join("certs/varti-a/tls.cert.pem")).unwrap();
    let x509 = openssl::x509::X509::from_pem(&pem).unwrap();
    let spki = x509.public_key().unwrap().public_key_to_der().unwrap();
    let hash = base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(&spki));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--lang=en-US", "--window-size=1280,1000",
                     format!("--ignore-certificate-errors-spki-list={hash}")],
            "prefs": {
                "download.default_directory": downloads.to_str().unwrap(),
                "download.prompt_for_download": false,
            },
        }),
    );
    ClientBuilder::native()
        .capabilities(caps)
        .connect(driver.url())
        .await
        .expect("chromedriver starts a headless Chromium")
}

async fn log_in(c: &Client, base: &str, user: &str) {
    c.goto(&format!("{base}/console/")).await.unwrap();
    wait_for(c, "#login").await;
    c.find(Locator::Css("#user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    c.find(Locator::Css("#login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let page = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#who, #error, #login-error"))
        .await
        .unwrap();
    if page.attr("id").await.unwrap().as_deref() != Some("who") {
        panic!("login as {user} failed: {}", c.source().await.unwrap());
    }
    let who = text_of(c, "#who").await;
    assert!(who.starts_with(user), "{who}");
}

fn docs_dir() -> PathBuf {
    serve_support::repo().join("docs/console")
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::create_dir_all(docs_dir()).unwrap();
    std::fs::write(docs_dir().join(name), png).unwrap();
}

/// `GET /console/` over TLS, read raw: (status, head).
fn tls_get(addr: std::net::SocketAddr) -> (u16, String) {
    use std::io::{Read, Write};
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = b.build().connect("localhost", tcp).unwrap();
    tls.write_all(b"GET /console/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let a = parse_answer(&raw);
    (a.status, a.head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_in_chromium_search_open_download_retry_audit() {
    let port = varti::pair::free_port().unwrap();
    let node = tokio::task::spawn_blocking(move || {
        start(&format!(
            "[console]\nlisten = \"127.0.0.1:{port}\"\ntls = true\n"
        ))
    })
    .await
    .unwrap();
    assert_ne!(node.console, node.backend, "its own listener");
    let console = node.console;
    let (status, head) = tokio::task::spawn_blocking(move || tls_get(console))
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age="),
        "HSTS over TLS: {head}"
    );
    let base = format!("https://localhost:{}", node.console.port());
    let id = node.waiting.clone();
    let message_path = format!("/console/messages/{}", enc(&id));
    let driver = start_driver();
    let downloads = tempfile::tempdir().unwrap();

    // The viewer: searches by partner and time range, opens the message, may not download.
    let c = browser(&driver, downloads.path()).await;
    log_in(&c, &base, "viewer").await;
    c.goto(&format!("{base}/console/messages")).await.unwrap();
    c.find(Locator::Css("#partner"))
        .await
        .unwrap()
        .send_keys("varti-b")
        .await
        .unwrap();
    c.find(Locator::Css("#search button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&c, &format!("a[href='{message_path}']")).await;
    let now = time::OffsetDateTime::now_utc();
    let minute = |t: time::OffsetDateTime| {
        format!(
            "{:04}-{:02}-{:02}T{:02}%3A{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute()
        )
    };
    let range = |from: time::OffsetDateTime, to: time::OffsetDateTime| {
        format!(
            "{base}/console/messages?partner=varti-b&since={}&until={}",
            minute(from),
            minute(to)
        )
    };
    c.goto(&range(
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
    ))
    .await
    .unwrap();
    let link = wait_for(&c, &format!("a[href='{message_path}']")).await;
    c.goto(&range(
        now - time::Duration::hours(3),
        now - time::Duration::hours(2),
    ))
    .await
    .unwrap();
    wait_for(&c, "p.empty").await;
    c.back().await.unwrap();
    let _ = link;
    let link = wait_for(&c, &format!("a[href='{message_path}']")).await;
    link.click().await.unwrap();
    assert_eq!(text_of(&c, "#message-id").await, id);
    assert!(
        c.find(Locator::Css("a.download")).await.is_err(),
        "a viewer gets no download link"
    );
    c.goto(&format!("{base}{message_path}/payloads/0"))
        .await
        .unwrap();
    assert!(text_of(&c, "#error").await.contains("viewer"), "refused");
    c.close().await.unwrap();

    // The operator: dashboard, the message page (screenshots), download, retry.
    let c = browser(&driver, downloads.path()).await;
    log_in(&c, &base, "operator").await;
    wait_for(&c, "#chart").await;
    screenshot(&c, "dashboard.png").await;
    c.goto(&format!("{base}{message_path}")).await.unwrap();
    wait_for(&c, "#do-retry").await;
    screenshot(&c, "message.png").await;
    c.find(Locator::Css("a.download"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let start_wait = Instant::now();
    let downloaded = loop {
        // Chromium reserves the final name with an empty file while the bytes still go to
        // a `.crdownload` beside it: the download is complete once no such file is left.
        let files: Vec<PathBuf> = std::fs::read_dir(downloads.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let in_progress = files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".crdownload"));
        if let (false, Some(p)) = (in_progress, files.first()) {
            break std::fs::read_to_string(p).unwrap();
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "no download arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(downloaded, "hello from the console test");
    c.find(Locator::Css("#do-retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(text_of(&c, "#done").await.contains("retry"));
    let m = {
        let id = id.clone();
        let backend = node.backend;
        tokio::task::spawn_blocking(move || api_message_at(backend, &id))
            .await
            .unwrap()
    };
    assert!(
        m["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"] == "retry_now"),
        "{m:#}"
    );
    c.close().await.unwrap();

    // The admin: the audit page shows the logins and the acts.
    let c = browser(&driver, downloads.path()).await;
    log_in(&c, &base, "admin").await;
    c.goto(&format!("{base}/console/audit")).await.unwrap();
    let audit = text_of(&c, "#audit").await;
    for expected in [
        "console:viewer",
        "message.download",
        "console:operator",
        "message.retry",
        "console.login",
    ] {
        assert!(
            audit.contains(expected),
            "the audit page lacks {expected}: {audit}"
        );
    }
    // Latvian on request.
    c.goto(&format!("{base}/console/?lang=lv")).await.unwrap();
    assert_eq!(text_of(&c, "h1").await, "Pārskats");
    c.close().await.unwrap();
    drop(node);
}

fn api_message_at(backend: std::net::SocketAddr, id: &str) -> serde_json::Value {
    let r = console_support::http(
        backend,
        "GET",
        &format!("/api/v1/messages/{}", enc(id)),
        &[(
            "Authorization",
            format!("Bearer {}", console_support::ADMIN_TOKEN),
        )],
        b"",
    );
    r.json()
}
