//! A real headless Chromium driven through chromedriver (fantoccini), for the tests of
//! the preview space. Needs Debian's `chromium` and `chromium-driver` (`.ci/deps` installs
//! them); without them a test fails and says so.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port; killed on drop.
pub struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// chromedriver's address.
    pub fn url(&self) -> &str {
        &self.url
    }
}

pub fn start_driver() -> Driver {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: the preview test needs a real headless Chromium; install Debian's chromium and chromium-driver (.ci/deps does)"
        );
    }
    // A port found free may be taken by another test's process before chromedriver binds
    // it: then chromedriver exits, and whatever answers on the port is not it. So wait for
    // chromedriver's own status answer, and start again on another port if it exited.
    for _ in 0..5 {
        let port = varti::pair::free_port().unwrap();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // exited: the port was taken
            }
            if driver_ready(port) {
                return Driver {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                };
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("chromedriver exited five times (ports taken?)");
}

/// Whether chromedriver answers its `/status` on `port` as ready.
fn driver_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    if tcp
        .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\"ready\":true")
}

/// A fresh browser (its own profile: no cookies).
pub async fn browser(driver: &Driver) -> Client {
    browser_trusting(driver, None).await
}

/// A fresh browser that also trusts the TLS server certificate `cert` (PEM) — exactly
/// that key, by its SPKI hash, as a citizen's browser trusts a public CA's certificate.
pub async fn browser_trusting(driver: &Driver, cert: Option<&Path>) -> Client {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--lang=en-US".into(),
    ];
    if let Some(cert) = cert {
        use base64::Engine;
        let pem = std::fs::read(cert).unwrap();
        let x509 = openssl::x509::X509::from_pem(&pem).unwrap();
        let spki = x509.public_key().unwrap().public_key_to_der().unwrap();
        let hash = base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(&spki));
        args.push(format!("--ignore-certificate-errors-spki-list={hash}"));
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": CHROMIUM, "args": args }),
    );
    ClientBuilder::native()
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("chromedriver starts a headless Chromium")
}

/// How long a test waits for an element to appear.
const WAIT: Duration = Duration::from_secs(20);

/// The first `css` element, once the page has one; fails with where the browser is and
/// what it shows, so that a failure on CI says which page came instead.
pub async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
        Ok(element) => element,
        Err(e) => panic!(
            "no `{css}` on the page within {WAIT:?}: {e}\n{}",
            where_the_browser_is(c).await
        ),
    }
}

/// The browser's URL and the start of the page it shows, for a failure message.
pub async fn where_the_browser_is(c: &Client) -> String {
    let url = match c.current_url().await {
        Ok(url) => url.to_string(),
        Err(e) => format!("(no URL: {e})"),
    };
    let source = match c.source().await {
        Ok(source) => source.chars().take(4000).collect(),
        Err(e) => format!("(no page source: {e})"),
    };
    format!("at {url}, showing:\n{source}")
}

/// Follows `url`, and at the test identity provider logs in as the person whose button
/// names `who`.
pub async fn log_in(c: &Client, url: &str, who: &str) {
    c.goto(url).await.unwrap();
    wait_for(c, "#persons").await;
    let button = c
        .find(Locator::XPath(&format!("//button[contains(., '{who}')]")))
        .await
        .unwrap();
    button.click().await.unwrap();
    // Wait until the browser has left the identity provider's page: what the caller reads
    // next must be the page the login leads to, not this one going away.
    let start = Instant::now();
    while c.find(Locator::Css("#persons")).await.is_ok() {
        assert!(
            start.elapsed() < WAIT,
            "still at the identity provider after choosing {who}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the submit button `button` and waits for the page the form leads to, which has
/// `then`.
///
/// A click on a page that has only just loaded was once lost on CI: chromedriver reported it
/// done, yet 20 s later the browser still showed the form. A person would click again, and so
/// does this (once, and says so): every form it is used for answers a second submission
/// with the same outcome page. The form gone and nothing in its place still fails, with the
/// page the browser shows.
pub async fn submit(c: &Client, button: &str, then: &str) -> fantoccini::elements::Element {
    let clicked = wait_for(c, button).await;
    clicked.click().await.unwrap();
    let first = c
        .wait()
        .at_most(WAIT / 2)
        .for_element(Locator::Css(then))
        .await;
    if let Ok(element) = first {
        return element;
    }
    // Still the same page, form and all (its button is not stale): the click did not submit.
    if clicked.attr("id").await.is_ok() {
        eprintln!(
            "`{button}` was clicked but the form was not submitted; clicking again\n{}",
            where_the_browser_is(c).await
        );
        clicked.click().await.unwrap();
    }
    wait_for(c, then).await
}

/// The text of the first `css` element; read again when the page replaced the element
/// between finding and reading it (a navigation finishing).
pub async fn text_of(c: &Client, css: &str) -> String {
    let start = Instant::now();
    loop {
        match wait_for(c, css).await.text().await {
            Ok(text) => return text,
            Err(e) if e.is_stale_element_reference() && start.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot read `{css}`: {e}"),
        }
    }
}

/// Files left under the preview directory of the node in `dir` (data_dir `data`).
pub fn preview_files(dir: &Path) -> usize {
    fn count(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|it| {
                it.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            count(&p)
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&dir.join("data/preview"))
}
