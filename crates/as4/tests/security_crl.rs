//! CRL checking of the signer's chain, where the PMode configures it: a message from a
//! revoked certificate, or checked against a CRL that is forged, stale, from another CA
//! or missing, is refused with EBMS:0101 and leaves no payload file; a certificate that
//! is not on a current, genuine CRL passes. And `pmode check` reports bad CRL files.

use std::io::Read;
use std::path::Path;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::asn1::{Asn1Object, Asn1OctetString};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::KeyUsage;
use openssl::x509::{X509Crl, X509CrlBuilder, X509Extension, X509RevokedBuilder, X509};
use varti_as4::error::ErrorCode;
use varti_as4::inbound::{receive, ReceivePolicy};
use varti_as4::message::mime::{MimeLimits, MimePackage};
use varti_as4::outbound::{send, OutgoingPayload, SendPolicy};
use varti_as4::pmode::{load_dir_with, LoadOptions};
use varti_as4::security::profile::AS4_1_15;
use varti_as4::security::token::TokenReference;

mod support;
use support::*;

const DAY: i64 = 86400;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rsa() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

/// A certificate `cn` for `key`, serial `serial`, issued by `issuer` (self-signed when
/// `None`); a CA (basicConstraints, keyCertSign + cRLSign) when `ca`, else one naming
/// [`CDP`] as its CRL distribution point.
fn issue(
    key: &PKey<Private>,
    cn: &str,
    serial: u32,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> X509 {
    let subject = [("CN", cn)];
    let spec = CertSpec {
        issuer,
        serial: Some(serial),
        key_id: false,
        ..CertSpec::new(&subject)
    };
    let spec = if ca {
        let usage = KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build();
        CertSpec {
            ca: true,
            key_usage: usage.unwrap(),
            ..spec
        }
    } else {
        let cdp = der_extension("2.5.29.31", &crl_distribution_point(CDP));
        CertSpec {
            extensions: vec![cdp],
            ..spec
        }
    };
    support::issue(key, spec)
}

const CDP: &str = "http://ca.test/ca.crl";

/// A non-critical extension from its OID and DER value.
fn der_extension(oid: &str, der: &[u8]) -> X509Extension {
    X509Extension::new_from_der(
        &Asn1Object::from_str(oid).unwrap(),
        false,
        &Asn1OctetString::new_from_bytes(der).unwrap(),
    )
    .unwrap()
}

/// CRLDistributionPoints with one fullName URI (RFC 5280 §4.2.1.13), short-form DER.
fn crl_distribution_point(uri: &str) -> Vec<u8> {
    let tlv = |tag: u8, body: &[u8]| {
        assert!(body.len() < 128);
        [&[tag, body.len() as u8][..], body].concat()
    };
    let name = tlv(0x86, uri.as_bytes()); // GeneralName uniformResourceIdentifier [6]
    let full_name = tlv(0xa0, &name); // DistributionPointName fullName [0]
    let point_name = tlv(0xa0, &full_name); // DistributionPoint distributionPoint [0]
    tlv(0x30, &tlv(0x30, &point_name))
}

/// A CRL in `issuer`'s name, signed with `signer`, current between `from` and `to`
/// (Unix times), revoking `revoked` serials. (The openssl crate cannot add a reasonCode
/// to an entry, so the reason shown in refusals is not exercised here.)
fn crl(issuer: &X509, signer: &PKey<Private>, from: i64, to: i64, revoked: &[u32]) -> X509Crl {
    let mut b = X509CrlBuilder::new().unwrap();
    b.set_issuer_name(issuer.subject_name()).unwrap();
    // authorityKeyIdentifier (the crate's builder insists): keyIdentifier [0] = a hash
    // of the issuer's public key.
    let key_id = openssl::sha::sha1(&issuer.public_key().unwrap().public_key_to_der().unwrap());
    let aki = [&[0x30, 22, 0x80, 20][..], &key_id].concat();
    b.append_extension(der_extension("2.5.29.35", &aki))
        .unwrap();
    // cRLNumber (also insisted on): INTEGER 1.
    b.append_extension(der_extension("2.5.29.20", &[0x02, 0x01, 0x01]))
        .unwrap();
    b.set_last_update(&Asn1Time::from_unix(from).unwrap())
        .unwrap();
    b.set_next_update(&Asn1Time::from_unix(to).unwrap())
        .unwrap();
    for serial in revoked {
        let mut r = X509RevokedBuilder::new().unwrap();
        let n: Asn1Integer = BigNum::from_u32(*serial)
            .unwrap()
            .to_asn1_integer()
            .unwrap();
        r.set_serial_number(&n).unwrap();
        r.set_revocation_date(&Asn1Time::from_unix(from).unwrap())
            .unwrap();
        b.add_revoked(r.build()).unwrap();
    }
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build().unwrap()
}

struct Pki {
    ca_key: PKey<Private>,
    ca: X509,
    alice_key: PKey<Private>,
    alice: X509,
    bob: Keys,
    dir: tempfile::TempDir,
    spool: tempfile::TempDir,
}

const ALICE_SERIAL: u32 = 4242;

fn pki() -> Pki {
    let ca_key = rsa();
    let ca = issue(&ca_key, "Test CA", 1, None, true);
    let alice_key = rsa();
    let alice = issue(
        &alice_key,
        "alice",
        ALICE_SERIAL,
        Some((&ca, &ca_key)),
        false,
    );
    Pki {
        ca_key,
        ca,
        alice_key,
        alice,
        bob: keys(&AS4_1_15, "bob"),
        dir: tempfile::tempdir().unwrap(),
        spool: tempfile::tempdir().unwrap(),
    }
}

/// A signed and encrypted AS4 1.15 message from alice (BST) with one payload.
fn sealed(p: &Pki) -> (Vec<u8>, String) {
    let mut data: &[u8] = b"payload under revocation check";
    let payloads = vec![OutgoingPayload {
        content_id: "p1@test".into(),
        mime_type: "text/plain".into(),
        properties: vec![],
        content: &mut data as &mut dyn Read,
        content_is_gzip: false,
        reopen: None,
        sha256: None,
    }];
    let policy = SendPolicy::new(
        &AS4_1_15,
        TokenReference::BinarySecurityToken,
        &p.alice_key,
        &p.alice,
        Some(&p.bob.enc_cert),
        false,
    );
    let mut out = Vec::new();
    let sent = send(&user_message(), payloads, &policy, &mut out).unwrap();
    (out, sent.content_type)
}

/// Receives the message with `crl_files` configured for the sender.
fn receive_with(p: &Pki, crl_files: &[&Path]) -> Result<usize, varti_as4::EbmsError> {
    let (bytes, ct) = sealed(p);
    let pkg = MimePackage::parse(&bytes[..], &ct, &MimeLimits::default()).unwrap();
    let mut policy = ReceivePolicy::strict(&AS4_1_15);
    policy.decryption = Some((p.bob.enc_key.clone().into(), p.bob.enc_cert.clone()));
    policy.partner_certificates = vec![p.alice.clone()];
    policy.trust_anchors = vec![p.ca.clone()];
    policy.expected_signer = Some(p.alice.clone());
    policy.crl_files = crl_files.iter().map(|f| f.to_path_buf()).collect();
    policy.spool_dir = Some(p.spool.path().to_path_buf());
    receive(&pkg, &policy).map(|m| m.payloads.len())
}

fn write(p: &Pki, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = p.dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn refused(p: &Pki, files: &[&Path], words: &[&str]) {
    let e = receive_with(p, files).expect_err("accepted despite the CRL");
    assert_eq!(e.code, ErrorCode::FailedAuthentication, "{e}");
    for w in words {
        assert!(e.detail.contains(w), "expected '{w}' in: {}", e.detail);
    }
    assert_eq!(
        std::fs::read_dir(p.spool.path()).unwrap().count(),
        0,
        "a refused message left payload files"
    );
}

#[test]
fn a_certificate_not_on_a_current_genuine_crl_is_accepted_pem_or_der() {
    let p = pki();
    // Without CRLs configured, nothing is checked.
    assert_eq!(receive_with(&p, &[]).unwrap(), 1);
    let list = crl(&p.ca, &p.ca_key, now() - DAY, now() + 7 * DAY, &[17, 18]);
    let pem = write(&p, "ca.crl.pem", &list.to_pem().unwrap());
    assert_eq!(receive_with(&p, &[&pem]).unwrap(), 1);
    let der = write(&p, "ca.crl", &list.to_der().unwrap());
    assert_eq!(receive_with(&p, &[&der]).unwrap(), 1);
}

#[test]
fn a_revoked_signer_is_refused_with_the_reason() {
    let p = pki();
    let list = crl(
        &p.ca,
        &p.ca_key,
        now() - DAY,
        now() + 7 * DAY,
        &[17, ALICE_SERIAL],
    );
    let pem = write(&p, "ca.crl.pem", &list.to_pem().unwrap());
    refused(
        &p,
        &[&pem],
        &[
            "CN=alice",
            "was revoked by 'CN=Test CA'",
            "ca.crl.pem",
            "new certificate",
        ],
    );
}

/// A signer found trusted is remembered for a few minutes, but only while the CRL files
/// stay as they were: a list revoking it, written over the file or renamed into place,
/// counts from the next message.
#[test]
fn a_refreshed_crl_file_takes_effect_at_the_next_message() {
    let p = pki();
    let current = crl(&p.ca, &p.ca_key, now() - DAY, now() + 7 * DAY, &[17]);
    let revoking = crl(
        &p.ca,
        &p.ca_key,
        now() - DAY,
        now() + 7 * DAY,
        &[17, ALICE_SERIAL],
    );
    // Written over the file in place.
    let pem = write(&p, "ca.crl.pem", &current.to_pem().unwrap());
    assert_eq!(receive_with(&p, &[&pem]).unwrap(), 1);
    assert_eq!(receive_with(&p, &[&pem]).unwrap(), 1);
    write(&p, "ca.crl.pem", &revoking.to_pem().unwrap());
    refused(&p, &[&pem], &["CN=alice", "was revoked"]);
    // Renamed into place, as an operator's refresh job would.
    let der = write(&p, "ca.crl", &current.to_der().unwrap());
    assert_eq!(receive_with(&p, &[&der]).unwrap(), 1);
    let fresh = write(&p, "ca.crl.new", &revoking.to_der().unwrap());
    std::fs::rename(&fresh, &der).unwrap();
    refused(&p, &[&der], &["CN=alice", "was revoked"]);
}

#[test]
fn a_crl_signed_by_another_key_is_refused() {
    let p = pki();
    // Same issuer name as the CA, not revoking alice, but signed by an impostor's key.
    let forged = crl(&p.ca, &rsa(), now() - DAY, now() + 7 * DAY, &[]);
    let pem = write(&p, "forged.crl.pem", &forged.to_pem().unwrap());
    refused(
        &p,
        &[&pem],
        &["forged.crl.pem", "does not verify with that CA's key"],
    );
}

#[test]
fn a_stale_crl_is_refused_with_how_to_refresh_it() {
    let p = pki();
    let old = crl(&p.ca, &p.ca_key, now() - 30 * DAY, now() - DAY, &[]);
    let pem = write(&p, "old.crl.pem", &old.to_pem().unwrap());
    refused(
        &p,
        &[&pem],
        &[
            "old.crl.pem",
            "out of date",
            "nextUpdate",
            CDP,
            "replace the file",
        ],
    );
}

#[test]
fn a_crl_from_another_ca_or_a_missing_file_is_refused() {
    let p = pki();
    let other_key = rsa();
    let other = issue(&other_key, "Other CA", 2, None, true);
    let list = crl(&other, &other_key, now() - DAY, now() + 7 * DAY, &[]);
    let pem = write(&p, "other.crl.pem", &list.to_pem().unwrap());
    refused(
        &p,
        &[&pem],
        &["none is from its issuer 'CN=Test CA'", "crls"],
    );
    let missing = p.dir.path().join("absent.crl");
    refused(&p, &[&missing], &["absent.crl", "not found"]);
    let cert = write(&p, "cert.pem", &p.ca.to_pem().unwrap());
    refused(
        &p,
        &[&cert],
        &["cert.pem", "holds no `-----BEGIN X509 CRL-----` block"],
    );
    let junk = write(&p, "junk.crl", b"not a CRL at all");
    refused(&p, &[&junk], &["junk.crl", "neither a PEM", "DER"]);
}

#[test]
fn pmode_check_reports_missing_unparsable_and_stale_crl_files() {
    let p = pki();
    let d = p.dir.path();
    std::fs::write(d.join("alice.pem"), p.alice.to_pem().unwrap()).unwrap();
    let good = crl(&p.ca, &p.ca_key, now() - DAY, now() + 7 * DAY, &[]);
    std::fs::write(d.join("good.crl"), good.to_der().unwrap()).unwrap();
    let stale = crl(&p.ca, &p.ca_key, now() - 30 * DAY, now() - DAY, &[]);
    std::fs::write(d.join("stale.crl.pem"), stale.to_pem().unwrap()).unwrap();
    std::fs::write(d.join("junk.crl"), "junk").unwrap();
    let toml = r#"[[party]]
name = "alice"
ids = [{ value = "alice" }]
signing_cert = "alice.pem"
crls = ["good.crl", "missing.crl", "junk.crl", "stale.crl.pem"]
"#;
    let pm = d.join("pmodes");
    std::fs::create_dir(&pm).unwrap();
    std::fs::write(
        pm.join("parties.toml"),
        toml.replace("\"alice.pem\"", "\"../alice.pem\"")
            .replace("[\"good", "[\"../good")
            .replace(", \"missing", ", \"../missing")
            .replace(", \"junk", ", \"../junk")
            .replace(", \"stale", ", \"../stale"),
    )
    .unwrap();
    let (set, diags) = load_dir_with(&pm, &LoadOptions::default());
    let party = set.party("alice").expect("party loaded");
    assert_eq!(party.crls.len(), 4);
    assert!(party.crls[0].ends_with("good.crl"));
    let about = |file: &str| {
        diags
            .iter()
            .filter(|d| d.message.contains(file))
            .collect::<Vec<_>>()
    };
    assert!(about("good.crl").is_empty(), "{diags:?}");
    let missing = about("missing.crl");
    assert!(
        missing.len() == 1 && missing[0].is_error() && missing[0].message.contains("not found"),
        "{diags:?}"
    );
    let junk = about("junk.crl");
    assert!(
        junk.len() == 1 && junk[0].is_error() && junk[0].message.contains("neither a PEM"),
        "{diags:?}"
    );
    let stale = about("stale.crl.pem");
    assert!(
        stale.len() == 1 && !stale[0].is_error() && stale[0].message.contains("out of date"),
        "{diags:?}"
    );
    assert!(stale[0].hint.contains("replace the file"), "{diags:?}");
    // Located at the path as written.
    assert_eq!(missing[0].location.line, 5, "{diags:?}");
}
