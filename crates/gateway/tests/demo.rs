//! `varti demo` runs two real access points and every scripted exchange succeeds, the
//! OOTS scene included.

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
