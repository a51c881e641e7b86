//! Acceptance of the receive pipeline and receipts against third-party messages.

mod common;

use std::path::PathBuf;

use openssl::pkey::PKey;
use openssl::x509::X509;
use time::macros::datetime;
use varti_as4::error::ErrorCode;
use varti_as4::inbound::{receive, ReceivePolicy};
use varti_as4::message::dump::read_dump_file;
use varti_as4::message::mime::{hex, MimeLimits};
use varti_as4::outbound::{build_receipt, check_receipt};
use varti_as4::security::dom::XmlDocument;
use varti_as4::security::profile::AS4_1_15;
use varti_as4::security::receipt::{check_receipt_nrr, signed_references};
use varti_as4::security::sign::SigningIdentity;
use varti_as4::security::token::TokenReference;
use varti_as4::security::verify::SignedPart;

fn dir() -> Option<PathBuf> {
    common::vectors().map(|d| d.join("pyas4/oneway-1"))
}

fn pem_cert(p: &std::path::Path) -> X509 {
    X509::from_pem(&std::fs::read(p).unwrap()).unwrap()
}

fn pyas4_policy(d: &std::path::Path) -> ReceivePolicy {
    let key =
        PKey::private_key_from_pem(&std::fs::read(d.join("receiver.key.pem")).unwrap()).unwrap();
    let cert = pem_cert(&d.join("receiver.cert.pem"));
    let sender = pem_cert(&d.join("sender.cert.pem"));
    let mut p = ReceivePolicy::strict(&AS4_1_15);
    p.decryption = Some((key.into(), cert));
    p.partner_certificates = vec![sender.clone()];
    p.trust_anchors = vec![sender];
    p
}

#[test]
fn pyas4_request_opens_to_exactly_the_delivered_part() {
    let Some(d) = dir() else { return };
    let dump = read_dump_file(&d.join("request.http"), &MimeLimits::default()).unwrap();
    let msg = receive(&dump.package, &pyas4_policy(&d)).unwrap();
    let expected = std::fs::read(d.join("delivered-part-0.bin")).unwrap();
    assert_eq!(msg.payloads.len(), 1);
    let p = &msg.payloads[0];
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut p.open().unwrap(), &mut got).unwrap();
    assert_eq!(got, expected);
    assert_eq!(p.len, expected.len() as u64);
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("expected.json")).unwrap()).unwrap();
    assert_eq!(
        hex(&p.sha256),
        exp["delivered_part_sha256"][0].as_str().unwrap()
    );
    let sig = msg.signature.as_ref().expect("signed");
    assert_eq!(sig.references.len(), 3);
    assert!(sig
        .references
        .iter()
        .any(|r| r.part == SignedPart::Messaging));
    assert!(sig.references.iter().any(|r| r.part == SignedPart::Body));
    assert!(sig
        .references
        .iter()
        .any(|r| matches!(&r.part, SignedPart::Attachment { uri } if uri.starts_with("cid:"))));
    assert!(msg.encryption.is_some());
}

#[test]
fn our_receipt_for_the_pyas4_request_verifies_and_matches_its_references() {
    let Some(d) = dir() else { return };
    let dump = read_dump_file(&d.join("request.http"), &MimeLimits::default()).unwrap();
    let msg = receive(&dump.package, &pyas4_policy(&d)).unwrap();
    // We answer as the receiver.
    let key =
        PKey::private_key_from_pem(&std::fs::read(d.join("receiver.key.pem")).unwrap()).unwrap();
    let cert = pem_cert(&d.join("receiver.cert.pem"));
    let identity = SigningIdentity {
        profile: &AS4_1_15,
        key: &key,
        certificate: &cert,
        token_reference: TokenReference::BinarySecurityToken,
    };
    let receipt = build_receipt(&msg, Some(&identity)).unwrap();
    // The sender verifies it with the receiver's certificate as anchor…
    let pkg = varti_as4::message::mime::MimePackage::single(
        varti_as4::message::mime::ContentType::parse("application/soap+xml").unwrap(),
        Default::default(),
        receipt.as_bytes().to_vec(),
    );
    let mut p = ReceivePolicy::strict(&AS4_1_15);
    p.require_encryption = false;
    p.trust_anchors = vec![cert.clone()];
    let verified = receive(&pkg, &p).unwrap();
    assert!(verified.signature.is_some());
    // …and checks its NRR against what it signed.
    let request_doc = XmlDocument::parse(&dump.package.root().content).unwrap();
    let sent = signed_references(&request_doc).unwrap();
    let receipt_doc = XmlDocument::parse(receipt.as_bytes()).unwrap();
    check_receipt_nrr(&receipt_doc, &sent).unwrap();
    // A receipt for something else does not match.
    let mut other = sent.clone();
    other[0].digest[0] ^= 1;
    assert_eq!(
        check_receipt_nrr(&receipt_doc, &other).unwrap_err().code,
        ErrorCode::InvalidReceipt
    );
}

#[test]
fn pyas4_receipt_verifies_against_the_request() {
    let Some(d) = dir() else { return };
    let dump = read_dump_file(&d.join("receipt.http"), &MimeLimits::default()).unwrap();
    let receiver = pem_cert(&d.join("receiver.cert.pem"));
    let mut p = ReceivePolicy::strict(&AS4_1_15);
    p.require_encryption = false;
    p.partner_certificates = vec![receiver.clone()];
    p.trust_anchors = vec![receiver];
    let r = receive(&dump.package, &p).unwrap();
    assert!(r.signature.is_some());
    let request = read_dump_file(&d.join("request.http"), &MimeLimits::default()).unwrap();
    let sent =
        signed_references(&XmlDocument::parse(&request.package.root().content).unwrap()).unwrap();
    check_receipt_nrr(
        &XmlDocument::parse(&dump.package.root().content).unwrap(),
        &sent,
    )
    .unwrap();
    // The sender-side check: right request id and NRR; a wrong id is EBMS:0302.
    let id = "bd6cb980-bd06-46c9-955b-2b5637ca9dd4@as4";
    check_receipt(&r, id, &sent).unwrap();
    let e = check_receipt(&r, "other@as4", &sent).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidReceipt);
    let mut fewer = sent.clone();
    fewer.pop();
    let e = check_receipt(&r, id, &fewer).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidReceipt);
}

#[test]
fn pyas4_request_is_refused_without_trust_or_with_the_wrong_key() {
    let Some(d) = dir() else { return };
    let dump = read_dump_file(&d.join("request.http"), &MimeLimits::default()).unwrap();
    let mut p = pyas4_policy(&d);
    p.trust_anchors = vec![pem_cert(&d.join("receiver.cert.pem"))];
    assert_eq!(
        receive(&dump.package, &p).unwrap_err().code,
        ErrorCode::FailedAuthentication
    );
    let mut p = pyas4_policy(&d);
    p.decryption = None;
    assert_eq!(
        receive(&dump.package, &p).unwrap_err().code,
        ErrorCode::FailedDecryption
    );
    let mut p = pyas4_policy(&d);
    p.at = datetime!(2040-01-01 0:00 UTC);
    let e = receive(&dump.package, &p).unwrap_err();
    assert_eq!(e.code, ErrorCode::FailedAuthentication);
    assert!(e.detail.contains("expired"), "{e}");
}

fn embedded_certs(root: &[u8]) -> Vec<X509> {
    use base64::Engine as _;
    let doc = XmlDocument::parse(root).unwrap();
    doc.elements()
        .filter(|e| e.local_name() == "BinarySecurityToken")
        .map(|e| {
            let t: String = e.text().chars().filter(|c| !c.is_whitespace()).collect();
            X509::from_der(&base64::engine::general_purpose::STANDARD.decode(t).unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn phase4_receipts_verify_at_their_time_and_not_now_nor_altered() {
    let Some(v) = common::vectors() else { return };
    for name in ["governikus.as4in", "helger.as4in"] {
        let path = v.join("phase4/receipts").join(name);
        let dump = read_dump_file(&path, &MimeLimits::default()).unwrap();
        let certs = embedded_certs(&dump.package.root().content);
        let mut p = ReceivePolicy::strict(&AS4_1_15);
        p.require_encryption = false;
        p.trust_anchors = certs.clone();
        p.at = datetime!(2022-03-08 0:00 UTC);
        let r = receive(&dump.package, &p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.signature.is_some());
        p.at = time::OffsetDateTime::now_utc();
        let e = receive(&dump.package, &p).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedAuthentication, "{name}");
        assert!(e.detail.contains("expired"), "{name}: {e}");
        // One byte changed in a signed element (the RefToMessageId's text).
        p.at = datetime!(2022-03-08 0:00 UTC);
        let mut bytes = std::fs::read(&path).unwrap();
        let pos = find(&bytes, b"@phase4</").expect("RefToMessageId");
        bytes[pos + 1] = b'P';
        let altered =
            varti_as4::message::dump::read_dump(&bytes[..], &MimeLimits::default()).unwrap();
        let e = receive(&altered.package, &p).unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedAuthentication, "{name}: {e}");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
