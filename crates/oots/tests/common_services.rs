//! The common-services answers: every EB/DSD sample (France's recorded answers and the
//! EDM 1.0 release's examples) reads into the expected values; the recorded JAdES
//! signatures verify and tampered copies are refused; the stand-in's table points at
//! samples that exist and parse.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::X509;
use time::OffsetDateTime;
use varti_oots::common_services::answer::AnswerError;
use varti_oots::common_services::query::{DataServicesQuery, Query};
use varti_oots::common_services::signature::{
    verify_response, ResponseSigner, SignatureError, TrustAnchors,
};
use varti_oots::common_services::standin::{self, StandIn, ROUTES};
use varti_oots::common_services::{parse_data_services, parse_requirements};
use varti_oots::edm::EdmError;

fn fr(v: &Path, name: &str) -> Vec<u8> {
    common::read(&v.join("oots-france/common_services").join(name))
}

fn eb(s: &Path, name: &str) -> Vec<u8> {
    common::read(
        &s.join("oots-edm-v1/xml/EB/Complete XML examples (EB)")
            .join(name),
    )
}

fn dsd(s: &Path, name: &str) -> Vec<u8> {
    common::read(
        &s.join("oots-edm-v1/xml/DSD/Complete XML examples (DSD)")
            .join(name),
    )
}

fn en(texts: &[varti_oots::edm::sdg::LangText]) -> &str {
    texts
        .iter()
        .find(|t| t.lang.as_deref() == Some("EN"))
        .map(|t| t.text.trim())
        .expect("an EN text")
}

fn exception(
    r: Result<impl std::fmt::Debug, AnswerError>,
) -> varti_oots::common_services::CsException {
    match r {
        Err(AnswerError::Exception(e)) => *e,
        other => panic!("expected an exception answer, got {other:?}"),
    }
}

// ---------------------------------------------------------------- France (TDD 2.0)

#[test]
fn france_requirements_fr() {
    let Some(v) = common::vectors() else { return };
    let a = parse_requirements(&fr(&v, "eb_requirements_fr.xml")).unwrap();
    assert_eq!(a.specification.as_deref(), Some("oots-cs:v2.0"));
    assert_eq!(a.items.len(), 1);
    let r = &a.items[0];
    assert_eq!(
        r.object_id.as_deref(),
        Some("urn:uuid:6aa3a360-fb02-4304-b2e2-5893c0f55211")
    );
    assert_eq!(
        r.identifier,
        "https://sr.acc.oots.tech.ec.europa.eu/requirements/00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(en(&r.names), "(TEST) Test Requirement");
    assert_eq!(r.names[1].lang.as_deref(), Some("FI"));
    assert_eq!(r.reference_frameworks.len(), 1);
    let rf = &r.reference_frameworks[0];
    assert_eq!(
        rf.identifier.as_deref(),
        Some("92c27c13-5c49-439b-a334-683d736a0cb7")
    );
    assert_eq!(en(&rf.titles), "Test - FR - MS Procedure");
    assert_eq!(rf.related_to, ["00"]);
    assert_eq!(rf.jurisdictions[0].country.as_deref(), Some("FR"));
    assert!(r.evidence_type_lists.is_empty());
}

#[test]
fn france_requirements_catalogue() {
    let Some(v) = common::vectors() else { return };
    let a = parse_requirements(&fr(&v, "eb_requirements_catalogue.xml")).unwrap();
    assert_eq!(a.items.len(), 53);
    let first = &a.items[0];
    assert_eq!(
        first.object_id.as_deref(),
        Some("urn:uuid:82c31ee4-5ea1-4e79-add0-68ba34f9df84")
    );
    assert_eq!(
        first.identifier,
        "https://sr.acc.oots.tech.ec.europa.eu/requirements/528adc38-092d-40ce-a3af-d838ec06a349"
    );
    assert_eq!(
        en(&first.names),
        "Proof of residence (all registered addresses)"
    );
    assert_eq!(
        a.items.last().unwrap().identifier,
        "https://sr.acc.oots.tech.ec.europa.eu/requirements/246ef20a-e0da-4890-aa9f-99591895ba82"
    );
    let frameworks: usize = a.items.iter().map(|r| r.reference_frameworks.len()).sum();
    assert_eq!(frameworks, 687);
    // Additional jurisdiction classifications (Austrian Länder …) are kept with their list.
    let at13 = a
        .items
        .iter()
        .flat_map(|r| &r.reference_frameworks)
        .flat_map(|rf| &rf.jurisdictions)
        .flat_map(|j| &j.additional)
        .find(|(_, v)| v == "AT13")
        .expect("an AT13 classification");
    assert_eq!(
        at13.0.as_deref(),
        Some("https://sr.acc.oots.tech.ec.europa.eu/codelists/AT/NutsExtractATBundeslaender")
    );
}

#[test]
fn france_evidence_types_fr_and_fi() {
    let Some(v) = common::vectors() else { return };
    for (file, country, classification, title, list_id) in [
        (
            "eb_evidence_types_fr.xml",
            "FR",
            "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FR/869a6748-bfc5-4de6-a0b4-ec0420f6b6a4",
            "FR - Test Evidence Type",
            "91ecb80f-c74a-48bd-ad43-2a6f1bdb5a7d",
        ),
        (
            "eb_evidence_types_fi.xml",
            "FI",
            "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FI/19f0783e-7cdc-4146-9ff9-e331514ffb74",
            "Dummy PDF - FI",
            "8dc10828-b3c6-4327-b54e-842d03c75b86",
        ),
    ] {
        let a = parse_requirements(&fr(&v, file)).unwrap();
        assert_eq!(a.items.len(), 1, "{file}");
        let r = &a.items[0];
        assert_eq!(
            r.identifier,
            "https://sr.acc.oots.tech.ec.europa.eu/requirements/00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(r.reference_frameworks.len(), 41, "{file}");
        assert_eq!(r.evidence_type_lists.len(), 1, "{file}");
        assert_eq!(r.evidence_type_lists[0].identifier.as_deref(), Some(list_id));
        let types: Vec<_> = r.evidence_types().collect();
        assert_eq!(types.len(), 1, "{file}");
        let (t, c) = types[0];
        assert_eq!(t.classification, classification);
        assert_eq!(en(&t.titles), title);
        // TDD 2.0 puts the jurisdiction on the list, not on the type.
        assert!(t.jurisdiction.is_none());
        assert_eq!(c, Some(country), "{file}");
    }
}

#[test]
fn france_data_services_fi() {
    let Some(v) = common::vectors() else { return };
    let a = parse_data_services(&fr(&v, "dsd_data_services_fi.xml")).unwrap();
    assert_eq!(a.specification.as_deref(), Some("oots-cs:v2.0"));
    assert_eq!(a.items.len(), 1);
    let t = &a.items[0];
    assert_eq!(
        t.object_id.as_deref(),
        Some("urn:uuid:7c971e8b-ec04-4968-82c2-e6fb66959ac1")
    );
    assert_eq!(t.identifier, "41170824-15d9-4c16-984e-63b75b937b8c");
    assert_eq!(
        t.classification,
        "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FI/19f0783e-7cdc-4146-9ff9-e331514ffb74"
    );
    assert_eq!(en(&t.titles), "Dummy PDF - FI");
    assert_eq!(t.distributions.len(), 1);
    assert_eq!(t.distributions[0].format, "application/pdf");
    assert_eq!(t.distributions[0].languages, ["EN"]);
    assert_eq!(t.level_of_assurance.as_deref(), Some("Substantial"));
    let services: Vec<_> = t.data_services().collect();
    assert_eq!(services.len(), 1);
    let s = &services[0];
    assert_eq!(s.access_point.value, "AP_FI_03");
    assert_eq!(
        s.access_point.scheme_id.as_deref(),
        Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:FI")
    );
    assert_eq!(s.provider.value, "FIKEHA02");
    assert_eq!(
        s.provider.scheme_id.as_deref(),
        Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered:FI")
    );
    assert_eq!(s.provider_name, Some("Keha v. 2.0"));
    assert_eq!(s.edm_versions, ["oots-edm:v2.0"]);
    let a0 = &t.access_services[0];
    assert_eq!(en(&a0.names), "Finland OOTS DEV TDD 2.0.0");
    assert_eq!(a0.publisher.country.as_deref(), Some("FI"));
    assert_eq!(
        a0.publisher
            .jurisdiction
            .as_ref()
            .unwrap()
            .country
            .as_deref(),
        Some("FI")
    );
}

#[test]
fn france_empty_answers_are_typed_not_found_exceptions() {
    let Some(v) = common::vectors() else { return };
    let e = exception(parse_requirements(&fr(&v, "eb_requirements_vides.xml")));
    assert_eq!(e.code.as_deref(), Some("EB:ERR:0001"));
    assert_eq!(
        e.exception_type.as_deref(),
        Some("ObjectNotFoundExceptionType")
    );
    assert_eq!(e.detail.as_deref(), Some("EMPTY_RESULT"));
    assert_eq!(e.message.as_deref(), Some("The result set is empty"));
    assert!(e.is_empty_result() && !e.needs_user_input());

    let e = exception(parse_data_services(&fr(&v, "dsd_aucun_service_fr.xml")));
    assert_eq!(e.code.as_deref(), Some("DSD:ERR:0001"));
    assert_eq!(e.detail.as_deref(), Some("DS_NOT_FOUND"));
    assert_eq!(
        e.severity.as_deref(),
        Some("urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error")
    );
    assert!(e.is_empty_result());
    assert!(e.additional_input.is_none());
}

// ---------------------------------------------------------------- EDM 1.0 release

#[test]
fn edm1_eb_requirements() {
    let Some(s) = common::specs() else { return };
    for (file, id, procedure, name) in [
        (
            "4.2. Get List of Requirements Query - Birth Certificate.xml",
            "https://sr.oots.tech.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099",
            "R1",
            "Proof of Birth",
        ),
        (
            "4.2. Get List of Requirements Query - Secondary Education.xml",
            "https://sr.oots.tech.europa.eu/requirements/cfcd4e22-30f1-48fa-93e4-6cf98cedbf40",
            "T2",
            "Proof of Secondary Education Completion",
        ),
        (
            "4.2. Get List of Requirements Query - Social Security Contributions.xml",
            "https://sr.oots.tech.europa.eu/requirements/777873c1-02c4-49ff-af8f-77c59a42a7f4",
            "X6",
            "Proof of payment of social contributions for employees",
        ),
    ] {
        let a = parse_requirements(&eb(&s, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(a.specification, None, "{file}");
        assert_eq!(a.items.len(), 1, "{file}");
        let r = &a.items[0];
        assert_eq!(r.identifier, id, "{file}");
        assert_eq!(en(&r.names), name, "{file}");
        assert!(!r.reference_frameworks.is_empty());
        for rf in &r.reference_frameworks {
            assert_eq!(rf.related_to, [procedure], "{file}");
            assert_eq!(rf.jurisdictions[0].country.as_deref(), Some("DE"), "{file}");
        }
        assert!(r.evidence_type_lists.is_empty(), "{file}");
    }
}

#[test]
fn edm1_eb_evidence_types() {
    let Some(s) = common::specs() else { return };
    for (file, classifications) in [
        (
            "4.3. Get Evidence Types for Requirement Query - Birth Certificate.xml",
            vec!["https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e"],
        ),
        (
            "4.3. Get Evidence Types for Requirement Query - Social Security Contributions.xml",
            vec!["https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/d6bef643-fb9d-404f-8377-323ec2955e44"],
        ),
        (
            "4.3. Get Evidence Types for Requirement Query - Secondary Education.xml",
            vec![
                "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/edf717b7-b373-40b1-b51b-cbb7c9d64de5",
                "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/a7e1520a-7051-4a96-931f-a097b0f7c097",
                "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/76aff882-b970-4400-a33e-6b51d46973c1",
                "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/c194c647-2e0d-49b5-92ba-03b0e31cc611",
                "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/3f085f27-ad1f-4f39-ad02-df70561d32b4",
            ],
        ),
    ] {
        let a = parse_requirements(&eb(&s, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(a.items.len(), 1, "{file}");
        let types: Vec<_> = a.items[0].evidence_types().collect();
        let got: Vec<&str> = types.iter().map(|(t, _)| t.classification.as_str()).collect();
        assert_eq!(got, classifications, "{file}");
        // EDM 1.0 puts the jurisdiction on each evidence type.
        for (t, country) in &types {
            assert!(t.jurisdiction.is_some(), "{file}");
            assert_eq!(*country, Some("DE"), "{file}");
            assert!(!t.titles.is_empty(), "{file}");
        }
    }
}

#[test]
fn edm1_eb_errors() {
    let Some(s) = common::specs() else { return };
    for (file, code, ty, detail) in [
        (
            "4.4. Query Error Response of the Evidence Broker - Birth.xml",
            "EB:ERR:0003",
            "InvalidRequestExceptionType",
            "country-code",
        ),
        (
            "4.4. Query Error Response of the Evidence Broker - Secondary Education.xml",
            "EB:ERR:0004",
            "InvalidRequestExceptionType",
            "XYZ",
        ),
        (
            "4.4. Query Error Response of the Evidence Broker - Social Security Contributions.xml",
            "EB:ERR:0002",
            "ObjectNotFoundExceptionType",
            "a55f92a0-aa80-44b4-8135-7c9a31716ce1",
        ),
    ] {
        let e = exception(parse_requirements(&eb(&s, file)));
        assert_eq!(e.code.as_deref(), Some(code), "{file}");
        assert_eq!(e.exception_type.as_deref(), Some(ty), "{file}");
        assert_eq!(e.detail.as_deref(), Some(detail), "{file}");
        assert!(!e.is_empty_result(), "{file}");
    }
}

#[test]
fn edm1_dsd_birth_certificate_two_providers_with_classifications() {
    let Some(s) = common::specs() else { return };
    let a = parse_data_services(&dsd(
        &s,
        "4.3. Query Response of the DSD - Birth Certificate.xml",
    ))
    .unwrap();
    assert_eq!(a.items.len(), 1);
    let t = &a.items[0];
    assert_eq!(t.identifier, "2af27699-f131-4411-8fdb-9e8cd4e8bded");
    assert_eq!(
        t.classification,
        "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e"
    );
    assert_eq!(en(&t.titles), "Certificate of Birth");
    let formats: Vec<&str> = t.distributions.iter().map(|d| d.format.as_str()).collect();
    assert_eq!(
        formats,
        ["application/xml", "application/xml", "application/pdf"]
    );
    assert_eq!(
        t.distributions[1].transformation.as_deref(),
        Some("https://sr.oots.tech.europa.eu/distributions/certificate-of-birth-1.0.0/age-of-majority")
    );
    assert_eq!(
        t.distributions[0].conforms_to.as_deref(),
        Some("https://sr.oots.tech.europa.eu/distributions/certificate-of-birth-1.0.0")
    );
    assert_eq!(t.level_of_assurance.as_deref(), Some("High"));
    let jd = t.jurisdiction_determination.as_ref().unwrap();
    assert_eq!(jd.context_id, "5ce148b9-5578-4049-aecf-af7bb55714b5");
    assert_eq!(jd.level.as_deref(), Some("LAU"));
    assert_eq!(en(&jd.contexts), "Place Of Birth");
    assert_eq!(t.provider_classifications.len(), 1);
    assert_eq!(
        t.provider_classifications[0].identifier,
        "b07146b6-1468-41a7-a10f-ee2a61429dbc"
    );

    let services: Vec<_> = t.data_services().collect();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0].access_point.value, "8889909098");
    assert_eq!(
        services[0].access_point.scheme_id.as_deref(),
        Some("urn:cef.eu:names:identifier:EAS:0060")
    );
    assert_eq!(services[0].provider.value, "DE73524311");
    assert_eq!(
        services[0].provider.scheme_id.as_deref(),
        Some("urn:cef.eu:names:identifier:EAS:9930")
    );
    assert_eq!(
        services[0].provider_name,
        Some("Civil Registration Office Berlin I")
    );
    assert_eq!(services[0].edm_versions, ["oots-edm:v1.0"]);
    assert_eq!(services[1].provider.value, "02-CivilRegistration-66");
    let berlin = &t.access_services[0].publisher;
    assert_eq!(
        berlin.jurisdiction.as_ref().unwrap().level3.as_deref(),
        Some("11000000")
    );
    assert_eq!(
        berlin.classification_concepts[0].supported_values,
        [
            "ApplicantHasNeverBeenResidentInGermany",
            "ApplicantHasBeenResidentInGermany"
        ]
    );
    let hamburg = &t.access_services[1].publisher;
    assert_eq!(
        hamburg.classification_concepts[0].supported_values,
        ["ApplicantHasBeenResidentInGermany"]
    );
}

#[test]
fn edm1_dsd_other_answers() {
    let Some(s) = common::specs() else { return };
    for (file, id, access_points, providers) in [
        (
            "4.3. Query Response of the DSD - Birth Certificate Simple Flow.xml",
            "487fdfdc-7f92-42bb-a690-dcbd3d65f435",
            ["11-IntermediaryPlatform-58", "02-IntermediaryPlatform-90"],
            2,
        ),
        (
            "4.3. Query Response of the DSD - Secondary Education.xml",
            "487fdfdc-7f92-42bb-a690-dcbd3d65f435",
            ["11-IntermediaryPlatform-58", "02-IntermediaryPlatform-90"],
            2,
        ),
        (
            "4.3. Query Response of the DSD - Social Security Contributions.xml",
            "6ee853e4-7188-44b0-b850-785dfd4d8c48",
            ["150483782", "093869170"],
            2,
        ),
    ] {
        let a = parse_data_services(&dsd(&s, file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(a.items.len(), 1, "{file}");
        let t = &a.items[0];
        assert_eq!(t.identifier, id, "{file}");
        let aps: Vec<&str> = t
            .data_services()
            .map(|d| d.access_point.value.as_str())
            .collect();
        assert_eq!(aps, access_points, "{file}");
        assert_eq!(t.data_services().count(), providers, "{file}");
        assert!(t
            .data_services()
            .all(|d| !d.provider.value.is_empty() && d.provider.scheme_id.is_some()));
        assert!(!t.distributions.is_empty(), "{file}");
    }
}

#[test]
fn edm1_dsd_errors_and_additional_input() {
    let Some(s) = common::specs() else { return };
    for (file, code, detail) in [
        ("4.4.1 Query Error Response of the DSD - Birth Certificate.xml", "DSD:ERR:0003", Some("country-code")),
        (
            "4.4.1 Query Error Response of the DSD - Secondary Education.xml",
            "DSD:ERR:0002",
            Some("https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/edf717b7-b373-40b1-b51b-cbb7c9d64de5"),
        ),
        (
            "4.4.1 Query Error Response of the DSD - Social Security Contributions.xml",
            "DSD:ERR:0001",
            Some("Please use other evidence type"),
        ),
    ] {
        let e = exception(parse_data_services(&dsd(&s, file)));
        assert_eq!(e.code.as_deref(), Some(code), "{file}");
        assert_eq!(e.detail.as_deref(), detail, "{file}");
        assert!(e.additional_input.is_none(), "{file}");
    }

    let e = exception(parse_data_services(&dsd(
        &s,
        "4.4.3. Query Error Response of the DSD requesting additional User Provided Attributes - Birth Certificate - DSD-ERR005.xml",
    )));
    assert!(e.needs_user_input());
    assert_eq!(
        e.severity.as_deref(),
        Some("urn:sr.oots.tech.europa.eu:codes:ErrorSeverity:DSDErrorResponse:AdditionalInput")
    );
    let input = e.additional_input.as_ref().unwrap();
    let t = input.evidence_type.as_ref().unwrap();
    assert_eq!(t.identifier, "2af27699-f131-4411-8fdb-9e8cd4e8bded");
    assert_eq!(t.distributions.len(), 3);
    assert!(t.access_services.is_empty());
    let jd = input.jurisdiction.as_ref().unwrap();
    assert_eq!(jd.context_id, "5ce148b9-5578-4049-aecf-af7bb55714b5");
    assert_eq!(jd.level.as_deref(), Some("LAU"));
    assert_eq!(input.classifications.len(), 1);
    assert_eq!(
        input.classifications[0].identifier,
        "b07146b6-1468-41a7-a10f-ee2a61429dbc"
    );
    assert_eq!(
        input.classifications[0].value_expression.as_deref(),
        Some("https://sr.oots.tech.europa.eu/ep-classification/de/countryresidence")
    );

    for (file, jurisdiction, classifications) in [
        (
            "4.4.3. Query Error Response of the DSD requesting additional User Provided Attributes - Secondary Education - DSD-ERR005.xml",
            Some("9be524c1-6efe-417a-974c-088f54f0bcae"),
            1,
        ),
        (
            "4.4.3. Query Error Response of the DSD requesting additional User Provided Attributes - Social Security Contributions - DSD-ERR005.xml",
            None,
            1,
        ),
    ] {
        let e = exception(parse_data_services(&dsd(&s, file)));
        assert!(e.needs_user_input(), "{file}");
        let input = e.additional_input.as_ref().expect("additional input");
        assert_eq!(
            input.jurisdiction.as_ref().map(|j| j.context_id.as_str()),
            jurisdiction,
            "{file}"
        );
        assert_eq!(input.classifications.len(), classifications, "{file}");
    }
}

/// Every other file under the EB and DSD sample folders (snippets, older samples): a
/// whole QueryResponse reads into items or an exception; a fragment (a lone registry
/// object or SDG element) is refused as not a QueryResponse.
#[test]
fn edm1_every_eb_and_dsd_file_is_read() {
    let Some(s) = common::specs() else { return };
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["EB", "DSD"] {
        collect(&s.join("oots-edm-v1/xml").join(dir), &mut files);
    }
    files.retain(|p| p.file_name().is_some_and(|n| n != "README.md"));
    assert!(files.len() >= 60, "found only {} sample files", files.len());
    let (mut items, mut exceptions, mut fragments) = (0, 0, 0);
    for f in &files {
        let bytes = common::read(f);
        let is_dsd = f.to_string_lossy().contains("/DSD/");
        let outcome = if is_dsd {
            parse_data_services(&bytes).map(|a| a.items.len())
        } else {
            parse_requirements(&bytes).map(|a| a.items.len())
        };
        match outcome {
            Ok(n) => {
                assert!(n > 0, "{}: a success answer without items", f.display());
                items += n;
            }
            Err(AnswerError::Exception(e)) => {
                let code = e.code.as_deref().unwrap_or_default();
                assert!(
                    code.starts_with(if is_dsd { "DSD:ERR:" } else { "EB:ERR:" }),
                    "{}: code {code:?}",
                    f.display()
                );
                exceptions += 1;
            }
            Err(AnswerError::Document(EdmError::UnexpectedRoot(root))) => {
                assert!(!root.ends_with("QueryResponse"), "{}", f.display());
                fragments += 1;
            }
            // Snippets cut out of a larger document use prefixes declared there.
            Err(AnswerError::Document(EdmError::Xml(m)))
                if m.contains("is not declared")
                    && !String::from_utf8_lossy(&bytes).contains("<query:QueryResponse") =>
            {
                fragments += 1;
            }
            Err(other) => panic!("{}: {other}", f.display()),
        }
    }
    eprintln!(
        "{} files: {items} items, {exceptions} exceptions, {fragments} fragments",
        files.len()
    );
    assert!(items >= 20 && exceptions >= 15 && fragments >= 15);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}

// ---------------------------------------------------------------- signatures

fn headers_of(v: &Path, name: &str) -> Vec<(String, String)> {
    let text = String::from_utf8(fr(v, &name.replace(".xml", ".headers"))).unwrap();
    text.lines()
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect()
}

/// The EC test root, taken from the recorded chain (x5c[2]), as a deployment would
/// configure it.
fn ec_test_root(headers: &[(String, String)]) -> TrustAnchors {
    let jws = &headers
        .iter()
        .find(|(n, _)| n == "oots-response-sig")
        .unwrap()
        .1;
    let protected = jws.split('.').next().unwrap();
    let json: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(protected)
            .unwrap(),
    )
    .unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(json["x5c"][2].as_str().unwrap())
        .unwrap();
    let root = X509::from_der(&der).unwrap();
    assert_eq!(
        root.subject_name().try_cmp(root.issuer_name()).unwrap(),
        std::cmp::Ordering::Equal,
        "x5c[2] is the root"
    );
    TrustAnchors::new(vec![root])
}

const FRANCE: [&str; 7] = [
    "dsd_aucun_service_fr.xml",
    "dsd_data_services_fi.xml",
    "eb_evidence_types_fi.xml",
    "eb_evidence_types_fr.xml",
    "eb_requirements_catalogue.xml",
    "eb_requirements_fr.xml",
    "eb_requirements_vides.xml",
];

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

#[test]
fn recorded_signatures_verify_against_the_ec_test_root() {
    let Some(v) = common::vectors() else { return };
    for f in FRANCE {
        let h = headers_of(&v, f);
        let anchors = ec_test_root(&h);
        let ok = verify_response(&h, &fr(&v, f), &anchors, at("2026-08-01T00:00:00Z"))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(ok.algorithm, "ES256");
        assert!(ok.signer.contains("EC-OOTS-CS-ACC"), "{f}: {}", ok.signer);
        assert_eq!(ok.signed_headers, ["digest"]);
        let iat = ok.signed_at.unwrap().unix_timestamp();
        assert!(iat == 1_784_715_996 || iat == 1_785_315_710, "{f}: {iat}");
    }
}

#[test]
fn tampered_or_untrusted_answers_are_refused() {
    let Some(v) = common::vectors() else { return };
    let f = "dsd_data_services_fi.xml";
    let h = headers_of(&v, f);
    let body = fr(&v, f);
    let anchors = ec_test_root(&h);
    let when = at("2026-08-01T00:00:00Z");

    // One byte of the body changed: the signed digest no longer matches.
    let mut altered = body.clone();
    let pos = String::from_utf8_lossy(&altered).find("AP_FI_03").unwrap();
    altered[pos + 7] = b'4';
    assert!(matches!(
        verify_response(&h, &altered, &anchors, when),
        Err(SignatureError::DigestMismatch { .. })
    ));

    // Body and digest header changed together: the signature no longer verifies.
    let mut h2 = h.clone();
    for (n, val) in &mut h2 {
        if n == "digest" {
            *val = format!(
                "SHA-256={}",
                base64::engine::general_purpose::STANDARD.encode(openssl::sha::sha256(&altered))
            );
        }
    }
    assert!(matches!(
        verify_response(&h2, &altered, &anchors, when),
        Err(SignatureError::BadSignature(_))
    ));

    // Another CA configured: the EC chain is not trusted.
    let ours = TrustAnchors::from_pem(include_bytes!("../../../certs/ca.cert.pem")).unwrap();
    assert!(matches!(
        verify_response(&h, &body, &ours, when),
        Err(SignatureError::Untrusted(_))
    ));

    // After the signer certificate expired (2027-10-23).
    match verify_response(&h, &body, &anchors, at("2027-11-01T00:00:00Z")) {
        Err(SignatureError::Untrusted(m)) => assert!(m.contains("expired"), "{m}"),
        other => panic!("{other:?}"),
    }

    // No signature header at all.
    let unsigned: Vec<_> = h
        .iter()
        .filter(|(n, _)| n != "oots-response-sig")
        .cloned()
        .collect();
    assert_eq!(
        verify_response(&unsigned, &body, &anchors, when),
        Err(SignatureError::Missing)
    );
    // No anchors configured.
    assert_eq!(
        verify_response(&h, &body, &TrustAnchors::default(), when),
        Err(SignatureError::NoAnchors)
    );
}

/// A self-signed P-256 key and certificate made here with OpenSSL.
fn self_signed(cn: &str) -> (PKey<openssl::pkey::Private>, X509) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    let serial = openssl::bn::BigNum::from_u32(7)
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::from_unix(1_700_000_000).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::from_unix(2_000_000_000).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    (key, b.build())
}

#[test]
fn own_signatures_round_trip_and_tampering_is_refused() {
    let (key, cert) = self_signed("stand-in signer");
    let signer = ResponseSigner::new(key, vec![cert.clone()]).unwrap();
    let body = b"<query:QueryResponse/>".to_vec();
    let when = at("2026-11-30T12:00:00Z");
    let headers = signer.sign(&body, when).unwrap();
    let anchors = TrustAnchors::new(vec![cert]);
    let ok = verify_response(&headers, &body, &anchors, when).unwrap();
    assert_eq!(ok.algorithm, "ES256");
    assert_eq!(ok.signed_at, Some(when));
    assert!(matches!(
        verify_response(&headers, b"<query:QueryResponse />", &anchors, when),
        Err(SignatureError::DigestMismatch { .. })
    ));
    let (_, other) = self_signed("someone else");
    assert!(matches!(
        verify_response(&headers, &body, &TrustAnchors::new(vec![other]), when),
        Err(SignatureError::Untrusted(_))
    ));
    // A signature whose sigD names a header the answer lacks.
    let jws = headers
        .iter()
        .find(|(n, _)| n == "oots-response-sig")
        .unwrap()
        .1
        .clone();
    assert!(matches!(
        verify_response(&[("oots-response-sig".into(), jws)], &body, &anchors, when),
        Err(SignatureError::MissingSignedHeader(h)) if h == "digest"
    ));
}

// ---------------------------------------------------------------- stand-in table

#[test]
fn standin_table_samples_exist_and_parse() {
    let (Some(v), Some(s)) = (common::vectors(), common::specs()) else {
        return;
    };
    let standin = StandIn::new(&v, &s);
    standin.check().unwrap();
    for r in ROUTES {
        let bytes = common::read(&standin.path_of(r.sample));
        let readable = if r.query_id.contains(":dsd:") {
            parse_data_services(&bytes)
                .map(|_| ())
                .or_else(|e| match e {
                    AnswerError::Exception(_) => Ok(()),
                    e => Err(e),
                })
        } else {
            parse_requirements(&bytes).map(|_| ()).or_else(|e| match e {
                AnswerError::Exception(_) => Ok(()),
                e => Err(e),
            })
        };
        readable.unwrap_or_else(|e| panic!("{}: {e}", r.sample.path));
    }
}

#[test]
fn standin_routes_by_parameters() {
    let q = |qs: &str| standin::route(&Query::from_query_string(qs).unwrap()).path;
    assert!(q("queryId=urn:fdc:oots:eb:ebxml-regrep:queries:requirements-by-procedure-and-jurisdiction&procedure-id=00&country-code=FR").ends_with("eb_requirements_fr.xml"));
    assert!(q("queryId=urn:fdc:oots:eb:ebxml-regrep:queries:requirements-by-procedure-and-jurisdiction&procedure-id=ZZ&country-code=LV").ends_with("eb_requirements_vides.xml"));
    assert!(q("queryId=urn:fdc:oots:eb:ebxml-regrep:queries:requirements-by-procedure-and-jurisdiction&procedure-id=R1&country-code=Germany").ends_with("Evidence Broker - Birth.xml"));
    let birth = |extra: &str| {
        let mut d = DataServicesQuery {
            evidence_type_classification: "https://sr.oots.tech.europa.eu/evidencetypeclassifications/DE/ca8afed6-2dc0-422a-a931-d21c3d8d370e".into(),
            country_code: "DE".into(),
            ..Default::default()
        };
        if extra == "answers" {
            d.evidence_type_id = Some("2af27699-f131-4411-8fdb-9e8cd4e8bded".into());
            d.jurisdiction_context_id = Some("5ce148b9-5578-4049-aecf-af7bb55714b5".into());
            d.jurisdiction_admin_l3 = Some("11000000".into());
            d.classifications = vec![(
                "b07146b6-1468-41a7-a10f-ee2a61429dbc".into(),
                "ApplicantHasBeenResidentInGermany".into(),
            )];
        }
        standin::route(&Query::DataServices(d)).path
    };
    assert!(birth("").ends_with("Birth Certificate - DSD-ERR005.xml"));
    assert!(birth("answers").ends_with("4.3. Query Response of the DSD - Birth Certificate.xml"));
}

#[test]
fn standin_replays_recorded_signatures_and_signs_when_given_a_key() {
    let (Some(v), Some(s)) = (common::vectors(), common::specs()) else {
        return;
    };
    let standin = StandIn::new(&v, &s);
    let when = at("2026-08-01T00:00:00Z");
    let qs = Query::DataServices(DataServicesQuery {
        evidence_type_classification: "https://sr.acc.oots.tech.ec.europa.eu/evidencetypeclassifications/FI/19f0783e-7cdc-4146-9ff9-e331514ffb74".into(),
        country_code: "FI".into(),
        ..Default::default()
    })
    .query_string();
    let reply = standin.answer("/rest/search", &qs, when);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, fr(&v, "dsd_data_services_fi.xml"));
    let anchors = ec_test_root(&reply.headers);
    verify_response(&reply.headers, &reply.body, &anchors, when).unwrap();

    // An EDM 1.0 sample has no recorded signature; with a key the stand-in signs it.
    let qs = "queryId=urn:fdc:oots:eb:ebxml-regrep:queries:requirements-by-procedure-and-jurisdiction&procedure-id=R1&country-code=DE";
    let unsigned = standin.answer("/rest/search", qs, when);
    assert!(!unsigned
        .headers
        .iter()
        .any(|(n, _)| n == "oots-response-sig"));
    let (key, cert) = self_signed("stand-in");
    let signed = StandIn::new(&v, &s)
        .with_signer(ResponseSigner::new(key, vec![cert.clone()]).unwrap())
        .answer("/rest/search", qs, when);
    assert_eq!(signed.body, unsigned.body);
    verify_response(
        &signed.headers,
        &signed.body,
        &TrustAnchors::new(vec![cert]),
        when,
    )
    .unwrap();

    // Not a query: 400 with a RegRep exception; another path: 404.
    let bad = standin.answer("/rest/search", "queryId=urn:nope", when);
    assert_eq!(bad.status, 400);
    let e = exception(parse_requirements(&bad.body));
    assert_eq!(
        e.exception_type.as_deref(),
        Some("InvalidRequestExceptionType")
    );
    assert!(e.detail.unwrap().contains("urn:nope"));
    assert_eq!(standin.answer("/other", "", when).status, 404);
}
