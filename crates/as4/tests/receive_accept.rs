//! The single inbound call, `receive::accept`: a user message sealed by varti-a (with the
//! leg builders of `varti_as4::leg`) and received by varti-b under PModes that point at
//! the test PKI in `certs/`. Accepted with a receipt, or refused with the error signal,
//! signed exactly when the message was attributed to a leg that signs.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use time::OffsetDateTime;
use varti_as4::error::ErrorCode;
use varti_as4::leg::{self, MessageFields};
use varti_as4::message::mime::{MimeError, MimeLimits, MimePackage};
use varti_as4::message::model::{
    MessageInfo, PartyId, Property, SignalKind, UserMessage, TEST_ACTION, TEST_SERVICE,
};
use varti_as4::message::soap;
use varti_as4::outbound::{send, OutgoingPayload};
use varti_as4::pmode::model::{Leg, PModeSet};
use varti_as4::receive::{
    accept, accept_package, Accepted, Arrival, EarlyDecryption, LocalIdentity, Refusal,
};
use varti_as4::security::dom::XmlDocument;
use varti_as4::security::token::NS_DS;
use varti_as4::spool::{Spool, SpoolBudget};

const PARTY_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered";

fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../certs")
}

fn key(rel: &str) -> PKey<Private> {
    PKey::private_key_from_pem(&std::fs::read(certs().join(rel)).unwrap()).unwrap()
}

fn cert(rel: &str) -> X509 {
    X509::from_pem(&std::fs::read(certs().join(rel)).unwrap()).unwrap()
}

/// PModes between varti-a and varti-b: leg `signed` (signed, encrypted, NRR receipts, a
/// required property and a one-part XML payload profile of 1 KiB), leg `plain` (neither
/// signed nor encrypted, plain receipts, the same property and payload rules) and leg
/// `large` (as `signed`, with a part of up to 1 MiB), and `large-uncompressed` (as `large`,
/// uncompressed).
fn pmodes(dir: &Path) -> PModeSet {
    let c = certs();
    let c = c.display();
    let parties = ["varti-a", "varti-b"].map(|p| {
        let ids = format!("[{{ value = \"{p}\", type = \"{PARTY_TYPE}\" }}]");
        let sign = format!("signing_cert = \"{c}/{p}/sign.cert.pem\"");
        let enc = format!("encryption_cert = \"{c}/{p}/enc.cert.pem\"");
        format!("[[party]]\nname = \"{p}\"\nids = {ids}\n{sign}\n{enc}\n\n")
    });
    let toml = parties.concat()
        + r#"
[security.default]
profile = "as4-1.15"
sign = true
encrypt = true
token_reference = "bst"

[security.plain]
sign = false
encrypt = false

[receipt.plain]
non_repudiation = false

[compression.default]
enabled = true
max_decompressed_size = "1MiB"

[compression.off]
enabled = false

[properties.default]
required = ["originalSender"]
optional = ["finalRecipient"]

[payload.default]

[[payload.default.part]]
name = "document"
mime_types = ["application/xml"]
max_size = "1KiB"

[payload.large]
[[payload.large.part]]
name = "document"
mime_types = ["application/xml", "application/pdf"]
max_size = "1MiB"

[[process]]
name = "exchange"
mep = "oneWay"
binding = "push"
initiator = { parties = ["varti-a", "varti-b"] }
responder = { parties = ["varti-a", "varti-b"] }

[[process.leg]]
name = "signed"
service = "urn:test:service"
action = "Deliver"

[[process.leg]]
name = "plain"
service = "urn:test:service"
action = "Plain"
security = "plain"
receipt = "plain"

[[process.leg]]
name = "large"
service = "urn:test:service"
action = "Large"
payload = "large"

[[process.leg]]
name = "large-uncompressed"
service = "urn:test:service"
action = "LargeUncompressed"
payload = "large"
compression = "off"
"#;
    std::fs::write(dir.join("exchange.toml"), toml).unwrap();
    let (set, diags) = varti_as4::pmode::load_dir(dir);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    set
}

/// varti-b, the receiving side: its own keys, the partners' signing certificates, no CA
/// (each partner's certificate pinned).
fn varti_b() -> LocalIdentity {
    LocalIdentity {
        party: "varti-b".into(),
        signing_key: key("varti-b/sign.key.pem").into(),
        signing_cert: cert("varti-b/sign.cert.pem"),
        encryption_key: key("varti-b/enc.key.pem").into(),
        encryption_cert: cert("varti-b/enc.cert.pem"),
        trust_anchors: Vec::new(),
        partner_signing_certs: HashMap::from([
            ("varti-a".to_owned(), cert("varti-a/sign.cert.pem")),
            ("varti-b".to_owned(), cert("varti-b/sign.cert.pem")),
        ]),
        partner_next_signing_certs: HashMap::new(),
        next_signing: None,
        dynamic_anchors: HashMap::new(),
    }
}

fn leg<'a>(set: &'a PModeSet, name: &str) -> &'a Leg {
    set.legs.iter().find(|l| l.name == name).unwrap()
}

fn party(value: &str) -> PartyId {
    PartyId {
        value: value.into(),
        type_: Some(PARTY_TYPE.into()),
    }
}

/// What a test message says: everything the leg does not fix.
struct Msg {
    from: &'static str,
    to: &'static str,
    service: Option<&'static str>,
    action: Option<&'static str>,
    properties: Vec<Property>,
    mime_type: &'static str,
    content: Vec<u8>,
    /// Who signs: varti-a's key (the sender's own) unless another is named.
    signer: &'static str,
}

impl Msg {
    fn good() -> Msg {
        Msg {
            from: "varti-a",
            to: "varti-b",
            service: None,
            action: None,
            properties: vec![Property::new("originalSender", "urn:c1")],
            mime_type: "application/xml",
            content: b"<doc>hello</doc>".to_vec(),
            signer: "varti-a",
        }
    }
}

/// Seals `msg` on `leg` as the running access point does: `leg::user_message` and
/// `leg::send_policy`. Returns the package as varti-b reads it, and the user message.
fn seal(set: &PModeSet, leg_name: &str, msg: Msg) -> (MimePackage, UserMessage) {
    let (bytes, content_type, um) = seal_wire(set, leg_name, msg);
    let package = MimePackage::parse(&bytes[..], &content_type, &MimeLimits::default()).unwrap();
    (package, um)
}

/// [`seal`], returning the package as it travels: its bytes and its Content-Type.
fn seal_wire(set: &PModeSet, leg_name: &str, msg: Msg) -> (Vec<u8>, String, UserMessage) {
    let leg = leg(set, leg_name);
    let um = leg::user_message(
        leg,
        MessageFields {
            info: MessageInfo::new(format!("{}@test", uuid::Uuid::new_v4())),
            from: party(msg.from),
            to: party(msg.to),
            service: msg.service.map(str::to_owned),
            action: msg.action.map(str::to_owned),
            conversation_id: "conversation-1".into(),
            properties: msg.properties,
        },
    );
    let sign_key = key(&format!("{}/sign.key.pem", msg.signer));
    let sign_cert = cert(&format!("{}/sign.cert.pem", msg.signer));
    let enc_cert = cert("varti-b/enc.cert.pem");
    let policy = leg::send_policy(leg, &sign_key, &sign_cert, Some(&enc_cert)).unwrap();
    let mut content = &msg.content[..];
    let payloads = vec![OutgoingPayload {
        content_id: "document@test".into(),
        mime_type: msg.mime_type.into(),
        properties: Vec::new(),
        content: &mut content as &mut dyn Read,
        content_is_gzip: false,
        reopen: None,
        sha256: None,
    }];
    let mut bytes = Vec::new();
    let sent = send(&um, payloads, &policy, &mut bytes).unwrap();
    (bytes, sent.content_type, um)
}

/// What every test receives with: the PModes (in a directory of their own), varti-b, and
/// the spool directory.
struct Setup {
    _pmodes_dir: tempfile::TempDir,
    set: PModeSet,
    identity: LocalIdentity,
    spool: tempfile::TempDir,
    /// The spool budget (unbounded unless a test sets one).
    budget: Arc<SpoolBudget>,
}

fn setup() -> Setup {
    let pmodes_dir = tempfile::tempdir().unwrap();
    Setup {
        set: pmodes(pmodes_dir.path()),
        _pmodes_dir: pmodes_dir,
        identity: varti_b(),
        spool: tempfile::tempdir().unwrap(),
        budget: SpoolBudget::new(u64::MAX),
    }
}

impl Setup {
    fn seal(&self, leg_name: &str, msg: Msg) -> (MimePackage, UserMessage) {
        seal(&self.set, leg_name, msg)
    }

    fn receive(&self, package: &MimePackage) -> Result<Accepted<'_>, Refusal> {
        self.receive_as(package, Arrival::Pushed)
    }

    /// [`Setup::receive`] of a message that arrived as `arrival` says.
    fn receive_as(&self, package: &MimePackage, arrival: Arrival) -> Result<Accepted<'_>, Refusal> {
        let now = OffsetDateTime::now_utc();
        accept_package(
            package,
            arrival,
            &self.set,
            &self.identity,
            now,
            &self.spool(),
        )
    }

    /// The spool directory, with a budget of `self.budget` bytes.
    fn spool(&self) -> Spool {
        Spool {
            dir: Some(self.spool.path().to_path_buf()),
            budget: Some(self.budget.clone()),
            // As the access point on the embedded store runs it: the delivered payloads'
            // files are written behind, and a large part received compressed is kept so.
            write_behind: true,
            keep_decrypted: true,
        }
    }

    /// `accept` with the envelope the caller read.
    fn accept(
        &self,
        package: &MimePackage,
        envelope: soap::Envelope,
    ) -> Result<Accepted<'_>, Refusal> {
        let now = OffsetDateTime::now_utc();
        let spool = self.spool();
        accept(
            package,
            envelope,
            Arrival::Pushed,
            &self.set,
            &self.identity,
            now,
            &spool,
        )
    }

    /// Seals `msg` on `leg_name` and asserts it is refused with `code` (see
    /// [`assert_refused`]) and leaves nothing in the spool; the refusal.
    fn refused(&self, leg_name: &str, msg: Msg, code: ErrorCode, signed: bool) -> Refusal {
        let (package, um) = self.seal(leg_name, msg);
        let refusal = self.receive(&package).unwrap_err();
        assert_refused(&refusal, code, &um.message_info.message_id, signed);
        assert_eq!(files_in(self.spool.path()), 0, "nothing left in the spool");
        refusal
    }
}

fn is_signed(envelope: &[u8]) -> bool {
    XmlDocument::parse(envelope)
        .unwrap()
        .elements()
        .into_iter()
        .any(|e| e.is(NS_DS, "Signature"))
}

/// Checks a refusal: its code, the message it refers to, and that its signal is an ebMS
/// error signal with that code and reference, signed or not as `signed` says.
fn assert_refused(refusal: &Refusal, code: ErrorCode, message_id: &str, signed: bool) {
    assert_eq!(refusal.error.code, code, "{}", refusal.error.detail);
    assert_eq!(refusal.error.ref_to_message_id.as_deref(), Some(message_id));
    let signal = refusal.signal.as_ref().expect("an error signal");
    let env = soap::parse_envelope(signal).unwrap();
    let s = &env.messaging.signals[0];
    assert_eq!(
        s.message_info.ref_to_message_id.as_deref(),
        Some(message_id)
    );
    match &s.kind {
        SignalKind::Errors(errors) => assert_eq!(errors[0].code, Some(code)),
        other => panic!("not an error signal: {other:?}"),
    }
    assert_eq!(is_signed(signal), signed, "signal signed?");
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn a_good_message_is_accepted_with_a_signed_nrr_receipt() {
    let t = setup();
    let (package, um) = t.seal("signed", Msg::good());
    let accepted = t.receive(&package).unwrap();

    assert_eq!(accepted.leg.name, "signed");
    assert_eq!(accepted.partner.name, "varti-a");
    assert!(!accepted.test_service);
    assert_eq!(accepted.message_id(), um.message_info.message_id);
    assert_eq!(
        accepted.user_message.property("originalSender"),
        Some("urn:c1")
    );
    // Decrypted and decompressed; small, so in memory, not in the spool directory.
    assert!(accepted.message.encryption.is_some());
    assert_eq!(accepted.message.payloads.len(), 1);
    let p = &accepted.message.payloads[0];
    assert!(p.was_compressed);
    assert_eq!(p.mime_type, "application/xml");
    assert!(
        p.content.file().is_none(),
        "a small payload stays in memory"
    );
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut p.open().unwrap(), &mut got).unwrap();
    assert_eq!(got, b"<doc>hello</doc>");
    // The receipt: signed by varti-b, NRR over what varti-a signed, for this message.
    let env = soap::parse_envelope(&accepted.receipt).unwrap();
    let s = &env.messaging.signals[0];
    assert_eq!(
        s.message_info.ref_to_message_id.as_deref(),
        Some(um.message_info.message_id.as_str())
    );
    assert!(matches!(s.kind, SignalKind::Receipt(_)));
    assert!(is_signed(&accepted.receipt));
    assert!(String::from_utf8_lossy(&accepted.receipt).contains("NonRepudiationInformation"));
}

#[test]
fn the_envelope_read_by_the_caller_is_used_as_is() {
    let t = setup();
    let (package, um) = t.seal("signed", Msg::good());
    let envelope = soap::parse_envelope(&package.root().content).unwrap();
    let accepted = t.accept(&package, envelope).unwrap();
    assert_eq!(accepted.message_id(), um.message_info.message_id);

    // A signal is not a user message: refused, unsigned.
    let signal = soap::parse_envelope(&accepted.receipt).unwrap();
    let refusal = t.accept(&package, signal).unwrap_err();
    assert_eq!(refusal.error.code, ErrorCode::InvalidHeader);
    assert!(!is_signed(refusal.signal.as_ref().unwrap()));
}

#[test]
fn a_leg_without_non_repudiation_gets_a_plain_unsigned_receipt() {
    let t = setup();
    let (package, _) = t.seal("plain", Msg::good());
    let accepted = t.receive(&package).unwrap();
    assert_eq!(accepted.leg.name, "plain");
    assert!(accepted.message.encryption.is_none());
    assert!(!is_signed(&accepted.receipt));
    assert!(String::from_utf8_lossy(&accepted.receipt).contains("ReceivedUserMessage"));
}

#[test]
fn a_test_service_message_is_accepted_without_the_legs_rules() {
    let t = setup();
    let msg = Msg {
        service: Some(TEST_SERVICE),
        action: Some(TEST_ACTION),
        // Neither the required property nor the payload profile's media type.
        properties: Vec::new(),
        mime_type: "text/plain",
        ..Msg::good()
    };
    let (package, _) = t.seal("signed", msg);
    let accepted = t.receive(&package).unwrap();
    assert!(accepted.test_service);
    assert!(accepted.leg.security.sign);
    assert!(is_signed(&accepted.receipt));
}

#[test]
fn no_leg_wrong_recipient_or_unknown_sender_is_refused_unsigned() {
    let t = setup();
    let cases: [(Msg, &[&str]); 3] = [
        // No leg for the action: EBMS:0010 naming the nearest leg.
        (
            Msg {
                action: Some("Delivr"),
                ..Msg::good()
            },
            &["leg 'signed'", "Action"],
        ),
        // A leg fits, but the message is for varti-a, not for us.
        (
            Msg {
                to: "varti-a",
                ..Msg::good()
            },
            &["addressed to", "varti-b"],
        ),
        // A sender that is no party of the PModes.
        (
            Msg {
                from: "varti-x",
                ..Msg::good()
            },
            &["From PartyId"],
        ),
    ];
    for (msg, details) in cases {
        let refusal = t.refused("signed", msg, ErrorCode::ProcessingModeMismatch, false);
        let detail = &refusal.error.detail;
        for expected in details {
            assert!(detail.contains(expected), "{detail}");
        }
    }
}

/// A partner's key rollover: with its next certificate in the PModes, messages signed
/// with either its current or its next certificate are accepted; without it, the new
/// signature is refused.
#[test]
fn a_partners_next_signing_certificate_is_accepted_alongside_the_current_one() {
    let mut t = setup();
    // varti-a's "current" certificate is varti-c's; it rolls over to its own.
    t.identity
        .partner_signing_certs
        .insert("varti-a".into(), cert("varti-c/sign.cert.pem"));
    t.refused("signed", Msg::good(), ErrorCode::FailedAuthentication, true);
    t.identity
        .partner_next_signing_certs
        .insert("varti-a".into(), cert("varti-a/sign.cert.pem"));
    let (package, _) = t.seal("signed", Msg::good());
    t.receive(&package)
        .expect("signed with the next certificate");
    let old = Msg {
        signer: "varti-c",
        ..Msg::good()
    };
    let (package, _) = t.seal("signed", old);
    t.receive(&package)
        .expect("signed with the current certificate");
    // Any other party's certificate is still refused.
    let other = Msg {
        signer: "varti-b",
        ..Msg::good()
    };
    t.refused("signed", other, ErrorCode::FailedAuthentication, true);
}

#[test]
fn a_signature_by_another_party_is_refused_with_a_signed_security_fault() {
    let t = setup();
    // From varti-a, but signed with varti-b's key.
    let msg = Msg {
        signer: "varti-b",
        ..Msg::good()
    };
    let refusal = t.refused("signed", msg, ErrorCode::FailedAuthentication, true);
    assert!(refusal.is_security_fault());
    assert!(String::from_utf8_lossy(refusal.signal.as_ref().unwrap()).contains("FailedCheck"));
}

#[test]
fn property_and_payload_profile_violations_are_refused_signed_when_the_leg_signs() {
    let t = setup();
    let cases: Vec<(&str, Msg, &str)> = vec![
        (
            "signed",
            Msg {
                properties: vec![Property::new("finalRecipient", "urn:c4")],
                ..Msg::good()
            },
            "`originalSender` is required",
        ),
        (
            "signed",
            Msg {
                properties: vec![
                    Property::new("originalSender", "urn:c1"),
                    Property::new("color", "blue"),
                ],
                ..Msg::good()
            },
            "`color` is not defined",
        ),
        (
            "signed",
            Msg {
                mime_type: "text/plain",
                ..Msg::good()
            },
            "",
        ),
        (
            "signed",
            Msg {
                content: vec![b'x'; 2048],
                ..Msg::good()
            },
            "",
        ),
        (
            "plain",
            Msg {
                action: Some("Plain"),
                mime_type: "text/plain",
                ..Msg::good()
            },
            "",
        ),
    ];
    for (leg_name, msg, expected) in cases {
        let mismatch = ErrorCode::ProcessingModeMismatch;
        let refusal = t.refused(leg_name, msg, mismatch, leg_name == "signed");
        assert!(!refusal.is_security_fault());
        let detail = &refusal.error.detail;
        assert!(detail.contains(expected), "{leg_name}: {detail}");
    }
}

#[test]
fn the_leg_builders_follow_the_leg() {
    let t = setup();
    let set = &t.set;
    let signed = leg(set, "signed");
    let um = leg::user_message(
        signed,
        MessageFields {
            info: MessageInfo::new("m1@test"),
            from: party("varti-a"),
            to: party("varti-b"),
            service: None,
            action: Some("Other".into()),
            conversation_id: "c1".into(),
            properties: vec![Property::new("originalSender", "urn:c1")],
        },
    );
    assert_eq!(um.mpc, None, "the default MPC is left out");
    assert_eq!(um.collaboration_info.service.value, "urn:test:service");
    assert_eq!(um.collaboration_info.action, "Other");
    assert_eq!(um.party_info.from.role, signed.from.role);
    assert_eq!(um.party_info.to.role, signed.to.role);
    assert_eq!(um.party_info.to.party_ids[0].value, "varti-b");
    assert!(um.parts.is_empty());

    // The wire id: the preferred one, else the first.
    let a = set.party("varti-a").unwrap();
    assert_eq!(leg::wire_party_id(a, "varti-a").unwrap().value, "varti-a");
    assert_eq!(leg::wire_party_id(a, "unknown").unwrap().value, "varti-a");

    // An encrypting leg needs the receiver's certificate; a plain one ignores it.
    let k = key("varti-a/sign.key.pem");
    let c = cert("varti-a/sign.cert.pem");
    let e = cert("varti-b/enc.cert.pem");
    let err = leg::send_policy(signed, &k, &c, None).err().unwrap();
    assert_eq!(err.code, ErrorCode::ProcessingModeMismatch);
    let p = leg::send_policy(signed, &k, &c, Some(&e)).unwrap();
    assert!(p.encryption.is_some() && p.compress);
    // The leg's list of media types left uncompressed: the default one here.
    assert!(p.uncompressed_types.iter().any(|t| t == "application/pdf"));
    assert_eq!(p.signing.profile.name, "eDelivery AS4 1.15");
    let p = leg::send_policy(leg(set, "plain"), &k, &c, Some(&e)).unwrap();
    assert!(p.encryption.is_none());

    // One lookup of profiles, by leg kind, by name, by signature method.
    use varti_as4::pmode::model::SecurityProfileKind;
    for kind in SecurityProfileKind::ALL {
        let profile = leg::profile_of(kind);
        assert_eq!(SecurityProfileKind::from_name(kind.name()), Some(kind));
        assert!(std::ptr::eq(
            leg::profile_named(kind.name()).unwrap(),
            profile
        ));
        assert!(std::ptr::eq(
            leg::profile_signing_with(profile.signature.uri()).unwrap(),
            profile
        ));
    }
    assert!(leg::profile_named("as4-3.0").is_none());
    assert!(leg::profile_signing_with("urn:nothing").is_none());
}

#[test]
fn a_message_must_arrive_the_way_its_leg_binds() {
    let t = setup();
    let (package, um) = t.seal("signed", Msg::good());
    // The "signed" leg is a push leg: the same message handed over as if it had come in
    // the answer to a PullRequest is refused before any security work, unsigned.
    let refusal = t.receive_as(&package, Arrival::Pulled).unwrap_err();
    assert_refused(
        &refusal,
        ErrorCode::ProcessingModeMismatch,
        &um.message_info.message_id,
        false,
    );
    assert!(refusal.error.detail.contains("pulled"), "{}", refusal.error);
    assert_eq!(files_in(t.spool.path()), 0, "nothing spooled");
}

/// The spool budget bounds what a reception writes: a compression bomb is still refused
/// as one (EBMS:0303, found by inflating on without writing once the budget is used up),
/// a message within its caps that finds no room is transient (the sender tries again),
/// and every byte is given back afterwards.
#[test]
fn the_spool_budget_bounds_disk_use_and_bombs_are_still_refused() {
    let mut t = setup();
    t.budget = SpoolBudget::new(64 * 1024);

    // 4 MiB of zeros on a leg whose parts may inflate to 1 MiB.
    let mut bomb = Msg::good();
    bomb.content = vec![0; 4 << 20];
    let (package, um) = t.seal("signed", bomb);
    let refusal = t.receive(&package).unwrap_err();
    assert_refused(
        &refusal,
        ErrorCode::DecompressionFailure,
        &um.message_info.message_id,
        true,
    );
    assert!(!refusal.error.transient);
    assert!(t.budget.peak() <= 64 * 1024, "peak {}", t.budget.peak());
    assert_eq!(t.budget.used(), 0, "every byte given back");

    // 512 KiB of text: within the cap, but more than the spool can hold now.
    let mut large = Msg::good();
    large.content = b"<doc>hello</doc>".repeat(32 * 1024);
    let (package, _) = t.seal("signed", large);
    let refusal = t.receive(&package).unwrap_err();
    assert!(refusal.error.transient, "{}", refusal.error);
    assert!(
        refusal.error.detail.contains("spool budget"),
        "{}",
        refusal.error
    );
    assert_eq!(t.budget.used(), 0);
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");

    // Incompressible content larger than the budget fails while decrypting: transient too.
    let mut noise = Msg::good();
    noise.content = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (package, _) = t.seal("signed", noise);
    let refusal = t.receive(&package).unwrap_err();
    assert!(refusal.error.transient, "{}", refusal.error);
    assert_eq!(t.budget.used(), 0);

    // With room again, a message is accepted and holds its bytes until it is dropped.
    t.budget = SpoolBudget::new(1 << 20);
    let (package, _) = t.seal("signed", Msg::good());
    let accepted = t.receive(&package).unwrap();
    assert!(t.budget.used() > 0);
    drop(accepted);
    assert_eq!(t.budget.used(), 0);
}

/// A large part received compressed is delivered as it travelled — the decrypted spool
/// file, still gzip — when the spool says the store keeps it so: checked by inflating it
/// (its length and SHA-256 are the payload's), read back inflated. A bomb is still refused
/// and leaves nothing behind; without `keep_decrypted` the part is inflated into a file.
/// A large part received uncompressed is delivered as the file it was decrypted into.
#[test]
fn a_large_decrypted_part_is_kept_as_it_travelled_and_checked_without_a_copy() {
    let t = setup();
    // Compresses to about half, so the gzip outgrows memory (64 KiB), and inflates within
    // the leg's 1 MiB cap.
    let content = digits(600 * 1024);
    let mut msg = Msg::good();
    msg.content = content.clone();
    let (package, _) = t.seal("large", msg);
    let accepted = t.receive(&package).unwrap();
    let p = &accepted.message.payloads[0];
    assert!(p.was_compressed, "compressed");
    assert!(p.content_is_gzip, "kept in gzip");
    assert_eq!(p.len, content.len() as u64, "the payload's length");
    assert_eq!(
        p.sha256,
        openssl::sha::sha256(&content),
        "the payload's SHA-256"
    );
    let file = p.content.file().expect("the decrypted part's spool file");
    let kept = std::fs::read(file.path()).unwrap();
    assert_eq!(kept[..3], [0x1f, 0x8b, 8], "gzip as it travelled");
    assert!(
        kept.len() < content.len() * 3 / 4,
        "{} bytes kept",
        kept.len()
    );
    let mut back = Vec::new();
    p.open().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, content, "read back inflated");
    let out = tempfile::tempdir().unwrap();
    let persisted = out.path().join("payload");
    let mut payloads = accepted.message.payloads;
    drop(payloads.remove(0).persist(&persisted).unwrap());
    assert_eq!(
        std::fs::read(&persisted).unwrap(),
        content,
        "persisted inflated"
    );
    assert_eq!(t.budget.used(), 0, "every byte given back");

    // A bomb as large as that in gzip: 200 KiB of digits, then 64 MiB of zeros.
    let mut bomb = Msg::good();
    bomb.content = content[..200 * 1024].to_vec();
    bomb.content.resize(64 << 20, 0);
    let (package, um) = t.seal("large", bomb);
    let refusal = t.receive(&package).unwrap_err();
    assert_refused(
        &refusal,
        ErrorCode::DecompressionFailure,
        &um.message_info.message_id,
        true,
    );
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");
    assert_eq!(t.budget.used(), 0, "every byte given back");

    // A store that does not keep parts so gets the payload's bytes in a file.
    let mut msg = Msg::good();
    msg.content = content.clone();
    let (package, _) = t.seal("large", msg);
    let spool = Spool {
        keep_decrypted: false,
        ..t.spool()
    };
    let now = OffsetDateTime::now_utc();
    let accepted =
        accept_package(&package, Arrival::Pushed, &t.set, &t.identity, now, &spool).unwrap();
    let p = &accepted.message.payloads[0];
    assert!(p.was_compressed && !p.content_is_gzip);
    let file = p.content.file().expect("inflated into a spool file");
    assert_eq!(std::fs::read(file.path()).unwrap(), content);
    drop(accepted);

    // Uncompressed: the decrypted file is the payload, hashed as it is. An uncompressed
    // XML part is signed canonicalized: a document whose canonical form differs from its
    // bytes (the declaration goes), so the signature's digest is not the payload's.
    let digit_text = content;
    let content = [
        &b"<?xml version=\"1.0\"?>\n<doc>"[..],
        &digit_text,
        b"</doc>",
    ]
    .concat();
    let mut msg = Msg::good();
    msg.content = content.clone();
    let (package, _) = t.seal("large-uncompressed", msg);
    let accepted = t.receive(&package).unwrap();
    let p = &accepted.message.payloads[0];
    assert!(!p.was_compressed && !p.content_is_gzip);
    assert_eq!(p.len, content.len() as u64);
    assert_eq!(p.sha256, openssl::sha::sha256(&content));
    let signed = attachment_digest(&accepted.message);
    assert_ne!(signed, p.sha256, "signed canonicalized, hashed as it is");
    let file = p.content.file().expect("the decrypted part's spool file");
    assert_eq!(std::fs::read(file.path()).unwrap(), content);
    drop(accepted);
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");

    // Of a type the signature digests as it is (PDF): the signature's check has hashed
    // the very file, and its digest is the payload's SHA-256.
    let pdf = [&b"%PDF-1.7\n"[..], &digit_text].concat();
    let mut msg = Msg::good();
    msg.mime_type = "application/pdf";
    msg.content = pdf.clone();
    let (package, _) = t.seal("large-uncompressed", msg);
    let accepted = t.receive(&package).unwrap();
    let p = &accepted.message.payloads[0];
    assert!(!p.was_compressed && !p.content_is_gzip);
    assert_eq!(p.mime_type, "application/pdf");
    assert_eq!(p.len, pdf.len() as u64);
    assert_eq!(p.sha256, openssl::sha::sha256(&pdf));
    assert_eq!(attachment_digest(&accepted.message), p.sha256);
    let file = p.content.file().expect("the decrypted part's spool file");
    assert_eq!(std::fs::read(file.path()).unwrap(), pdf);
    drop(accepted);
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");
}

/// The digest the signature gives the message's one attachment.
fn attachment_digest(message: &varti_as4::inbound::ReceivedMessage) -> [u8; 32] {
    let signature = message.signature.as_ref().expect("signed");
    let reference = signature
        .references
        .iter()
        .find(|r| r.uri.starts_with("cid:"))
        .expect("a reference to the attachment");
    reference.digest[..].try_into().expect("a SHA-256")
}

/// `len` hexadecimal digits no deflate finds a pattern in: they compress to about half.
fn digits(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"0123456789abcdef"[(state >> 60) as usize]
        })
        .collect()
}

impl Setup {
    /// Reads `wire` as the MSH endpoint does: large encrypted parts decrypted as they
    /// arrive ([`EarlyDecryption`]), attachments past 64 KiB taken or spilled.
    fn read_tapped(&self, wire: &[u8], content_type: &str) -> MimePackage {
        self.try_read_tapped(wire, content_type).unwrap()
    }

    /// [`Setup::read_tapped`], failing as the MIME reader does.
    fn try_read_tapped(&self, wire: &[u8], content_type: &str) -> Result<MimePackage, MimeError> {
        let spool = self.spool();
        let mut early = EarlyDecryption::new(
            Arrival::Pushed,
            &self.set,
            &self.identity,
            OffsetDateTime::now_utc(),
            &spool,
        );
        MimePackage::read_http_body_tapped(wire, content_type, &self.limits(), Some(&mut early))
    }

    /// [`Setup::read_tapped`] without the tap: every large attachment spilled.
    fn read_spilled(&self, wire: &[u8], content_type: &str) -> MimePackage {
        MimePackage::read_http_body(wire, content_type, &self.limits()).unwrap()
    }

    fn limits(&self) -> MimeLimits {
        MimeLimits {
            spill_threshold: 64 * 1024,
            temp_dir: Some(self.spool.path().to_path_buf()),
            spool_budget: Some(self.budget.clone()),
            ..MimeLimits::default()
        }
    }
}

/// A large encrypted part is decrypted while the MIME body is read, instead of being
/// spilled and read back: nothing of the cipher text reaches the spool (its budget holds
/// the plaintext alone), and the outcome is the one a spilled part gets — the same payload accepted, the same refusal of a part
/// altered in transit, and no decryption at all for a message its leg refuses first.
#[test]
fn a_large_encrypted_part_is_decrypted_as_it_arrives_with_the_outcome_of_a_spilled_one() {
    let mut t = setup();
    let content = digits(600 * 1024);
    let mut msg = Msg::good();
    msg.content = content.clone();
    let (wire, ct, _) = seal_wire(&t.set, "large", msg);

    let package = t.read_tapped(&wire, &ct);
    let att = &package.attachments()[0];
    assert!(
        att.is_tapped() && !att.is_spilled(),
        "decrypted as it arrived"
    );
    assert_eq!(
        files_in(t.spool.path()),
        1,
        "only the decrypted part's file"
    );
    let accepted = t.receive(&package).unwrap();
    let p = &accepted.message.payloads[0];
    assert!(p.content_is_gzip, "kept as it travelled");
    assert_eq!(p.len, content.len() as u64);
    assert_eq!(p.sha256, openssl::sha::sha256(&content));
    assert!(p.digested_on_arrival, "digest taken as the part arrived");
    let mut back = Vec::new();
    p.open().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, content, "read back inflated");
    let (sha256, receipt_len) = (p.sha256, accepted.receipt.len());
    let tapped_peak = t.budget.peak();
    drop((accepted, package));
    assert_eq!(t.budget.used(), 0, "every byte given back");

    // Spilled instead, the cipher text is held too: the spool holds both at once.
    t.budget = SpoolBudget::new(u64::MAX);
    let spilled = t.read_spilled(&wire, &ct);
    assert!(spilled.attachments()[0].is_spilled());
    let the_same = t.receive(&spilled).unwrap();
    assert_eq!(the_same.message.payloads[0].sha256, sha256);
    assert!(!the_same.message.payloads[0].digested_on_arrival);
    assert_eq!(the_same.receipt.len(), receipt_len);
    let cipher_text = spilled.attachments()[0].len();
    assert!(
        t.budget.peak() >= tapped_peak + cipher_text,
        "spool peak {} spilled, {tapped_peak} decrypted as it arrived, cipher text {cipher_text}",
        t.budget.peak()
    );
    drop((the_same, spilled));
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");
    assert_eq!(t.budget.used(), 0, "every byte given back");

    // One byte of the cipher text altered in transit (the attachment is the package's
    // last 300 KiB or so): the tag does not match, refused as a spilled part is.
    let mut altered = wire.clone();
    let at = altered.len() - 100_000;
    altered[at] ^= 0x20;
    let early = t.receive(&t.read_tapped(&altered, &ct)).unwrap_err();
    let late = t.receive(&t.read_spilled(&altered, &ct)).unwrap_err();
    assert_eq!(
        early.error.code,
        ErrorCode::FailedDecryption,
        "{}",
        early.error
    );
    assert!(
        early.error.detail.contains("authentication tag"),
        "{}",
        early.error
    );
    assert_eq!(
        (early.error.code, &early.error.detail),
        (late.error.code, &late.error.detail)
    );
    assert!(is_signed(early.signal.as_ref().unwrap()), "the leg signs");
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");

    // A body cut off in the part: refused by the MIME reader; what was decrypted is gone.
    let cut = t.try_read_tapped(&wire[..wire.len() - 50_000], &ct);
    assert!(cut.is_err(), "a truncated package is refused");
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");
    assert_eq!(t.budget.used(), 0, "every byte given back");

    // No room in the spool budget for the plaintext: not the message's fault.
    t.budget = SpoolBudget::new(128 * 1024);
    let refusal = t.receive(&t.read_tapped(&wire, &ct)).unwrap_err();
    assert!(refusal.error.transient, "{}", refusal.error);
    assert!(
        refusal.error.detail.contains("spool budget"),
        "{}",
        refusal.error
    );
    assert_eq!(t.budget.used(), 0, "every byte given back");
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");
    t.budget = SpoolBudget::new(u64::MAX);

    // A message its leg refuses before decrypting (for another party) is not decrypted
    // early either: spilled, and refused as before.
    let mut elsewhere = Msg::good();
    elsewhere.to = "varti-a";
    elsewhere.content = content.clone();
    let (wire, ct, um) = seal_wire(&t.set, "large", elsewhere);
    let package = t.read_tapped(&wire, &ct);
    assert!(package.attachments()[0].is_spilled(), "not taken");
    let refusal = t.receive(&package).unwrap_err();
    assert_refused(
        &refusal,
        ErrorCode::ProcessingModeMismatch,
        &um.message_info.message_id,
        false,
    );
}

/// A part that inflates past the leg's cap while it arrives: the digest taken beside its
/// decryption gives up, and the check after the signature refuses it with the very error a
/// spilled part gets (EBMS:0303), leaving nothing behind.
#[test]
fn a_part_over_the_cap_is_refused_after_the_checks_as_a_spilled_one_is() {
    let t = setup();
    let mut msg = Msg::good();
    msg.content = digits(2 << 20);
    let (wire, ct, um) = seal_wire(&t.set, "large", msg);
    let package = t.read_tapped(&wire, &ct);
    assert!(
        package.attachments()[0].is_tapped(),
        "decrypted as it arrived"
    );
    let early = t.receive(&package).unwrap_err();
    assert_refused(
        &early,
        ErrorCode::DecompressionFailure,
        &um.message_info.message_id,
        true,
    );
    let late = t.receive(&t.read_spilled(&wire, &ct)).unwrap_err();
    assert_eq!(
        (early.error.code, &early.error.detail),
        (late.error.code, &late.error.detail)
    );
    drop(package);
    assert_eq!(files_in(t.spool.path()), 0, "nothing left in the spool");
    assert_eq!(t.budget.used(), 0, "every byte given back");
}

/// [`setup`] plus `network.toml`: a dynamic party `network` (the test CA as its AP
/// anchor) and a process `open` whose initiators are that party, allowing dynamic
/// initiators when `allow` says so; varti-b has the network's anchors `anchors`.
fn dynamic_setup(allow: bool, anchors: Vec<X509>) -> Setup {
    let t = setup();
    let c = certs();
    let c = c.display();
    let toml = format!(
        r#"[[party]]
name = "network"
ids = [{{ value = "network-peers", type = "{PARTY_TYPE}" }}]
dynamic = true

[party.discovery]
sml_zone = "bdxl.test.varti"
smp_anchors = ["{c}/ca.cert.pem"]
ap_anchors = ["{c}/ca.cert.pem"]
participant = "iso6523-actorid-upis::0088:test"
document_type = "busdox-docid-qns::urn:test:doc"

[security.default]
profile = "as4-1.15"
sign = true
encrypt = true
token_reference = "bst"

[[process]]
name = "open"
mep = "oneWay"
binding = "push"
dynamic_initiators = {allow}
initiator = {{ parties = ["network"] }}
responder = {{ parties = ["varti-b"] }}

[[process.leg]]
name = "open"
service = "urn:test:open"
action = "Deliver"
"#
    );
    let dir = t._pmodes_dir.path();
    std::fs::write(dir.join("network.toml"), toml).unwrap();
    let (set, diags) = varti_as4::pmode::load_dir(dir);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let mut identity = varti_b();
    identity
        .dynamic_anchors
        .insert("network".to_owned(), anchors);
    Setup { set, identity, ..t }
}

/// A sender no party of the PModes (varti-x, signing with varti-c's key under the test
/// CA) is accepted on a leg that allows dynamic initiators, as the dynamic party, when
/// its certificate chains to the network's AP anchors; refused otherwise.
#[test]
fn an_unlisted_sender_is_accepted_as_a_dynamic_initiator_only_under_the_networks_anchors() {
    let unlisted = || Msg {
        from: "varti-x",
        signer: "varti-c",
        ..Msg::good()
    };
    let t = dynamic_setup(true, vec![cert("ca.cert.pem")]);
    let (package, um) = t.seal("open", unlisted());
    let accepted = t.receive(&package).unwrap();
    assert_eq!(accepted.leg.name, "open");
    assert_eq!(accepted.partner.name, "network");
    assert_eq!(
        accepted.user_message.party_info.from.party_ids[0].value,
        "varti-x"
    );
    assert_eq!(accepted.message_id(), um.message_info.message_id);
    drop(accepted);

    // Anchors that varti-c's certificate does not chain to: refused, signed.
    let t = dynamic_setup(true, vec![cert("varti-a/sign.cert.pem")]);
    t.refused("open", unlisted(), ErrorCode::FailedAuthentication, true);

    // The process does not allow dynamic initiators: no leg for the sender.
    let t = dynamic_setup(false, vec![cert("ca.cert.pem")]);
    let refusal = t.refused("open", unlisted(), ErrorCode::ProcessingModeMismatch, false);
    assert!(
        refusal.error.detail.contains("From PartyId"),
        "{}",
        refusal.error.detail
    );
}
