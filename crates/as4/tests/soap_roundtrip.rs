//! Build → parse → equal, for random ebMS headers (property tests), plus the shape of
//! what the builder writes.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use varti_as4::error::ErrorCode;
use varti_as4::message::model::*;
use varti_as4::message::soap::{
    build_envelope, parse_envelope, validate_messaging, BuildOptions, SoapVersion,
};

/// Any text XML 1.0 can carry: ASCII, markup characters, whitespace incl. CR,
/// accented letters, CJK, emoji.
fn any_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 <>&\"'\t\r\néüßøçÆ日本語🦀=;:#/@.-]{0,24}"
}

/// An identifier-like value: non-empty and without surrounding whitespace (the
/// reader trims these, see `soap::token`).
fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9<>&\"'éü日🦀:/@._-][a-zA-Z0-9 <>&\"'\t\néü日🦀:/@._-]{0,20}[a-zA-Z0-9<>&\"'é🦀:/@._-]"
        .prop_map(|s| s)
}

fn attr_value() -> impl Strategy<Value = String> {
    // Attribute values keep TAB/LF/CR only if written as character references.
    "[a-zA-Z0-9 <>&\"'\t\r\néü日🦀:/@._-]{0,20}"
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0i64..4_000_000_000, 0u32..1000).prop_map(|(secs, ms)| {
        let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
            + time::Duration::milliseconds(i64::from(ms));
        Timestamp::from_datetime(t)
    })
}

/// An RFC 2822 message id (`dot-atom@dot-atom`, see `message::id`): every atext
/// character, dots between runs.
fn message_id() -> impl Strategy<Value = String> {
    let atoms = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}){0,2}";
    (atoms, atoms).prop_map(|(left, right)| format!("{left}@{right}"))
}

fn message_info() -> impl Strategy<Value = MessageInfo> {
    (timestamp(), message_id(), option::of(message_id())).prop_map(|(timestamp, message_id, r)| {
        MessageInfo {
            timestamp,
            message_id,
            ref_to_message_id: r,
        }
    })
}

fn property() -> impl Strategy<Value = Property> {
    (
        attr_value().prop_filter("non-empty", |s| !s.is_empty()),
        option::of(attr_value()),
        any_text(),
    )
        .prop_map(|(name, type_, value)| Property { name, type_, value })
}

fn party() -> impl Strategy<Value = Party> {
    (
        vec(
            (token(), option::of(attr_value())).prop_map(|(value, type_)| PartyId { value, type_ }),
            1..3,
        ),
        token(),
    )
        .prop_map(|(party_ids, role)| Party { party_ids, role })
}

fn part() -> impl Strategy<Value = PartInfo> {
    (
        option::of(attr_value().prop_map(|s| s.trim_matches(is_xml_space).to_owned())),
        option::of(
            (
                attr_value(),
                option::of(attr_value()),
                option::of(attr_value()),
            )
                .prop_map(|(location, version, namespace)| Schema {
                    location,
                    version,
                    namespace,
                }),
        ),
        option::of((attr_value(), any_text()).prop_map(|(lang, text)| Description { lang, text })),
        vec(property(), 0..4),
    )
        .prop_map(|(href, schema, description, properties)| PartInfo {
            href,
            schema,
            description,
            properties,
        })
}

fn user_message() -> impl Strategy<Value = UserMessage> {
    (
        option::of(attr_value()),
        message_info(),
        party(),
        party(),
        option::of(
            (token(), option::of(attr_value()), option::of(attr_value())).prop_map(
                |(value, type_, pmode)| AgreementRef {
                    value,
                    type_,
                    pmode,
                },
            ),
        ),
        (token(), option::of(attr_value())),
        (token(), token()),
        vec(property(), 0..5),
        vec(part(), 0..4),
    )
        .prop_map(
            |(
                mpc,
                message_info,
                from,
                to,
                agreement_ref,
                (service, stype),
                (action, conv),
                properties,
                parts,
            )| {
                UserMessage {
                    mpc,
                    message_info,
                    party_info: PartyInfo { from, to },
                    collaboration_info: CollaborationInfo {
                        agreement_ref,
                        service: Service {
                            value: service,
                            type_: stype,
                        },
                        action,
                        conversation_id: conv,
                    },
                    properties,
                    parts,
                }
            },
        )
}

fn reference() -> impl Strategy<Value = MessagePartNrInformation> {
    (
        option::of(token()),
        option::of(attr_value()),
        vec((attr_value(), option::of(attr_value())), 0..3),
        attr_value(),
        "[A-Za-z0-9+/]{43}=",
    )
        .prop_map(
            |(part_identifier, uri, transforms, digest_method, digest_value)| {
                MessagePartNrInformation {
                    part_identifier,
                    reference: Some(DsReference {
                        uri,
                        transforms: transforms
                            .into_iter()
                            .map(|(algorithm, inclusive_prefixes)| DsTransform {
                                algorithm,
                                inclusive_prefixes,
                            })
                            .collect(),
                        digest_method,
                        digest_value,
                    }),
                }
            },
        )
}

fn signal_error() -> impl Strategy<Value = SignalError> {
    (
        prop::sample::select(ErrorCode::ALL.to_vec()),
        prop::sample::select(vec!["failure", "warning"]),
        option::of(attr_value()),
        option::of(attr_value()),
        option::of((attr_value(), any_text()).prop_map(|(lang, text)| Description { lang, text })),
        option::of(any_text()),
    )
        .prop_map(
            |(code, severity, r, origin, description, error_detail)| SignalError {
                error_code: code.code().to_owned(),
                code: Some(code),
                severity: severity.to_owned(),
                category: Some(code.category().as_str().to_owned()),
                ref_to_message_in_error: r,
                origin,
                short_description: Some(code.short_description().to_owned()),
                description,
                error_detail,
            },
        )
}

fn signal() -> impl Strategy<Value = SignalMessage> {
    let kind = prop_oneof![
        option::of(attr_value()).prop_map(|mpc| SignalKind::PullRequest(PullRequest { mpc })),
        (option::of(vec(reference(), 1..4)), 0..3usize).prop_filter_map(
            "a receipt holds something",
            |(nri, extra)| {
                let other: Vec<String> = (0..extra)
                    .map(|i| {
                        format!(
                            "<x:Copy xmlns:x=\"urn:x\" n=\"{i}\">text &amp; <x:in/>more</x:Copy>"
                        )
                    })
                    .collect();
                (nri.is_some() || !other.is_empty()).then_some(SignalKind::Receipt(Receipt {
                    non_repudiation: nri,
                    other,
                }))
            }
        ),
        vec(signal_error(), 1..3).prop_map(SignalKind::Errors),
    ];
    (message_info(), kind).prop_map(|(message_info, kind)| SignalMessage { message_info, kind })
}

fn messaging() -> impl Strategy<Value = Messaging> {
    (
        option::of(token()),
        option::of(user_message()),
        vec(signal(), 0..3),
    )
        .prop_filter("a header holds something", |(_, u, s)| {
            u.is_some() || !s.is_empty()
        })
        .prop_map(|(id, user_message, signals)| Messaging {
            id,
            user_message,
            signals,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn build_then_parse_gives_the_same_header(m in messaging(), body_id in option::of(token())) {
        let opts = BuildOptions { body_id: body_id.as_deref(), ..Default::default() };
        let xml = build_envelope(&m, &opts).unwrap();
        let env = parse_envelope(xml.as_bytes())
            .unwrap_or_else(|e| panic!("refused our own envelope: {e}\n{xml}"));
        prop_assert_eq!(env.soap_version, SoapVersion::Soap12);
        prop_assert!(env.messaging_must_understand);
        prop_assert!(env.body.is_empty);
        prop_assert_eq!(&env.body.id, &body_id);
        prop_assert_eq!(&env.messaging, &m);
        // Building what was parsed gives the same bytes: the output is canonical.
        prop_assert_eq!(build_envelope(&env.messaging, &opts).unwrap(), xml);
    }
}

fn sample() -> Messaging {
    let party = |id: &str, role: &str| Party {
        party_ids: vec![PartyId {
            value: id.into(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered".into()),
        }],
        role: role.into(),
    };
    Messaging {
        id: Some("_eb-1".into()),
        user_message: Some(UserMessage {
            mpc: None,
            message_info: MessageInfo {
                timestamp: Timestamp::parse("2024-05-01T12:00:00.000Z").unwrap(),
                message_id: "m1@varti".into(),
                ref_to_message_id: None,
            },
            party_info: PartyInfo {
                from: party("blue", ROLE_INITIATOR),
                to: party("red", ROLE_RESPONDER),
            },
            collaboration_info: CollaborationInfo {
                agreement_ref: None,
                service: Service {
                    value: TEST_SERVICE.into(),
                    type_: None,
                },
                action: TEST_ACTION.into(),
                conversation_id: "c1".into(),
            },
            properties: vec![
                Property::new("originalSender", "a"),
                Property::new("finalRecipient", "b"),
            ],
            parts: vec![PartInfo::attachment("p1@varti")],
        }),
        signals: vec![],
    }
}

#[test]
fn builder_output_has_stable_prefixes_and_no_needless_declarations() {
    let security = "<wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" S12:mustUnderstand=\"true\"/>";
    let opts = BuildOptions {
        body_id: Some("_body-1"),
        extra_headers: vec![security],
        body_payload: None,
    };
    let xml = build_envelope(&sample(), &opts).unwrap();
    assert_eq!(
        xml,
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "<S12:Envelope xmlns:S12=\"http://www.w3.org/2003/05/soap-envelope\"><S12:Header>",
            "<wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" S12:mustUnderstand=\"true\"/>",
            "<eb:Messaging xmlns:eb=\"http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/\" ",
            "xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\" ",
            "S12:mustUnderstand=\"true\" wsu:Id=\"_eb-1\">",
            "<eb:UserMessage><eb:MessageInfo><eb:Timestamp>2024-05-01T12:00:00.000Z</eb:Timestamp>",
            "<eb:MessageId>m1@varti</eb:MessageId></eb:MessageInfo>",
            "<eb:PartyInfo><eb:From><eb:PartyId type=\"urn:oasis:names:tc:ebcore:partyid-type:unregistered\">blue</eb:PartyId>",
            "<eb:Role>http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/initiator</eb:Role></eb:From>",
            "<eb:To><eb:PartyId type=\"urn:oasis:names:tc:ebcore:partyid-type:unregistered\">red</eb:PartyId>",
            "<eb:Role>http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/responder</eb:Role></eb:To></eb:PartyInfo>",
            "<eb:CollaborationInfo><eb:Service>http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service</eb:Service>",
            "<eb:Action>http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test</eb:Action>",
            "<eb:ConversationId>c1</eb:ConversationId></eb:CollaborationInfo>",
            "<eb:MessageProperties><eb:Property name=\"originalSender\">a</eb:Property>",
            "<eb:Property name=\"finalRecipient\">b</eb:Property></eb:MessageProperties>",
            "<eb:PayloadInfo><eb:PartInfo href=\"cid:p1@varti\"></eb:PartInfo></eb:PayloadInfo>",
            "</eb:UserMessage></eb:Messaging></S12:Header>",
            "<S12:Body xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\" wsu:Id=\"_body-1\"/>",
            "</S12:Envelope>"
        )
    );
    let env = parse_envelope(xml.as_bytes()).unwrap();
    assert!(env.has_security_header);
    assert!(env.header_blocks[0].is(WSSE_NS, "Security"));
    assert!(env.header_blocks[1].is(EBMS_NS, "Messaging"));
    assert_eq!(env.messaging, sample());
}

#[test]
fn builder_without_ids_declares_no_wsu() {
    let mut m = sample();
    m.id = None;
    let xml = build_envelope(&m, &BuildOptions::default()).unwrap();
    assert!(!xml.contains("wsu"), "{xml}");
    assert!(xml.contains("<S12:Body/>"), "{xml}");
    assert!(!xml.contains("S11"));
}

#[test]
fn builder_writes_a_body_payload_verbatim() {
    let payload = "<inv:Invoice xmlns:inv=\"urn:inv\">1 &lt; 2</inv:Invoice>";
    let mut m = sample();
    m.user_message.as_mut().unwrap().parts = vec![PartInfo {
        href: None,
        schema: None,
        description: None,
        properties: vec![],
    }];
    let opts = BuildOptions {
        body_payload: Some(payload),
        ..Default::default()
    };
    let xml = build_envelope(&m, &opts).unwrap();
    assert!(xml.contains(&format!("<S12:Body>{payload}</S12:Body>")));
    let env = parse_envelope(xml.as_bytes()).unwrap();
    assert!(!env.body.is_empty);
    assert!(env.body.first_child.unwrap().is("urn:inv", "Invoice"));
    assert_eq!(env.messaging.user_message.unwrap().parts[0].href, None);
}

#[test]
fn builder_refuses_what_the_reader_would_refuse() {
    let mut m = sample();
    m.user_message
        .as_mut()
        .unwrap()
        .message_info
        .message_id
        .clear();
    let err = build_envelope(&m, &BuildOptions::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidHeader);
    assert!(err.detail.contains("MessageId is empty"), "{}", err.detail);

    let mut m = sample();
    m.user_message
        .as_mut()
        .unwrap()
        .party_info
        .to
        .party_ids
        .clear();
    assert!(build_envelope(&m, &BuildOptions::default())
        .unwrap_err()
        .detail
        .contains("eb:To has no eb:PartyId"));

    let err = validate_messaging(&Messaging::default()).unwrap_err();
    assert!(err.detail.contains("empty"), "{}", err.detail);

    let mut m = sample();
    m.user_message.as_mut().unwrap().properties[0].value = "bell \u{7}".into();
    let err = build_envelope(&m, &BuildOptions::default()).unwrap_err();
    assert!(err.detail.contains("U+0007"), "{}", err.detail);
}

#[test]
fn reader_accepts_other_prefixes_order_and_a_bom() {
    let xml = "\u{feff}<!-- licence --><?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
        <soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\">\
        <soap:Header><m:Messaging xmlns:m=\"http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/\">\
        <m:UserMessage mpc=\"urn:mpc\"><!-- out of schema order -->\
        <m:CollaborationInfo><m:ConversationId>c</m:ConversationId><m:Action>a</m:Action>\
        <m:Service type=\"t\">s</m:Service></m:CollaborationInfo>\
        <m:PartyInfo><m:To><m:Role>r2</m:Role><m:PartyId>p2</m:PartyId></m:To>\
        <m:From><m:PartyId>p1</m:PartyId><m:Role>r1</m:Role></m:From></m:PartyInfo>\
        <m:MessageInfo><m:MessageId>id&amp;1@x</m:MessageId><m:Timestamp>2024-01-01T00:00:00+02:00</m:Timestamp></m:MessageInfo>\
        <m:MessageProperties><m:Property name=\"n\"><![CDATA[<raw> & data]]></m:Property></m:MessageProperties>\
        </m:UserMessage></m:Messaging></soap:Header><soap:Body/></soap:Envelope>";
    let env = parse_envelope(xml.as_bytes()).unwrap();
    let um = env.messaging.user_message.unwrap();
    assert_eq!(um.mpc.as_deref(), Some("urn:mpc"));
    assert_eq!(um.message_info.message_id, "id&1@x");
    assert_eq!(um.party_info.to.party_ids[0].value, "p2");
    assert_eq!(um.collaboration_info.service.type_.as_deref(), Some("t"));
    assert_eq!(um.properties[0].value, "<raw> & data");
    assert_eq!(
        um.message_info.timestamp.instant(),
        time::macros::datetime!(2023-12-31 22:00 UTC)
    );
}
