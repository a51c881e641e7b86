//! Two real `varti serve` processes (varti-a, varti-b) over TLS with the test PKI: the
//! acceptance tests of the running access point.

mod pair_support;
mod serve_support;

use std::process::Command;
use std::time::Duration;

use pair_support::*;

fn varti(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_varti"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

/// `varti ping` proves a partner: the ebMS test service is acknowledged with a signed
/// receipt and never delivered; the EC connectivity test works the same way; a partner
/// that is down makes ping exit 2 with a hint.
#[test]
fn ping_test_service_and_connectivity() {
    let pair = Pair::new();
    let a_dir = pair.layout.a.dir.clone();
    // b is not up yet: cannot run.
    let out = varti(
        &[
            "ping",
            "varti-b",
            "--config",
            "varti.toml",
            "--timeout",
            "10",
        ],
        &a_dir,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint:"));

    let mut b = pair.start("b");
    let out = varti(
        &["ping", "varti-b", "--config", "varti.toml", "--json"],
        &a_dir,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.served.log_text()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["acknowledged"], true);
    assert_eq!(report["non_repudiation"], true);

    let out = varti(
        &[
            "ping",
            "varti-b",
            "--config",
            "varti.toml",
            "--connectivity",
        ],
        &a_dir,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("acknowledged"));

    // An unknown party: no leg, cannot run, and the message says so.
    let out = varti(&["ping", "nobody", "--config", "varti.toml"], &a_dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no PMode leg"));

    assert_eq!(b.served.terminate(Duration::from_secs(15)).code(), Some(0));
    // On b: the test message is recorded (duplicate detection, evidence) under the owner
    // no backend has; the connectivity test is an ordinary message for b's backend.
    let store = varti_store::SledStore::open(b.dir.join("data/store")).unwrap();
    let records = varti_store::Store::list(&store, &varti_store::ListFilter::default())
        .unwrap()
        .records;
    let owners: Vec<&str> = records.iter().map(|r| r.meta.owner.as_str()).collect();
    assert!(owners.contains(&"varti:test-service"), "{owners:?}");
}
