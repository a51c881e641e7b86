//! Acceptance of the EDM documents Varti builds itself ([`varti_oots::flow`]): the request
//! from a portal's data, the evidence response, every error response and the
//! preview-required error, in EDM 1.0 (the version the EC's official XSD and Schematron
//! files describe), pass the official XSD, Varti's own model and every applicable official
//! Schematron file without a fatal finding (one rule of the EC's cannot be evaluated on a
//! preview-required error at all: [`is_known_rule_defect`]); Varti's Schematron runner
//! agrees with the Saxon oracle on each of them; and mutated copies (a missing slot, a wrong code, a wrong
//! identifier format) fail with the official rule ids, in Varti's runner and in Saxon alike.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use varti_oots::edm::error::EdmErrorKind;
use varti_oots::edm::{EdmDocument, EdmVersion};
use varti_oots::flow::{self, EvidenceData, RequestData};
use varti_oots::validate::codelist::CodeLists;
use varti_oots::validate::model::ModelValidator;
use varti_oots::validate::schematron::{DocumentKind, RuleDir};
use varti_oots::validate::xsd::XsdValidator;
use varti_oots::validate::{Finding, Severity};

/// A preview link as the provider's preview space hands them out (https, as R-EDM-ERR-C019
/// demands).
const PREVIEW_LOCATION: &str = "https://preview.varti.example/preview/7d3c.Zk9x";

/// A portal's request data: a natural person (`legal = false`) or a legal person. The
/// identifiers have the forms the EDM 1.0 rules demand (a DSD evidence type UUID, a
/// Semantic Repository classification URL, eIDAS identifiers), as a portal gets them from
/// the common services and the eIDAS node.
fn request_data(legal: bool) -> RequestData {
    let mut v = serde_json::json!({
        "edm_version": "oots-edm:v1.0",
        "procedure": "T1",
        "requirements": [{"identifier": "https://sr.oots.tech.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099", "name": "Proof of birth"}],
        "evidence_type": {
            "identifier": "0a6c1d9e-4b8f-4e27-9d35-7c2f8e1b6a40",
            "classification": "https://sr.oots.tech.europa.eu/evidencetypeclassifications/LV/9a1e7f3c-0d6b-4e59-b8f5-0d8f6c1e2a33",
            "title": "Certificate of Birth",
            "format": "application/pdf"
        },
        "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "value": "DK22233223"}, "name": "Danish portal", "country": "DK"},
        "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:9939", "value": "LV90000011588"}, "name": "Latvian register", "country": "LV"},
        "natural_person": {"identifier": "DK/LV/0101901234", "family_name": "Jensen", "given_name": "Ida", "date_of_birth": "1990-01-01"},
        "preview": true
    });
    if legal {
        let o = v.as_object_mut().unwrap();
        o.remove("natural_person");
        o.insert(
            "legal_person".into(),
            serde_json::json!({"identifier": "DK/LV/123456789", "legal_name": "Jensen ApS"}),
        );
    }
    serde_json::from_value(v).unwrap()
}

/// Every EDM 1.0 document Varti builds: (name, kind, XML).
fn built() -> Vec<(String, DocumentKind, String)> {
    let v = EdmVersion::V1_0;
    let request = flow::build_request(&request_data(false)).unwrap();
    let legal = flow::build_request(&request_data(true)).unwrap();
    let provider = request.evidence_provider().unwrap();
    let requester = request.evidence_requesters().into_iter().next();
    let request_id = request.id.clone().unwrap();
    let response = flow::build_response(
        &request,
        &provider,
        &[EvidenceData {
            content_id: "ev1@varti".into(),
            mime_type: "application/pdf".into(),
            title: Some("Birth certificate".into()),
            issuing_date: Some("2001-02-03".into()),
        }],
    );
    let mut out = vec![
        (
            "request".to_owned(),
            DocumentKind::EdmRequest,
            EdmDocument::Request(request.clone()).to_xml(),
        ),
        (
            "request-legal-person".to_owned(),
            DocumentKind::EdmRequest,
            EdmDocument::Request(legal).to_xml(),
        ),
        (
            "response".to_owned(),
            DocumentKind::EdmResponse,
            EdmDocument::Response(response).to_xml(),
        ),
    ];
    // Every error a provider answers with (the preview-required one below).
    for kind in EdmErrorKind::ALL {
        if kind == EdmErrorKind::Authorization {
            continue;
        }
        let e = flow::build_error(
            &request_id,
            v,
            kind,
            "The request cannot be answered",
            Some("the register found no person with these identity data"),
            &provider,
            requester.as_ref(),
        );
        out.push((
            format!("error-{}", kind.code()),
            DocumentKind::EdmError,
            EdmDocument::Error(e).to_xml(),
        ));
    }
    let preview = flow::build_preview_required(
        &request_id,
        v,
        PREVIEW_LOCATION,
        &provider,
        requester.as_ref(),
    );
    assert!(preview.is_preview_required());
    out.push((
        "error-preview-required".to_owned(),
        DocumentKind::EdmError,
        EdmDocument::Error(preview).to_xml(),
    ));
    out
}

/// The one rule of the EC's files that cannot be evaluated on a correct preview-required
/// error, kept explicit (never a loosened rule). R-EDM-ERR-C022 tests
/// `count(rim:Slot[@name='PreviewLocation']=1)`: it compares the PreviewLocation slot with
/// the number 1, so XPath 2.0 casts the URL to xs:double and raises FORG0001 — in Saxon
/// (the oracle test checks that it fails the same way) as in Varti, which reports it as a
/// fatal finding of that rule. The EC's own preview sample escapes it only because its
/// severity ends with a stray U+007F, so the rule's context never matches. What the rule
/// means (a PreviewLocation only on a PreviewRequired AuthorizationException) Varti's model
/// checks as VARTI-EDM-ERR-008.
fn is_known_rule_defect(f: &Finding) -> bool {
    f.rule_id == "R-EDM-ERR-C022" && f.message.contains("could not be evaluated: FORG0001")
}

fn sch_dir(specs: &Path) -> PathBuf {
    specs.join("oots-edm-v1/sch")
}

fn fatal(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Fatal)
        .collect()
}

fn fatal_ids(dir: &RuleDir, xml: &str) -> BTreeSet<String> {
    fatal(&dir.validate(xml).unwrap())
        .into_iter()
        .map(|f| f.rule_id.clone())
        .collect()
}

#[test]
fn built_documents_pass_xsd_model_and_official_schematron() {
    let Some(specs) = common::specs() else { return };
    let mut xsd = XsdValidator::load(&specs.join("oots-edm-v1/xsd")).unwrap();
    let model =
        ModelValidator::new(CodeLists::load_dir(&specs.join("oots-edm-v1/codelists")).unwrap());
    let rules = RuleDir::load(&sch_dir(&specs)).unwrap();
    let docs = built();
    assert_eq!(docs.len(), 3 + 7 + 1);
    let mut problems = Vec::new();
    let mut defects = 0;
    for (name, kind, xml) in &docs {
        assert_eq!(DocumentKind::detect(xml), Some(*kind), "{name}");
        // Both the structural (-S) and the content (-C) rule files apply.
        assert_eq!(rules.applicable(*kind).len(), 2, "{name}");
        for f in xsd.validate(xml.as_bytes()) {
            problems.push(format!("{name}: XSD {f}"));
        }
        for f in fatal(&model.validate_bytes(xml.as_bytes())) {
            problems.push(format!("{name}: model {f}"));
        }
        for f in fatal(&rules.validate(xml).unwrap()) {
            if is_known_rule_defect(f) {
                assert_eq!(name, "error-preview-required", "{f}");
                defects += 1;
                continue;
            }
            problems.push(format!("{name}: Schematron {f}"));
        }
    }
    // The defect still shows: the exception above cannot hide a changed behaviour.
    assert_eq!(defects, 1, "R-EDM-ERR-C022 no longer fails to evaluate");
    assert!(
        problems.is_empty(),
        "built documents break the official rules:\n{}\n\nfirst document:\n{}",
        problems.join("\n"),
        docs[0].2
    );
}

/// Cuts the first `<rim:Slot name="…">…</rim:Slot>` named `name` (slots holding no slot).
fn remove_slot(xml: &str, name: &str) -> String {
    let start = xml
        .find(&format!("<rim:Slot name=\"{name}\""))
        .unwrap_or_else(|| panic!("no slot {name} in\n{xml}"));
    let end = start + xml[start..].find("</rim:Slot>").unwrap() + "</rim:Slot>".len();
    format!("{}{}", &xml[..start], &xml[end..])
}

/// Replaces the first occurrence of `from`, which must be there.
fn replace(xml: &str, from: &str, to: &str) -> String {
    assert!(xml.contains(from), "mutation target {from:?} not in\n{xml}");
    xml.replacen(from, to, 1)
}

/// Replaces the value of the first slot `name` (a single `<rim:Value>`).
fn replace_slot_value(xml: &str, name: &str, to: &str) -> String {
    let start = xml
        .find(&format!("<rim:Slot name=\"{name}\""))
        .unwrap_or_else(|| panic!("no slot {name}"));
    let v = start + xml[start..].find("<rim:Value>").unwrap() + "<rim:Value>".len();
    let end = v + xml[v..].find("</rim:Value>").unwrap();
    format!("{}{to}{}", &xml[..v], &xml[end..])
}

/// Mutated copies of the built documents: (name, XML, the official rule ids each must
/// break).
fn mutations(docs: &[(String, DocumentKind, String)]) -> Vec<(String, String, Vec<&'static str>)> {
    let doc = |name: &str| {
        docs.iter()
            .find(|(n, ..)| n == name)
            .map(|(_, _, x)| x.clone())
            .unwrap()
    };
    let (req, resp, err, preview) = (
        doc("request"),
        doc("response"),
        doc("error-EDM:ERR:0004"),
        doc("error-preview-required"),
    );
    let m = |name: &str, xml: String, ids: &[&'static str]| (name.to_owned(), xml, ids.to_vec());
    vec![
        // Request: a missing slot, a wrong code, a wrong identifier format.
        m(
            "request without EvidenceRequester",
            remove_slot(&req, "EvidenceRequester"),
            &["R-EDM-REQ-S012"],
        ),
        m(
            "request with procedure code Z9",
            replace(&req, "value=\"T1\"", "value=\"Z9\""),
            &["R-EDM-REQ-C003"],
        ),
        m(
            "request with a non-eIDAS person identifier",
            replace(&req, "DK/LV/0101901234", "0101901234"),
            &["R-EDM-REQ-C039"],
        ),
        // Response.
        m(
            "response without EvidenceResponseIdentifier",
            remove_slot(&resp, "EvidenceResponseIdentifier"),
            &["R-EDM-RESP-S010"],
        ),
        m(
            "response with agent classification XX",
            replace(&resp, "<sdg:Classification>EP<", "<sdg:Classification>XX<"),
            &["R-EDM-RESP-C011"],
        ),
        m(
            "response with a non-UUID EvidenceResponseIdentifier",
            replace_slot_value(&resp, "EvidenceResponseIdentifier", "response-1"),
            &["R-EDM-RESP-C003"],
        ),
        m(
            "response with an http evidence reference",
            replace(&resp, "xlink:href=\"cid:", "xlink:href=\"http://"),
            &["R-EDM-RESP-C042"],
        ),
        // Errors.
        m(
            "error without Timestamp",
            remove_slot(&err, "Timestamp"),
            &["R-EDM-ERR-S12"],
        ),
        m(
            "error with code EDM:ERR:0042",
            replace(&err, "code=\"EDM:ERR:0004\"", "code=\"EDM:ERR:0042\""),
            &["R-EDM-ERR-C017"],
        ),
        m(
            "error with a non-UUID EvidenceResponseIdentifier",
            replace_slot_value(&err, "EvidenceResponseIdentifier", "error-1"),
            &["R-EDM-ERR-C002"],
        ),
        m(
            "preview-required error with an http PreviewLocation",
            replace(&preview, "https://preview", "http://preview"),
            &["R-EDM-ERR-C019"],
        ),
    ]
}

#[test]
fn mutated_built_documents_fail_with_the_official_rule_ids() {
    let Some(specs) = common::specs() else { return };
    let rules = RuleDir::load(&sch_dir(&specs)).unwrap();
    let docs = built();
    let mut problems = Vec::new();
    for (name, xml, want) in mutations(&docs) {
        let got = fatal_ids(&rules, &xml);
        for id in want {
            if !got.contains(id) {
                problems.push(format!("{name}: expected {id}, got {got:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn runner_agrees_with_saxon_on_built_and_mutated_documents() {
    let Some(specs) = common::specs() else { return };
    if !common::oracle_available() {
        return;
    }
    let rules = RuleDir::load(&sch_dir(&specs)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let docs = built();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for (i, (_, _, xml)) in docs.iter().enumerate() {
        files.push((tmp.path().join(format!("built-{i}.xml")), xml.clone()));
    }
    for (i, (_, xml, _)) in mutations(&docs).into_iter().enumerate() {
        files.push((tmp.path().join(format!("mutated-{i}.xml")), xml));
    }
    for (p, xml) in &files {
        std::fs::write(p, xml).unwrap();
    }
    let mut compared = 0;
    let mut with_findings = 0;
    let mut both_failed = 0;
    for set in rules.rule_sets() {
        let applicable: Vec<&(PathBuf, String)> = files
            .iter()
            .filter(|(_, x)| DocumentKind::detect(x).is_some_and(|k| k.applies(set.name())))
            .collect();
        if applicable.is_empty() {
            continue;
        }
        let paths: Vec<PathBuf> = applicable.iter().map(|(p, _)| p.clone()).collect();
        let expected = common::oracle(&sch_dir(&specs).join(format!("{}.sch", set.name())), &paths);
        for ((path, xml), want) in applicable.iter().zip(expected) {
            let findings = set.validate(xml).unwrap();
            compared += 1;
            // Saxon stopped on a rule it cannot evaluate: Varti must report that rule's
            // evaluation error with the same XPath error code (and only the known defect).
            if let Some((_, code)) = want.iter().find(|(id, _)| id == "!error") {
                let failed: Vec<&Finding> = findings
                    .iter()
                    .filter(|f| {
                        f.message
                            .contains(&format!("could not be evaluated: {code}"))
                    })
                    .collect();
                assert!(
                    !failed.is_empty() && failed.iter().all(|f| is_known_rule_defect(f)),
                    "{} on {}: Saxon failed with {code}, Varti reported {findings:#?}",
                    set.name(),
                    path.display()
                );
                both_failed += 1;
                continue;
            }
            let got: BTreeSet<(String, String)> = findings
                .into_iter()
                .map(|f| (f.rule_id, f.location))
                .collect();
            assert_eq!(
                got,
                want,
                "{} on {}: Varti (left) and Saxon (right) disagree:\n{xml}",
                set.name(),
                path.display()
            );
            with_findings += usize::from(!got.is_empty());
        }
    }
    // Each document meets its -S and -C files.
    assert_eq!(compared, 2 * files.len());
    // EDM-ERR-C on the preview-required error and on its mutation.
    assert_eq!(
        both_failed, 2,
        "R-EDM-ERR-C022 no longer fails to evaluate in Saxon"
    );
    // Every other mutation breaks a rule Saxon evaluates.
    assert!(
        with_findings >= mutations(&docs).len() - 1,
        "only {with_findings} comparisons had findings: the mutations did not reach Saxon"
    );
}
