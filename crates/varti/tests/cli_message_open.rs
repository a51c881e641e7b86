//! `varti message open` and `varti message seal` through the real binary.

mod common;
// The AS4 crate's test keys and certificates, shared rather than written again.
#[path = "../../as4/tests/support/mod.rs"]
mod as4_support;

use std::path::{Path, PathBuf};

use common::varti;
use varti_as4::security::profile::{AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `varti message open MSG --key KEY --cert CERT --trust TRUST`, then `extra`.
fn open_with(msg: &Path, [key, cert, trust]: [&Path; 3], extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["message", "open", s(msg)];
    args.extend(["--key", s(key), "--cert", s(cert), "--trust", s(trust)]);
    args.extend_from_slice(extra);
    varti(&args)
}

/// The content of the `i`th payload file `open --json` reports in `r`.
fn delivered(r: &serde_json::Value, i: usize) -> Vec<u8> {
    std::fs::read(r["payloads"][i]["file"].as_str().unwrap()).unwrap()
}

#[test]
fn pyas4_request_opens_to_the_delivered_part_and_its_receipt_matches() {
    let Some(v) = common::vectors() else { return };
    let d = v.join("pyas4/oneway-1");
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, err) = open_with(
        &d.join("request.http"),
        [
            &d.join("receiver.key.pem"),
            &d.join("receiver.cert.pem"),
            &d.join("sender.cert.pem"),
        ],
        &["--out", s(out.path()), "--json"],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["signature"]["references"].as_array().unwrap().len(), 3);
    let targets: Vec<&str> = r["signature"]["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["target"].as_str().unwrap())
        .collect();
    assert!(
        targets.contains(&"eb:Messaging") && targets.contains(&"SOAP Body"),
        "{targets:?}"
    );
    assert!(
        targets.iter().any(|t| t.starts_with("attachment cid:")),
        "{targets:?}"
    );
    assert_eq!(
        delivered(&r, 0),
        std::fs::read(d.join("delivered-part-0.bin")).unwrap()
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);

    let (code, stdout, err) = varti(&[
        "message",
        "open",
        s(&d.join("receipt.http")),
        "--trust",
        s(&d.join("receiver.cert.pem")),
        "--for",
        s(&d.join("request.http")),
    ]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("Receipt NRR matches"), "{stdout}");
}

#[test]
fn encrypted_message_without_key_cannot_run_and_wrong_trust_is_refused() {
    let Some(v) = common::vectors() else { return };
    let d = v.join("pyas4/oneway-1");
    let (code, _, err) = varti(&[
        "message",
        "open",
        s(&d.join("request.http")),
        "--trust",
        s(&d.join("sender.cert.pem")),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--key"), "{err}");
    let out = tempfile::tempdir().unwrap();
    let receiver_cert = d.join("receiver.cert.pem");
    let (code, stdout, _) = open_with(
        &d.join("request.http"),
        [&d.join("receiver.key.pem"), &receiver_cert, &receiver_cert],
        &["--out", s(out.path())],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("EBMS:0101"), "{stdout}");
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        0,
        "nothing delivered when refused"
    );
}

#[test]
fn phase4_receipts_verify_at_their_time_only_and_not_when_altered() {
    let Some(v) = common::vectors() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for name in ["governikus.as4in", "helger.as4in"] {
        let path = v.join("phase4/receipts").join(name);
        let (code, stdout, err) = varti(&[
            "message",
            "open",
            s(&path),
            "--trust-embedded",
            "--at",
            "2022-03-08T00:00:00Z",
        ]);
        assert_eq!(code, 0, "{name}: {stdout}{err}");
        let (code, stdout, _) = varti(&["message", "open", s(&path), "--trust-embedded"]);
        assert_eq!(code, 1, "{name}");
        assert!(
            stdout.contains("EBMS:0101") && stdout.contains("expired"),
            "{stdout}"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let pos = bytes.windows(9).position(|w| w == b"@phase4</").unwrap();
        bytes[pos + 2] = b'H';
        let altered = tmp.path().join(name);
        std::fs::write(&altered, bytes).unwrap();
        let (code, stdout, _) = varti(&[
            "message",
            "open",
            s(&altered),
            "--trust-embedded",
            "--at",
            "2022-03-08T00:00:00Z",
        ]);
        assert_eq!(code, 1, "{name}: {stdout}");
        assert!(stdout.contains("EBMS:0101"), "{stdout}");
    }
}

/// Writes sign key/cert and encryption key/cert PEMs for a profile; returns their paths.
fn party(dir: &Path, profile: &str, who: &str) -> [PathBuf; 4] {
    let as4_profile = match profile {
        "as4-2.0-eddsa" => &AS4_2_0_EDDSA,
        "as4-2.0-ecdsa" => &AS4_2_0_ECDSA,
        _ => &AS4_1_15,
    };
    let keys = as4_support::keys(as4_profile, who);
    let paths = ["sign.key", "sign.crt", "enc.key", "enc.crt"]
        .map(|n| dir.join(format!("{who}-{profile}-{n}.pem")));
    let pems = [
        keys.sign_key.private_key_to_pem_pkcs8().unwrap(),
        keys.sign_cert.to_pem().unwrap(),
        keys.enc_key.private_key_to_pem_pkcs8().unwrap(),
        keys.enc_cert.to_pem().unwrap(),
    ];
    for (path, pem) in paths.iter().zip(pems) {
        std::fs::write(path, pem).unwrap();
    }
    paths
}

#[test]
fn seal_then_open_for_every_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let payload = tmp.path().join("invoice.xml");
    std::fs::write(&payload, b"<Invoice>42</Invoice>").unwrap();
    let bin = tmp.path().join("blob.bin");
    std::fs::write(
        &bin,
        (0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    for profile in ["as4-1.15", "as4-2.0-eddsa", "as4-2.0-ecdsa"] {
        let alice = party(tmp.path(), profile, "alice");
        let bob = party(tmp.path(), profile, "bob");
        for token in ["bst", "ski", "issuer-serial"] {
            let msg = tmp.path().join(format!("{profile}-{token}.http"));
            let (code, out, err) = varti(&[
                "message",
                "seal",
                "--from",
                "alice",
                "--to",
                "bob",
                "--service",
                "urn:test",
                "--action",
                "Go",
                "--key",
                s(&alice[0]),
                "--cert",
                s(&alice[1]),
                "--encrypt-to",
                s(&bob[3]),
                "--compress",
                "--profile",
                profile,
                "--token",
                token,
                "--out",
                s(&msg),
                s(&payload),
                s(&bin),
            ]);
            assert_eq!(code, 0, "{profile} {token}: {out}{err}");
            let (code, _, err) = varti(&["message", "inspect", s(&msg)]);
            assert_eq!(code, 0, "inspect: {err}");
            let out_dir = tmp.path().join(format!("out-{profile}-{token}"));
            let (code, out, err) = open_with(
                &msg,
                [&bob[2], &bob[3], &alice[1]],
                &["--out", s(&out_dir), "--json"],
            );
            assert_eq!(code, 0, "{profile} {token}: {out}{err}");
            let r: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(r["payloads"][0]["mime_type"], "application/xml");
            assert_eq!(delivered(&r, 0), std::fs::read(&payload).unwrap());
            assert_eq!(delivered(&r, 1), std::fs::read(&bin).unwrap());
            // Someone else's trust: refused.
            let (code, out, _) = open_with(&msg, [&bob[2], &bob[3], &bob[1]], &[]);
            assert_eq!(code, 1, "{out}");
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `seal --pmodes pmodes --leg …` takes the leg's service, action, parties, security and
/// compression from the shipped PModes, and `open` reads the result back with the
/// receiver's key and the test CA.
#[test]
fn seal_from_a_leg_of_the_shipped_pmodes_then_open() {
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let pmodes = repo.join("pmodes");
    let certs = repo.join("certs");
    let edm = tmp.path().join("request.xml");
    std::fs::write(&edm, b"<query:QueryRequest xmlns:query=\"urn:q\"/>").unwrap();
    let evidence = tmp.path().join("evidence.pdf");
    std::fs::write(&evidence, b"%PDF-1.7 not really").unwrap();
    let a_key = certs.join("varti-a/sign.key.pem");
    let b_enc =
        ["varti-b/enc.key.pem", "varti-b/enc.cert.pem", "ca.cert.pem"].map(|f| certs.join(f));
    let open = |msg: &Path| {
        let out = tmp
            .path()
            .join(msg.file_name().unwrap())
            .with_extension("out");
        open_with(
            msg,
            [&b_enc[0], &b_enc[1], &b_enc[2]],
            &["--out", s(&out), "--json"],
        )
    };
    let seal = |leg: &str, out: &Path, extra: &[&str]| {
        let mut args = vec!["message", "seal", "--pmodes", s(&pmodes), "--leg", leg];
        args.extend(["--key", s(&a_key), "--out", s(out)]);
        args.extend_from_slice(extra);
        varti(&args)
    };

    // The ebMS test leg: no flags beyond key, output and payload.
    let msg = tmp.path().join("test.http");
    let (code, out, err) = seal("test/test", &msg, &["--json", s(&edm)]);
    assert_eq!(code, 0, "{out}{err}");
    let sealed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        sealed["leg"]
            .as_str()
            .unwrap()
            .contains("process 'test' leg 'test'"),
        "{sealed}"
    );
    assert_eq!(sealed["profile"], "eDelivery AS4 1.15", "{sealed}");
    assert_eq!(sealed["encrypted"], true, "the test leg encrypts: {sealed}");
    let (code, out, err) = open(&msg);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let um = &r["header"]["user_message"];
    assert_eq!(
        um["action"],
        "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test"
    );
    assert_eq!(um["from"]["ids"][0]["id"], "varti-a", "{um}");
    assert_eq!(um["to"]["ids"][0]["id"], "varti-b", "{um}");
    assert!(r["encryption"].is_object(), "{r}");
    assert_eq!(delivered(&r, 0), std::fs::read(&edm).unwrap());

    // The OOTS request leg requires the four-corner properties.
    let oots = tmp.path().join("oots.http");
    let seal_oots = |extra: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(extra);
        a.extend([s(&edm), s(&evidence)]);
        seal("evidence-exchange/request", &oots, &a)
    };
    let (code, _, err) = seal_oots(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("originalSender") && err.contains("--property"),
        "{err}"
    );
    assert!(!oots.exists(), "a refused seal wrote a file");
    let (code, out, err) = seal_oots(&[
        "--property",
        "originalSender=urn:c1",
        "--property",
        "finalRecipient=urn:c4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = open(&oots);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let um = &r["header"]["user_message"];
    assert_eq!(um["service"]["value"], "QueryManager");
    assert_eq!(
        um["service"]["type"],
        "urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0"
    );
    assert_eq!(um["action"], "ExecuteQueryRequest");
    assert_eq!(um["from"]["role"], "http://sdg.europa.eu/edelivery/gateway");
    assert_eq!(um["properties"][0]["value"], "urn:c1", "{um}");
    // The payload profile's media type for the EDM part; the evidence by extension.
    assert_eq!(
        r["payloads"][0]["mime_type"], "application/x-ebrs+xml",
        "{r}"
    );
    assert_eq!(r["payloads"][1]["mime_type"], "application/pdf", "{r}");
    assert_eq!(
        r["payloads"][0]["compressed"], true,
        "the leg compresses: {r}"
    );

    // An unknown leg names the ones there are.
    let (code, _, err) = seal("test/nope", &tmp.path().join("x.http"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no leg 'test/nope'") && err.contains("evidence-exchange/request"),
        "{err}"
    );
}
