//! The Schematron runner against the EC's official OOTS rule files and EDM 1.0 samples,
//! all read in place from the shared specs directory, and against Saxon as an oracle.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use varti_oots::validate::schematron::{DocumentKind, RuleDir};
use varti_oots::validate::{Finding, Severity};

fn sch_dir(specs: &Path) -> PathBuf {
    specs.join("oots-edm-v1/sch")
}

/// Every EDM 1.0 request/response/error sample (the `.xml` files of the evidence exchange
/// examples, excluding the evidence payloads under `Evidence Samples/`).
fn samples(specs: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "Evidence Samples" {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "xml") {
                // The "…Header…" files are the AS4 ebMS headers of the exchange, not
                // EDM documents: no EDM rule file applies to them. Check that, rather
                // than skipping by name alone.
                let text = read(&p);
                if text.contains("<eb:Messaging") {
                    assert!(DocumentKind::detect(&text).is_none());
                    continue;
                }
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&common::edm_v1_samples(specs), &mut out);
    out.sort();
    assert!(
        out.len() >= 10,
        "expected the EDM 1.0 samples, found {out:?}"
    );
    out
}

fn read(p: &Path) -> String {
    String::from_utf8(common::read(p)).unwrap()
}

fn fatal(f: &[Finding]) -> Vec<&Finding> {
    f.iter().filter(|f| f.severity == Severity::Fatal).collect()
}

#[test]
fn all_official_rule_files_compile() {
    let Some(specs) = common::specs() else { return };
    let dir = RuleDir::load(&sch_dir(&specs)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dir.rule_sets().len(), 21);
    let req: Vec<_> = dir
        .applicable(DocumentKind::EdmRequest)
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    assert_eq!(req, ["EDM-REQ-C", "EDM-REQ-S"]);
    let eb_err: Vec<_> = dir
        .applicable(DocumentKind::EbError)
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    assert_eq!(eb_err, ["EB-ERR"]);
    for s in dir.rule_sets() {
        assert!(s.assertion_count() > 0, "{} has no assertions", s.name());
    }
}

/// Known fatal findings of the EC's own samples, kept explicit (never a loosened rule):
/// Saxon reports exactly the same ones (see the oracle test), so they are errors in the
/// samples, not in the runner. (sample file name, rule id.)
const KNOWN_SAMPLE_FATALS: &[(&str, &str)] = &[
    // The commercial-register requests give the address country as 'GR'; the EU country
    // code list (CountryIdentificationCode-2.3) has Greece as 'EL'.
    (
        "4.1 Step 1  Evidence Request  - Tax - full example.xml",
        "R-EDM-REQ-C067",
    ),
    ("4.1 Step 1  Evidence Request - Tax.xml", "R-EDM-REQ-C067"),
    // The *old* education error-response sample predates the current rules: agent
    // identifiers without an EAS schemeID (C004, C010), classification 'ErrorProvider'
    // instead of 'ERRP' (C008), a DSD severity code (C014), lower-case xml:lang values
    // where LanguageCode-2.3 lists upper-case codes (C020).
    (
        "3.2 Step 2 Error Response - Education.xml",
        "R-EDM-ERR-C004",
    ),
    (
        "3.2 Step 2 Error Response - Education.xml",
        "R-EDM-ERR-C008",
    ),
    (
        "3.2 Step 2 Error Response - Education.xml",
        "R-EDM-ERR-C010",
    ),
    (
        "3.2 Step 2 Error Response - Education.xml",
        "R-EDM-ERR-C014",
    ),
    (
        "3.2 Step 2 Error Response - Education.xml",
        "R-EDM-ERR-C020",
    ),
];

#[test]
fn edm_v1_samples_pass_their_official_rule_files() {
    let Some(specs) = common::specs() else { return };
    let dir = RuleDir::load(&sch_dir(&specs)).unwrap();
    let mut problems = Vec::new();
    let mut seen_known = BTreeSet::new();
    for p in samples(&specs) {
        let xml = read(&p);
        let kind = DocumentKind::detect(&xml)
            .unwrap_or_else(|| panic!("{}: kind not detected", p.display()));
        assert!(matches!(
            kind,
            DocumentKind::EdmRequest | DocumentKind::EdmResponse | DocumentKind::EdmError
        ));
        let findings = dir.validate(&xml).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        for f in fatal(&findings) {
            match KNOWN_SAMPLE_FATALS
                .iter()
                .find(|(n, id)| *n == name && *id == f.rule_id)
            {
                Some(k) => {
                    seen_known.insert(*k);
                }
                None => problems.push(format!("{name} ({kind:?}): {f}")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "fatal findings:\n{}",
        problems.join("\n")
    );
    // Every known finding must still occur: the list cannot hide a changed behaviour.
    let known: BTreeSet<_> = KNOWN_SAMPLE_FATALS.iter().copied().collect();
    assert_eq!(seen_known, known);
}

fn birth_request(specs: &Path) -> String {
    read(&common::edm_v1_samples(specs).join(
        "2 Example for requesting a Birth Certificate - natural person/2.1 Step 1  Evidence Request - Birth - full example.xml",
    ))
}

fn fatal_ids(dir: &RuleDir, xml: &str) -> BTreeSet<String> {
    dir.validate(xml)
        .unwrap()
        .into_iter()
        .filter(|f| f.severity == Severity::Fatal)
        .map(|f| f.rule_id)
        .collect()
}

#[test]
fn mutated_requests_fail_with_the_official_rule_ids() {
    let Some(specs) = common::specs() else { return };
    let dir = RuleDir::load(&sch_dir(&specs)).unwrap();
    let good = birth_request(&specs);
    assert!(fatal_ids(&dir, &good).is_empty());

    // A wrong identifier format: the request id is not a UUID URN.
    let re = regex_like_replace(&good, "id=\"urn:uuid:", "id=\"urn:nouuid:", 1);
    let ids = fatal_ids(&dir, &re);
    assert!(ids.contains("R-EDM-REQ-S004"), "{ids:?}");

    // A missing slot: no ExplicitRequestGiven.
    let start = good
        .find("<rim:Slot name=\"ExplicitRequestGiven\"")
        .unwrap();
    let end = start + good[start..].find("</rim:Slot>").unwrap() + "</rim:Slot>".len();
    let missing = format!("{}{}", &good[..start], &good[end..]);
    let ids = fatal_ids(&dir, &missing);
    assert!(ids.contains("R-EDM-REQ-S010"), "{ids:?}");

    // A wrong code: an unknown specification identifier.
    let wrong_code = regex_like_replace(&good, "oots-edm:v1.0", "oots-edm:v9.9", usize::MAX);
    let ids = fatal_ids(&dir, &wrong_code);
    assert!(ids.contains("R-EDM-REQ-C001"), "{ids:?}");

    // A wrong returnType on the query.
    let wrong_return = regex_like_replace(
        &good,
        "returnType=\"LeafClassWithRepositoryItem\"",
        "returnType=\"LeafClass\"",
        1,
    );
    let ids = fatal_ids(&dir, &wrong_return);
    assert!(ids.contains("R-EDM-REQ-C024"), "{ids:?}");

    // Each mutation fails only the rules it touches, not the whole document.
    let ids = fatal_ids(&dir, &missing);
    assert!(!ids.contains("R-EDM-REQ-S004"), "{ids:?}");
}

/// Replaces the first `n` occurrences of `from` with `to`, asserting at least one.
fn regex_like_replace(s: &str, from: &str, to: &str, n: usize) -> String {
    assert!(s.contains(from), "mutation target {from:?} not found");
    s.replacen(from, to, n)
}

/// The EDM samples, the EB and DSD complete examples, and mutated copies of the birth
/// request (written to `tmp`; the originals stay in place). The mutations come last.
fn samples_and_mutations(specs: &Path, tmp: &Path) -> Vec<PathBuf> {
    let mut docs = samples(specs);
    // The common-services answers too (EB and DSD complete examples).
    for sub in [
        "oots-edm-v1/xml/EB/Complete XML examples (EB)",
        "oots-edm-v1/xml/DSD/Complete XML examples (DSD)",
    ] {
        let mut more: Vec<PathBuf> = std::fs::read_dir(specs.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        more.sort();
        assert!(!more.is_empty(), "no samples in {sub}");
        docs.extend(more);
    }
    let good = birth_request(specs);
    let mutations = [
        good.replacen("id=\"urn:uuid:", "id=\"urn:nouuid:", 1),
        good.replace(
            "name=\"ExplicitRequestGiven\"",
            "name=\"ExplicitRequestGivenX\"",
        ),
        good.replace("oots-edm:v1.0", "oots-edm:v9.9"),
    ];
    for (i, m) in mutations.iter().enumerate() {
        assert_ne!(m, &good, "mutation {i} changed nothing");
        let p = tmp.join(format!("mutated-{i}.xml"));
        std::fs::write(&p, m).unwrap();
        docs.push(p);
    }
    docs
}

/// The batched evaluation (every rule file in one XPath evaluation, contexts matched
/// natively) gives exactly the rule-by-rule findings, messages and order included, and it
/// really runs: no applicable official file falls back on any of these documents.
#[test]
fn batched_plan_gives_the_rule_by_rule_findings() {
    let Some(specs) = common::specs() else { return };
    let dir = RuleDir::load(&sch_dir(&specs)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let docs = samples_and_mutations(&specs, tmp.path());
    let mut compared = 0;
    let mut with_findings = 0;
    for doc in &docs {
        let xml = read(doc);
        let kind = DocumentKind::detect(&xml).unwrap();
        for set in dir.applicable(kind) {
            let (batched, reference) = set.validate_both_ways(&xml).unwrap();
            let batched = batched.unwrap_or_else(|| {
                panic!(
                    "{} fell back to rule by rule on {}",
                    set.name(),
                    doc.display()
                )
            });
            assert_eq!(
                batched,
                reference,
                "{} on {}: batched (left) and rule by rule (right) disagree",
                set.name(),
                doc.display()
            );
            compared += 1;
            with_findings += usize::from(!batched.is_empty());
        }
    }
    assert!(compared >= 20, "only {compared} comparisons");
    assert!(
        with_findings > 5,
        "too few comparisons with findings: {with_findings}"
    );
}

#[test]
fn runner_agrees_with_saxon_on_samples_and_mutations() {
    let Some(specs) = common::specs() else { return };
    if !common::oracle_available() {
        return;
    }
    let dir = RuleDir::load(&sch_dir(&specs)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let docs = samples_and_mutations(&specs, tmp.path());
    let mut compared = 0;
    let mut nonempty = 0;
    let mut sets_used = BTreeSet::new();
    for set in dir.rule_sets() {
        // Each rule file against every document it applies to.
        let applicable: Vec<PathBuf> = docs
            .iter()
            .filter(|p| DocumentKind::detect(&read(p)).is_some_and(|k| k.applies(set.name())))
            .cloned()
            .collect();
        if applicable.is_empty() {
            continue;
        }
        let expected = common::oracle(
            &sch_dir(&specs).join(format!("{}.sch", set.name())),
            &applicable,
        );
        for (doc, want) in applicable.iter().zip(expected) {
            let got: BTreeSet<(String, String)> = set
                .validate(&read(doc))
                .unwrap()
                .into_iter()
                .map(|f| (f.rule_id, f.location))
                .collect();
            assert_eq!(
                got,
                want,
                "{} on {}: Varti (left) and Saxon (right) disagree",
                set.name(),
                doc.display()
            );
            compared += 1;
            sets_used.insert(set.name().to_string());
            nonempty += usize::from(!got.is_empty());
        }
    }
    assert!(compared >= 20, "only {compared} comparisons");
    for want in [
        "EDM-REQ-C",
        "EDM-REQ-S",
        "EDM-RESP-C",
        "EDM-ERR-C",
        "EB-REQ-C",
        "EB-EVI-C",
        "EB-ERR",
        "DSD-RESP-C",
        "DSD-ERR-C",
    ] {
        assert!(
            sets_used.contains(want),
            "{want} never compared: {sets_used:?}"
        );
    }
    assert!(
        nonempty > 0,
        "no comparison had any finding: the oracle check proves nothing"
    );
}
