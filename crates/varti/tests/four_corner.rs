//! The four-corner model on the wire (eDelivery AS4 conformance 4CT_TA02, 4CT_TA03): two
//! real `varti serve` processes, with a TLS-terminating tap in front of varti-b that keeps
//! each request as it was sent. What the tap saw is the assertion: From/To name the access
//! points (C2/C3), `originalSender`/`finalRecipient` the producer and consumer (C1/C4),
//! and a `trackingIdentifier` travels and the message is acknowledged.

mod oots_support;
mod pair_support;
mod register_support;
mod serve_support;
mod wire_support;

use std::net::SocketAddr;
use std::time::Duration;

use pair_support::{free_port, repo, Pair};
use serde_json::json;
use varti::pair;
use wire_support::{wire_property, TlsTap};

const SERVICE: &str = "urn:varti:test:four-corner";
const C1_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered:C1";
const C4_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered:C4";
/// The type of the access points' first PartyId (`pmodes/varti-a.toml`, `varti-b.toml`).
const AP_PARTY_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered";

/// A one-way leg requiring the four-corner properties and allowing a trackingIdentifier.
fn four_corner_pmodes() -> String {
    pair::settings_toml(
        "default",
        "as4-1.15",
        "duplicate_detection = true\n",
        Some(""),
    ) + "\n[properties.default]\nrequired = [\"originalSender\", \"finalRecipient\"]\n\
           optional = [\"trackingIdentifier\"]\n"
        + &pair::process_toml(
            "four-corner",
            "push",
            [pair::BOTH; 2],
            &[["deliver", SERVICE, "Deliver"]],
            "",
        )
}

/// A tap in front of where b will listen, presenting b's TLS identity to a and a's to b.
fn tap() -> (TlsTap, u16) {
    let target = free_port();
    let tap = TlsTap::start(
        SocketAddr::from(([127, 0, 0, 1], target)),
        &repo().join("certs"),
        "varti-b",
        "varti-a",
    );
    (tap, target)
}

/// The PartyIds of `party` as (value, type).
fn ids(party: &varti_as4::message::model::Party) -> Vec<(String, Option<String>)> {
    party
        .party_ids
        .iter()
        .map(|p| (p.value.clone(), p.type_.clone()))
        .collect()
}

#[test]
fn tracking_identifier_and_four_corner_parties_travel_on_the_wire() {
    let (tap, target) = tap();
    let mut pair = Pair::with_pmodes_via(("four-corner.toml", four_corner_pmodes()), tap.port);
    pair.move_b_to(target);
    let a = pair.start("a");
    let b = pair.start("b");

    let tracking = "TRACK-2026-000417";
    let id = a.submit(
        json!({
            "to_party": "varti-b",
            "service": SERVICE,
            "action": "Deliver",
            "properties": [
                {"name": "originalSender", "value": "urn:test:producer-c1", "type": C1_TYPE},
                {"name": "finalRecipient", "value": "urn:test:consumer-c4", "type": C4_TYPE},
                {"name": "trackingIdentifier", "value": tracking},
            ]
        }),
        &[("doc", "application/xml", b"<order>17</order>")],
    );
    // Acknowledged: b answered with a receipt for the message carrying the identifier.
    a.wait_state(&id, "acknowledged", Duration::from_secs(30));

    let sent: Vec<_> = tap
        .messages()
        .into_iter()
        .filter(|(_, env)| {
            env.messaging
                .user_message
                .as_ref()
                .is_some_and(|um| um.message_info.message_id == id)
        })
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "the tap saw {} requests",
        tap.requests().len()
    );
    let (dump, envelope) = &sent[0];
    assert!(
        dump.start_line
            .as_deref()
            .is_some_and(|l| l.starts_with("POST /msh")),
        "{:?}",
        dump.start_line
    );
    let um = envelope.messaging.user_message.as_ref().unwrap();
    // 4CT_TA03: From/To are the access points, not the producer and consumer.
    assert_eq!(
        ids(&um.party_info.from).len(),
        1,
        "{:?}",
        um.party_info.from
    );
    assert_eq!(ids(&um.party_info.from)[0].0, "varti-a");
    assert_eq!(ids(&um.party_info.to)[0].0, "varti-b");
    assert_eq!(ids(&um.party_info.to).len(), 1, "{:?}", um.party_info.to);
    assert_eq!(
        wire_property(envelope, "originalSender"),
        Some(("urn:test:producer-c1".into(), Some(C1_TYPE.into())))
    );
    assert_eq!(
        wire_property(envelope, "finalRecipient"),
        Some(("urn:test:consumer-c4".into(), Some(C4_TYPE.into())))
    );
    // 4CT_TA02: the trackingIdentifier is on the wire and b delivered it to its backend.
    assert_eq!(
        wire_property(envelope, "trackingIdentifier"),
        Some((tracking.into(), None))
    );
    let got = b.message(&id).expect("b delivered the message");
    let delivered: Vec<_> = got["properties"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "trackingIdentifier")
        .collect();
    assert_eq!(delivered.len(), 1, "{got:#}");
    assert_eq!(delivered[0]["value"], tracking, "{got:#}");
}

/// 4CT_TA03 for OOTS: the evidence request a sends names varti-a and varti-b in From/To;
/// the portal (evidence requester, C1) and the provider (C4) are only in
/// originalSender/finalRecipient.
#[test]
fn oots_request_names_the_access_points_in_from_and_to_on_the_wire() {
    let register = register_support::Register::start();
    let (tap, target) = tap();
    let (_root, a, b) =
        oots_support::start_full_via(&register, "", "", Some((tap.port, target)), None);
    let created = oots_support::post_request(
        &a,
        &oots_support::request_body("EV-OK", "DK/LV/010190-1234"),
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let v = oots_support::settled(&a, &b, &id, Duration::from_secs(60));
    assert_eq!(v["state"], "answered", "{v:#}");
    let request_id = v["request_message_id"].as_str().unwrap();

    let messages = tap.messages();
    let (_, envelope) = messages
        .iter()
        .find(|(_, env)| {
            env.messaging
                .user_message
                .as_ref()
                .is_some_and(|um| um.message_info.message_id == request_id)
        })
        .unwrap_or_else(|| panic!("the tap did not see {request_id}"));
    let um = envelope.messaging.user_message.as_ref().unwrap();
    assert_eq!(um.collaboration_info.action, "ExecuteQueryRequest");
    assert_eq!(
        ids(&um.party_info.from),
        [("varti-a".to_owned(), Some(AP_PARTY_TYPE.to_owned()))],
        "From"
    );
    assert_eq!(
        ids(&um.party_info.to),
        [("varti-b".to_owned(), Some(AP_PARTY_TYPE.to_owned()))],
        "To"
    );
    let (c1, _) = wire_property(envelope, "originalSender").expect("originalSender");
    let (c4, _) = wire_property(envelope, "finalRecipient").expect("finalRecipient");
    assert_eq!(c1, "DK22233223");
    assert_eq!(c4, "LV90000011588");
}
