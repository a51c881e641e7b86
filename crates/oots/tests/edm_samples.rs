//! Every EDM request, response and error sample (France's EDM 2.0 messages and the EC's
//! EDM 1.0 artefacts) parses with the expected values and rebuilds to an equivalent
//! document.

mod common;

use std::path::Path;

use varti_oots::edm::xml;
use varti_oots::edm::{EdmDocument, EdmErrorKind, EdmVersion};

/// Parses, checks that writing and reading again gives the same value, and that the
/// written document means the same as the original (same namespace-resolved tree,
/// attribute order aside; comments and layout are not content).
fn round_trip(bytes: &[u8], what: &str) -> EdmDocument {
    let doc = EdmDocument::parse(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let written = doc.to_xml();
    let again = EdmDocument::parse(written.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(doc, again, "{what}: parse → build → parse differs");
    let original = xml::parse(bytes).unwrap().canonical();
    let rebuilt = xml::parse(written.as_bytes()).unwrap().canonical();
    assert_eq!(
        original, rebuilt,
        "{what}: rebuilt document is not equivalent"
    );
    doc
}

fn agent_id(a: &varti_oots::edm::sdg::Agent) -> (String, String) {
    let id = a.identifier.clone().expect("agent identifier");
    (id.scheme_id.unwrap_or_default(), id.value)
}

#[test]
fn france_reference_request() {
    let Some(v) = common::vectors() else { return };
    let bytes = common::read(&v.join("oots-france/reference/messages/requete.xml"));
    let EdmDocument::Request(r) = round_trip(&bytes, "requete.xml") else {
        panic!("not a request")
    };
    assert_eq!(
        r.id.as_deref(),
        Some("urn:uuid:1a2b3c4d-0000-4000-8000-000000000000")
    );
    assert_eq!(r.specification_identifier(), Some("oots-edm:v2.0"));
    assert_eq!(r.issue_date_time(), Some("2026-08-06T10:00:00.000Z"));
    assert_eq!(r.procedure(), Some("T3"));
    assert_eq!(r.possibility_for_preview(), Some(false));
    assert_eq!(r.explicit_request_given(), Some(true));
    let reqs = r.requirements();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].identifier.as_deref(),
        Some("https://sr.oots.tech.ec.europa.eu/requirements/f8a6a284-34e9-42c7-9733-63b5c4f4aa42")
    );
    let requesters = r.evidence_requesters();
    assert_eq!(requesters.len(), 2);
    assert_eq!(
        agent_id(&requesters[0]),
        (
            "urn:cef.eu:names:identifier:EAS:0009".into(),
            "00000000000002".into()
        )
    );
    assert_eq!(requesters[0].classification.as_deref(), Some("ER"));
    assert_eq!(requesters[1].classification.as_deref(), Some("IP"));
    let provider = r.evidence_provider().unwrap();
    assert_eq!(
        agent_id(&provider),
        (
            "urn:cef.eu:names:identifier:EAS:9930".into(),
            "DE73524311".into()
        )
    );
    let p = r.natural_person().unwrap();
    assert_eq!(p.level_of_assurance.as_deref(), Some("High"));
    assert_eq!(p.identifier.unwrap().value, "FR/DE/123123123");
    assert_eq!(p.family_name.as_deref(), Some("Dupont"));
    assert_eq!(p.date_of_birth.as_deref(), Some("1992-10-22"));
    let et = r.evidence_type().unwrap();
    assert_eq!(
        et.identifier.as_deref(),
        Some("41170824-15d9-4c16-984e-63b75b937b8c")
    );
    assert_eq!(
        et.classification.as_deref(),
        Some("https://sr.oots.tech.ec.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e")
    );
    assert_eq!(et.formats, vec!["application/pdf".to_string()]);
    let doc = EdmDocument::Request(r);
    assert_eq!(doc.version(), Some(EdmVersion::V2_0));
}

#[test]
fn france_reference_response() {
    let Some(v) = common::vectors() else { return };
    let bytes = common::read(&v.join("oots-france/reference/messages/reponse.xml"));
    let EdmDocument::Response(r) = round_trip(&bytes, "reponse.xml") else {
        panic!("not a response")
    };
    assert_eq!(
        r.request_id(),
        Some("urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797")
    );
    assert_eq!(r.specification_identifier(), Some("oots-edm:v2.0"));
    assert_eq!(
        r.response_identifier(),
        Some("1a2b3c4d-0000-4000-8000-000000000004")
    );
    assert_eq!(
        agent_id(&r.evidence_providers()[0]),
        (
            "urn:cef.eu:names:identifier:EAS:0009".into(),
            "00000000000001".into()
        )
    );
    assert_eq!(
        agent_id(&r.evidence_requesters()[0]),
        (
            "urn:cef.eu:names:identifier:EAS:0009".into(),
            "00000000000002".into()
        )
    );
    let ev = r.evidences();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].object_id.as_deref(),
        Some("urn:uuid:1a2b3c4d-0000-4000-8000-000000000017")
    );
    assert_eq!(ev[0].classification.as_deref(), Some("MainEvidence"));
    assert_eq!(
        ev[0].repository_item.as_ref().unwrap().href,
        "cid:1a2b3c4d-0000-4000-8000-000000000003@pdf.oots.fr"
    );
    let md = ev[0].metadata.as_ref().unwrap();
    assert_eq!(
        md.identifier.as_deref(),
        Some("1a2b3c4d-0000-4000-8000-000000000018")
    );
    assert_eq!(md.format.as_deref(), Some("application/pdf"));
    assert_eq!(
        md.about_person.as_ref().unwrap().given_name.as_deref(),
        Some("Jean")
    );
}

#[test]
fn france_reference_errors() {
    let Some(v) = common::vectors() else { return };
    let cases = [
        ("erreur.xml", EdmErrorKind::ObjectNotFound, "EDM:ERR:0004"),
        (
            "erreurCapaciteNonSupportee.xml",
            EdmErrorKind::UnsupportedCapability,
            "EDM:ERR:0007",
        ),
        (
            "erreurExpiration.xml",
            EdmErrorKind::Timeout,
            "EDM:ERR:0005",
        ),
        (
            "erreurRequeteInvalide.xml",
            EdmErrorKind::InvalidRequest,
            "EDM:ERR:0003",
        ),
    ];
    for (file, kind, code) in cases {
        let bytes = common::read(&v.join("oots-france/reference/messages").join(file));
        let EdmDocument::Error(e) = round_trip(&bytes, file) else {
            panic!("{file}: not an error response")
        };
        assert_eq!(e.kind(), Some(kind), "{file}");
        assert_eq!(e.exception().unwrap().code.as_deref(), Some(code), "{file}");
        assert_eq!(
            e.specification_identifier(),
            Some("oots-edm:v2.0"),
            "{file}"
        );
        assert_eq!(
            agent_id(&e.error_provider().unwrap()),
            (
                "urn:cef.eu:names:identifier:EAS:0009".into(),
                "00000000000001".into()
            ),
            "{file}"
        );
        assert!(e.timestamp().is_some(), "{file}");
        assert!(!e.is_preview_required(), "{file}");
    }
}

fn incoming(v: &Path, rel: &str) -> EdmDocument {
    let ws = common::read(&v.join("oots-france/incoming").join(rel));
    round_trip(&common::first_payload(&ws), rel)
}

#[test]
fn france_incoming_messages() {
    let Some(v) = common::vectors() else { return };
    for (rel, id, procedure, has_requester) in [
        (
            "requete.xml",
            "urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797",
            Some("00"),
            true,
        ),
        (
            "requete.demarcheInconnue.xml",
            "urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797",
            Some("T3"),
            true,
        ),
        (
            "requete.sansProcedure.xml",
            "urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797",
            None,
            true,
        ),
        (
            "requete.sansRequeteur.xml",
            "urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797",
            Some("00"),
            false,
        ),
        (
            "reel/requete.xml",
            "urn:uuid:cdd87e02-2bdc-4ce6-bdc9-79e05adae700",
            Some("00"),
            true,
        ),
        (
            "reel/requete.demarcheInconnue.xml",
            "urn:uuid:27e0872f-c4bf-43bd-8e33-0e19f7325f53",
            Some("T3"),
            true,
        ),
    ] {
        let EdmDocument::Request(r) = incoming(&v, rel) else {
            panic!("{rel}: not a request")
        };
        assert_eq!(r.id.as_deref(), Some(id), "{rel}");
        assert_eq!(r.procedure(), procedure, "{rel}");
        assert_eq!(
            r.slot("EvidenceRequester").is_some(),
            has_requester,
            "{rel}"
        );
        assert_eq!(r.slot("Procedure").is_some(), procedure.is_some(), "{rel}");
    }

    let EdmDocument::Error(e) = incoming(&v, "erreurAutorisationRequise.xml") else {
        panic!()
    };
    assert_eq!(e.kind(), Some(EdmErrorKind::Authorization));
    assert!(e.is_preview_required());
    assert_eq!(
        e.preview_location(),
        Some("https://previsualisation.example.si/espace?jeton=abc")
    );
    assert_eq!(
        e.request_id(),
        Some("urn:uuid:11111111-1111-1111-1111-111111111111")
    );

    let EdmDocument::Error(e) = incoming(&v, "erreurSansCode.xml") else {
        panic!()
    };
    assert_eq!(e.exception().unwrap().code, None);
    assert_eq!(e.kind(), Some(EdmErrorKind::Authorization));

    for rel in [
        "erreurObjetIntrouvable.xml",
        "reel/erreurObjetIntrouvable.xml",
    ] {
        let EdmDocument::Error(e) = incoming(&v, rel) else {
            panic!("{rel}")
        };
        assert_eq!(e.kind(), Some(EdmErrorKind::ObjectNotFound), "{rel}");
    }
    let EdmDocument::Error(e) = incoming(&v, "reel/erreurObjetIntrouvable.xml") else {
        panic!()
    };
    assert_eq!(
        e.request_id(),
        Some("urn:uuid:27e0872f-c4bf-43bd-8e33-0e19f7325f53")
    );
    assert_eq!(
        e.response_identifier(),
        Some("ebbd2e86-e0e3-47a5-8293-8fb17387c594")
    );

    for (rel, rid, href) in [
        (
            "reponseAvecPieceJointe.xml",
            "urn:uuid:766d83a5-f753-4926-9603-cc9280f7651c",
            "cid:11111111-1111-1111-1111-111111111111@pdf.oots.eu",
        ),
        (
            "reel/reponseAvecPieceJointe.xml",
            "urn:uuid:cdd87e02-2bdc-4ce6-bdc9-79e05adae700",
            "cid:802edbd4-fdfb-4345-84bd-0b7f17549075@pdf.oots.fr",
        ),
    ] {
        let EdmDocument::Response(r) = incoming(&v, rel) else {
            panic!("{rel}")
        };
        assert_eq!(r.request_id(), Some(rid), "{rel}");
        let ev = r.evidences();
        assert_eq!(ev.len(), 1, "{rel}");
        assert_eq!(ev[0].repository_item.as_ref().unwrap().href, href, "{rel}");
        assert_eq!(
            ev[0].classification.as_deref(),
            Some("MainEvidence"),
            "{rel}"
        );
    }
}

#[test]
fn edm_v1_samples() {
    let Some(s) = common::specs() else { return };
    let dir = common::edm_v1_samples(&s);
    let birth = "2 Example for requesting a Birth Certificate - natural person";
    let edu = "3 Example for requesting Secondary Education Completion Evidence";
    let tax = "4 Example for requesting an Extract of a Commercial Register";

    let EdmDocument::Request(r) = round_trip(
        &common::read(
            &dir.join(birth)
                .join("2.1 Step 1  Evidence Request - Birth - full example.xml"),
        ),
        "birth request",
    ) else {
        panic!()
    };
    assert_eq!(
        r.id.as_deref(),
        Some("urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797")
    );
    assert_eq!(r.lang.as_deref(), Some("EN"));
    assert_eq!(r.specification_identifier(), Some("oots-edm:v1.0"));
    assert_eq!(r.procedure(), Some("R1"));
    assert_eq!(r.possibility_for_preview(), Some(false));
    assert_eq!(
        agent_id(&r.evidence_requesters()[0]),
        (
            "urn:cef.eu:names:identifier:EAS:0096".into(),
            "DK22233223".into()
        )
    );
    assert_eq!(
        agent_id(&r.evidence_provider().unwrap()),
        (
            "urn:cef.eu:names:identifier:EAS:9930".into(),
            "DE73524311".into()
        )
    );
    assert_eq!(
        r.natural_person().unwrap().identifier.unwrap().value,
        "DK/DE/123123123"
    );
    let et = r.evidence_type().unwrap();
    assert_eq!(
        et.identifier.as_deref(),
        Some("2af27699-f131-4411-8fdb-9e8cd4e8bded")
    );
    assert_eq!(et.formats, vec!["application/xml".to_string()]);
    assert!(
        r.slot("EvidenceProviderClassification").is_some(),
        "unknown slots are kept"
    );
    assert_eq!(EdmDocument::Request(r).version(), Some(EdmVersion::V1_0));

    let EdmDocument::Response(r) = round_trip(
        &common::read(
            &dir.join(birth)
                .join("2.2 Step 2  Evidence Response - Birth - full example.xml"),
        ),
        "birth response",
    ) else {
        panic!()
    };
    assert_eq!(
        r.request_id(),
        Some("urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797")
    );
    assert_eq!(
        r.response_identifier(),
        Some("166155eb-d7a7-4cac-9086-8a85f0116462")
    );
    let ev = r.evidences();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        ev[0].repository_item.as_ref().unwrap().href,
        "cid:attachment100001@example.oots.eu"
    );
    assert_eq!(
        ev[0].metadata.as_ref().unwrap().identifier.as_deref(),
        Some("37a169f1-9cf6-4aa8-ac24-b083fa569173")
    );

    let EdmDocument::Error(e) = round_trip(
        &common::read(
            &dir.join(edu)
                .join("3.2 Step 2 Error Response - Education - full example.xml"),
        ),
        "education error",
    ) else {
        panic!()
    };
    assert_eq!(e.kind(), Some(EdmErrorKind::Authorization));
    // The EC sample's severity ends with a stray U+007F (DEL) after "PreviewRequired": it
    // is kept byte for byte, and it is not the preview-required severity.
    assert_eq!(
        e.exception().unwrap().severity.as_deref(),
        Some(
            "urn:sr.oots.tech.europa.eu:codes:ErrorSeverity:EDMErrorResponse:PreviewRequired\u{7f}"
        )
    );
    assert!(!e.is_preview_required());
    assert_eq!(
        e.preview_location(),
        Some("https://preview.space.example.com/requests?session=d36af8bc-fea6-4ee5-a32d-5bef82cdb071")
    );
    assert_eq!(
        agent_id(&e.error_provider().unwrap()),
        (
            "urn:cef.eu:names:identifier:EAS:0204".into(),
            "DE765758700".into()
        )
    );

    let EdmDocument::Request(r) = round_trip(
        &common::read(
            &dir.join(tax)
                .join("4.1 Step 1  Evidence Request  - Tax - full example.xml"),
        ),
        "tax request",
    ) else {
        panic!()
    };
    assert!(
        r.legal_person().is_some(),
        "the tax request is about a legal person"
    );
    assert!(r.natural_person().is_none());
    assert_eq!(agent_id(&r.evidence_requesters()[0]).1, "DK22234444");

    let EdmDocument::Response(r) = round_trip(
        &common::read(
            &dir.join(tax)
                .join("4.2 Step 2  Evidence Response - Tax - full example.xml"),
        ),
        "tax response",
    ) else {
        panic!()
    };
    assert_eq!(
        r.request_id(),
        Some("urn:uuid:361e43b5-bd1b-4eb5-9b1f-93971ce2e811")
    );
    assert!(!r.evidences().is_empty());

    // The older samples and the test-event messages must read and round-trip too.
    let mut n = 0;
    for sub in [birth, edu, tax] {
        for entry in std::fs::read_dir(dir.join(sub).join("Old samples")).unwrap() {
            let p = entry.unwrap().path();
            round_trip(&common::read(&p), &p.display().to_string());
            n += 1;
        }
    }
    for entry in std::fs::read_dir(s.join("oots-edm-v1/test-event")).unwrap() {
        let p = entry.unwrap().path();
        round_trip(&common::read(&p), &p.display().to_string());
        n += 1;
    }
    assert!(
        n >= 30,
        "expected the old samples and test-event messages, read {n}"
    );
}

#[test]
fn built_error_responses_read_back() {
    use varti_oots::edm::ErrorResponse;
    let e = ErrorResponse::preview_required(
        "urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797",
        EdmVersion::V2_0,
        "https://preview.example.lv/p/1",
        "2026-01-01T00:00:00Z",
    );
    let xml = EdmDocument::Error(e.clone()).to_xml();
    let EdmDocument::Error(back) = EdmDocument::parse(xml.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(back, e);
    assert!(back.is_preview_required());
    assert_eq!(
        back.preview_location(),
        Some("https://preview.example.lv/p/1")
    );
    for kind in EdmErrorKind::ALL {
        let e = ErrorResponse::new(
            "urn:uuid:x",
            EdmVersion::V1_0,
            kind,
            "m",
            "2026-01-01T00:00:00Z",
        );
        let xml = EdmDocument::Error(e).to_xml();
        let EdmDocument::Error(back) = EdmDocument::parse(xml.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(back.kind(), Some(kind));
        assert_eq!(back.exception().unwrap().code.as_deref(), Some(kind.code()));
    }
}
