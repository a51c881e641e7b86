//! `varti message open` and `varti message seal` through the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectKeyIdentifier;
use openssl::x509::{X509NameBuilder, X509};

fn varti(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(args)
        .output()
        .expect("run varti");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pyas4_request_opens_to_the_delivered_part_and_its_receipt_matches() {
    let Some(v) = common::vectors() else { return };
    let d = v.join("pyas4/oneway-1");
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, err) = varti(&[
        "message",
        "open",
        s(&d.join("request.http")),
        "--key",
        s(&d.join("receiver.key.pem")),
        "--cert",
        s(&d.join("receiver.cert.pem")),
        "--trust",
        s(&d.join("sender.cert.pem")),
        "--out",
        s(out.path()),
        "--json",
    ]);
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
    let file = r["payloads"][0]["file"].as_str().unwrap();
    assert_eq!(
        std::fs::read(file).unwrap(),
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
    let (code, stdout, _) = varti(&[
        "message",
        "open",
        s(&d.join("request.http")),
        "--key",
        s(&d.join("receiver.key.pem")),
        "--cert",
        s(&d.join("receiver.cert.pem")),
        "--trust",
        s(&d.join("receiver.cert.pem")),
        "--out",
        s(out.path()),
    ]);
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

fn self_signed(key: &PKey<Private>, cn: &str, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(100, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    let signer = issuer.map(|(_, k)| k).unwrap_or(key);
    let md = if signer.id() == openssl::pkey::Id::ED25519 {
        MessageDigest::null()
    } else {
        MessageDigest::sha256()
    };
    b.sign(signer, md).unwrap();
    b.build()
}

/// Writes sign key/cert and encryption key/cert PEMs for a profile; returns their paths.
fn party(dir: &Path, profile: &str, who: &str) -> [PathBuf; 4] {
    let p256 = || {
        PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap()
    };
    let (sk, ek) = match profile {
        "as4-2.0-eddsa" => (
            PKey::generate_ed25519().unwrap(),
            PKey::generate_x25519().unwrap(),
        ),
        "as4-2.0-ecdsa" => (p256(), p256()),
        _ => {
            let k = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            (k.clone(), k)
        }
    };
    let sc = self_signed(&sk, who, None);
    let ec = self_signed(&ek, &format!("{who}-enc"), Some((&sc, &sk)));
    let paths = ["sign.key", "sign.crt", "enc.key", "enc.crt"]
        .map(|n| dir.join(format!("{who}-{profile}-{n}.pem")));
    std::fs::write(&paths[0], sk.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&paths[1], sc.to_pem().unwrap()).unwrap();
    std::fs::write(&paths[2], ek.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(&paths[3], ec.to_pem().unwrap()).unwrap();
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
            let delivered = tmp.path().join(format!("out-{profile}-{token}"));
            let (code, out, err) = varti(&[
                "message",
                "open",
                s(&msg),
                "--key",
                s(&bob[2]),
                "--cert",
                s(&bob[3]),
                "--trust",
                s(&alice[1]),
                "--out",
                s(&delivered),
                "--json",
            ]);
            assert_eq!(code, 0, "{profile} {token}: {out}{err}");
            let r: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(r["payloads"][0]["mime_type"], "application/xml");
            assert_eq!(
                std::fs::read(r["payloads"][0]["file"].as_str().unwrap()).unwrap(),
                std::fs::read(&payload).unwrap()
            );
            assert_eq!(
                std::fs::read(r["payloads"][1]["file"].as_str().unwrap()).unwrap(),
                std::fs::read(&bin).unwrap()
            );
            // Someone else's trust: refused.
            let (code, out, _) = varti(&[
                "message",
                "open",
                s(&msg),
                "--key",
                s(&bob[2]),
                "--cert",
                s(&bob[3]),
                "--trust",
                s(&bob[1]),
            ]);
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
    let open = |msg: &Path| {
        varti(&[
            "message",
            "open",
            s(msg),
            "--key",
            s(&certs.join("varti-b/enc.key.pem")),
            "--cert",
            s(&certs.join("varti-b/enc.cert.pem")),
            "--trust",
            s(&certs.join("ca.cert.pem")),
            "--out",
            s(&tmp
                .path()
                .join(msg.file_name().unwrap())
                .with_extension("out")),
            "--json",
        ])
    };

    // The ebMS test leg: no flags beyond key, output and payload.
    let msg = tmp.path().join("test.http");
    let (code, out, err) = varti(&[
        "message",
        "seal",
        "--pmodes",
        s(&pmodes),
        "--leg",
        "test/test",
        "--key",
        s(&a_key),
        "--out",
        s(&msg),
        "--json",
        s(&edm),
    ]);
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
    assert_eq!(
        std::fs::read(r["payloads"][0]["file"].as_str().unwrap()).unwrap(),
        std::fs::read(&edm).unwrap()
    );

    // The OOTS request leg requires the four-corner properties.
    let oots = tmp.path().join("oots.http");
    let seal_oots = |extra: &[&str]| {
        let mut a = vec![
            "message",
            "seal",
            "--pmodes",
            s(&pmodes),
            "--leg",
            "evidence-exchange/request",
            "--key",
            s(&a_key),
            "--out",
            s(&oots),
            "--json",
        ];
        a.extend_from_slice(extra);
        a.extend([s(&edm), s(&evidence)]);
        varti(&a)
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
    let (code, _, err) = varti(&[
        "message",
        "seal",
        "--pmodes",
        s(&pmodes),
        "--leg",
        "test/nope",
        "--key",
        s(&a_key),
        "--out",
        s(&tmp.path().join("x.http")),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no leg 'test/nope'") && err.contains("evidence-exchange/request"),
        "{err}"
    );
}
