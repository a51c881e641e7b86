//! `varti demo` runs two real access points and every scripted exchange succeeds, the
//! OOTS scene included.

mod chromium_support;
mod common;

use std::process::Command;

#[test]
fn demo_exchanges_messages_and_exits_0() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (Some(vectors), Some(specs)) = (common::vectors(), common::specs()) else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(["demo", "--from"])
        .arg(&repo)
        .arg("--vectors")
        .arg(&vectors)
        .arg("--specs")
        .arg(&specs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for step in [
        "1. ping",
        "2. send",
        "3. varti-b",
        "4a.",
        "4b.",
        "4c.",
        "5.",
        "6. start the common-services stand-in",
        "7a.",
        "7b.",
        "7c.",
        "8. the portal sends the evidence request",
        "9. the portal downloads the evidence",
    ] {
        assert!(stdout.contains(step), "step {step} missing:\n{stdout}");
    }
    assert!(stdout.contains("Demo complete"), "{stdout}");
    // The answer seen by varti-a refers to the question.
    assert!(stdout.contains("demo-conversation-1"), "{stdout}");
    // The OOTS request was answered and its evidence written (the demo itself checks the
    // file is the register's PDF).
    assert!(stdout.contains("\"state\": \"answered\""), "{stdout}");
    assert!(stdout.contains("evidence 0 written to"), "{stdout}");
    // Outside the source directory the demo cannot run, and says why.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_varti"))
        .current_dir(dir.path())
        .arg("demo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
}

/// `varti demo --preview`: the OOTS scene waits at the preview link; a citizen (a real
/// headless Chromium) logs in at the test identity provider and approves; the demo then
/// gets the evidence and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_preview_is_approved_in_a_browser() {
    use std::io::{BufRead, BufReader};
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (Some(vectors), Some(specs)) = (common::vectors(), common::specs()) else {
        return;
    };
    let driver = chromium_support::start_driver();
    let mut child = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(["demo", "--preview", "--from"])
        .arg(&repo)
        .arg("--vectors")
        .arg(&vectors)
        .arg("--specs")
        .arg(&specs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo's output, read on a thread; the link is the line after step 8c's "Open".
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("https://localhost:") {
                let _ = tx.send(line.trim().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let link = tokio::task::block_in_place(|| rx.recv_timeout(std::time::Duration::from_secs(120)));
    let link = match link {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            let out = reader.join().unwrap();
            panic!("the demo printed no preview link:\n{out}");
        }
    };
    let cert = repo.join("certs/varti-b/tls.cert.pem");
    let c = chromium_support::browser_trusting(&driver, Some(&cert)).await;
    chromium_support::log_in(&c, &link, "Camille").await;
    chromium_support::wait_for(&c, "#approve")
        .await
        .click()
        .await
        .unwrap();
    chromium_support::wait_for(&c, "#message").await;
    c.close().await.unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    let out = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    for step in ["8b.", "8c.", "8d.", "9. the portal downloads the evidence"] {
        assert!(out.contains(step), "step {step} missing:\n{out}");
    }
    assert!(out.contains("\"state\": \"preview_required\""), "{out}");
    assert!(out.contains("evidence 0 written to"), "{out}");
}
