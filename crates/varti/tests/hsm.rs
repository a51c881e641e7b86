//! Private keys in an HSM (PKCS#11, here SoftHSM2 with the test PKI's keys imported as
//! non-extractable objects, one token per test run): `varti message seal --key pkcs11:…`
//! and `open`, and two real `varti serve` — varti-a on token keys, varti-b on files —
//! exchanging signed and encrypted messages for AS4 1.15 and both AS4 2.0 profiles.
//!
//! SoftHSM2 2.6 has no X25519 (CKK_EC_MONTGOMERY) keys: in the EdDSA profile varti-a's
//! X25519 decryption key stays a file, its Ed25519 signing key is in the token.

mod hsm_support;
mod pair_support;
mod serve_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hsm_support::{repo, token, Token};
use pair_support::{Node, Pair};

/// (profile, signing key file stem, encryption key file stem, whether the encryption key
/// can be in SoftHSM).
const PROFILES: &[(&str, &str, &str, bool)] = &[
    ("as4-1.15", "sign", "enc", true),
    ("as4-2.0-ecdsa", "sign-p256", "enc-p256", true),
    ("as4-2.0-eddsa", "sign-ed25519", "enc-x25519", false),
];

/// Runs varti with the token's environment: (exit code, stdout, stdout + stderr).
fn varti3(args: &[&str], token: &Token) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_varti"))
        .args(args)
        .envs(token.env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = stdout.clone() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), stdout, all)
}

fn varti(args: &[&str], token: &Token) -> (i32, String) {
    let (code, _, all) = varti3(args, token);
    (code, all)
}

fn cert(party: &str, stem: &str) -> String {
    repo()
        .join(format!("certs/{party}/{stem}.cert.pem"))
        .display()
        .to_string()
}

fn file_key(party: &str, stem: &str) -> String {
    repo()
        .join(format!("certs/{party}/{stem}.key.pem"))
        .display()
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Sealed with a token key, opened with the matching certificate; and sealed for a token
/// key, opened (decrypted) with it; for each profile. The keys are non-extractable.
#[test]
fn seal_with_a_token_key_and_open_verifies() {
    let _one_at_a_time = hsm_support::exclusive();
    let t = token();
    let tmp = tempfile::tempdir().unwrap();
    let payload = tmp.path().join("doc.xml");
    std::fs::write(&payload, b"<doc>signed in the HSM</doc>").unwrap();
    let ca = repo().join("certs/ca.cert.pem");
    for &(profile, sign, enc, enc_in_token) in PROFILES {
        // a (token) -> b (files)
        let msg = tmp.path().join(format!("{profile}-ab.http"));
        let key = t.uri(&format!("varti-a/{sign}"));
        let (code, out) = varti(
            &[
                "message",
                "seal",
                "--from",
                "varti-a",
                "--to",
                "varti-b",
                "--service",
                "urn:test",
                "--action",
                "Go",
                "--profile",
                profile,
                "--key",
                &key,
                "--cert",
                &cert("varti-a", sign),
                "--encrypt-to",
                &cert("varti-b", enc),
                "--out",
                s(&msg),
                s(&payload),
            ],
            t,
        );
        assert_eq!(code, 0, "{profile}: {out}");
        // The independent verifier agrees, on a message without attachments (xmlsec1 has
        // neither the SwA attachment transform nor Ed25519 signatures).
        if profile != "as4-2.0-eddsa" {
            let bare = tmp.path().join(format!("{profile}-bare.http"));
            let (code, out) = varti(
                &[
                    "message",
                    "seal",
                    "--from",
                    "varti-a",
                    "--to",
                    "varti-b",
                    "--service",
                    "urn:test",
                    "--action",
                    "Go",
                    "--profile",
                    profile,
                    "--key",
                    &key,
                    "--cert",
                    &cert("varti-a", sign),
                    "--out",
                    s(&bare),
                ],
                t,
            );
            assert_eq!(code, 0, "{profile}: {out}");
            xmlsec1_verifies(&bare, &cert("varti-a", sign));
        }
        let out_dir = tmp.path().join(format!("{profile}-b"));
        let (code, json, out) = varti3(
            &[
                "message",
                "open",
                s(&msg),
                "--key",
                &file_key("varti-b", enc),
                "--cert",
                &cert("varti-b", enc),
                "--trust",
                s(&ca),
                "--out",
                s(&out_dir),
                "--json",
            ],
            t,
        );
        assert_eq!(code, 0, "{profile}: {out}");
        let r: serde_json::Value = serde_json::from_str(&json).unwrap();
        let file = r["payloads"][0]["file"].as_str().unwrap();
        assert_eq!(
            std::fs::read(file).unwrap(),
            std::fs::read(&payload).unwrap()
        );
        // Signed by a's token key, it does not verify against another party's certificate.
        let (code, out) = varti(
            &[
                "message",
                "open",
                s(&msg),
                "--key",
                &file_key("varti-b", enc),
                "--cert",
                &cert("varti-b", enc),
                "--trust",
                &cert("varti-b", sign),
            ],
            t,
        );
        assert_eq!(code, 1, "{profile}: {out}");
        if !enc_in_token {
            continue;
        }
        // b (files) -> a (token decrypts)
        let msg = tmp.path().join(format!("{profile}-ba.http"));
        let (code, out) = varti(
            &[
                "message",
                "seal",
                "--from",
                "varti-b",
                "--to",
                "varti-a",
                "--service",
                "urn:test",
                "--action",
                "Go",
                "--profile",
                profile,
                "--key",
                &file_key("varti-b", sign),
                "--cert",
                &cert("varti-b", sign),
                "--encrypt-to",
                &cert("varti-a", enc),
                "--out",
                s(&msg),
                s(&payload),
            ],
            t,
        );
        assert_eq!(code, 0, "{profile}: {out}");
        let out_dir = tmp.path().join(format!("{profile}-a"));
        let key = t.uri(&format!("varti-a/{enc}"));
        let (code, json, out) = varti3(
            &[
                "message",
                "open",
                s(&msg),
                "--key",
                &key,
                "--cert",
                &cert("varti-a", enc),
                "--trust",
                s(&ca),
                "--out",
                s(&out_dir),
                "--json",
            ],
            t,
        );
        assert_eq!(code, 0, "{profile}: {out}");
        let r: serde_json::Value = serde_json::from_str(&json).unwrap();
        let file = r["payloads"][0]["file"].as_str().unwrap();
        assert_eq!(
            std::fs::read(file).unwrap(),
            std::fs::read(&payload).unwrap()
        );
    }
    // A wrong PIN: a clear error, without the PIN.
    let wrong = t.uri("varti-a/sign").replace(hsm_support::PIN, "97531");
    let (code, out) = varti(
        &[
            "message",
            "seal",
            "--from",
            "varti-a",
            "--to",
            "varti-b",
            "--service",
            "urn:test",
            "--action",
            "Go",
            "--key",
            &wrong,
            "--cert",
            &cert("varti-a", "sign"),
            "--out",
            s(&tmp.path().join("never.http")),
            s(&payload),
        ],
        t,
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("PIN") && out.contains("wrong") && !out.contains("97531"),
        "{out}"
    );
    // Everything above ran on keys the token never gives out.
    assert_eq!(hsm_support::assert_keys_never_leave_the_token(), 8);
}

/// `xmlsec1 --verify` accepts the SOAP envelope of the message dump `msg` with `cert` as
/// the key, and refuses it once eb:Messaging is changed.
fn xmlsec1_verifies(msg: &Path, cert: &str) {
    use varti_as4::message::{dump::read_dump_file, mime::MimeLimits};
    let dump = read_dump_file(msg, &MimeLimits::default()).unwrap();
    let envelope = String::from_utf8(dump.package.root().content.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let verify = |text: &str| {
        let path = dir.path().join("envelope.xml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new("xmlsec1")
            .arg("--verify")
            .args([
                "--id-attr:Id",
                "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/:Messaging",
                "--id-attr:Id",
                "http://www.w3.org/2003/05/soap-envelope:Body",
                "--pubkey-cert-pem",
                cert,
            ])
            .arg(&path)
            .output()
            .expect("xmlsec1 (Debian xmlsec1, see .ci/deps)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = verify(&envelope);
    assert!(ok, "xmlsec1 refused the token-signed message: {err}");
    let changed = envelope.replace("<eb:Action>Go<", "<eb:Action>Gone<");
    assert_ne!(changed, envelope, "no eb:Action to change");
    assert!(
        !verify(&changed).0,
        "xmlsec1 accepted a changed eb:Messaging"
    );
}

/// A pair for `profile`: both parties' PMode certificates and identities switched to the
/// profile's keys; varti-a's signing (and, where SoftHSM can, decryption) key and its TLS
/// key in the token, varti-b's in files.
fn pair_for(t: &Token, profile: &str, sign: &str, enc: &str, enc_in_token: bool) -> Pair {
    let reception = "retry_intervals = [\"1s\", \"2s\", \"2s\"]\nduplicate_detection = true\n";
    let pmodes = varti::pair::settings_toml("default", profile, reception, Some(""))
        + &varti::pair::exchange_toml(
            ["exchange", "question"],
            ["urn:varti:test:exchange", "urn:varti:test:question"],
        );
    let pair = Pair::create(
        ("exchange.toml", pmodes),
        None,
        "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
         [sender]\npoll_interval_ms = 100\nlease_secs = 30\n",
    );
    // The shipped agreements use AS4 1.15: only the parties and this exchange stay.
    for shipped in ["test-service.toml", "connectivity-test.toml", "oots.toml"] {
        std::fs::remove_file(pair.root.path().join("pmodes").join(shipped)).unwrap();
    }
    for party in ["varti-a", "varti-b"] {
        let f = pair.root.path().join(format!("pmodes/{party}.toml"));
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("/sign.cert.pem", &format!("/{sign}.cert.pem"))
            .replace("/enc.cert.pem", &format!("/{enc}.cert.pem"));
        std::fs::write(&f, text).unwrap();
    }
    for (node, party) in [("a", "varti-a"), ("b", "varti-b")] {
        let f = pair.root.path().join(format!("{node}/varti.toml"));
        let mut text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("/sign.key.pem", &format!("/{sign}.key.pem"))
            .replace("/sign.cert.pem", &format!("/{sign}.cert.pem"))
            .replace("/enc.key.pem", &format!("/{enc}.key.pem"))
            .replace("/enc.cert.pem", &format!("/{enc}.cert.pem"));
        if party == "varti-a" {
            text = text.replace(
                &format!("\"../certs/varti-a/{sign}.key.pem\""),
                &format!("\"{}\"", t.uri(&format!("varti-a/{sign}"))),
            );
            if enc_in_token {
                text = text.replace(
                    &format!("\"../certs/varti-a/{enc}.key.pem\""),
                    &format!("\"{}\"", t.uri(&format!("varti-a/{enc}"))),
                );
            }
            // TLS (server, and client certificate towards b) with the token's key too.
            text = text.replace(
                "key = \"../certs/varti-a/tls.key.pem\"",
                &format!("key = \"{}\"", t.uri("varti-a/tls")),
            );
            assert_eq!(
                text.matches("pkcs11:").count(),
                2 + enc_in_token as usize,
                "{text}"
            );
            text += &format!("\n[pkcs11]\nmodule = \"{}\"\n", hsm_support::MODULE);
        }
        std::fs::write(&f, text).unwrap();
    }
    pair
}

fn submit(from: &Node, to: &str, service: &str, action: &str, body: &[u8]) -> String {
    let meta = serde_json::json!({"to_party": to, "service": service, "action": action});
    from.submit(meta, &[("doc", "application/xml", body)])
}

fn received(node: &Node, id: &str) -> bool {
    node.inbound().iter().any(|m| m["message_id"] == id)
}

/// Two `varti serve`, varti-a on token keys (signing, decryption where SoftHSM can, and
/// TLS: its server key and its client certificate key) and varti-b on files, exchange a
/// message each way for AS4 1.15 and both 2.0 profiles: each side verifies the other's
/// signature, decrypts, and verifies the other's signed receipt.
#[test]
fn two_instances_exchange_with_token_keys_for_every_profile() {
    let _one_at_a_time = hsm_support::exclusive();
    let t = token();
    for &(profile, sign, enc, enc_in_token) in PROFILES {
        let started = Instant::now();
        let pair = pair_for(t, profile, sign, enc, enc_in_token);
        let a = pair.start("a");
        let b = pair.start("b");
        let body = format!("<doc profile=\"{profile}\">from the token</doc>").into_bytes();
        let ab = submit(&a, "varti-b", "urn:varti:test:exchange", "Deliver", &body);
        let ba = submit(&b, "varti-a", "urn:varti:test:exchange", "Deliver", &body);
        a.wait_state(&ab, "acknowledged", Duration::from_secs(30));
        b.wait_state(&ba, "acknowledged", Duration::from_secs(30));
        assert!(received(&b, &ab), "{profile}: b did not receive {ab}");
        assert!(received(&a, &ba), "{profile}: a did not receive {ba}");
        assert_eq!(b.payload(&ab, 0), body, "{profile}");
        assert_eq!(a.payload(&ba, 0), body, "{profile}");
        eprintln!("{profile}: {:?}", started.elapsed());
    }
}

/// A wrong PIN stops `varti serve` at start-up with an error that names the PIN and the
/// setting to fix, without showing the PIN.
#[test]
fn a_wrong_pin_is_a_clear_start_up_error() {
    let _one_at_a_time = hsm_support::exclusive();
    let t = token();
    let pair = pair_for(t, "as4-1.15", "sign", "enc", true);
    let f = pair.root.path().join("a/varti.toml");
    let text = std::fs::read_to_string(&f).unwrap().replace(
        &format!("pin-value={}", hsm_support::PIN),
        "pin-value=97531",
    );
    std::fs::write(&f, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_varti"))
        .current_dir(pair.root.path().join("a"))
        .args(["serve", "--config", "varti.toml"])
        .envs(t.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("PIN") && err.contains("wrong"), "{err}");
    // The TLS key is the first one serve opens.
    assert!(err.contains("(tls.key)"), "{err}");
    assert!(!err.contains("97531"), "the PIN is in the error: {err}");
}

/// `varti keys list` shows the token's private keys, non-extractable, with the URI to
/// configure; `varti certs list|check` show which of our keys are in the token and prove
/// each token key belongs to its certificate (by a signature or a key agreement).
#[test]
fn keys_list_and_certs_check_see_the_token_keys() {
    let _one_at_a_time = hsm_support::exclusive();
    let t = token();
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, format!("{}\n", hsm_support::PIN)).unwrap();
    let pin_source = format!("file:{}", pin.display());
    let (code, json, out) = varti3(
        &[
            "keys",
            "list",
            "--module",
            hsm_support::MODULE,
            "--token",
            hsm_support::LABEL,
            "--pin-source",
            &pin_source,
            "--json",
        ],
        t,
    );
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let objects = doc[0]["objects"].as_array().unwrap();
    let sign = objects
        .iter()
        .find(|o| o["label"] == "varti-a-sign" && o["class"] == "private key")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(sign["extractable"], false, "{sign}");
    assert!(
        sign["uri"]
            .as_str()
            .unwrap()
            .starts_with("pkcs11:token=varti-hsm-test;object=varti-a-sign"),
        "{sign}"
    );
    // A wrong PIN is refused with a clear message.
    std::fs::write(&pin, "97531\n").unwrap();
    let (code, _, out) = varti3(
        &[
            "keys",
            "list",
            "--module",
            hsm_support::MODULE,
            "--pin-source",
            &pin_source,
        ],
        t,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("PIN") && out.contains("wrong"), "{out}");

    let pair = pair_for(t, "as4-2.0-ecdsa", "sign-p256", "enc-p256", true);
    let config = pair.root.path().join("a/varti.toml");
    let (code, json, out) = varti3(&["certs", "list", "--config", s(&config), "--json"], t);
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let in_token: Vec<_> = doc["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["private_key"]
                .as_str()
                .is_some_and(|k| k.starts_with("pkcs11:"))
        })
        .collect();
    assert_eq!(
        in_token.len(),
        3,
        "signing, encryption and TLS keys in the token: {json}"
    );
    assert!(!json.contains(hsm_support::PIN), "the PIN is shown: {json}");
    let (code, _, out) = varti3(&["certs", "check", "--config", s(&config)], t);
    assert!(
        !out.contains("key_mismatch") && !out.contains("key_unreadable"),
        "{out}"
    );
    assert_ne!(code, 2, "{out}");
    // The signing certificate paired with another token key: found out.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("object=varti-a-sign-p256", "object=varti-a-enc-p256");
    std::fs::write(&config, text).unwrap();
    let (code, _, out) = varti3(&["certs", "check", "--config", s(&config)], t);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("identity.signing_key"), "{out}");
}
