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

    let connectivity = [
        "ping",
        "varti-b",
        "--config",
        "varti.toml",
        "--connectivity",
    ];
    let out = varti(&connectivity, &a_dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("acknowledged"));
    // The connectivity test reached b's backend, but as test traffic it is apart (issue
    // 14, point 6): not in its list of messages, only with include_test.
    let list = |query: &str| -> Vec<serde_json::Value> {
        let r = b.api("GET", &format!("/api/v1/messages?{query}"), None, b"");
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["messages"].as_array().cloned().unwrap_or_default()
    };
    let connectivity_service = "http://ec.europa.eu/e-delivery/services/connectivity-service";
    assert!(
        !list("")
            .iter()
            .any(|m| m["service"] == connectivity_service),
        "{:#?}",
        list("")
    );
    assert!(
        list("include_test=true")
            .iter()
            .any(|m| m["service"] == connectivity_service),
        "{:#?}",
        list("include_test=true")
    );

    // An unknown party: no leg, cannot run, and the message says so.
    let out = varti(&["ping", "nobody", "--config", "varti.toml"], &a_dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no PMode leg"));
    // Without the connectivity agreement, --connectivity names the file that brings it.
    std::fs::remove_file(pair.layout.root.join("pmodes/connectivity-test.toml")).unwrap();
    let out = varti(&connectivity, &a_dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pmodes/connectivity-test.toml"), "{err}");

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

fn files3() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("doc", "application/xml", b"<doc>one</doc>".repeat(2000)),
        (
            "text",
            "text/plain",
            "two: ĀČĒ ģķļ\n".repeat(5000).into_bytes(),
        ),
        (
            "blob",
            "application/octet-stream",
            (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        ),
    ]
}

fn submit_files(
    node: &Node,
    service: &str,
    action: &str,
    extra: serde_json::Value,
    files: &[(&str, &str, Vec<u8>)],
) -> String {
    let mut meta = serde_json::json!({"to_party": if node.token == "token-a" { "varti-b" } else { "varti-a" }, "service": service, "action": action});
    if let serde_json::Value::Object(m) = extra {
        for (k, v) in m {
            meta[k] = v;
        }
    }
    let borrowed: Vec<(&str, &str, &[u8])> = files
        .iter()
        .map(|(n, m, b)| (*n, *m, b.as_slice()))
        .collect();
    node.submit(meta, &borrowed)
}

/// One-way, signed + encrypted + compressed, three attachments, a fourth that travels
/// larger than memory even compressed and a PDF (left uncompressed): acknowledged on a,
/// delivered once with identical bytes on b. What passes the inline bound and is
/// compressed is kept so where it can be: on a as compressed on upload (and sent as it
/// is), on b as it travelled when its gzip is a spool file of its own; both serve the
/// payload's bytes.
#[test]
fn one_way_with_three_attachments() {
    let pair = Pair::new();
    let mut a = pair.start("a");
    let mut b = pair.start("b");
    let mut files = files3();
    // Hexadecimal digits from xorshift64: about half their size in gzip, 150 KiB.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let digits = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"0123456789abcdef"[(state >> 60) as usize]
        })
        .collect();
    files.push(("digits", "text/plain", digits));
    // A type the leg leaves uncompressed (by default) is stored as it is.
    files.push(("scan", "application/pdf", b"%PDF-1.7 ".repeat(10_000)));
    let id = submit_files(
        &a,
        "urn:varti:test:exchange",
        "Deliver",
        serde_json::json!({}),
        &files,
    );
    let sent = a.wait_state(&id, "acknowledged", Duration::from_secs(30));
    assert!(sent["attempts"].as_u64().unwrap_or(0) >= 1, "{sent}");
    let inbound = b.inbound();
    let got: Vec<_> = inbound
        .iter()
        .filter(|m| m["message_id"] == id.as_str())
        .collect();
    assert_eq!(got.len(), 1, "{inbound:?}");
    for (n, (_, _, bytes)) in files.iter().enumerate() {
        let body = b.payload(&id, n);
        assert_eq!(body.len(), bytes.len(), "payload {n} length");
        assert!(body == *bytes, "payload {n} differs");
        assert!(a.payload(&id, n) == *bytes, "payload {n} differs on a");
    }
    use varti_store::FileEncoding::{Gzip, Plain};
    for (node, kept) in [
        // The XML is inline; the rest was compressed on upload, but the PDF.
        (&mut a, [Plain, Gzip, Gzip, Gzip, Plain]),
        // Only the digits' gzip outgrew memory when it was decrypted.
        (&mut b, [Plain, Plain, Plain, Gzip, Plain]),
    ] {
        assert_eq!(
            node.served.terminate(Duration::from_secs(15)).code(),
            Some(0)
        );
        let store = varti_store::SledStore::open(node.dir.join("data/store")).unwrap();
        let record = varti_store::Store::get(&store, &id).unwrap().unwrap();
        let encodings: Vec<_> = record
            .meta
            .payloads
            .iter()
            .map(|p| p.stored.encoding())
            .collect();
        assert_eq!(encodings, kept, "{}", node.dir.display());
        assert!(record.meta.payloads[0].stored.is_inline());
    }
}

/// The receipt of the first attempt is lost on the way back: a retries, b recognises the
/// duplicate, answers with the original receipt and delivers once.
#[test]
fn duplicate_resend_is_delivered_once_with_the_same_receipt() {
    // a's PModes name the proxy as b's endpoint; the proxy forwards to b's real port.
    let proxy_target_port = free_port();
    let proxy = LossyProxy::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], proxy_target_port)),
        100_000,
    );
    let mut pair = Pair::with_b_endpoint(Some(proxy.port));
    pair.move_b_to(proxy_target_port);
    let mut a = pair.start("a");
    let mut b = pair.start("b");
    let id = submit_files(
        &a,
        "urn:varti:test:exchange",
        "Deliver",
        serde_json::json!({}),
        &incompressible(200_000),
    );
    // b stored the message (and answered): now its receipt is lost on the way back.
    let stored_by_b = std::time::Instant::now();
    while !b.inbound().iter().any(|m| m["message_id"] == id.as_str()) {
        assert!(
            stored_by_b.elapsed() < Duration::from_secs(30),
            "b never stored the first attempt; b's log:\n{}",
            b.served.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proxy.lose_answer(), "a never connected through the proxy");
    let sent = a.wait_state(&id, "acknowledged", Duration::from_secs(60));
    assert!(
        sent["attempts"].as_u64().unwrap() >= 2,
        "the first receipt was not lost: {sent}"
    );
    let got: Vec<_> = b
        .inbound()
        .into_iter()
        .filter(|m| m["message_id"] == id.as_str())
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(a.served.terminate(Duration::from_secs(15)).code(), Some(0));
    assert_eq!(b.served.terminate(Duration::from_secs(15)).code(), Some(0));
    use varti_store::Store;
    let a_store = varti_store::SledStore::open(a.dir.join("data/store")).unwrap();
    let b_store = varti_store::SledStore::open(b.dir.join("data/store")).unwrap();
    let a_rec = a_store.get(&id).unwrap().unwrap();
    let b_rec = b_store.get(&id).unwrap().unwrap();
    assert!(
        b_rec.duplicates >= 1,
        "b did not see the resend as a duplicate"
    );
    assert_eq!(
        a_rec.receipt, b_rec.receipt,
        "a must hold b's original receipt"
    );
}

/// CP_TA27/28: the CharacterSet a producer gives each part travels as its PartProperty and
/// reaches the consumer.
#[test]
fn character_sets_given_by_the_producer_reach_the_consumer() {
    let pair = Pair::new();
    let a = pair.start("a");
    let b = pair.start("b");
    let utf16: Vec<u8> = "<doc>Rīga</doc>"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    let files = vec![
        ("wide", "text/xml", utf16),
        ("narrow", "text/xml", "<doc>Rīga</doc>".as_bytes().to_vec()),
    ];
    let specs = serde_json::json!({"payloads": [
        {"part": "wide", "mime_type": "text/xml", "properties": [{"name": "CharacterSet", "value": "UTF-16"}]},
        {"part": "narrow", "mime_type": "text/xml", "properties": [{"name": "CharacterSet", "value": "UTF-8"}]},
    ]});
    let id = submit_files(&a, "urn:varti:test:exchange", "Deliver", specs, &files);
    a.wait_state(&id, "acknowledged", Duration::from_secs(30));
    let got = b.message(&id).expect("b received the message");
    let sets: Vec<&str> = got["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["properties"]
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"] == "CharacterSet")
                .and_then(|q| q["value"].as_str())
                .unwrap_or("none")
        })
        .collect();
    assert_eq!(sets, ["UTF-16", "UTF-8"], "{got:#}");
    for (n, (_, _, bytes)) in files.iter().enumerate() {
        assert!(b.payload(&id, n) == *bytes, "payload {n} differs");
    }
}

/// b is down when a sends; a retries and b, once up, gets the message once.
#[test]
fn receiver_down_then_up() {
    let pair = Pair::new();
    let a = pair.start("a");
    let id = submit_files(
        &a,
        "urn:varti:test:exchange",
        "Deliver",
        serde_json::json!({}),
        &files3()[..1],
    );
    let waiting = a.wait_state(&id, "waiting_for_retry", Duration::from_secs(10));
    assert!(
        waiting["last_error"].as_str().unwrap_or("").len() > 5,
        "{waiting}"
    );
    let b = pair.start("b");
    a.wait_state(&id, "acknowledged", Duration::from_secs(30));
    let got: Vec<_> = b
        .inbound()
        .into_iter()
        .filter(|m| m["message_id"] == id.as_str())
        .collect();
    assert_eq!(got.len(), 1);
}

/// b never comes up: after the leg's retries the message fails with EBMS:0301.
#[test]
fn receiver_never_up_fails_with_missing_receipt() {
    let pair = Pair::new();
    let a = pair.start("a");
    let id = submit_files(
        &a,
        "urn:varti:test:exchange",
        "Deliver",
        serde_json::json!({}),
        &files3()[..1],
    );
    let failed = a.wait_state(&id, "failed", Duration::from_secs(40));
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("EBMS:0301"), "{failed}");
    assert_eq!(
        failed["attempts"], 4,
        "first attempt plus three retries: {failed}"
    );
}

/// Two-way push-and-push: b's backend answers a's question with RefToMessageId and the
/// same ConversationId; a's backend receives the answer correlated to its question.
#[test]
fn two_way_push_and_push() {
    let pair = Pair::new();
    let a = pair.start("a");
    let b = pair.start("b");
    let files = vec![("q", "application/xml", b"<question/>".to_vec())];
    let ask = submit_files(
        &a,
        "urn:varti:test:question",
        "Ask",
        serde_json::json!({"conversation_id": "conv-42"}),
        &files,
    );
    a.wait_state(&ask, "acknowledged", Duration::from_secs(30));
    let question = b
        .inbound()
        .into_iter()
        .find(|m| m["message_id"] == ask.as_str())
        .expect("b received the question");
    assert_eq!(question["conversation_id"], "conv-42");
    let files = vec![("a", "application/xml", b"<answer/>".to_vec())];
    let answer = submit_files(
        &b,
        "urn:varti:test:question",
        "Answer",
        serde_json::json!({"conversation_id": "conv-42", "ref_to_message_id": ask}),
        &files,
    );
    b.wait_state(&answer, "acknowledged", Duration::from_secs(30));
    let got = a
        .inbound()
        .into_iter()
        .find(|m| m["message_id"] == answer.as_str())
        .expect("a received the answer");
    assert_eq!(got["ref_to_message_id"], ask.as_str());
    assert_eq!(got["conversation_id"], "conv-42");
    assert_eq!(got["action"], "Answer");
}

/// `n` bytes that gzip cannot shrink (so the request is larger than the TLS handshake).
fn incompressible(n: usize) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![(
        "random",
        "application/octet-stream",
        noise(n, 0x2545_f491_4f6c_dd1d),
    )]
}
