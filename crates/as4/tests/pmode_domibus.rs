//! Importing the Domibus sample PModes (read in place from the shared vectors).

mod common;

use std::path::Path;
use std::time::Duration;

use varti_as4::pmode::domibus::{convert, write};
use varti_as4::pmode::{load_dir, load_dir_with, Binding, LoadOptions, PModeSet, TokenReference};

/// Imports a sample into a temp dir, with the blue and red certificates provided where
/// the import expects them (the other parties' certificates do not exist anywhere).
fn import(name: &str) -> Option<(tempfile::TempDir, Vec<String>, usize, usize)> {
    let xml = common::read(&format!("domibus-pmodes/{name}"))?;
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir(out.path().join("certs")).unwrap();
    for party in ["blue_gw", "red_gw"] {
        let pem = common::read(&format!("domibus-pmodes/{party}.cert.pem"))?;
        std::fs::write(out.path().join(format!("certs/{party}.cert.pem")), pem).unwrap();
    }
    let import = convert(&xml, out.path()).unwrap();
    write(&import, out.path(), false).unwrap();
    // Writing again without force refuses to overwrite.
    assert!(write(&import, out.path(), false).is_err());
    Some((out, import.warnings, import.party_count, import.leg_count))
}

/// Checks at a time the sample certificates were valid (they expired on 2025-12-01).
fn checked(dir: &Path) -> PModeSet {
    let (set, diags) = load_dir_with(dir, &LoadOptions::at("2025-06-01").unwrap());
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "import result fails the check:\n{}",
        errors.join("\n")
    );
    set
}

fn has(warnings: &[String], needle: &str) -> bool {
    warnings.iter().any(|w| w.contains(needle))
}

#[test]
fn blue_sample_imports_and_passes_the_check() {
    let Some((out, warnings, parties, legs)) = import("domibus-gw-sample-pmode-blue.xml") else {
        return;
    };
    assert_eq!(parties, 6);
    assert_eq!(legs, 31);
    let set = checked(out.path());
    assert_eq!(set.parties.len(), 6);
    assert_eq!(set.legs.len(), 31);
    assert_eq!(set.process_count(), 14);

    let blue = set.party("blue_gw").unwrap();
    assert_eq!(blue.ids[0].value, "domibus-blue");
    assert_eq!(
        blue.ids[0].id_type.as_deref(),
        Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered")
    );
    assert!(blue
        .signing_cert
        .as_ref()
        .unwrap()
        .ends_with("certs/blue_gw.cert.pem"));
    assert!(set.party("white_gw").unwrap().signing_cert.is_none());

    let leg = |name: &str| set.legs.iter().find(|l| l.name == name).unwrap();
    // Policies → token references and sign/encrypt.
    assert_eq!(
        leg("pushTestcase1tc1Action").security.token_reference,
        TokenReference::Ski
    );
    assert_eq!(
        leg("pushTestcase07tc07Action").security.token_reference,
        TokenReference::Bst
    );
    assert_eq!(
        leg("pushTestcase23tc23Action").security.token_reference,
        TokenReference::IssuerSerial
    );
    let nothing = &leg("pushTestcase2tc1Action").security;
    assert!(!nothing.sign && !nothing.encrypt);
    let sign_only = &leg("pushTestcase3tc1Action").security;
    assert!(sign_only.sign && !sign_only.encrypt);
    // Reliability, reception awareness, errors, compression.
    let l1 = leg("pushTestcase1tc1Action");
    assert!(l1.receipt.non_repudiation);
    assert!(!leg("pushTestcase2tc1Action").receipt.non_repudiation);
    assert_eq!(
        l1.reception.retry.intervals(),
        vec![Duration::from_secs(180); 4]
    );
    assert!(l1.reception.duplicate_detection);
    assert!(l1.errors.report_as_response && !l1.errors.notify_producer);
    assert!(l1.compression.compress);
    assert!(!leg("pushTestcase19tc19Action").compression.compress);
    // Process values: agreement and type, binding, MPC, roles.
    let l4 = leg("pushTestcase4tc1Action");
    let agreement = l4.agreement.as_ref().unwrap();
    assert_eq!(
        (
            agreement.value.as_str(),
            agreement.agreement_type.as_deref()
        ),
        ("DummyAgr", Some("DUM"))
    );
    assert!(l1.agreement.is_none());
    let pull = leg("pullTestcase13tc13Action");
    assert_eq!(pull.binding, Binding::Pull);
    assert_eq!(
        pull.mpc,
        "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/mpcPull"
    );
    assert_eq!(
        leg("pushTestcase27tc27Action").from.role,
        "urn:fdc:peppol.eu:2017:roles:ap:sender"
    );
    // Payload profile and property set.
    let payload = l1.payload.as_ref().unwrap();
    assert_eq!(payload.max_size, Some(2147483647));
    assert_eq!(payload.parts.len(), 4);
    assert_eq!(payload.parts[0].mime_types, vec!["text/xml"]);
    assert_eq!(payload.parts[0].cid.as_deref(), Some("cid:message"));
    assert!(payload.parts[0].required && !payload.parts[1].required);
    let required: Vec<&str> = l1
        .properties
        .iter()
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(required, vec!["finalRecipient", "originalSender"]);
    let conn = leg("pushConnectivityTest");
    assert_eq!(conn.service.service_type.as_deref(), Some("edelivery"));
    assert_eq!(conn.action, "submitMessage");

    // What could not be carried over is named.
    for needle in [
        "legConfiguration 'pushTestcase33tc33Action': splitting",
        "splittingConfigurations",
        "payloadProfiles/payload 'businessContentPayloadInBody': inBody",
        "securities/security 'eDeliveryAS4PolicyEncryptBody'",
        "legConfiguration 'pushTestcase38tc38Action' is not used by any process",
        "mpcs/mpc 'defaultMpc': delete_message_metadata",
        "parties/party 'white_gw': its certificate",
        "parties/party 'yellow_gw': its certificate",
    ] {
        assert!(
            has(&warnings, needle),
            "no warning '{needle}' in {warnings:#?}"
        );
    }
    assert!(!has(&warnings, "parties/party 'blue_gw'"), "{warnings:#?}");

    // Today the sample certificates are expired: the check says so.
    let (_, now) = load_dir(out.path());
    assert_eq!(
        now.iter()
            .filter(|d| d.is_error() && d.message.contains("expired on"))
            .count(),
        4, // blue and red, each as signing and encryption certificate
        "{now:?}"
    );
}

#[test]
fn red_sample_imports_and_passes_the_check() {
    let Some((out, warnings, parties, legs)) = import("domibus-gw-sample-pmode-red.xml") else {
        return;
    };
    assert_eq!((parties, legs), (5, 30));
    let set = checked(out.path());
    assert_eq!(set.legs.len(), 30);
    assert!(set.party("yellow_gw").is_none());
    let leg = |name: &str| set.legs.iter().find(|l| l.name == name).unwrap();
    // The red sample differs from blue here.
    assert!(leg("pushTestcase19tc19Action").compression.compress);
    assert!(!leg("pushTestcase23tc23Action").compression.compress);
    assert!(has(
        &warnings,
        "legConfiguration 'pushTestcase37tc37Action' is not used by any process"
    ));
    assert!(has(&warnings, "parties/party 'green_gw': its certificate"));
}

#[test]
fn oots_domibus_example_imports() {
    let Some(xml) = common::read("oots-france/exemples/configuration_PMode_Domibus.xml") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let import = convert(&xml, out.path()).unwrap();
    write(&import, out.path(), false).unwrap();
    assert_eq!((import.party_count, import.leg_count), (1, 4));
    assert!(has(
        &import.warnings,
        "securities/security 'eDeliveryAS4PolicyRSA': no policy file"
    ));
    let (set, diags) = load_dir(out.path());
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let req = set
        .legs
        .iter()
        .find(|l| l.action == "ExecuteQueryRequest")
        .unwrap();
    assert_eq!(req.service.value, "QueryManager");
    assert_eq!(req.from.role, "http://sdg.europa.eu/edelivery/gateway");
    assert_eq!(
        set.parties[0].ids[0].id_type.as_deref(),
        Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:oots")
    );
    let props: Vec<&str> = req.properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        props,
        vec![
            "originalSender",
            "finalRecipient",
            "ExchangeId",
            "SpecificationId"
        ]
    );
}
