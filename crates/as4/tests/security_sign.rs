//! Signing round trips for every profile and token reference, an independent check
//! with xmlsec1, signature-wrapping attacks, NRR receipts and certificate checks.

mod common;
mod support;

use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::KeyUsage;
use openssl::x509::X509;
use support::{issue, CertSpec};
use time::OffsetDateTime;
use varti_as4::security::dom::XmlDocument;
use varti_as4::security::profile::{self, Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
use varti_as4::security::receipt;
use varti_as4::security::sign::{
    sign_envelope, SignedEnvelope, SigningIdentity, SECURITY_HEADER_PLACEHOLDER,
};
use varti_as4::security::swa::{AttachmentSource, MemoryAttachment};
use varti_as4::security::token::{self, TokenReference};
use varti_as4::security::verify::{verify_signature, SignedPart, VerifyOptions};
use varti_as4::ErrorCode;

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}
fn ec_key() -> PKey<Private> {
    let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
}
fn ed_key() -> PKey<Private> {
    PKey::generate_ed25519().unwrap()
}

const BST: TokenReference = TokenReference::BinarySecurityToken;

/// The subject C=LV, O=Varti Test\, Inc., CN=`cn`.
fn subject(cn: &str) -> [(&str, &str); 3] {
    [("C", "LV"), ("O", "Varti Test, Inc."), ("CN", cn)]
}

fn self_signed(key: &PKey<Private>, cn: &str) -> X509 {
    let subject = subject(cn);
    let usage = KeyUsage::new()
        .digital_signature()
        .non_repudiation()
        .build();
    let spec = CertSpec {
        key_usage: usage.unwrap(),
        ..CertSpec::new(&subject)
    };
    issue(key, spec)
}

/// A self-signed CA certificate `cn` (keyCertSign, cRLSign), valid for `days` from now.
fn ca_cert(key: &PKey<Private>, cn: &str, days: (i64, i64)) -> X509 {
    let subject = subject(cn);
    let usage = KeyUsage::new().key_cert_sign().crl_sign().build();
    let spec = CertSpec {
        ca: true,
        days,
        key_usage: usage.unwrap(),
        ..CertSpec::new(&subject)
    };
    issue(key, spec)
}

/// A certificate `cn` issued by `ca` for `usage`, valid from yesterday for `days` days.
fn leaf_cert(
    key: &PKey<Private>,
    cn: &str,
    ca: (&X509, &PKey<Private>),
    usage: &KeyUsage,
    days: i64,
) -> X509 {
    let subject = subject(cn);
    let spec = CertSpec {
        issuer: Some(ca),
        days: (-1, days),
        key_usage: usage.build().unwrap(),
        ..CertSpec::new(&subject)
    };
    issue(key, spec)
}

/// A CA and the certificate it issued, with their keys.
struct Chain {
    ca_key: PKey<Private>,
    ca: X509,
    leaf_key: PKey<Private>,
    leaf: X509,
}

/// A CA `ca_cn` valid for `ca_days` from now, and the certificate "AP" it issued for
/// signatures, valid from yesterday for `leaf_days` days.
fn chain(ca_cn: &str, ca_days: (i64, i64), leaf_days: i64) -> Chain {
    let ca_key = rsa_key();
    let ca = ca_cert(&ca_key, ca_cn, ca_days);
    let leaf_key = rsa_key();
    let mut signing = KeyUsage::new();
    signing.digital_signature();
    let leaf = leaf_cert(&leaf_key, "AP", (&ca, &ca_key), &signing, leaf_days);
    Chain {
        ca_key,
        ca,
        leaf_key,
        leaf,
    }
}

/// Verification options for `profile` with no candidate certificates.
fn no_candidates(profile: &Profile) -> VerifyOptions<'_> {
    VerifyOptions {
        profile,
        candidate_certificates: &[],
    }
}

fn envelope() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><S12:Envelope xmlns:S12="http://www.w3.org/2003/05/soap-envelope" xmlns:eb="http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/" xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><S12:Header>{SECURITY_HEADER_PLACEHOLDER}<eb:Messaging S12:mustUnderstand="true" wsu:Id="_messaging"><eb:UserMessage><eb:MessageInfo><eb:Timestamp>2025-01-01T00:00:00Z</eb:Timestamp><eb:MessageId>m1@varti.test</eb:MessageId></eb:MessageInfo><eb:PartyInfo><eb:From><eb:PartyId type="urn:x">Ošetřovna – ünïcödé</eb:PartyId><eb:Role>r</eb:Role></eb:From></eb:PartyInfo></eb:UserMessage></eb:Messaging></S12:Header><S12:Body wsu:Id="_body"/></S12:Envelope>"#
    )
}

fn attachments() -> Vec<MemoryAttachment> {
    vec![
        MemoryAttachment {
            content_id: "p1@varti.test".into(),
            content_type: "application/gzip".into(),
            data: (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        },
        MemoryAttachment {
            content_id: "<p2@varti.test>".into(),
            content_type: "text/plain; charset=utf-8".into(),
            data: b"line1\nline2\r\nline3\r".to_vec(),
        },
        MemoryAttachment {
            content_id: "p3@varti.test".into(),
            content_type: "application/xml".into(),
            data: "<a  b='1'><c/>é</a>".as_bytes().to_vec(),
        },
        MemoryAttachment {
            content_id: "empty@varti.test".into(),
            content_type: "application/octet-stream".into(),
            data: Vec::new(),
        },
    ]
}

fn as_sources(a: &[MemoryAttachment]) -> Vec<&dyn AttachmentSource> {
    a.iter().map(|x| x as &dyn AttachmentSource).collect()
}

fn sign(
    profile: &Profile,
    key: &PKey<Private>,
    cert: &X509,
    tr: TokenReference,
    atts: &[MemoryAttachment],
) -> SignedEnvelope {
    let id = SigningIdentity {
        profile,
        key,
        certificate: cert,
        token_reference: tr,
    };
    sign_envelope(&envelope(), &id, &as_sources(atts)).unwrap()
}

/// An envelope signed on 1.15 with a fresh RSA key (`tr` naming its self-signed
/// certificate) over the first two [`attachments`]: the certificate, the attachments,
/// the signed envelope.
fn signed_with_two_attachments(
    tr: TokenReference,
) -> (X509, Vec<MemoryAttachment>, SignedEnvelope) {
    let key = rsa_key();
    let cert = self_signed(&key, "sender");
    let atts = attachments();
    let signed = sign(&AS4_1_15, &key, &cert, tr, &atts[..2]);
    (cert, atts, signed)
}

#[test]
fn round_trip_every_profile_and_token_reference() {
    let suites: [(&Profile, PKey<Private>); 3] = [
        (&AS4_1_15, rsa_key()),
        (&AS4_2_0_EDDSA, ed_key()),
        (&AS4_2_0_ECDSA, ec_key()),
    ];
    let atts = attachments();
    for (profile, key) in &suites {
        let cert = self_signed(key, "sender");
        for tr in [
            TokenReference::BinarySecurityToken,
            TokenReference::SubjectKeyIdentifier,
            TokenReference::IssuerSerial,
        ] {
            for n in [0, 1, atts.len()] {
                let signed = sign(profile, key, &cert, tr, &atts[..n]);
                assert_eq!(signed.references.len(), 2 + n);
                let doc = XmlDocument::parse(signed.envelope.as_bytes()).unwrap();
                let candidates = [cert.clone()];
                let opts = VerifyOptions {
                    profile,
                    candidate_certificates: &candidates,
                };
                let v = verify_signature(&doc, &opts)
                    .unwrap_or_else(|e| panic!("{} {tr:?}: {e}", profile.name));
                assert_eq!(v.token().reference, tr);
                assert_eq!(v.signature_algorithm(), profile.signature.uri());
                let report = v.finish(&as_sources(&atts[..n])).unwrap();
                let cids: Vec<&str> = atts[..n].iter().map(|a| a.content_id.as_str()).collect();
                let cids: Vec<&str> = cids.iter().map(|c| c.trim_matches(['<', '>'])).collect();
                report.require_signed(&cids).unwrap();
                token::validate_signer_certificate(
                    report.signer(),
                    &[],
                    &candidates,
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
                // Without candidates, SKI / IssuerSerial cannot be resolved.
                if tr != TokenReference::BinarySecurityToken {
                    let err = verify_signature(
                        &doc,
                        &VerifyOptions {
                            profile,
                            candidate_certificates: &[],
                        },
                    )
                    .unwrap_err();
                    assert_eq!(err.code, ErrorCode::FailedAuthentication);
                    assert!(err.detail.contains("partner certificate"), "{}", err.detail);
                }
            }
        }
    }
}

#[test]
fn tampered_or_missing_attachment_is_refused_and_unsigned_attachment_fails_policy() {
    let (_, atts, signed) = signed_with_two_attachments(BST);
    let doc = XmlDocument::parse(signed.envelope.as_bytes()).unwrap();
    let opts = no_candidates(&AS4_1_15);
    let mut swapped = atts[..2].to_vec();
    swapped[0].data[1000] ^= 1;
    let err = verify_signature(&doc, &opts)
        .unwrap()
        .finish(&as_sources(&swapped))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedAuthentication);
    assert!(err.detail.contains("cid:p1@varti.test"), "{}", err.detail);
    let err = verify_signature(&doc, &opts)
        .unwrap()
        .finish(&as_sources(&atts[..1]))
        .unwrap_err();
    assert!(err.detail.contains("p2@varti.test"), "{}", err.detail);
    // A third attachment travelling with the message but not signed: policy failure.
    let report = verify_signature(&doc, &opts)
        .unwrap()
        .finish(&as_sources(&atts[..3]))
        .unwrap();
    let err = report
        .require_signed(&["p1@varti.test", "p2@varti.test", "p3@varti.test"])
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance);
    assert!(err.detail.contains("p3@varti.test"), "{}", err.detail);
}

#[test]
fn wrong_profile_is_policy_noncompliance() {
    let key = ed_key();
    let cert = self_signed(&key, "sender");
    let signed = sign(&AS4_2_0_EDDSA, &key, &cert, BST, &[]);
    let doc = XmlDocument::parse(signed.envelope.as_bytes()).unwrap();
    let err = verify_signature(&doc, &no_candidates(&AS4_1_15)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance);
    assert!(
        err.detail.contains(profile::SIG_EDDSA_ED25519),
        "{}",
        err.detail
    );
}

#[test]
fn ecdsa_values_are_raw_r_s_and_convert_both_ways() {
    let key = ec_key();
    let raw = AS4_2_0_ECDSA.signature.sign(&key, b"data").unwrap();
    assert_eq!(raw.len(), 64);
    let der = profile::ecdsa_raw_to_der(&raw).unwrap();
    assert_eq!(der[0], 0x30);
    let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &key).unwrap();
    assert!(v.verify_oneshot(&der, b"data").unwrap());
    assert_eq!(profile::ecdsa_der_to_raw(&der, 32).unwrap(), raw);
    let pubkey = PKey::public_key_from_pem(&key.public_key_to_pem().unwrap()).unwrap();
    assert!(AS4_2_0_ECDSA
        .signature
        .verify(&pubkey, b"data", &raw)
        .unwrap());
    assert!(!AS4_2_0_ECDSA
        .signature
        .verify(&pubkey, b"datA", &raw)
        .unwrap());
}

/// Independent verifier: xmlsec1 (libxmlsec1 + OpenSSL) checks the SignedInfo and the
/// XML references of RSA and ECDSA signatures (it has no Ed25519 in Debian's 1.2.37,
/// and no SwA transforms, so messages without attachments).
#[test]
fn xmlsec1_verifies_rsa_and_ecdsa_signatures() {
    for (profile, key) in [(&AS4_1_15, rsa_key()), (&AS4_2_0_ECDSA, ec_key())] {
        let cert = self_signed(&key, "sender");
        let signed = sign(profile, &key, &cert, BST, &[]);
        if let Err(stderr) = support::xmlsec1_verify(&signed.envelope, &cert) {
            panic!("{}: xmlsec1 refused: {stderr}", profile.name);
        }
        // And it notices a change in the signed eb:Messaging.
        let bad = signed.envelope.replace("m1@varti.test", "m2@varti.test");
        assert!(
            support::xmlsec1_verify(&bad, &cert).is_err(),
            "{}: xmlsec1 accepted a modified message",
            profile.name
        );
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let a = s.find(start).unwrap();
    let b = s[a..].find(end).unwrap() + a + end.len();
    &s[a..b]
}

#[test]
fn signature_wrapping_variants_are_refused() {
    let key = rsa_key();
    let cert = self_signed(&key, "sender");
    let signed = sign(&AS4_1_15, &key, &cert, BST, &[]).envelope;
    let opts = no_candidates(&AS4_1_15);
    let messaging = between(&signed, "<eb:Messaging", "</eb:Messaging>").to_string();
    let body = between(&signed, "<S12:Body", "/>").to_string();
    let forged_messaging = messaging
        .replace("m1@varti.test", "evil@attacker")
        .replace("_messaging", "_forged");
    let wrap = |inner: &str| format!(r#"<x:Wrapper xmlns:x="urn:attacker">{inner}</x:Wrapper>"#);

    let variants: Vec<(&str, String)> = vec![
        // The signed Messaging duplicated (same wsu:Id) in a wrapper.
        (
            "duplicated Messaging",
            signed.replace(
                "</S12:Header>",
                &format!("{}</S12:Header>", wrap(&messaging)),
            ),
        ),
        // The signed Messaging moved into a wrapper, a forged one in its place.
        (
            "moved Messaging",
            signed.replace(&messaging, &forged_messaging).replace(
                "</wsse:Security>",
                &format!("{}</wsse:Security>", wrap(&messaging)),
            ),
        ),
        // The signed Body moved into the header, a forged Body in its place.
        (
            "moved Body",
            signed
                .replace(&body, r#"<S12:Body><evil/></S12:Body>"#)
                .replace("</S12:Header>", &format!("{}</S12:Header>", wrap(&body))),
        ),
        // The signed Messaging duplicated under the Body.
        (
            "duplicated Messaging in Body",
            signed.replace(
                &body,
                &format!("<S12:Body wsu:Id=\"_body2\">{messaging}</S12:Body>"),
            ),
        ),
    ];
    for (name, xml) in variants {
        let result = XmlDocument::parse(xml.as_bytes()).and_then(|d| {
            let r = verify_signature(&d, &opts)?.finish(&[])?;
            r.require_signed(&[])
        });
        let err = result.expect_err(name);
        assert!(
            matches!(
                err.code,
                ErrorCode::FailedAuthentication | ErrorCode::PolicyNoncompliance
            ),
            "{name}: {err}"
        );
        assert!(
            err.detail.contains("wrapping") || err.detail.contains("not covered"),
            "{name}: {}",
            err.detail
        );
    }

    // Re-parented: the only Messaging moved out of the Header under the Body. Every
    // digest still matches, but it is not the header the MSH processes.
    let reparented = signed.replace(&messaging, "").replace(
        &body,
        &format!("<S12:Body wsu:Id=\"_body\">{messaging}</S12:Body>"),
    );
    let doc = XmlDocument::parse(reparented.as_bytes()).unwrap();
    let v = verify_signature(&doc, &opts);
    // The Body digest changes (it now has content), so this fails already; check that a
    // Messaging-only re-parenting (Body untouched) is caught by the position check.
    assert!(v.is_err());
    let reparented = signed.replace(&messaging, "").replace(
        "</S12:Envelope>",
        &format!("{}</S12:Envelope>", wrap(&messaging)),
    );
    let doc = XmlDocument::parse(reparented.as_bytes()).unwrap();
    let report = verify_signature(&doc, &opts).unwrap().finish(&[]).unwrap();
    assert!(!report.covers(&SignedPart::Messaging));
    let err = report.require_signed(&[]).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance);
    assert!(err.detail.contains("eb:Messaging"), "{}", err.detail);
}

#[test]
fn nrr_receipt_round_trip_and_mismatch() {
    let (cert, atts, signed) = signed_with_two_attachments(TokenReference::SubjectKeyIdentifier);
    let doc = XmlDocument::parse(signed.envelope.as_bytes()).unwrap();
    let candidates = [cert.clone()];
    let report = verify_signature(
        &doc,
        &VerifyOptions {
            profile: &AS4_1_15,
            candidate_certificates: &candidates,
        },
    )
    .unwrap()
    .finish(&as_sources(&atts[..2]))
    .unwrap();
    let nri = receipt::non_repudiation_information(&report.references);
    let receipt_xml = format!(r#"<r xmlns:eb="urn:eb"><eb:Receipt>{nri}</eb:Receipt></r>"#);
    let receipt_doc = XmlDocument::parse(receipt_xml.as_bytes()).unwrap();
    receipt::check_receipt_nrr(&receipt_doc, &signed.references).unwrap();
    assert_eq!(receipt::signed_references(&doc).unwrap(), signed.references);

    // A receipt for different content, or missing a part, is invalid.
    let mut other = signed.references.clone();
    other[1].digest[0] ^= 1;
    let err = receipt::check_receipt_nrr(&receipt_doc, &other).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidReceipt);
    let mut more = signed.references.clone();
    more.push(varti_as4::security::sign::SignedReference {
        uri: "cid:x".into(),
        digest_method: profile::DIGEST_SHA256.into(),
        digest: vec![0; 32],
    });
    assert!(receipt::check_receipt_nrr(&receipt_doc, &more)
        .unwrap_err()
        .detail
        .contains("cid:x"));
    assert!(receipt::check_receipt_nrr(&receipt_doc, &signed.references[..1]).is_err());
}

#[test]
fn pyas4_receipt_nrr_matches_the_request_and_ours_would_too() {
    let (Some(req), Some(rec)) = (
        common::read("pyas4/oneway-1/request.http"),
        common::read("pyas4/oneway-1/receipt.http"),
    ) else {
        return;
    };
    let env_start = memchr::memmem::find(&req, b"<S12:Envelope").unwrap();
    let env_end = memchr::memmem::find(&req, b"</S12:Envelope>").unwrap() + "</S12:Envelope>".len();
    let req_doc = XmlDocument::parse(&req[env_start..env_end]).unwrap();
    let sent = receipt::signed_references(&req_doc).unwrap();
    assert_eq!(sent.len(), 3);
    let rec_start = memchr::memmem::find(&rec, b"\r\n\r\n").unwrap() + 4;
    let rec_doc = XmlDocument::parse(&rec[rec_start..]).unwrap();
    receipt::check_receipt_nrr(&rec_doc, &sent).unwrap();
    // Varti's NRR for the request (references as verified; the attachment's after the
    // decryptor hands its plaintext to finish()).
    let v = verify_signature(&req_doc, &no_candidates(&AS4_1_15)).unwrap();
    let refs: Vec<_> = v
        .xml_references()
        .iter()
        .chain(v.attachment_references())
        .cloned()
        .collect();
    let ours = receipt::non_repudiation_information(&refs);
    let ours_doc = XmlDocument::parse(ours.as_bytes()).unwrap();
    receipt::check_receipt_nrr(&ours_doc, &sent).unwrap();
}

#[test]
fn certificate_chain_time_and_key_usage() {
    let Chain {
        ca_key,
        ca,
        leaf_key,
        leaf,
    } = chain("Test CA", (-10, 3650), 30);
    let now = OffsetDateTime::now_utc();
    token::validate_signer_certificate(&leaf, &[], std::slice::from_ref(&ca), now).unwrap();
    // Another CA: untrusted.
    let other = ca_cert(&rsa_key(), "Other CA", (-10, 3650));
    let err = token::validate_signer_certificate(&leaf, &[], &[other], now).unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedAuthentication);
    assert!(err.detail.contains("not trusted"), "{}", err.detail);
    // Not yet valid / expired at given times.
    let days = time::Duration::days;
    for (at, why) in [
        (now - days(5), "not valid before"),
        (now + days(60), "expired"),
    ] {
        let anchors = std::slice::from_ref(&ca);
        let err = token::validate_signer_certificate(&leaf, &[], anchors, at).unwrap_err();
        assert!(err.detail.contains(why), "{}", err.detail);
    }
    // Key usage without digitalSignature / nonRepudiation.
    let mut enc = KeyUsage::new();
    enc.key_encipherment();
    let enc_leaf = leaf_cert(&leaf_key, "Enc", (&ca, &ca_key), &enc, 30);
    let err = token::validate_signer_certificate(&enc_leaf, &[], &[ca], now).unwrap_err();
    assert!(err.detail.contains("KeyUsage"), "{}", err.detail);
    // IssuerSerial DN string round-trips through the matcher, with aliases and spacing.
    let dn = token::distinguished_name_string(leaf.issuer_name());
    assert_eq!(dn, r"CN=Test CA,O=Varti Test\, Inc.,C=LV");
    assert!(token::distinguished_name_matches(&dn, leaf.issuer_name()));
    assert!(token::distinguished_name_matches(
        r"CN=Test CA, O=Varti Test\, Inc., C=LV",
        leaf.issuer_name()
    ));
    assert!(!token::distinguished_name_matches(
        "CN=Test CA,O=Varti Test,C=LV",
        leaf.issuer_name()
    ));
}

#[test]
fn text_attachments_are_digested_with_crlf_line_endings_and_cids_match_percent_encoded() {
    use varti_as4::security::swa::{attachment_digest, cid_matches};
    let lf = MemoryAttachment {
        content_id: "t".into(),
        content_type: "text/plain".into(),
        data: b"a\nb\r\nc\rd".to_vec(),
    };
    let expected = openssl::sha::sha256(b"a\r\nb\r\nc\r\nd");
    assert_eq!(attachment_digest(&lf).unwrap(), expected);
    // Binary content is digested as is.
    let bin = MemoryAttachment {
        content_type: "application/gzip".into(),
        ..lf.clone()
    };
    assert_eq!(
        attachment_digest(&bin).unwrap(),
        openssl::sha::sha256(b"a\nb\r\nc\rd")
    );
    // XML content is exclusive-canonicalized first.
    let xml = MemoryAttachment {
        content_id: "x".into(),
        content_type: "application/xml".into(),
        data: b"<a  b='1'><c/></a>".to_vec(),
    };
    assert_eq!(
        attachment_digest(&xml).unwrap(),
        openssl::sha::sha256(br#"<a b="1"><c></c></a>"#)
    );
    assert!(cid_matches("cid:part%201@x", "<part 1@x>"));
    assert!(!cid_matches("cid:part1@x", "part2@x"));
    assert!(!cid_matches("#part1@x", "part1@x"));
}

/// A PKIPath of `ca` and `leaf`: SEQUENCE { ca, leaf }, DER.
fn pkipath_der(ca: &X509, leaf: &X509) -> Vec<u8> {
    let mut inner = ca.to_der().unwrap();
    inner.extend(leaf.to_der().unwrap());
    let mut der = vec![0x30, 0x82];
    der.extend((inner.len() as u16).to_be_bytes());
    der.extend(inner);
    der
}

#[test]
fn pkipath_token_is_accepted_with_its_chain() {
    let Chain {
        ca,
        leaf_key: key,
        leaf,
        ..
    } = chain("CA", (-1, 365), 365);
    let signed = sign(&AS4_1_15, &key, &leaf, BST, &[]).envelope;
    // Re-express the (unsigned) token as a PKIPath: SEQUENCE { ca, leaf }.
    let der = pkipath_der(&ca, &leaf);
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let pkipath = signed
        .replace(&b64(&leaf.to_der().unwrap()), &b64(&der))
        .replace("#X509v3", "#X509PKIPathv1");
    let doc = XmlDocument::parse(pkipath.as_bytes()).unwrap();
    let v = verify_signature(&doc, &no_candidates(&AS4_1_15)).unwrap();
    assert_eq!(v.token().reference, TokenReference::PkiPath);
    assert_eq!(
        v.token().certificate.to_der().unwrap(),
        leaf.to_der().unwrap()
    );
    assert_eq!(v.token().chain.len(), 1);
    token::validate_signer_certificate(
        &v.token().certificate,
        &v.token().chain,
        std::slice::from_ref(&ca),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    // A PKIPath whose leaf is another certificate does not verify.
    let other = self_signed(&rsa_key(), "other");
    let der2 = pkipath_der(&ca, &other);
    let forged = pkipath.replace(&b64(&der), &b64(&der2));
    let doc = XmlDocument::parse(forged.as_bytes()).unwrap();
    let err = verify_signature(&doc, &no_candidates(&AS4_1_15)).unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedAuthentication);
}
