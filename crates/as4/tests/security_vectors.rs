//! Third-party signed messages: phase4/Governikus receipts, the pyas4 request and
//! receipt, and phase4's wrong-algorithm negatives.

mod common;

use time::macros::datetime;
use time::OffsetDateTime;
use varti_as4::security::dom::XmlDocument;
use varti_as4::security::profile::AS4_1_15;
use varti_as4::security::token::{self, TokenReference};
use varti_as4::security::verify::{verify_signature, SignedPart, VerifyOptions};
use varti_as4::ErrorCode;

/// The body of a captured HTTP message (after the first blank line).
fn http_body(raw: &[u8]) -> &[u8] {
    let pos = memchr::memmem::find(raw, b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| memchr::memmem::find(raw, b"\n\n").map(|p| p + 2))
        .expect("HTTP message without a blank line");
    &raw[pos..]
}

/// A tiny multipart splitter for the test vectors: (headers, body) of each part.
fn mime_parts(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    let head = String::from_utf8_lossy(&raw[..raw.len() - http_body(raw).len()]).to_string();
    let boundary = head
        .split("boundary=")
        .nth(1)
        .expect("no boundary")
        .split([';', '\r', '\n'])
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string();
    let body = http_body(raw);
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    let mut starts = Vec::new();
    let mut off = 0;
    while let Some(p) = memchr::memmem::find(rest, delim.as_bytes()) {
        starts.push(off + p);
        off += p + delim.len();
        rest = &body[off..];
    }
    for w in starts.windows(2) {
        let part = &body[w[0] + delim.len()..w[1]];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let split = memchr::memmem::find(part, b"\r\n\r\n").unwrap();
        let headers = String::from_utf8_lossy(&part[..split]).to_string();
        let mut content = part[split + 4..].to_vec();
        if content.ends_with(b"\r\n") {
            content.truncate(content.len() - 2);
        }
        parts.push((headers, content));
    }
    parts
}

fn opts() -> VerifyOptions<'static> {
    VerifyOptions {
        profile: &AS4_1_15,
        candidate_certificates: &[],
    }
}

fn check_receipt(name: &str, ref_to: &str, expect_cid_in_nrr: bool) {
    let Some(raw) = common::read(&format!("phase4/receipts/{name}")) else {
        return;
    };
    let body = http_body(&raw);
    assert!(std::str::from_utf8(body).unwrap().contains(ref_to));
    let doc = XmlDocument::parse(body).unwrap();
    let verified = verify_signature(&doc, &opts()).unwrap();
    assert_eq!(
        verified.token().reference,
        TokenReference::BinarySecurityToken
    );
    assert!(verified.attachment_references().is_empty());
    let report = verified.finish(&[]).unwrap();
    assert_eq!(report.references.len(), 2);
    assert!(report.covers(&SignedPart::Messaging));
    assert!(report.covers(&SignedPart::Body));
    report.require_signed(&[]).unwrap();
    // The verified Messaging is the one at /Envelope/Header/Messaging.
    let m = report.verified_element(&SignedPart::Messaging).unwrap();
    assert_eq!(m.path(), "/Envelope/Header/Messaging");
    let text = String::from_utf8_lossy(body);
    assert_eq!(text.contains("cid:"), expect_cid_in_nrr);

    // Time validity: valid when captured, expired today.
    let cert = report.signer();
    token::check_validity_period(cert, datetime!(2022-03-08 00:00:00 UTC)).unwrap();
    let err = token::check_validity_period(cert, OffsetDateTime::now_utc()).unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedAuthentication);
    assert!(err.detail.contains("expired"), "{}", err.detail);
    // Chain: the Peppol test CA is not a configured anchor → untrusted, clearly said.
    let err =
        token::validate_signer_certificate(cert, &[], &[], datetime!(2022-03-08 00:00:00 UTC))
            .unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance);
    // Pinning the signer itself as anchor (partial chain) at capture time succeeds.
    token::validate_signer_certificate(
        cert,
        &[],
        std::slice::from_ref(cert),
        datetime!(2022-03-08 00:00:00 UTC),
    )
    .unwrap();
    let err = token::validate_signer_certificate(
        cert,
        &[],
        std::slice::from_ref(cert),
        OffsetDateTime::now_utc(),
    )
    .unwrap_err();
    assert!(err.detail.contains("expired"), "{}", err.detail);
}

#[test]
fn governikus_receipt_verifies() {
    // Governikus's NRR, like helger's, lists the request's attachment (`cid:`).
    check_receipt(
        "governikus.as4in",
        "6b52b4c0-de6a-46b8-8286-27bac7d1a463@phase4",
        true,
    );
}

#[test]
fn helger_receipt_verifies() {
    check_receipt(
        "helger.as4in",
        "3b3775c9-e88d-47f9-be5a-8e045ca2bc07@phase4",
        true,
    );
}

/// Flips one byte at `pos` (to another base64/text-safe character).
fn mutate(body: &[u8], pos: usize) -> Vec<u8> {
    let mut m = body.to_vec();
    m[pos] = match m[pos] {
        b'A' => b'B',
        b'0' => b'1',
        b'a' => b'b',
        c if c.is_ascii_alphanumeric() => b'A',
        b'+' => b'/',
        b'/' => b'+',
        _ => b'Q',
    };
    m
}

/// Positions inside the text of every `<tag>...</tag>` occurrence (several per element).
fn positions_in(text: &str, open: &str, close: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(s) = text[from..].find(open) {
        let start = from + s;
        let content = start + text[start..].find('>').unwrap() + 1;
        let end = content + text[content..].find(close).unwrap();
        if end > content + 4 {
            out.extend([content, content + (end - content) / 2, end - 2]);
        }
        from = end;
    }
    out
}

#[test]
fn any_single_byte_change_breaks_the_phase4_receipts() {
    for name in ["governikus.as4in", "helger.as4in"] {
        let Some(raw) = common::read(&format!("phase4/receipts/{name}")) else {
            return;
        };
        let body = http_body(&raw);
        let text = std::str::from_utf8(body).unwrap();
        let mut positions = Vec::new();
        positions.extend(positions_in(text, "<ds:DigestValue", "</ds:DigestValue>"));
        positions.extend(positions_in(
            text,
            "<ds:SignatureValue",
            "</ds:SignatureValue>",
        ));
        // Signed content: the message ids and timestamp inside eb:Messaging.
        positions.extend(positions_in(text, ":MessageId>", "</"));
        positions.extend(positions_in(text, ":Timestamp>", "</"));
        positions.extend(positions_in(text, ":RefToMessageId>", "</"));
        // (The BST is not a signed element: a change inside the certificate that keeps
        // its public key is caught by chain validation, not by the signature.)
        // The SignatureMethod URI and a Reference URI.
        positions.push(text.find("rsa-sha256").unwrap() + 4);
        positions.push(text.find("<ds:Reference URI=\"#").unwrap() + 22);
        assert!(
            positions.len() >= 20,
            "{name}: only {} positions",
            positions.len()
        );
        for pos in positions {
            let m = mutate(body, pos);
            let result =
                XmlDocument::parse(&m).and_then(|d| verify_signature(&d, &opts()).map(|_| ()));
            let err = result.expect_err(&format!("{name}: change at byte {pos} was not detected"));
            assert!(
                // A change that breaks well-formedness is refused by the parser
                // (EBMS:0009) before the signature is even looked at.
                matches!(
                    err.code,
                    ErrorCode::FailedAuthentication
                        | ErrorCode::PolicyNoncompliance
                        | ErrorCode::InvalidHeader
                ),
                "{name}@{pos}: {err}"
            );
        }
    }
}

#[test]
fn pyas4_request_xml_references_verify_and_the_attachment_is_pending() {
    let Some(raw) = common::read("pyas4/oneway-1/request.http") else {
        return;
    };
    let parts = mime_parts(&raw);
    assert_eq!(parts.len(), 2);
    let doc = XmlDocument::parse(&parts[0].1).unwrap();
    let verified = verify_signature(&doc, &opts()).unwrap();
    let parts_covered: Vec<_> = verified
        .xml_references()
        .iter()
        .map(|r| r.part.clone())
        .collect();
    assert!(
        parts_covered.contains(&SignedPart::Messaging),
        "{parts_covered:?}"
    );
    assert!(
        parts_covered.contains(&SignedPart::Body),
        "{parts_covered:?}"
    );
    // The attachment is signed over its plaintext (sign then encrypt): it can only be
    // checked after decryption — the integration point with the decryptor.
    assert_eq!(verified.attachment_references().len(), 1);
    let cid = verified.attachment_references()[0].uri.clone();
    assert!(cid.starts_with("cid:"));
    // Trust: the sender's self-signed certificate.
    let sender =
        openssl::x509::X509::from_pem(&common::read("pyas4/oneway-1/sender.cert.pem").unwrap())
            .unwrap();
    assert_eq!(
        verified.token().certificate.to_der().unwrap(),
        sender.to_der().unwrap()
    );
    token::validate_signer_certificate(
        &verified.token().certificate,
        &[],
        &[sender],
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    // Finishing without the (decrypted) attachment fails with a clear reason.
    let err = verified.finish(&[]).unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedAuthentication);
    assert!(err.detail.contains(&cid), "{}", err.detail);
}

#[test]
fn pyas4_receipt_verifies() {
    let Some(raw) = common::read("pyas4/oneway-1/receipt.http") else {
        return;
    };
    let doc = XmlDocument::parse(http_body(&raw)).unwrap();
    let report = verify_signature(&doc, &opts())
        .unwrap()
        .finish(&[])
        .unwrap();
    report.require_signed(&[]).unwrap();
    let receiver =
        openssl::x509::X509::from_pem(&common::read("pyas4/oneway-1/receiver.cert.pem").unwrap())
            .unwrap();
    token::validate_signer_certificate(
        report.signer(),
        &[],
        &[receiver],
        OffsetDateTime::now_utc(),
    )
    .unwrap();
}

#[test]
fn phase4_wrong_algorithms_are_refused_naming_the_algorithm() {
    for (file, expect) in [
        ("phase4/negative/WrongSigningAlgorithm.xml", "signature"),
        ("phase4/negative/WrongSigningDigestAlgorithm.xml", "digest"),
    ] {
        let Some(raw) = common::read(file) else {
            return;
        };
        // These files start with a licence comment before the XML declaration.
        let text = String::from_utf8(raw).unwrap();
        let start = text
            .find("<?xml")
            .or_else(|| text.find("<S12:Envelope"))
            .or_else(|| text.find("<soap"))
            .unwrap_or(0);
        let doc = XmlDocument::parse(&text.as_bytes()[start..]).unwrap();
        let err = verify_signature(&doc, &opts()).unwrap_err();
        assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{file}: {err}");
        assert!(err.detail.contains(expect), "{file}: {}", err.detail);
        assert!(
            err.detail.contains("'http"),
            "{file}: the URI is named: {}",
            err.detail
        );
    }
}
