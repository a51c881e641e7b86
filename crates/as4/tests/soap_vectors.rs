//! The third-party ebMS headers (phase4, Holodeck) read by the SOAP layer: valid ones
//! yield exactly the values they carry, invalid ones are refused with the right code.

mod common;

use varti_as4::error::{ErrorCode, Severity};
use varti_as4::message::model::*;
use varti_as4::message::soap::{parse_envelope, Envelope, SoapVersion};
use varti_as4::EbmsError;

/// Reads a vector; `None` (with a loud warning) when the vectors are absent.
fn vector(rel: &str) -> Option<Vec<u8>> {
    common::read(rel)
}

/// The SOAP envelope inside an HTTP dump: everything after the first blank line.
fn http_body(dump: &[u8]) -> &[u8] {
    let crlf = dump
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let lf = dump.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let start = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a
            .or(b)
            .expect("an HTTP dump has a blank line after its headers"),
    };
    &dump[start..]
}

fn parse_ok(rel: &str) -> Option<Envelope> {
    let bytes = vector(rel)?;
    Some(parse_envelope(&bytes).unwrap_or_else(|e| panic!("{rel} refused: {e}")))
}

/// A vector whose ids break the RFC 2822 MessageId syntax ebMS3 §5.2.2.1 requires (phase4
/// in Peppol mode writes bare UUIDs): refused whole with EBMS:0009 naming `element`, and
/// read, with the ids completed (`from` → `to`), for the rest of its content.
fn parse_with_ids_fixed(rel: &str, element: &str, fixes: &[(&str, &str)]) -> Option<Envelope> {
    let bytes = vector(rel)?;
    let refused = parse_envelope(&bytes).expect_err("a bare UUID is not a MessageId");
    assert_eq!(refused.code, ErrorCode::InvalidHeader, "{refused}");
    assert!(refused.detail.contains(element), "{refused}");
    assert_eq!(
        refused.ref_to_message_id, None,
        "an invalid id is not echoed"
    );
    let mut text = String::from_utf8(bytes).unwrap();
    for (from, to) in fixes {
        assert!(text.contains(from), "{from} in {rel}");
        text = text.replace(from, to);
    }
    Some(parse_envelope(text.as_bytes()).unwrap_or_else(|e| panic!("{rel} refused: {e}")))
}

fn parse_err(rel: &str) -> Option<EbmsError> {
    let bytes = vector(rel)?;
    match parse_envelope(&bytes) {
        Ok(env) => panic!("{rel} accepted: {env:?}"),
        Err(e) => Some(e),
    }
}

fn user(env: &Envelope) -> &UserMessage {
    env.messaging.user_message.as_ref().expect("a user message")
}

fn party(value: &str, type_: Option<&str>) -> PartyId {
    PartyId {
        value: value.into(),
        type_: type_.map(Into::into),
    }
}

fn prop(name: &str, type_: Option<&str>, value: &str) -> Property {
    Property {
        name: name.into(),
        type_: type_.map(Into::into),
        value: value.into(),
    }
}

/// The user message of phase4's SOAP 1.1 samples (UserMessage.xml and friends).
fn assert_sample_user_message(um: &UserMessage, href: &str) {
    assert_eq!(um.message_info.message_id, "UUID-1@requester.example.com");
    assert_eq!(um.message_info.timestamp.as_str(), "2006-07-25T12:19:05");
    assert_eq!(
        um.message_info.timestamp.instant(),
        time::macros::datetime!(2006-07-25 12:19:05 UTC)
    );
    assert_eq!(um.message_info.ref_to_message_id, None);
    assert_eq!(
        um.party_info.from.party_ids,
        vec![party("uri:requester.example.com", None)]
    );
    assert_eq!(um.party_info.from.role, "http://example.org/roles/Buyer");
    assert_eq!(
        um.party_info.to.party_ids,
        vec![party("QRS543", Some("someType"))]
    );
    assert_eq!(um.party_info.to.role, "http://example.org/roles/Seller");
    let ci = &um.collaboration_info;
    let agreement = ci.agreement_ref.as_ref().unwrap();
    assert_eq!(agreement.value, "http://registry.example.com/cpa/123456");
    assert_eq!(
        (agreement.type_.as_deref(), agreement.pmode.as_deref()),
        (None, None)
    );
    assert_eq!(ci.service.value, "QuoteToCollect");
    assert_eq!(ci.service.type_.as_deref(), Some("MyServiceTypes"));
    assert_eq!(ci.action, "NewPurchaseOrder");
    assert_eq!(ci.conversation_id, "4321");
    // Property values are kept as carried, leading space included.
    assert_eq!(
        um.properties,
        vec![
            prop("ProcessInst", None, "PurchaseOrder:123456"),
            prop("ContextID", None, " 987654321"),
        ]
    );
    assert_eq!(um.parts.len(), 1);
    let part = &um.parts[0];
    assert_eq!(part.href.as_deref(), Some(href));
    let schema = part.schema.as_ref().unwrap();
    assert_eq!(schema.version.as_deref(), Some("2.0"));
    assert_eq!(part.property("MimeType"), Some("application/xml"));
    assert_eq!(part.properties.len(), 2);
    assert!(part.properties[0]
        .value
        .starts_with("Purchase Order for 11 "));
}

#[test]
fn phase4_user_message_soap11() {
    let Some(env) = parse_ok("phase4/ebms/UserMessage.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap11);
    assert!(env.messaging_must_understand);
    assert!(env.body.is_empty);
    assert!(!env.has_security_header);
    assert!(env.messaging.signals.is_empty());
    let um = user(&env);
    assert_sample_user_message(um, "cid:part@example.com");
    assert_eq!(
        um.parts[0].schema.as_ref().unwrap().location,
        "http://registry.example.org/po.xsd"
    );
    assert_eq!(um.mpc, None);
    assert_eq!(um.effective_mpc(), DEFAULT_MPC);
}

#[test]
fn phase4_user_message_response_has_ref_to_message_id() {
    let Some(env) = parse_ok("phase4/ebms/UserMessageResponse.xml") else {
        return;
    };
    let um = user(&env);
    assert_eq!(um.message_info.message_id, "UUID-2@responder.example.com");
    assert_eq!(
        um.message_info.ref_to_message_id.as_deref(),
        Some("UUID-1@requester.example.com")
    );
    assert_eq!(
        um.party_info.from.party_ids,
        vec![party("QRS543", Some("someType"))]
    );
    assert_eq!(um.collaboration_info.action, "PurchaseOrderResponse");
    assert!(um.properties.is_empty());
    assert_eq!(um.parts[0].href.as_deref(), Some("cid:part@example.com"));
    assert!(env.body.is_empty);
}

#[test]
fn phase4_user_message_soap12_with_body_payload() {
    let Some(env) = parse_ok("phase4/ebms/UserMessage12.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    // Unqualified schema `id`, not wsu:Id, on this sample.
    assert_eq!(
        env.messaging.id.as_deref(),
        Some("_9ecb9d3c-cef8-4006-ac18-f425c5c7ae3d")
    );
    assert!(env.has_security_header);
    assert_eq!(env.header_blocks.len(), 2);
    assert!(env.header_blocks[0].is(EBMS_NS, "Messaging"));
    assert!(env.header_blocks[1].is(WSSE_NS, "Security"));
    assert!(!env.body.is_empty);
    assert_eq!(
        env.body.id.as_deref(),
        Some("_f8aa8b55-b31c-4364-94d0-3615ca65aa40")
    );
    let first = env.body.first_child.as_ref().unwrap();
    assert_eq!(first.local_name, "CrossIndustryInvoice");
    assert!(!env.body.is_fault());
    let um = user(&env);
    assert_eq!(
        um.message_info.timestamp.as_str(),
        "2011-04-03T14:49:28.886Z"
    );
    assert_eq!(
        um.message_info.message_id,
        "2011-921@5209999001264.example.com"
    );
    // The wrapped PartyId is read without its surrounding whitespace.
    let iso = Some("urn:oasis:names:tc:ebcore:partyid-type:iso6523:0088");
    assert_eq!(
        um.party_info.from.party_ids,
        vec![party("5209999001264", iso)]
    );
    assert_eq!(
        um.party_info.to.party_ids,
        vec![party("5209999001295", iso)]
    );
    assert_eq!(um.party_info.from.role, "Seller");
    assert_eq!(um.party_info.to.role, "Buyer");
    let ci = &um.collaboration_info;
    assert_eq!(ci.agreement_ref, None);
    assert_eq!(
        ci.service.value,
        "http://docs.oasis-open.org/ebxml-msg/as4/200902/service"
    );
    assert_eq!(
        ci.action,
        "http://docs.oasis-open.org/ebxml-msg/as4/200902/action"
    );
    assert_eq!(ci.conversation_id, "2011-921");
    assert_eq!(um.parts.len(), 1);
    assert_eq!(
        um.parts[0].href.as_deref(),
        Some("#_f8aa8b55-b31c-4364-94d0-3615ca65aa40")
    );
    assert!(um.parts[0].properties.is_empty());
}

#[test]
fn phase4_compressed_payload_sample_is_malformed_xml() {
    // The sample's PartProperties never closes its eb:Property elements.
    let Some(err) = parse_err("phase4/ebms/UserMessageWithCompressedPayload12.xml") else {
        return;
    };
    assert_eq!(err.code, ErrorCode::InvalidHeader);
    assert!(err.detail.contains("not well-formed"), "{}", err.detail);
}

#[test]
fn phase4_test_2023_with_comments_and_local_prefixes() {
    let Some(env) = parse_with_ids_fixed(
        "phase4/ebms/test-2023-03-15.xml",
        "eb:MessageId",
        &[(
            ">49267c79-d822-45d9-aa91-c57b3ca508db<",
            ">49267c79-d822-45d9-aa91-c57b3ca508db@phase4<",
        )],
    ) else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    assert!(env.messaging_must_understand);
    assert_eq!(
        env.messaging.id.as_deref(),
        Some("mid_b2ee9d4b-13b1-43c2-9e39-7aa28c3397c8")
    );
    assert_eq!(
        env.body.id.as_deref(),
        Some("id_ef09b6bf-4f59-42b6-9b7d-d513433a83f0")
    );
    assert!(env.body.is_empty);
    let um = user(&env);
    let ts = &um.message_info.timestamp;
    assert_eq!(ts.as_str(), "2023-03-09T10:23:26.8542515+01:00");
    assert_eq!(
        ts.instant(),
        time::macros::datetime!(2023-03-09 09:23:26.8542515 UTC)
    );
    assert_eq!(
        um.message_info.message_id,
        "49267c79-d822-45d9-aa91-c57b3ca508db@phase4"
    );
    // The commented-out RefToMessageId is not read.
    assert_eq!(um.message_info.ref_to_message_id, None);
    let ap = Some("urn:fdc:peppol.eu:2017:identifiers:ap");
    assert_eq!(um.party_info.from.party_ids, vec![party("PDE000556", ap)]);
    assert_eq!(um.party_info.from.role, ROLE_INITIATOR);
    assert_eq!(um.party_info.to.role, ROLE_RESPONDER);
    let ci = &um.collaboration_info;
    assert_eq!(
        ci.agreement_ref.as_ref().unwrap().value,
        "urn:fdc:peppol.eu:2017:agreements:tia:ap_provider"
    );
    assert_eq!(
        ci.service.value,
        "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"
    );
    assert_eq!(ci.service.type_.as_deref(), Some("cenbii-procid-ubl"));
    assert!(ci
        .action
        .starts_with("busdox-docid-qns::urn:oasis:names:specification:ubl"));
    assert!(
        ci.action.ends_with("::2.1"),
        "the action is trimmed: {:?}",
        ci.action
    );
    assert_eq!(ci.conversation_id, "testid");
    assert_eq!(
        um.properties,
        vec![
            prop(
                "originalSender",
                Some("iso6523-actorid-upis"),
                "9930:de322532962"
            ),
            prop(
                "finalRecipient",
                Some("iso6523-actorid-upis"),
                "9930:de322532962"
            ),
        ]
    );
    let part = &um.parts[0];
    assert_eq!(part.href.as_deref(), Some("cid:sbdhID"));
    assert_eq!(
        part.properties,
        vec![
            prop("MimeType", None, "application/xml"),
            prop("CompressionType", None, "application/gzip"),
        ]
    );
}

#[test]
fn phase4_bundled_message_reads_signals_and_user_message() {
    let Some(env) = parse_ok("phase4/ebms/BundledMessage.xml") else {
        return;
    };
    let m = &env.messaging;
    assert_sample_user_message(user(&env), "cid:foo@example.com");
    assert_eq!(m.signals.len(), 2);
    assert_eq!(
        m.signals[0].message_info.message_id,
        "UUID-2@receiver.example.com"
    );
    match &m.signals[0].kind {
        SignalKind::Errors(errors) => assert_eq!(errors.len(), 2),
        other => panic!("expected errors, got {other:?}"),
    }
    assert_eq!(
        m.signals[1].message_info.message_id,
        "UUID-2@initiator.example.com"
    );
    assert_eq!(
        m.signals[1].kind,
        SignalKind::PullRequest(PullRequest {
            mpc: Some("http://msh.example.com/mpc123".into())
        })
    );
}

fn errors_of(env: &Envelope) -> &[SignalError] {
    assert_eq!(env.messaging.signals.len(), 1);
    assert!(env.messaging.user_message.is_none());
    match &env.messaging.signals[0].kind {
        SignalKind::Errors(e) => e,
        other => panic!("expected an error signal, got {other:?}"),
    }
}

#[test]
fn phase4_error_message_soap11() {
    let Some(env) = parse_ok("phase4/ebms/ErrorMessage.xml") else {
        return;
    };
    let mi = &env.messaging.signals[0].message_info;
    assert_eq!(mi.message_id, "UUID-2@receiver.example.com");
    assert_eq!(mi.timestamp.as_str(), "2006-07-25T12:19:05");
    let errors = errors_of(&env);
    assert_eq!(errors.len(), 2);
    let e = &errors[0];
    assert_eq!(e.error_code, "EBMS:0001");
    assert_eq!(e.code, Some(ErrorCode::ValueNotRecognized));
    assert_eq!(e.severity(), Some(Severity::Failure));
    assert_eq!(e.category.as_deref(), Some("Content"));
    assert_eq!(e.origin.as_deref(), Some("ebMS"));
    assert_eq!(
        e.ref_to_message_in_error.as_deref(),
        Some("UUID-1@sender.example.com")
    );
    let d = e.description.as_ref().unwrap();
    assert_eq!(d.lang, "en");
    assert_eq!(d.text.trim(), "Value not recognized");
    // A code without the EBMS: prefix is kept raw and is not a known code.
    assert_eq!(errors[1].error_code, "0101");
    assert_eq!(errors[1].code, None);
    assert_eq!(errors[1].origin.as_deref(), Some("Security"));
    assert_eq!(
        errors[1].ref_to_message_in_error.as_deref(),
        Some("UUID-23@esender.fxample.com")
    );
}

#[test]
fn phase4_negative_error_message_soap12() {
    let Some(env) = parse_ok("phase4/negative/ErrorMessage.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    assert!(!env.messaging_must_understand);
    let errors = errors_of(&env);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, Some(ErrorCode::ValueNotRecognized));
    assert_eq!(
        errors[0].ref_to_message_in_error.as_deref(),
        Some("ph-as4@42ec020f-9553-4b6d-ba8e-265cf1f6fd34")
    );
    assert_eq!(
        errors[0].short_description.as_deref(),
        Some("ValueNotRecognized")
    );
    assert!(errors[0]
        .error_detail
        .as_deref()
        .unwrap()
        .starts_with("Although the message document is well formed"));
}

#[test]
fn phase4_error_message_without_ref_to_message_id() {
    let Some(env) = parse_ok("phase4/negative/ErrorMessageNoRefToMessageID.xml") else {
        return;
    };
    let mi = &env.messaging.signals[0].message_info;
    assert_eq!(mi.message_id, "ph-as4@e348b6f9-bea5-422b-972a-90");
    assert_eq!(mi.ref_to_message_id, None);
    assert_eq!(mi.timestamp.as_str(), "2017-06-13T11:39:52.967");
    let errors = errors_of(&env);
    assert_eq!(errors[0].error_code, "EBMS:0001");
    assert_eq!(errors[0].ref_to_message_in_error.as_deref(), Some(""));
    assert_eq!(errors[0].description, None);
}

#[test]
fn phase4_error_message_beside_a_soap_fault() {
    let Some(env) = parse_with_ids_fixed(
        "phase4/negative/ErrorMessageWithFault.xml",
        "eb:MessageId",
        &[
            (
                ">28a699c5-c7ae-4731-b0b8-ebf3b4bc8477<",
                ">28a699c5-c7ae-4731-b0b8-ebf3b4bc8477@phase4<",
            ),
            (">1234<", ">1234@phase4<"),
        ],
    ) else {
        return;
    };
    assert!(env.body.is_fault());
    assert_eq!(
        env.body.id.as_deref(),
        Some("bi-28a699c5-c7ae-4731-b0b8-ebf3b4bc8477")
    );
    assert_eq!(
        env.messaging.id.as_deref(),
        Some("eb-28a699c5-c7ae-4731-b0b8-ebf3b4bc8477")
    );
    let mi = &env.messaging.signals[0].message_info;
    assert_eq!(mi.ref_to_message_id.as_deref(), Some("1234@phase4"));
    assert_eq!(mi.timestamp.instant().nanosecond(), 971_659_362);
    let e = &errors_of(&env)[0];
    assert_eq!(e.code, Some(ErrorCode::PolicyNoncompliance));
    assert_eq!(e.severity, "Failure");
    assert_eq!(e.severity(), Some(Severity::Failure));
    assert_eq!(e.category.as_deref(), Some("Processing"));
    let d = e.description.as_ref().unwrap();
    assert_eq!(d.lang, "");
    assert!(d.text.starts_with("Certificate revoked CN=POP000000"));
    assert_eq!(
        e.error_detail.as_deref(),
        Some("java.lang.RuntimeException")
    );
}

#[test]
fn phase4_pull_requests() {
    let Some(env) = parse_ok("phase4/ebms/PullRequest.xml") else {
        return;
    };
    let s = &env.messaging.signals[0];
    assert_eq!(s.message_info.message_id, "UUID-2@initiator.example.com");
    assert_eq!(
        s.kind,
        SignalKind::PullRequest(PullRequest {
            mpc: Some("http://msh.example.com/mpc123".into())
        })
    );

    let Some(env) = parse_ok("phase4/ebms/PullRequest12.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    assert_eq!(env.messaging.id.as_deref(), Some("_ebmessaging"));
    let s = &env.messaging.signals[0];
    assert_eq!(s.message_info.message_id, "msg123@smallco.example.com");
    assert_eq!(
        s.message_info.timestamp.as_str(),
        "2011-02-19T11:30:11.320Z"
    );
    assert_eq!(
        s.kind,
        SignalKind::PullRequest(PullRequest {
            mpc: Some("http://as4.bigco.example.com/queues/q_456".into())
        })
    );
    // Two wsse:Security blocks, but the sample breaks the namespace URI over two
    // lines, so neither is in the WS-Security namespace.
    assert_eq!(env.header_blocks.len(), 3);
    assert!(env.header_blocks[1..]
        .iter()
        .all(|b| b.local_name == "Security"));
    assert!(!env.has_security_header);
    // For the same reason the Body's `wsu:Id` is not in the wsu namespace either.
    assert_eq!(env.body.id, None);
}

#[test]
fn phase4_receipt_with_nrr_soap11() {
    let Some(env) = parse_ok("phase4/ebms/ReceiptMessage.xml") else {
        return;
    };
    assert!(!env.messaging_must_understand);
    let s = first_signal(
        &env,
        "uiwtoruiopwr2543890@b.example.com",
        "uiopfdsmnf4898965563434@a.example.com",
    );
    let (Some(parts), other) = receipt_of(s) else {
        panic!("expected an NRR receipt, got {:?}", s.kind)
    };
    assert!(other.is_empty());
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].part_identifier.as_deref(), Some(""));
    let r = parts[0].reference.as_ref().unwrap();
    assert_eq!(r.uri.as_deref(), Some("http://b.example.com/doc45/#b"));
    assert!(r.transforms.is_empty());
    assert_eq!(r.digest_method, "http://www.w3.org/2000/09/xmldsig#sha1");
    assert_eq!(r.digest_value, "fX/iNylcUHNLV4lCE0eC7aEGP28=");
    assert_eq!(
        parts[1].reference.as_ref().unwrap().uri.as_deref(),
        Some("http:/a.example.com/doc23/#a")
    );
}

#[test]
fn phase4_test_receipts_carry_a_plain_copy_of_the_header() {
    let Some(env) = parse_ok("phase4/negative/TestReceipt11.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap11);
    assert!(env.messaging_must_understand);
    assert!(env.has_security_header);
    assert!(env.header_blocks[0].is(WSSE_NS, "Security"));
    assert!(env.header_blocks[1].is(EBMS_NS, "Messaging"));
    assert_eq!(
        env.body.id.as_deref(),
        Some("id-84eaab72-6a07-47c1-afd8-282fe003833d")
    );
    // The copied UserMessage inside the receipt is not a second user message.
    assert!(env.messaging.user_message.is_none());
    let s = first_signal(
        &env,
        "ph-as4@8e086db6-b26e-4c15-95c5-973f3bedbd96",
        "ph-as4@2babaddd-282e-461e-b645-730c5abebcce",
    );
    let (None, other) = receipt_of(s) else {
        panic!("expected a plain receipt, got {:?}", s.kind)
    };
    let [raw] = other.as_slice() else {
        panic!("one copied envelope: {other:?}")
    };
    assert!(
        raw.starts_with("<S11:Envelope><S11:Header><eb:Messaging>"),
        "{raw}"
    );
    assert!(raw.ends_with("</S11:Envelope>"));
    assert!(
        raw.contains("<eb:MessageId>ph-as4@2babaddd-282e-461e-b645-730c5abebcce</eb:MessageId>")
    );

    // TestReceipt12 is phase4's SOAP 1.2 NRR receipt.
    let Some(env) = parse_ok("phase4/negative/TestReceipt12.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    assert!(env.has_security_header);
    let s = first_signal(
        &env,
        "d36e26c0-5d4d-4950-ad81-dc620681b5f9@phase4",
        "035e0a83-6dc5-427b-bcee-483475c65153@phase4",
    );
    let (Some(parts), other) = receipt_of(s) else {
        panic!("expected an NRR receipt, got {:?}", s.kind)
    };
    // phase4 adds its own element beside the NRI; it is kept as carried.
    assert_eq!(
        other,
        &["<phase4 xmlns=\"urn:fdc:com.helger.phase4:ns:info\" timestamp=\"2025-09-09T14:40:58Z\" version=\"4.0.1\"/>"]
    );
    let refs: Vec<_> = parts
        .iter()
        .map(|p| p.reference.as_ref().unwrap())
        .collect();
    assert_eq!(
        refs.iter()
            .map(|r| r.uri.as_deref().unwrap())
            .collect::<Vec<_>>(),
        [
            "#phase4-msg-3adda884-f9be-419a-b918-f4fb3e97f9c4",
            "#id-ed836bb0-6951-469a-9ffb-320390ae439d",
            "cid:phase4-att-a9297596-e9df-4740-9245-2c069712326f@cid",
        ]
    );
    assert_eq!(
        refs[0].digest_value,
        "oIh7yNKoasQ6p5MN/n7xCtrcZ0NNqjBm2j5GDoeBgH8="
    );
    assert_eq!(
        refs[0].transforms[0].inclusive_prefixes.as_deref(),
        Some("S12")
    );
    assert_eq!(
        refs[2].digest_value,
        "5lPGsYkVCwAcvC3VbzAfez3nffzw59rtK/SvFM9W1eI="
    );
}

/// The first signal of `env`, asserted to have MessageId `id` and RefToMessageId `ref_to`.
fn first_signal<'e>(env: &'e Envelope, id: &str, ref_to: &str) -> &'e SignalMessage {
    let s = &env.messaging.signals[0];
    assert_eq!(s.message_info.message_id, id);
    assert_eq!(s.message_info.ref_to_message_id.as_deref(), Some(ref_to));
    s
}

/// The receipt a signal carries: its NRR parts (when it has them) and its other content.
fn receipt_of(s: &SignalMessage) -> (Option<&Vec<MessagePartNrInformation>>, &Vec<String>) {
    match &s.kind {
        SignalKind::Receipt(Receipt {
            non_repudiation,
            other,
        }) => (non_repudiation.as_ref(), other),
        other => panic!("expected a receipt, got {other:?}"),
    }
}

fn nrr_uris(env: &Envelope) -> (String, Vec<Option<String>>) {
    let s = &env.messaging.signals[0];
    let (Some(parts), other) = receipt_of(s) else {
        panic!("expected an NRR receipt, got {:?}", s.kind)
    };
    assert!(other.is_empty());
    for p in parts {
        let r = p.reference.as_ref().unwrap();
        assert_eq!(r.digest_method, "http://www.w3.org/2001/04/xmlenc#sha256");
        assert_eq!(
            r.digest_value.len(),
            44,
            "a base64 SHA-256: {:?}",
            r.digest_value
        );
        assert_eq!(r.transforms.len(), 1);
    }
    (
        s.message_info.ref_to_message_id.clone().unwrap(),
        parts
            .iter()
            .map(|p| p.reference.as_ref().unwrap().uri.clone())
            .collect(),
    )
}

#[test]
fn governikus_signed_nrr_receipt() {
    let Some(dump) = vector("phase4/receipts/governikus.as4in") else {
        return;
    };
    let env = parse_envelope(http_body(&dump)).expect("governikus receipt");
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    // mustUnderstand with an unusual prefix literally named `mustUnderstand`.
    assert!(env.messaging_must_understand);
    assert!(env.has_security_header);
    assert_eq!(
        env.messaging.id.as_deref(),
        Some("id-4b2841275ffe7f7-72b2-4897-9c3d-d8fa3de25da9")
    );
    assert_eq!(
        env.body.id.as_deref(),
        Some("id-4b28412004e76e8-3f3c-4311-9751-c926b8d2e12f")
    );
    let mi = &env.messaging.signals[0].message_info;
    assert_eq!(
        mi.message_id,
        "03528358-a714-49bc-bce8-9bfabb01fa78@vt-peppol-c3"
    );
    assert_eq!(mi.timestamp.as_str(), "2022-03-07T17:41:28.705Z");
    let (reference, uris) = nrr_uris(&env);
    assert_eq!(reference, "6b52b4c0-de6a-46b8-8286-27bac7d1a463@phase4");
    assert_eq!(
        uris,
        vec![
            Some("#phase4-msg-d3361660-1069-4e19-bb10-1e99f888febc".into()),
            Some("#id-7f453f33-6c56-4daa-8e6c-4bb30fdbbd09".into()),
            Some("cid:phase4-att-a9c35290-9a50-4496-98c5-16d4741b4d99@cid".into()),
        ]
    );
}

#[test]
fn helger_signed_nrr_receipt_lists_a_cid_reference() {
    let Some(dump) = vector("phase4/receipts/helger.as4in") else {
        return;
    };
    let env = parse_envelope(http_body(&dump)).expect("helger receipt");
    assert!(env.messaging_must_understand);
    assert_eq!(
        env.messaging.id.as_deref(),
        Some("phase4-msg-a9255f87-075b-4348-b125-beb6cee397e9")
    );
    let mi = &env.messaging.signals[0].message_info;
    assert_eq!(mi.message_id, "1384cf77-2de9-4303-a4e7-ca935a20f4fd@phase4");
    let (reference, uris) = nrr_uris(&env);
    assert_eq!(reference, "3b3775c9-e88d-47f9-be5a-8e045ca2bc07@phase4");
    assert_eq!(uris.len(), 3);
    assert_eq!(
        uris[2].as_deref(),
        Some("cid:phase4-att-8f153eee-52ce-4a39-96a6-2a13296991bb@cid")
    );
    let (Some(parts), _) = receipt_of(&env.messaging.signals[0]) else {
        unreachable!()
    };
    let swa = &parts[2].reference.as_ref().unwrap().transforms[0];
    assert_eq!(
        swa.algorithm,
        "http://docs.oasis-open.org/wss/oasis-wss-SwAProfile-1.1#Attachment-Content-Signature-Transform"
    );
}

#[test]
fn holodeck_signed_user_message_after_a_licence_comment() {
    let Some(env) = parse_ok("holodeck/from-holodeck-1.xml") else {
        return;
    };
    assert_eq!(env.soap_version, SoapVersion::Soap12);
    assert!(env.has_security_header);
    assert!(env.messaging_must_understand);
    assert_eq!(
        env.messaging.id.as_deref(),
        Some("id-501d4b2b-1800503d-f84a-46a7-a0ac-f35a85b6d925")
    );
    assert_eq!(
        env.body.id.as_deref(),
        Some("id-501d4b2b-3792398d-28c6-47d5-9660-ca6847a0bd13")
    );
    let um = user(&env);
    assert_eq!(
        um.message_info.message_id,
        "1d2726f5-e0f2-4a7d-b984-d073d630df29@PC65063.brzg.local"
    );
    assert_eq!(
        um.message_info.timestamp.as_str(),
        "2017-01-10T13:46:53.701Z"
    );
    assert_eq!(
        um.party_info.from.party_ids,
        vec![party("APP_1000000101", None)]
    );
    assert_eq!(
        um.party_info.to.party_ids,
        vec![party("APP_1000000101", None)]
    );
    assert_eq!(um.party_info.from.role, ROLE_INITIATOR);
    assert_eq!(um.party_info.to.role, ROLE_RESPONDER);
    let ci = &um.collaboration_info;
    assert_eq!(ci.agreement_ref, None);
    assert_eq!(ci.service.value, "urn:www.cenbii.eu:profile:bii04:ver2.0");
    assert_eq!(ci.service.type_.as_deref(), Some("cenbii-procid-ubl"));
    assert_eq!(
        ci.conversation_id,
        "cc48ef1a-45f8-4b46-a58d-970759a8ecae@PC65063.brzg.local"
    );
    assert_eq!(um.property("originalSender"), Some("test"));
    assert_eq!(um.property("finalRecipient"), Some("test"));
    assert_eq!(
        um.parts[0].href.as_deref(),
        Some("cid:1d2726f5-e0f2-4a7d-b984-d073d630df2-197002057@PC65063.brzg.local")
    );
    assert_eq!(
        um.parts[0].property("CompressionType"),
        Some("application/gzip")
    );
    assert_eq!(um.parts[0].property("MimeType"), Some("application/xml"));
}

#[test]
fn security_test_inputs_parse_as_headers() {
    // Wrong algorithms are the security layer's business: the header itself is fine.
    for rel in [
        "phase4/negative/WrongSigningAlgorithm.xml",
        "phase4/negative/WrongSigningDigestAlgorithm.xml",
    ] {
        let Some(env) = parse_ok(rel) else { return };
        assert!(env.has_security_header, "{rel}");
        let um = user(&env);
        assert!(!um.message_info.message_id.is_empty());
        assert!(!um.party_info.from.party_ids.is_empty());
    }
}

#[test]
fn standalone_nrr_fragment() {
    let Some(bytes) = vector("phase4/ebms/NonRepudiationInformation.xml") else {
        return;
    };
    // Not an envelope...
    let err = parse_envelope(&bytes).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidHeader);
    assert!(err.detail.contains("not a SOAP message"), "{}", err.detail);
    // ...but a valid NonRepudiationInformation.
    let parts = varti_as4::message::soap::parse_non_repudiation_information(&bytes).unwrap();
    assert_eq!(parts.len(), 1);
    let r = parts[0].reference.as_ref().unwrap();
    assert_eq!(
        r.uri.as_deref(),
        Some("#id-ba025036-a014-4920-a09e-790b16e0395e")
    );
    assert_eq!(
        r.digest_value,
        "RIcni4sbaa+5g6cpTI00hCy9PBN9kzI4CZizkbsF5jI="
    );
    assert_eq!(
        r.transforms[0].algorithm,
        "http://www.w3.org/2001/10/xml-exc-c14n#"
    );
    assert_eq!(r.transforms[0].inclusive_prefixes, None);
}

/// Asserts a refusal with EBMS:0009 and a detail that names the problem.
fn assert_invalid_header(rel: &str, detail_contains: &str) {
    let Some(err) = parse_err(rel) else { return };
    assert_eq!(err.code, ErrorCode::InvalidHeader, "{rel}: {err}");
    assert!(
        err.detail.contains(detail_contains),
        "{rel}: detail {:?} does not mention {detail_contains:?}",
        err.detail
    );
}

#[test]
fn invalid_ebms_headers_are_refused_with_invalid_header() {
    assert_invalid_header("phase4/ebms/MessageInfoMissing.xml", "no MessageInfo");
    assert_invalid_header("phase4/ebms/MessageInfoIDMissing.xml", "no MessageId");
    assert_invalid_header("phase4/ebms/NoMessaging.xml", "not a SOAP message");
    assert_invalid_header("phase4/ebms/EmptyMessaging.xml", "eb:Messaging is empty");
    assert_invalid_header(
        "phase4/ebms/MessageInfoImaginaryTimestamp.xml",
        "2006-30-30T30:99:99",
    );
    assert_invalid_header("phase4/ebms/UserMessage-no-soap.xml", "not a SOAP message");
    assert_invalid_header(
        "phase4/negative/TwoUserMessages.xml",
        "2 UserMessage elements",
    );
    assert_invalid_header(
        "phase4/negative/UserMessageNoPartyID.xml",
        "empty eb:PartyId",
    );
    assert_invalid_header("phase4/negative/NoResponder.xml", "no To element");
}

/// CP_TA03: exactly one From and one To. The phase4 user message with its From (then its
/// To) written twice, as a second party would be, is refused with EBMS:0009 naming the
/// element; the message itself parses, so the refusal is the duplicate's alone.
#[test]
fn two_from_or_two_to_elements_are_refused() {
    let Some(bytes) = vector("phase4/ebms/UserMessage.xml") else {
        return;
    };
    let xml = String::from_utf8(bytes).unwrap();
    parse_envelope(xml.as_bytes()).expect("the unaltered vector parses");
    for (side, other_party) in [("From", "uri:second-sender.example.com"), ("To", "QRS999")] {
        let open = format!("<eb:{side}>");
        let close = format!("</eb:{side}>");
        let start = xml.find(&open).unwrap();
        let end = xml.find(&close).unwrap() + close.len();
        let element = &xml[start..end];
        let second = element.replacen(
            if side == "From" {
                "uri:requester.example.com"
            } else {
                "QRS543"
            },
            other_party,
            1,
        );
        assert_ne!(element, second);
        let mut twice = xml.clone();
        twice.insert_str(end, &second);
        let err = parse_envelope(twice.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidHeader, "{side}: {err}");
        assert!(
            err.detail
                .contains(&format!("more than one {side} element")),
            "{side}: {}",
            err.detail
        );
        assert_eq!(
            err.ref_to_message_id.as_deref(),
            Some("UUID-1@requester.example.com")
        );
    }
}

#[test]
fn refusals_name_the_message_when_its_id_is_known() {
    let Some(err) = parse_err("phase4/ebms/MessageInfoImaginaryTimestamp.xml") else {
        return;
    };
    assert_eq!(
        err.ref_to_message_id.as_deref(),
        Some("UUID-1@requester.example.com")
    );
    let Some(err) = parse_err("phase4/negative/NoResponder.xml") else {
        return;
    };
    assert_eq!(
        err.ref_to_message_id.as_deref(),
        Some("2011-921@5209999001264.example.com")
    );
    let Some(err) = parse_err("phase4/ebms/MessageInfoIDMissing.xml") else {
        return;
    };
    assert_eq!(err.ref_to_message_id, None);
}

#[test]
fn business_documents_are_not_envelopes() {
    for rel in [
        "phase4/negative/PushPull.xml",
        "phase4/negative/PullPush.xml",
    ] {
        let Some(err) = parse_err(rel) else { return };
        assert_eq!(err.code, ErrorCode::InvalidHeader, "{rel}");
        assert!(
            err.detail.contains("not a SOAP message"),
            "{rel}: {}",
            err.detail
        );
        assert!(
            err.detail.contains("StandardBusinessDocument"),
            "{rel}: {}",
            err.detail
        );
    }
}

#[test]
fn every_ebms_and_negative_xml_vector_is_covered() {
    // A new vector file must get an assertion above: fail loudly when one appears.
    let Some(dir) = common::vectors() else { return };
    let covered = [
        "BundledMessage.xml",
        "EmptyMessaging.xml",
        "ErrorMessage.xml",
        "MessageInfoIDMissing.xml",
        "MessageInfoImaginaryTimestamp.xml",
        "MessageInfoMissing.xml",
        "NoMessaging.xml",
        "NonRepudiationInformation.xml",
        "PullRequest.xml",
        "PullRequest12.xml",
        "ReceiptMessage.xml",
        "UserMessage-no-soap.xml",
        "UserMessage.xml",
        "UserMessage12.xml",
        "UserMessageResponse.xml",
        "UserMessageWithCompressedPayload12.xml",
        "test-2023-03-15.xml",
        "ErrorMessageNoRefToMessageID.xml",
        "ErrorMessageWithFault.xml",
        "NoResponder.xml",
        "PullPush.xml",
        "PushPull.xml",
        "TestReceipt11.xml",
        "TestReceipt12.xml",
        "TwoUserMessages.xml",
        "UserMessageNoPartyID.xml",
        "WrongSigningAlgorithm.xml",
        "WrongSigningDigestAlgorithm.xml",
    ];
    for sub in ["phase4/ebms", "phase4/negative"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".xml") {
                assert!(covered.contains(&name.as_str()), "{sub}/{name} has no test");
            }
        }
    }
}
