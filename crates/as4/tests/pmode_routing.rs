//! Routing inbound messages and submissions to legs of the shipped pmodes/ set.

use std::path::Path;

use varti_as4::error::ErrorCode;
use varti_as4::pmode::routing::{find_inbound, find_outbound};
use varti_as4::pmode::{load_dir, InboundKey, PModeSet, Submission, TEST_ACTION, TEST_SERVICE};

const OOTS_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered:oots";
const PLAIN_TYPE: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered";
const GATEWAY: &str = "http://sdg.europa.eu/edelivery/gateway";
const EBRS: &str = "urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0";
const INITIATOR: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/initiator";
const RESPONDER: &str = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/responder";

fn set() -> PModeSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pmodes");
    let (set, diags) = load_dir(&dir);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    set
}

fn oots(action: &str) -> InboundKey {
    InboundKey {
        from_party: "varti-a".into(),
        from_party_type: Some(OOTS_TYPE.into()),
        from_role: GATEWAY.into(),
        to_party: "varti-b".into(),
        to_party_type: Some(OOTS_TYPE.into()),
        to_role: GATEWAY.into(),
        service: "QueryManager".into(),
        service_type: Some(EBRS.into()),
        action: action.into(),
        ..InboundKey::default()
    }
}

#[test]
fn oots_messages_find_their_legs() {
    let set = set();
    for (action, leg) in [
        ("ExecuteQueryRequest", "request"),
        ("ExecuteQueryResponse", "response"),
        ("ExceptionResponse", "error"),
    ] {
        let route = find_inbound(&set, &oots(action)).unwrap();
        assert_eq!(route.leg.name, leg);
        assert_eq!(route.leg.process, "evidence-exchange");
        assert!(!route.test_service);
    }
    // The other direction, and the explicit default MPC, match too.
    let mut back = oots("ExecuteQueryResponse");
    std::mem::swap(&mut back.from_party, &mut back.to_party);
    back.mpc =
        Some("http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/defaultMPC".into());
    assert_eq!(find_inbound(&set, &back).unwrap().leg.name, "response");
}

#[test]
fn a_mismatch_names_the_nearest_leg_and_the_field() {
    let set = set();
    let err = find_inbound(&set, &oots("ExecuteQueryRequestt")).unwrap_err();
    assert_eq!(err.code, ErrorCode::ProcessingModeMismatch);
    assert_eq!(
        err.detail,
        "no leg matches the message: nearest is oots.toml process 'evidence-exchange' leg 'request' \
         which differs in Action: got 'ExecuteQueryRequestt', expected 'ExecuteQueryRequest'"
    );

    // The OOTS party id type is required: the plain ebCore type differs.
    let mut key = oots("ExecuteQueryResponse");
    key.to_party_type = Some("urn:other".into());
    let err = find_inbound(&set, &key).unwrap_err();
    assert!(err.detail.contains("leg 'response'"), "{}", err.detail);
    assert!(
        err.detail
            .contains("To PartyId: got 'varti-b (type urn:other)'"),
        "{}",
        err.detail
    );

    // A missing service type on the connectivity test.
    let key = InboundKey {
        from_party: "varti-b".into(),
        from_party_type: Some(PLAIN_TYPE.into()),
        from_role: INITIATOR.into(),
        to_party: "varti-a".into(),
        to_party_type: Some(PLAIN_TYPE.into()),
        to_role: RESPONDER.into(),
        service: "http://ec.europa.eu/e-delivery/services/connectivity-service".into(),
        action: "submitMessage".into(),
        ..InboundKey::default()
    };
    let err = find_inbound(&set, &key).unwrap_err();
    assert!(
        err.detail.contains("connectivity-test.toml process 'connectivity' leg 'submit' which differs in Service type: got none, expected 'edelivery'"),
        "{}",
        err.detail
    );
    let fixed = InboundKey {
        service_type: Some("edelivery".into()),
        ..key
    };
    assert_eq!(find_inbound(&set, &fixed).unwrap().leg.name, "submit");

    // An unexpected AgreementRef is a difference too.
    let mut key = oots("ExecuteQueryRequest");
    key.agreement = Some("urn:some-agreement".into());
    let err = find_inbound(&set, &key).unwrap_err();
    assert!(
        err.detail
            .contains("AgreementRef: got 'urn:some-agreement', expected none"),
        "{}",
        err.detail
    );
}

#[test]
fn test_service_matches_explicit_legs_and_every_agreement() {
    let set = set();
    // Explicit test leg (default roles).
    let key = InboundKey {
        from_party: "varti-a".into(),
        from_party_type: Some(PLAIN_TYPE.into()),
        from_role: INITIATOR.into(),
        to_party: "varti-b".into(),
        to_party_type: Some(PLAIN_TYPE.into()),
        to_role: RESPONDER.into(),
        service: TEST_SERVICE.into(),
        action: TEST_ACTION.into(),
        ..InboundKey::default()
    };
    let route = find_inbound(&set, &key).unwrap();
    assert!(route.test_service);
    assert_eq!(route.leg.file.file_name().unwrap(), "test-service.toml");

    // With the OOTS parties and roles: matched on the OOTS agreement, with its security.
    let mut key = oots(TEST_ACTION);
    key.service = TEST_SERVICE.into();
    key.service_type = None;
    let route = find_inbound(&set, &key).unwrap();
    assert!(route.test_service);
    assert_eq!(route.leg.process, "evidence-exchange");

    // But not between parties no agreement names.
    key.from_party = "stranger".into();
    let err = find_inbound(&set, &key).unwrap_err();
    assert_eq!(err.code, ErrorCode::ProcessingModeMismatch);
    assert!(
        err.detail.contains("From PartyId: got 'stranger"),
        "{}",
        err.detail
    );
}

#[test]
fn submissions_find_the_outbound_leg() {
    let set = set();
    let sub = Submission {
        service: "QueryManager".into(),
        action: "ExecuteQueryResponse".into(),
        to_party: "varti-b".into(),
        to_party_type: Some(OOTS_TYPE.into()),
        ..Submission::default()
    };
    let route = find_outbound(&set, &sub).unwrap();
    assert_eq!(route.leg.name, "response");
    assert_eq!(route.leg.to.role, GATEWAY);

    let err = find_outbound(
        &set,
        &Submission {
            to_party: "varti-z".into(),
            ..sub.clone()
        },
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ProcessingModeMismatch);
    assert!(err.detail.contains("nearest is oots.toml process 'evidence-exchange' leg 'response' which differs in To party: got 'varti-z"), "{}", err.detail);

    let err = find_outbound(
        &set,
        &Submission {
            action: "Nope".into(),
            ..sub.clone()
        },
    )
    .unwrap_err();
    assert!(err.detail.contains("Action: got 'Nope'"), "{}", err.detail);

    let test = Submission {
        service: TEST_SERVICE.into(),
        action: TEST_ACTION.into(),
        to_party: "varti-a".into(),
        ..Submission::default()
    };
    let route = find_outbound(&set, &test).unwrap();
    assert!(route.test_service);
}

#[test]
fn ambiguous_legs_are_refused_at_run_time_too() {
    let dir = tempfile::tempdir().unwrap();
    let leg = |n: &str| {
        format!(
            "[[process]]\nname = \"{n}\"\nmep = \"oneWay\"\nbinding = \"push\"\ninitiator = {{ parties = [\"x\"] }}\nresponder = {{ parties = [\"x\"] }}\n\n[[process.leg]]\nname = \"l\"\nservice = \"S\"\naction = \"A\"\nsecurity = \"none\"\n\n[security.none]\nsign = false\nencrypt = false\n"
        )
    };
    std::fs::write(
        dir.path().join("x.toml"),
        "[[party]]\nname = \"x\"\nids = [{ value = \"x\" }]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("p1.toml"), leg("p1")).unwrap();
    std::fs::write(dir.path().join("p2.toml"), leg("p2")).unwrap();
    let (set, diags) = load_dir(dir.path());
    assert_eq!(
        diags.iter().filter(|d| d.is_error()).count(),
        1,
        "{diags:?}"
    );
    let key = InboundKey {
        from_party: "x".into(),
        from_role: INITIATOR.into(),
        to_party: "x".into(),
        to_role: RESPONDER.into(),
        service: "S".into(),
        action: "A".into(),
        ..InboundKey::default()
    };
    let err = find_inbound(&set, &key).unwrap_err();
    assert!(err.detail.contains("more than one leg"), "{}", err.detail);
}
