//! Round trips through Varti's own sender and receiver, and the attack corpus: every
//! tampered message is refused with the right ebMS code, and leaves no payload file.

use std::io::Read;
use std::path::Path;

use time::{Duration, OffsetDateTime};
use varti_as4::error::ErrorCode;
use varti_as4::inbound::{receive, ReceivePolicy};
use varti_as4::message::mime::{MimeLimits, MimePackage, MimeWriter};
use varti_as4::message::model::*;
use varti_as4::outbound::{send, OutgoingPayload, Reopen, SendPolicy, SentMessage};
use varti_as4::security::profile::{Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
use varti_as4::security::sign::SigningIdentity;
use varti_as4::security::swa::{AttachmentSource, MemoryAttachment};
use varti_as4::security::token::TokenReference;
use varti_as4::EbmsError;

mod support;
use support::*;

struct Sent {
    bytes: Vec<u8>,
    content_type: String,
}

const BST: TokenReference = TokenReference::BinarySecurityToken;

/// How [`seal`] seals: the token reference, and whether it compresses and encrypts.
#[derive(Clone, Copy)]
struct How {
    token: TokenReference,
    compress: bool,
    encrypt: bool,
}

fn seal(
    profile: &'static Profile,
    sender: &Keys,
    receiver: &Keys,
    how: How,
    payloads: &[(&str, &str, Vec<u8>)],
) -> Sent {
    seal_message(&user_message(), profile, sender, receiver, how, payloads).0
}

/// Seals `um` with `payloads` from `sender` to `receiver`: the package, and what the
/// sender keeps of it.
fn seal_message(
    um: &UserMessage,
    profile: &'static Profile,
    sender: &Keys,
    receiver: &Keys,
    how: How,
    payloads: &[(&str, &str, Vec<u8>)],
) -> (Sent, SentMessage) {
    let mut readers: Vec<&[u8]> = payloads.iter().map(|p| &p.2[..]).collect();
    let outgoing: Vec<OutgoingPayload<'_>> = payloads
        .iter()
        .zip(readers.iter_mut())
        .map(|(p, r)| OutgoingPayload {
            content_id: p.0.into(),
            mime_type: p.1.into(),
            properties: vec![],
            content: r as &mut dyn Read,
            content_is_gzip: false,
            reopen: None,
            sha256: None,
        })
        .collect();

    let policy = SendPolicy::new(
        profile,
        how.token,
        &sender.sign_key,
        &sender.sign_cert,
        how.encrypt.then_some(&*receiver.enc_cert),
        how.compress,
    );
    let mut bytes = Vec::new();
    let sent = send(um, outgoing, &policy, &mut bytes).unwrap();
    assert!(!sent.references.is_empty());
    let content_type = sent.content_type.clone();
    (
        Sent {
            bytes,
            content_type,
        },
        sent,
    )
}

/// `keys`' signing identity on the 1.15 profile.
fn identity(keys: &Keys, token: TokenReference) -> SigningIdentity<'_> {
    SigningIdentity {
        profile: &AS4_1_15,
        key: &keys.sign_key,
        certificate: &keys.sign_cert,
        token_reference: token,
    }
}

/// A SOAP message travelling alone (a signal), as a package.
fn soap_package(xml: &str) -> MimePackage {
    use varti_as4::message::mime::{ContentType, Headers};
    MimePackage::single(
        ContentType::parse("application/soap+xml").unwrap(),
        Headers::new(),
        xml.as_bytes().to_vec(),
    )
}

/// A 1.15 policy for signals: signed by `signer`, nothing to decrypt.
fn signals_from(signer: &openssl::x509::X509) -> ReceivePolicy {
    let mut p = ReceivePolicy::strict(&AS4_1_15);
    p.require_encryption = false;
    p.trust_anchors = vec![signer.clone()];
    p
}

/// A 1.15 policy for signals neither signed nor encrypted.
fn unsigned_signals() -> ReceivePolicy {
    let mut p = ReceivePolicy::strict(&AS4_1_15);
    p.require_signature = false;
    p.require_encryption = false;
    p
}

fn receiver_policy(
    profile: &'static Profile,
    sender: &Keys,
    receiver: &Keys,
    encrypt: bool,
    spool: &Path,
) -> ReceivePolicy {
    let mut p = ReceivePolicy::strict(profile);
    p.require_encryption = encrypt;
    p.decryption = Some((receiver.enc_key.clone().into(), receiver.enc_cert.clone()));
    p.partner_certificates = vec![sender.sign_cert.clone()];
    p.trust_anchors = vec![sender.sign_cert.clone()];
    p.spool_dir = Some(spool.to_path_buf());
    p
}

fn open(
    sent: &Sent,
    policy: &ReceivePolicy,
) -> Result<varti_as4::inbound::ReceivedMessage, EbmsError> {
    let pkg = MimePackage::parse(&sent.bytes[..], &sent.content_type, &MimeLimits::default())
        .map_err(|e| e.to_ebms())?;
    receive(&pkg, policy)
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Asserts that `xmlsec1 --verify` accepts the SOAP envelope of `sent` with the signer's
/// certificate as the key, and refuses it once eb:Messaging is changed.
fn xmlsec1_verifies(sent: &Sent, signer: &openssl::x509::X509, what: &str) {
    let pkg =
        MimePackage::parse(&sent.bytes[..], &sent.content_type, &MimeLimits::default()).unwrap();
    let envelope = String::from_utf8(pkg.root().content.clone()).unwrap();
    if let Err(stderr) = xmlsec1_verify(&envelope, signer) {
        panic!("{what}: xmlsec1 refused Varti's message: {stderr}");
    }
    let changed = envelope.replace("<eb:Action>Deliver<", "<eb:Action>Delivex<");
    assert_ne!(changed, envelope, "{what}: no eb:Action to change");
    assert!(
        xmlsec1_verify(&changed, signer).is_err(),
        "{what}: xmlsec1 accepted a changed eb:Messaging"
    );
}

const PROFILES: [&Profile; 3] = [&AS4_1_15, &AS4_2_0_EDDSA, &AS4_2_0_ECDSA];

#[test]
fn round_trips_every_profile_token_reference_and_payload_set() {
    let big = content(5 * 1024 * 1024, 9);
    for profile in PROFILES {
        let alice = keys(profile, "alice");
        let bob = keys(profile, "bob");
        let sets: Vec<Vec<(&str, &str, Vec<u8>)>> = vec![
            vec![],
            vec![("p1@test", "application/xml", b"<doc>hello</doc>".to_vec())],
            vec![
                ("empty@test", "application/octet-stream", vec![]),
                ("small@test", "text/plain", b"small\npayload\n".to_vec()),
                ("big@test", "application/octet-stream", big.clone()),
            ],
            // Five parts (the most the acceptance list names), one of them empty, one
            // large enough to be spilled to a file on receipt.
            vec![
                ("a1@test", "application/octet-stream", vec![]),
                ("a2@test", "text/plain", b"x".to_vec()),
                (
                    "a3@test",
                    "application/xml",
                    "<doc xmlns=\"urn:t\">\u{e9}t\u{e9}</doc>"
                        .as_bytes()
                        .to_vec(),
                ),
                ("a4@test", "application/octet-stream", content(70 * 1024, 4)),
                ("a5@test", "application/pdf", content(1536 * 1024, 5)),
            ],
        ];
        for token in [
            TokenReference::BinarySecurityToken,
            TokenReference::SubjectKeyIdentifier,
            TokenReference::IssuerSerial,
        ] {
            for (i, set) in sets.iter().enumerate() {
                for compress in [false, true] {
                    for encrypt in [false, true] {
                        // The 5 MB set once per profile and flag pair, not per token.
                        if i == 2 && token != TokenReference::BinarySecurityToken {
                            continue;
                        }
                        let what = format!(
                            "{} {token:?} set {i} compress {compress} encrypt {encrypt}",
                            profile.name
                        );
                        let spool = tempfile::tempdir().unwrap();
                        let how = How {
                            token,
                            compress,
                            encrypt,
                        };
                        let sent = seal(profile, &alice, &bob, how, set);
                        let policy = receiver_policy(profile, &alice, &bob, encrypt, spool.path());
                        let msg = open(&sent, &policy).unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(msg.payloads.len(), set.len(), "{what}");
                        for (p, (cid, mt, data)) in msg.payloads.iter().zip(set) {
                            assert_eq!(&p.content_id, cid, "{what}");
                            assert_eq!(&p.mime_type, mt, "{what}");
                            assert_eq!(p.was_compressed, compress, "{what}");
                            assert_eq!(&read_payload(p), data, "{what}");
                            assert_eq!(p.sha256, openssl::sha::sha256(data), "{what}");
                        }
                        let sig = msg.signature.as_ref().unwrap();
                        assert_eq!(sig.token_reference, token, "{what}");
                        // The independent verifier where it knows the algorithm: xmlsec1
                        // has RSA and ECDSA but no Ed25519, and no SwA attachment
                        // transform, so it checks the messages without attachments.
                        if set.is_empty() && !std::ptr::eq(profile, &AS4_2_0_EDDSA) {
                            xmlsec1_verifies(&sent, &alice.sign_cert, &what);
                        }
                        assert_eq!(sig.references.len(), 2 + set.len(), "{what}");
                        assert_eq!(
                            msg.encryption.is_some(),
                            encrypt && !set.is_empty(),
                            "{what}"
                        );
                        // Payloads past the memory bound have a spool file each.
                        let spilled = set
                            .iter()
                            .filter(|(_, _, d)| d.len() > varti_as4::spool::SPOOL_MEMORY_MAX)
                            .count();
                        assert_eq!(files_in(spool.path()), spilled, "{what}");
                        drop(msg);
                        assert_eq!(
                            files_in(spool.path()),
                            0,
                            "{what}: payload files outlive the message"
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attack corpus
// ---------------------------------------------------------------------------------------

struct Fixture {
    alice: Keys,
    bob: Keys,
    spool: tempfile::TempDir,
}

fn fixture() -> Fixture {
    Fixture {
        alice: keys(&AS4_1_15, "alice"),
        bob: keys(&AS4_1_15, "bob"),
        spool: tempfile::tempdir().unwrap(),
    }
}

fn payload() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![("p1@test", "application/octet-stream", content(4000, 3))]
}

impl Fixture {
    /// [`payload`] from alice to bob on the 1.15 profile.
    fn seal(&self, token: TokenReference, compress: bool, encrypt: bool) -> Sent {
        let how = How {
            token,
            compress,
            encrypt,
        };
        seal(&AS4_1_15, &self.alice, &self.bob, how, &payload())
    }

    /// Alice's 1.15 policy for sending to bob (BST), compressing when `compress` and
    /// encrypting for bob when `encrypt`.
    fn send_policy(&self, compress: bool, encrypt: bool) -> SendPolicy<'_> {
        SendPolicy::new(
            &AS4_1_15,
            BST,
            &self.alice.sign_key,
            &self.alice.sign_cert,
            encrypt.then_some(&*self.bob.enc_cert),
            compress,
        )
    }

    /// Bob's 1.15 policy for alice's messages, requiring encryption when `encrypt`.
    fn policy(&self, encrypt: bool) -> ReceivePolicy {
        receiver_policy(
            &AS4_1_15,
            &self.alice,
            &self.bob,
            encrypt,
            self.spool.path(),
        )
    }

    /// Asserts that `sent` is refused with `code` and `reason` in the detail, and leaves
    /// no payload file.
    fn refused(&self, sent: &Sent, policy: &ReceivePolicy, code: ErrorCode, reason: &str) {
        let e = open(sent, policy)
            .err()
            .unwrap_or_else(|| panic!("accepted, expected {code:?} ({reason})"));
        assert_eq!(e.code, code, "{e}");
        assert!(
            e.detail.to_lowercase().contains(reason),
            "expected '{reason}' in: {e}"
        );

        assert_eq!(
            files_in(self.spool.path()),
            0,
            "a refused message left payload files"
        );
    }

    /// A message alice signs by hand: `part` in the header, the signature covering the
    /// `covered` attachments, and one MIME part `p1@test` of `content_type` holding `body`.
    fn signed_by_hand(
        &self,
        part: PartInfo,
        covered: &[&dyn AttachmentSource],
        content_type: &str,
        body: &[u8],
    ) -> Sent {
        let envelope = self.envelope_signed_by_hand(vec![part], covered);
        package(envelope.as_bytes(), &[("p1@test", content_type, body)])
    }

    /// The envelope of a message alice signs by hand: `parts` in the header, the signature
    /// covering the `covered` attachments.
    fn envelope_signed_by_hand(
        &self,
        parts: Vec<PartInfo>,
        covered: &[&dyn AttachmentSource],
    ) -> String {
        use varti_as4::message::soap::{build_envelope, BuildOptions};
        use varti_as4::security::sign::{sign_envelope, SECURITY_HEADER_PLACEHOLDER};
        let mut um = user_message();
        um.parts = parts;
        let m = Messaging {
            id: Some("_m".into()),
            user_message: Some(um),
            signals: vec![],
        };
        let options = BuildOptions {
            body_id: Some("_b"),
            extra_headers: vec![SECURITY_HEADER_PLACEHOLDER],
            body_payload: None,
        };
        let env = build_envelope(&m, &options).unwrap();
        sign_envelope(&env, &identity(&self.alice, BST), covered)
            .unwrap()
            .envelope
    }
}

/// A MIME package of `root` and `attachments` (Content-ID, media type, body).
fn package(root: &[u8], attachments: &[(&str, &str, &[u8])]) -> Sent {
    let mut bytes = Vec::new();
    let mut w = MimeWriter::new(&mut bytes);
    let content_type = w.content_type();
    w.write_root(root).unwrap();
    for &(cid, media_type, mut body) in attachments {
        w.write_attachment(cid, media_type, &[], &mut body).unwrap();
    }
    w.finish().unwrap();
    Sent {
        bytes,
        content_type,
    }
}

/// Re-packages a message with the root and the attachment bodies changed.
fn repackage(
    sent: &Sent,
    root: impl Fn(String) -> String,
    body: impl Fn(Vec<u8>) -> Vec<u8>,
) -> Sent {
    let pkg =
        MimePackage::parse(&sent.bytes[..], &sent.content_type, &MimeLimits::default()).unwrap();
    let root = root(String::from_utf8(pkg.root().content.clone()).unwrap());
    let parts: Vec<(&str, &str, Vec<u8>)> = pkg
        .attachments()
        .iter()
        .map(|a| {
            let mut data = Vec::new();
            a.body().unwrap().read_to_end(&mut data).unwrap();
            (a.content_id().unwrap(), a.content_type(), body(data))
        })
        .collect();
    let parts: Vec<(&str, &str, &[u8])> = parts.iter().map(|(c, t, d)| (*c, *t, &d[..])).collect();
    package(root.as_bytes(), &parts)
}

/// `sent` with its SOAP envelope changed by `root`.
fn with_root(sent: &Sent, root: impl Fn(String) -> String) -> Sent {
    repackage(sent, root, |b| b)
}

/// `sent` with every attachment's body changed by `body`.
fn with_bodies(sent: &Sent, body: impl Fn(Vec<u8>) -> Vec<u8>) -> Sent {
    repackage(sent, |r| r, body)
}

/// The span of `r` from the first `start` to the end of the first `end` after it.
fn span(r: &str, start: &str, end: &str) -> std::ops::Range<usize> {
    let a = r.find(start).unwrap();
    a..a + r[a..].find(end).unwrap() + end.len()
}

#[test]
fn attachment_changed_after_signing_is_refused() {
    let f = fixture();
    let sent = f.seal(BST, false, false);
    let swapped = with_bodies(&sent, |mut b| {
        b[10] ^= 1;
        b
    });
    let e = open(&swapped, &f.policy(false)).unwrap_err();
    assert!(
        e.ref_to_message_id
            .as_deref()
            .is_some_and(|id| id.ends_with("@test")),
        "the error names the message: {e}"
    );
    let reason = "changed after signing";
    f.refused(
        &swapped,
        &f.policy(false),
        ErrorCode::FailedAuthentication,
        reason,
    );
}

/// A payload's known SHA-256 (what the store recorded as it came in) is the signed digest
/// of a part sent as those bytes (uncompressed) of a type digested as it is, without the
/// part being read for it: a wrong one is signed as given, and the receiver's check of the
/// part refuses the message. An XML part (canonicalized for its digest) and a compressed
/// part are read for their digest whatever is given.
#[test]
fn a_known_sha256_is_signed_for_an_uncompressed_part_and_checked_by_the_receiver() {
    let f = fixture();
    let seal = |mime: &str, body: &[u8], compress: bool, known: [u8; 32]| {
        let mut reader = body;
        let outgoing = vec![OutgoingPayload {
            content_id: "p1@test".into(),
            mime_type: mime.into(),
            properties: vec![],
            content: &mut reader,
            content_is_gzip: false,
            reopen: None,
            sha256: Some(known),
        }];
        let mut bytes = Vec::new();
        let sent = send(
            &user_message(),
            outgoing,
            &f.send_policy(compress, true),
            &mut bytes,
        );
        let sent = sent.unwrap();
        let reference = sent.references.iter().find(|r| r.uri == "cid:p1@test");
        let digest = reference.expect("the part is signed").digest.clone();
        let content_type = sent.content_type;
        (
            Sent {
                bytes,
                content_type,
            },
            digest,
        )
    };
    let pdf = [&b"%PDF-1.7\n"[..], &content(4000, 3)].concat();
    let right = openssl::sha::sha256(&pdf);
    let (sent, digest) = seal("application/pdf", &pdf, false, right);
    assert_eq!(digest, right);
    let received = open(&sent, &f.policy(true)).unwrap();
    assert_eq!(received.payloads[0].sha256, right);
    drop(received);

    let wrong = [7u8; 32];
    let (sent, digest) = seal("application/pdf", &pdf, false, wrong);
    assert_eq!(digest, wrong, "signed as given, not read");
    let reason = "changed after signing";
    f.refused(
        &sent,
        &f.policy(true),
        ErrorCode::FailedAuthentication,
        reason,
    );

    let xml = b"<?xml version=\"1.0\"?>\n<doc>known</doc>".to_vec();
    let noise = content(4000, 3);
    for (mime, body, compress) in [
        ("application/xml", &xml, false),
        ("application/octet-stream", &noise, true),
    ] {
        let (sent, digest) = seal(mime, body, compress, wrong);
        assert_ne!(digest, wrong, "{mime}: read for its digest");
        let received = open(&sent, &f.policy(true)).unwrap();
        assert_eq!(received.payloads[0].sha256, openssl::sha::sha256(body));
    }
}

#[test]
fn unsigned_attachment_is_refused() {
    let f = fixture();
    // Signed without payloads; then a payload is added to the header after signing is
    // impossible (the header is signed), so add an unsigned MIME part the header names
    // by building the message by hand: PartInfo present, no cid reference.
    let part = PartInfo::attachment("p1@test");
    let sent = f.signed_by_hand(part, &[], "application/octet-stream", b"sneaked in");
    let reason = "not covered by the signature";
    f.refused(
        &sent,
        &f.policy(false),
        ErrorCode::PolicyNoncompliance,
        reason,
    );
}

#[test]
fn signature_wrapping_variants_are_refused() {
    let f = fixture();
    let sent = f.seal(BST, false, false);
    let p = f.policy(false);
    // 1. A second (forged) eb:Messaging beside the signed one.
    let dup = with_root(&sent, |r| {
        let m = span(&r, "<eb:Messaging", "</eb:Messaging>");
        let forged = r[m.clone()].replace("wsu:Id=\"", "wsu:Id=\"forged");
        format!("{}{}{}", &r[..m.end], forged, &r[m.end..])
    });
    f.refused(&dup, &p, ErrorCode::FailedAuthentication, "eb:messaging");
    // 2. The signed eb:Messaging re-parented into a wrapper header, a forged one in place.
    let moved = with_root(&sent, |r| {
        let m = span(&r, "<eb:Messaging", "</eb:Messaging>");
        let original = &r[m.clone()];
        let forged = original
            .replace("wsu:Id=\"", "wsu:Id=\"x")
            .replace("Deliver", "Steal");
        format!(
            "{}<w:Wrap xmlns:w=\"urn:w\">{original}</w:Wrap>{forged}{}",
            &r[..m.start],
            &r[m.end..]
        )
    });
    f.refused(&moved, &p, ErrorCode::FailedAuthentication, "eb:messaging");
    // 3. The signed Body moved into the header, a new Body in place.
    let body_moved = with_root(&sent, |r| {
        let start = r.find("<S12:Body").unwrap();
        let end = r.find("</S12:Envelope>").unwrap();
        let body = r[start..end].to_string();
        let hdr_end = r.find("</S12:Header>").unwrap();
        format!("{}<w:Wrap xmlns:w=\"urn:w\">{body}</w:Wrap>{}<S12:Body><evil/></S12:Body></S12:Envelope>", &r[..hdr_end], &r[hdr_end..start])
    });
    f.refused(&body_moved, &p, ErrorCode::FailedAuthentication, "");
    // 4. A second element carrying eb:Messaging's wsu:Id, for the reference to resolve to.
    let dup_id = with_root(&sent, |r| {
        let m = &r[r.find("<eb:Messaging").unwrap()..];
        let m = &m[m.find("wsu:Id=\"").unwrap() + 8..];
        let id = &m[..m.find('"').unwrap()];
        let body = r.find("<S12:Body").unwrap();
        let close = body + r[body..].find("/>").unwrap();
        format!(
            "{}><x:Fake xmlns:x=\"urn:x\" xmlns:wsu=\"{WSU_NS}\" wsu:Id=\"{id}\"/></S12:Body>{}",
            &r[..close],
            &r[close + 2..]
        )
    });
    f.refused(&dup_id, &p, ErrorCode::FailedAuthentication, "duplicate");
}

#[test]
fn certificates_expired_not_yet_valid_or_untrusted_are_refused() {
    let auth = ErrorCode::FailedAuthentication;
    let f = fixture();
    let sent = f.seal(BST, true, true);
    let mut p = f.policy(true);
    p.at = OffsetDateTime::now_utc() + Duration::days(400);
    f.refused(&sent, &p, auth, "expired");
    p.at = OffsetDateTime::now_utc() - Duration::days(3);
    f.refused(&sent, &p, auth, "not valid before");
    let mut p = f.policy(true);
    p.trust_anchors = vec![keys(&AS4_1_15, "mallory").sign_cert];
    f.refused(&sent, &p, auth, "not trusted");
    let mut p = f.policy(true);
    p.trust_anchors.clear();
    f.refused(&sent, &p, ErrorCode::PolicyNoncompliance, "no trust anchor");
}

#[test]
fn wrong_algorithm_for_the_profile_is_refused() {
    let alice = keys(&AS4_2_0_EDDSA, "alice");
    let bob = keys(&AS4_2_0_EDDSA, "bob");
    let f = fixture();
    let mut how = How {
        token: BST,
        compress: false,
        encrypt: false,
    };
    let sent = seal(&AS4_2_0_EDDSA, &alice, &bob, how, &payload());
    let mut p = f.policy(false);
    p.trust_anchors = vec![alice.sign_cert.clone()];
    f.refused(&sent, &p, ErrorCode::PolicyNoncompliance, "eddsa");
    // Encrypted with the 2.0 key transport, received on a 1.15 leg.
    how.encrypt = true;
    let sent = seal(&AS4_2_0_EDDSA, &alice, &bob, how, &payload());
    let mut p = receiver_policy(&AS4_2_0_EDDSA, &alice, &bob, true, f.spool.path());
    p.key_transports = varti_as4::security::encrypt::DecryptionPolicy::as4_v1();
    f.refused(&sent, &p, ErrorCode::PolicyNoncompliance, "x25519");
}

#[test]
fn unsigned_or_unencrypted_messages_are_refused_when_the_leg_requires_it() {
    let f = fixture();
    let sent = f.seal(BST, false, false);
    let noncompliant = ErrorCode::PolicyNoncompliance;
    f.refused(&sent, &f.policy(true), noncompliant, "not encrypted");
    let stripped = with_root(&sent, |r| {
        let security = span(&r, "<wsse:Security", "</wsse:Security>");
        format!("{}{}", &r[..security.start], &r[security.end..])
    });
    f.refused(&stripped, &f.policy(false), noncompliant, "not signed");
}

#[test]
fn truncated_ciphertext_or_wrong_tag_is_a_decryption_failure() {
    let f = fixture();
    let sent = f.seal(BST, true, true);
    let p = f.policy(true);
    let truncated = with_bodies(&sent, |mut b| {
        b.truncate(b.len() - 20);
        b
    });
    let bad_tag = with_bodies(&sent, |mut b| {
        let n = b.len();
        b[n - 1] ^= 0x80;
        b
    });
    let short = with_bodies(&sent, |mut b| {
        b.truncate(8);
        b
    });
    for broken in [truncated, bad_tag, short] {
        f.refused(&broken, &p, ErrorCode::FailedDecryption, "cid:p1@test");
    }
}

/// A signed message whose PartInfo claims gzip: the content is `body`.
fn signed_with_gzip_claim(f: &Fixture, body: &[u8]) -> Sent {
    let mut part = PartInfo::attachment("p1@test");
    part.properties = vec![
        Property::new("CompressionType", "application/gzip"),
        Property::new("MimeType", "text/plain"),
    ];
    let att = MemoryAttachment {
        content_id: "p1@test".into(),
        content_type: "application/gzip".into(),
        data: body.to_vec(),
    };
    f.signed_by_hand(part, &[&att], "application/gzip", body)
}

#[test]
fn a_signed_part_that_is_not_gzip_or_too_large_is_a_decompression_failure() {
    let f = fixture();
    let failure = ErrorCode::DecompressionFailure;
    let not_gzip = signed_with_gzip_claim(&f, b"this is not gzip");
    f.refused(&not_gzip, &f.policy(false), failure, "cid:p1@test");
    let mut gz = Vec::new();
    varti_as4::compress::gzip(&vec![0u8; 100_000][..], &mut gz).unwrap();
    let bomb = signed_with_gzip_claim(&f, &gz);
    let mut p = f.policy(false);
    p.decompression_cap = 10_000;
    f.refused(&bomb, &p, failure, "cid:p1@test");
    p.decompression_cap = 100_000;
    let msg = open(&bomb, &p).unwrap();
    assert_eq!(msg.payloads[0].len, 100_000);
    assert_eq!(msg.payloads[0].mime_type, "text/plain");
}

#[test]
fn receipts_and_error_signals_are_signed_when_the_leg_signs() {
    use varti_as4::outbound::{build_error_signal, build_receipt};
    let f = fixture();
    let sent = f.seal(TokenReference::SubjectKeyIdentifier, true, true);
    let msg = open(&sent, &f.policy(true)).unwrap();
    let bob_id = identity(&f.bob, BST);
    let alice_side = signals_from(&f.bob.sign_cert);
    // Signed NRR receipt: verifies at the sender and matches what it signed.
    let receipt = build_receipt(&msg, Some(&bob_id)).unwrap();
    let r = receive(&soap_package(&receipt), &alice_side).unwrap();
    let SignalKind::Receipt(rc) = &r.messaging().signals[0].kind else {
        panic!("not a receipt")
    };
    assert!(rc.non_repudiation.is_some(), "{receipt}");
    assert_eq!(
        r.messaging().signals[0]
            .message_info
            .ref_to_message_id
            .as_deref(),
        msg.message_id()
    );
    // Plain receipt for an unsigned leg: no signature, a copy of the UserMessage.
    let plain = build_receipt(&msg, None).unwrap();
    assert!(
        !plain.contains("Signature") && plain.contains("UserMessage"),
        "{plain}"
    );
    let r = receive(&soap_package(&plain), &unsigned_signals()).unwrap();
    assert!(r.signature.is_none());
    // Error signal, signed.
    let err = EbmsError::new(ErrorCode::FailedDecryption, "bad tag");
    let signal = build_error_signal(&err, Some("m-1@test"), Some(&bob_id)).unwrap();
    let r = receive(&soap_package(&signal), &alice_side).unwrap();
    let SignalKind::Errors(errs) = &r.messaging().signals[0].kind else {
        panic!("not an error signal")
    };
    assert_eq!(errs[0].error_code, "EBMS:0102");
    assert_eq!(errs[0].ref_to_message_in_error.as_deref(), Some("m-1@test"));
    assert!(signal.contains("SignatureValue"));
    // A WS-Security failure also carries a SOAP Fault (CP_TA35/37), inside the signed Body.
    let env = varti_as4::message::soap::parse_envelope(signal.as_bytes()).unwrap();
    assert!(env.body.is_fault(), "{signal}");
    assert!(
        signal.contains(">S12:Sender<") && signal.contains(">wsse:FailedCheck<"),
        "{signal}"
    );
    let unsigned = build_error_signal(&err, None, None).unwrap();
    assert!(!unsigned.contains("Signature"));
    assert!(unsigned.contains(">wsse:FailedCheck<"), "{unsigned}");
    let policy = EbmsError::new(ErrorCode::PolicyNoncompliance, "a <b> & c");
    let policy = build_error_signal(&policy, None, None).unwrap();
    assert!(
        policy.contains(">wsse:InvalidSecurity<") && policy.contains("a &lt;b&gt; &amp; c"),
        "{policy}"
    );
    // Other errors travel in the error signal alone.
    let content = EbmsError::new(ErrorCode::ValueInconsistent, "no");
    let content = build_error_signal(&content, None, None).unwrap();
    let env = varti_as4::message::soap::parse_envelope(content.as_bytes()).unwrap();
    assert!(!env.body.is_fault() && env.body.is_empty, "{content}");
}

#[test]
fn pull_requests_are_signed_and_name_their_mpc() {
    use varti_as4::outbound::build_pull_request;
    let f = fixture();
    let bob_id = identity(&f.bob, BST);
    let holder = signals_from(&f.bob.sign_cert);
    let signed = build_pull_request(Some("urn:example:mpc:1"), Some(&bob_id)).unwrap();
    let r = receive(&soap_package(&signed), &holder).unwrap();
    let signal = &r.messaging().signals[0];
    let SignalKind::PullRequest(pull) = &signal.kind else {
        panic!("not a pull request: {signed}")
    };
    assert_eq!(pull.mpc.as_deref(), Some("urn:example:mpc:1"));
    assert!(signal.message_info.ref_to_message_id.is_none());
    let signer = r
        .signature
        .as_ref()
        .expect("signed")
        .signer
        .to_der()
        .unwrap();
    assert_eq!(signer, f.bob.sign_cert.to_der().unwrap());
    // Signed by someone the holder does not trust: refused.
    let other = signals_from(&f.alice.sign_cert);
    assert_eq!(
        receive(&soap_package(&signed), &other).unwrap_err().code,
        ErrorCode::FailedAuthentication
    );
    // The default MPC is left implicit; unsigned when no identity is given.
    let plain = build_pull_request(Some(DEFAULT_MPC), None).unwrap();
    assert!(
        !plain.contains("Signature") && !plain.contains("mpc="),
        "{plain}"
    );
    let r = receive(&soap_package(&plain), &unsigned_signals()).unwrap();
    assert!(matches!(
        &r.messaging().signals[0].kind,
        SignalKind::PullRequest(PullRequest { mpc: None })
    ));
}

/// Sealing the same message again (a retry after a restart, or the other instance of an
/// active-active pair taking it over) signs the same digests, so the receipt the receiver
/// kept for the first copy — it answers a duplicate with that one — is accepted for the
/// second; a different message's receipt still is not.
#[test]
fn resealing_a_message_signs_the_same_digests() {
    use varti_as4::outbound::{build_receipt, check_receipt};
    let f = fixture();
    let how = How {
        token: BST,
        compress: true,
        encrypt: true,
    };
    let seal_again =
        |um: &UserMessage| seal_message(um, &AS4_1_15, &f.alice, &f.bob, how, &payload());
    let um = user_message();
    let (first, _) = seal_again(&um);
    let (second, second_sent) = seal_again(&um);
    assert_ne!(first.bytes, second.bytes, "a fresh content key each time");

    let msg = open(&first, &f.policy(true)).unwrap();
    let receipt = build_receipt(&msg, Some(&identity(&f.bob, BST))).unwrap();
    let r = receive(&soap_package(&receipt), &signals_from(&f.bob.sign_cert)).unwrap();
    let id = um.message_info.message_id.as_str();
    check_receipt(&r, id, &second_sent.references)
        .expect("the first copy's receipt matches the second copy");

    // Another message under another id signs other digests: its receipt does not match.
    let (_, other_sent) = seal_again(&user_message());
    let err = check_receipt(&r, id, &other_sent.references).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidReceipt);
}

/// A leg that compresses leaves the media types of its `uncompressed_types` as they are:
/// that part has no `CompressionType` and travels as its own type; the XML beside it is
/// still compressed, and both arrive intact. A part of several gzip members (larger than
/// one piece) decompresses whole.
#[test]
fn listed_media_types_travel_uncompressed_beside_compressed_parts() {
    let f = fixture();
    let xml = content(3 << 20, 5);
    let pdf = content(5000, 9);
    let payloads = [
        ("doc@test", "application/xml", xml.clone()),
        ("pdf@test", "application/pdf; name=x.pdf", pdf.clone()),
    ];
    let mut readers: Vec<&[u8]> = payloads.iter().map(|p| &p.2[..]).collect();
    let outgoing: Vec<OutgoingPayload<'_>> = payloads
        .iter()
        .zip(readers.iter_mut())
        .map(|(p, r)| OutgoingPayload {
            content_id: p.0.into(),
            mime_type: p.1.into(),
            properties: vec![],
            content: r as &mut dyn Read,
            content_is_gzip: false,
            reopen: None,
            sha256: None,
        })
        .collect();
    let listed = vec!["application/pdf".to_owned()];
    let policy = SendPolicy {
        uncompressed_types: &listed,
        ..f.send_policy(true, true)
    };
    let mut bytes = Vec::new();
    let sent = send(&user_message(), outgoing, &policy, &mut bytes).unwrap();
    let sent = Sent {
        bytes,
        content_type: sent.content_type,
    };
    let msg = open(&sent, &f.policy(true)).unwrap();
    let [doc, p] = &msg.payloads[..] else {
        panic!("two payloads")
    };
    assert!(doc.was_compressed);
    assert_eq!(read_payload(doc), xml);
    assert!(!p.was_compressed);
    assert_eq!(p.mime_type, "application/pdf; name=x.pdf");
    assert!(p.properties.iter().all(|q| q.name != "CompressionType"));
    assert_eq!(read_payload(p), pdf);
}

/// A payload the store keeps in gzip is handed over as gzip: sent as it is on a part the
/// leg compresses (no second compression; read where it is when it can be read again),
/// inflated while spooled for a part the leg leaves uncompressed. Both arrive as the
/// payload's bytes.
#[test]
fn a_payload_given_in_gzip_is_sent_as_it_is_or_inflated_when_left_uncompressed() {
    let f = fixture();
    let gzip = |bytes: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, bytes).unwrap();
        enc.finish().unwrap()
    };
    let xml = content(200_000, 5);
    let pdf = content(100_000, 9);
    let payloads = [
        ("doc@test", "application/xml", gzip(&xml)),
        ("pdf@test", "application/pdf", gzip(&pdf)),
    ];
    let mut readers: Vec<&[u8]> = payloads.iter().map(|p| &p.2[..]).collect();
    // Both can be read again: the XML's gzip is read where it is, twice (the signature's
    // digest, the package); the PDF's is not, as it goes out inflated.
    let reads = std::cell::Cell::new(0);
    let reopeners: Vec<Box<Reopen<'_>>> = payloads
        .iter()
        .map(|p| {
            let bytes = p.2.clone();
            let reads = &reads;
            Box::new(move || {
                reads.set(reads.get() + 1);
                Ok(Box::new(std::io::Cursor::new(bytes.clone())) as Box<dyn Read>)
            }) as Box<Reopen<'_>>
        })
        .collect();
    let outgoing: Vec<OutgoingPayload<'_>> = payloads
        .iter()
        .zip(readers.iter_mut())
        .zip(&reopeners)
        .map(|((p, r), reopen)| OutgoingPayload {
            content_id: p.0.into(),
            mime_type: p.1.into(),
            properties: vec![],
            content: r as &mut dyn Read,
            content_is_gzip: true,
            reopen: Some(&**reopen),
            sha256: None,
        })
        .collect();
    let listed = vec!["application/pdf".to_owned()];
    let policy = SendPolicy {
        uncompressed_types: &listed,
        ..f.send_policy(true, false)
    };
    let mut bytes = Vec::new();
    let sent = send(&user_message(), outgoing, &policy, &mut bytes).unwrap();
    // Unencrypted, so the parts on the wire can be compared with what was given.
    let package =
        MimePackage::parse(&bytes[..], &sent.content_type, &MimeLimits::default()).unwrap();
    let wire = |cid: &str| {
        let mut out = Vec::new();
        package
            .attachments()
            .iter()
            .find(|a| a.content_id() == Some(cid))
            .unwrap()
            .body()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    assert_eq!(reads.get(), 2, "the XML's gzip read where it is, twice");
    assert_eq!(wire("doc@test"), payloads[0].2, "the gzip as given");
    assert_eq!(wire("pdf@test"), pdf, "inflated");
    let sent = Sent {
        bytes,
        content_type: sent.content_type,
    };
    let msg = open(&sent, &f.policy(false)).unwrap();
    let [doc, p] = &msg.payloads[..] else {
        panic!("two payloads")
    };
    assert!(doc.was_compressed);
    assert_eq!(read_payload(doc), xml);
    assert!(!p.was_compressed);
    assert_eq!(read_payload(p), pdf);
}

/// A delivered payload's bytes (from memory or its spool file).
fn read_payload(p: &varti_as4::inbound::DeliveredPayload) -> Vec<u8> {
    let mut out = Vec::new();
    p.open().unwrap().read_to_end(&mut out).unwrap();
    out
}

/// A part that two PartInfos name is delivered to each, when the receiver keeps decrypted
/// files as they are (`keep_decrypted`): one decrypted file can become one payload only, so
/// the second is a copy — not a second move of the first, which used to panic.
#[test]
fn a_decrypted_part_named_by_two_part_infos_is_delivered_twice() {
    use varti_as4::inbound::key_protection_for;
    use varti_as4::security::encrypt::{encrypt_parts, EncryptionSettings, PlainPart};
    let f = fixture();
    // Past the bound of a spool buffer in memory: the part is decrypted into a file.
    let plain = content(200_000, 9);
    let part = || {
        let mut part = PartInfo::attachment("p1@test");
        part.properties = vec![Property::new("MimeType", "application/octet-stream")];
        part
    };
    let covered = MemoryAttachment {
        content_id: "p1@test".into(),
        content_type: "application/octet-stream".into(),
        data: plain.clone(),
    };
    let signed = f.envelope_signed_by_hand(vec![part(), part()], &[&covered]);
    // Sign, then encrypt: the encryption's elements go first in the security header.
    let mut ciphertext = Vec::new();
    let header = encrypt_parts(
        &EncryptionSettings {
            receiver_cert: &f.bob.enc_cert,
            key_protection: key_protection_for(&AS4_1_15),
            token_reference: BST,
        },
        [PlainPart {
            content_id: "p1@test",
            content_type: "application/octet-stream",
            plaintext: &mut &plain[..],
            ciphertext: &mut ciphertext,
        }],
    )
    .unwrap();
    let start = signed.find("<wsse:Security").unwrap();
    let tag_end = start + signed[start..].find('>').unwrap() + 1;
    let root = format!(
        "{}{}{}",
        &signed[..tag_end],
        header.to_xml(),
        &signed[tag_end..]
    );
    let sent = package(
        root.as_bytes(),
        &[("p1@test", "application/octet-stream", &ciphertext)],
    );

    let mut policy = f.policy(true);
    policy.keep_decrypted = true;
    let msg = open(&sent, &policy).expect("accepted");
    assert_eq!(msg.payloads.len(), 2);
    for p in &msg.payloads {
        assert_eq!(p.len, plain.len() as u64);
        assert!(read_payload(p) == plain, "a payload differs from the part");
    }
}
