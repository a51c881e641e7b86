//! Validation against Varti's own EDM model, without the EC's schemas or Schematron:
//! required slots present, slot value types, code lists, identifier and date formats.
//!
//! Rule ids are Varti's (`VARTI-EDM-COM-*` for every document, `-REQ-*` requests,
//! `-RESP-*` evidence responses, `-ERR-*` error responses, `-XML-001` unreadable); messages
//! name the official business rule (`R-EDM-…`) a check corresponds to where there is one.
//! Code-list checks run only for the lists loaded; a missing list is reported once as an
//! info finding so a skipped check is never silent.

use std::cell::RefCell;
use std::collections::BTreeSet;

use super::codelist::CodeLists;
use super::{Finding, Severity};
use crate::edm::error::{SEVERITY_ERROR, SEVERITY_PREVIEW_REQUIRED, SEVERITY_PREVIEW_REQUIRED_V1};
use crate::edm::regrep::{Slot, SlotValue};
use crate::edm::request::{QUERY_DEFINITION, RETURN_TYPE};
use crate::edm::response::{EDM_CLASSIFICATION_SCHEME, STATUS_FAILURE, STATUS_SUCCESS};
use crate::edm::sdg::{Agent, Identifier};
use crate::edm::xml::NS_SDG;
use crate::edm::{
    EdmDocument, EdmErrorKind, EdmVersion, ErrorResponse, EvidenceRequest, EvidenceResponse,
    QueryResponse,
};

/// Validates EDM documents against Varti's model, with the code lists given.
#[derive(Debug, Clone, Default)]
pub struct ModelValidator {
    codelists: CodeLists,
}

/// Findings being collected for one document.
struct Run<'a> {
    lists: &'a CodeLists,
    findings: Vec<Finding>,
    missing_lists: RefCell<BTreeSet<String>>,
}

impl Run<'_> {
    fn fatal(&mut self, id: &str, loc: impl Into<String>, msg: impl Into<String>) {
        self.findings
            .push(Finding::new(id, Severity::Fatal, loc, msg));
    }
    fn warn(&mut self, id: &str, loc: impl Into<String>, msg: impl Into<String>) {
        self.findings
            .push(Finding::new(id, Severity::Warning, loc, msg));
    }

    /// Checks `code` against list `list`; reports `id` when absent from a loaded list.
    fn code(&mut self, id: &str, list: &str, code: &str, loc: &str, what: &str) {
        match self.lists.contains(list, code) {
            Some(true) => {}
            Some(false) => self.fatal(
                id,
                loc,
                format!(
                    "{what} {code:?} is not in the code list '{list}'; use a code from that list"
                ),
            ),
            None => {
                self.missing_lists.borrow_mut().insert(list.to_owned());
            }
        }
    }

    fn finish(mut self) -> Vec<Finding> {
        for problem in self.lists.problems() {
            self.findings.push(Finding::new(
                "VARTI-EDM-COM-009",
                Severity::Warning,
                "/",
                format!("a code list file was skipped: {problem}; fix or replace the file"),
            ));
        }
        for list in self.missing_lists.take() {
            self.findings.push(Finding::new(
                "VARTI-EDM-COM-008",
                Severity::Info,
                "/",
                format!("code list '{list}' is not loaded, so values from it were not checked; configure the code list directory"),
            ));
        }
        self.findings
    }
}

const REQ_ROOT: &str = "/query:QueryRequest";
const RESP_ROOT: &str = "/query:QueryResponse";

fn slot_loc(root: &str, name: &str) -> String {
    format!("{root}/rim:Slot[@name='{name}']")
}

fn query_slot_loc(name: &str) -> String {
    format!("{REQ_ROOT}/query:Query/rim:Slot[@name='{name}']")
}

/// `urn:uuid:` followed by an RFC 4122 textual UUID.
pub(crate) fn is_urn_uuid(s: &str) -> bool {
    s.strip_prefix("urn:uuid:").is_some_and(is_uuid)
}

/// An RFC 4122 textual UUID (8-4-4-4-12 hex digits).
pub(crate) fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn valid_timezone(tz: &str) -> bool {
    if tz.is_empty() || tz == "Z" {
        return true;
    }
    let Some(rest) = tz.strip_prefix('+').or_else(|| tz.strip_prefix('-')) else {
        return false;
    };
    match rest.split_once(':') {
        Some((h, m)) => {
            matches!((digits(h, 2), digits(m, 2)), (Some(h), Some(m)) if h <= 14 && m <= 59)
        }
        None => false,
    }
}

fn split_date(s: &str) -> Option<&str> {
    // YYYY-MM-DD, returns the rest.
    let (y, rest) = (s.get(..4)?, s.get(4..)?);
    digits(y, 4)?;
    let rest = rest.strip_prefix('-')?;
    let month = digits(rest.get(..2)?, 2)?;
    let rest = rest.get(2..)?.strip_prefix('-')?;
    let day = digits(rest.get(..2)?, 2)?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then(|| &rest[2..])
}

/// An `xs:date` lexical value (`YYYY-MM-DD` with optional timezone).
pub(crate) fn is_xsd_date(s: &str) -> bool {
    split_date(s.trim()).is_some_and(valid_timezone)
}

/// An `xs:dateTime` lexical value (`YYYY-MM-DDThh:mm:ss[.fff][Z|±hh:mm]`).
pub(crate) fn is_xsd_date_time(s: &str) -> bool {
    let Some(rest) = split_date(s.trim()).and_then(|r| r.strip_prefix('T')) else {
        return false;
    };
    let (Some(h), Some(m), Some(sec)) = (
        rest.get(..2).and_then(|x| digits(x, 2)),
        rest.get(3..5).and_then(|x| digits(x, 2)),
        rest.get(6..8).and_then(|x| digits(x, 2)),
    ) else {
        return false;
    };
    if rest.get(2..3) != Some(":") || rest.get(5..6) != Some(":") || h > 24 || m > 59 || sec > 60 {
        return false;
    }
    let mut tail = &rest[8..];
    if let Some(frac) = tail.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        tail = &frac[n..];
    }
    valid_timezone(tail)
}

const EAS_PREFIX: &str = "urn:cef.eu:names:identifier:EAS:";
const UNREGISTERED_PREFIX: &str = "urn:oasis:names:tc:ebcore:partyid-type:unregistered";

impl ModelValidator {
    /// A validator using these code lists.
    pub fn new(codelists: CodeLists) -> Self {
        ModelValidator { codelists }
    }

    /// Parses and validates; a document that cannot be read is one fatal
    /// `VARTI-EDM-XML-001` finding.
    pub fn validate_bytes(&self, bytes: &[u8]) -> Vec<Finding> {
        match EdmDocument::parse(bytes) {
            Ok(doc) => self.validate(&doc),
            Err(e) => vec![Finding::new(
                "VARTI-EDM-XML-001",
                Severity::Fatal,
                "/",
                e.to_string(),
            )],
        }
    }

    /// Validates a parsed document.
    pub fn validate(&self, doc: &EdmDocument) -> Vec<Finding> {
        let mut run = Run {
            lists: &self.codelists,
            findings: Vec::new(),
            missing_lists: RefCell::new(BTreeSet::new()),
        };
        let root = match doc {
            EdmDocument::Request(_) => REQ_ROOT,
            _ => RESP_ROOT,
        };
        let spec_slot_present = match doc {
            EdmDocument::Request(r) => r.slot("SpecificationIdentifier").is_some(),
            EdmDocument::Response(r) => r.inner().slot("SpecificationIdentifier").is_some(),
            EdmDocument::Error(e) => e.inner().slot("SpecificationIdentifier").is_some(),
        };
        let version = match doc.specification_identifier() {
            // Present without a readable value: the slot type check reports it.
            None if spec_slot_present => doc.version(),
            None => {
                run.fatal(
                    "VARTI-EDM-COM-001",
                    slot_loc(root, "SpecificationIdentifier"),
                    "the SpecificationIdentifier slot is missing; add it with the EDM version, e.g. oots-edm:v2.0 (R-EDM-*-C001)",
                );
                doc.version()
            }
            Some(s) => match EdmVersion::from_identifier(s) {
                Some(v) => Some(v),
                None => {
                    run.fatal(
                        "VARTI-EDM-COM-002",
                        slot_loc(root, "SpecificationIdentifier"),
                        format!("SpecificationIdentifier '{s}' is not a known EDM version; use oots-edm:v1.0, oots-edm:v1.2 or oots-edm:v2.0"),
                    );
                    None
                }
            },
        };
        match doc {
            EdmDocument::Request(r) => check_request(&mut run, r, version),
            EdmDocument::Response(r) => check_response(&mut run, r, version),
            EdmDocument::Error(e) => check_error(&mut run, e, version),
        }
        run.finish()
    }
}

/// Checks a slot's value type; returns the value when the slot is present with a value.
fn typed<'s>(
    run: &mut Run,
    slot: Option<&'s Slot>,
    loc: &str,
    expected: &[&str],
) -> Option<&'s SlotValue> {
    let slot = slot?;
    let Some(v) = slot.value.as_ref() else {
        run.fatal(
            "VARTI-EDM-COM-003",
            loc,
            format!(
                "slot {} has no rim:SlotValue; give it a value of type rim:{}",
                slot.name,
                expected.join(" or rim:")
            ),
        );
        return None;
    };
    match v.type_name() {
        Some(t) if expected.contains(&t) => Some(v),
        other => {
            run.fatal(
                "VARTI-EDM-COM-003",
                format!("{loc}/rim:SlotValue"),
                format!(
                    "slot {} has a value of type {}; it must be rim:{}",
                    slot.name,
                    other
                        .map(|t| format!("rim:{t}"))
                        .unwrap_or_else(|| "unknown/irregular".into()),
                    expected.join(" or rim:")
                ),
            );
            None
        }
    }
}

fn required<'s>(
    run: &mut Run,
    slot: Option<&'s Slot>,
    loc: &str,
    id: &str,
    name: &str,
    expected: &[&str],
    rule: &str,
) -> Option<&'s SlotValue> {
    if slot.is_none() {
        run.fatal(
            id,
            loc,
            format!(
                "the required slot {name} is missing; add it as rim:{} ({rule})",
                expected[0]
            ),
        );
        return None;
    }
    typed(run, slot, loc, expected)
}

fn date_time(run: &mut Run, v: Option<&SlotValue>, loc: &str, name: &str) {
    if let Some(s) = v.and_then(SlotValue::as_str) {
        if !is_xsd_date_time(s) {
            run.fatal(
                "VARTI-EDM-COM-007",
                format!("{loc}/rim:SlotValue/rim:Value"),
                format!("{name} '{s}' is not an xsd:dateTime; write e.g. 2026-01-31T12:00:00Z"),
            );
        }
    }
}

fn https(run: &mut Run, id: &str, v: Option<&SlotValue>, loc: &str, name: &str) {
    if let Some(s) = v.and_then(SlotValue::as_str) {
        if !s.trim().starts_with("https://") {
            run.fatal(
                id,
                format!("{loc}/rim:SlotValue/rim:Value"),
                format!("{name} '{s}' must be an https:// URL"),
            );
        }
    }
}

/// The agents (with their XPath-ish location) of a slot.
fn agents_of(slot: &Slot, loc: &str) -> Vec<(Agent, String)> {
    let Some(v) = slot.value.as_ref() else {
        return Vec::new();
    };
    let in_collection = matches!(v, SlotValue::Collection { .. });
    v.any_elements()
        .into_iter()
        .filter(|e| e.name.is(NS_SDG, "Agent"))
        .enumerate()
        .map(|(i, e)| {
            let l = if in_collection {
                format!("{loc}/rim:SlotValue/rim:Element[{}]/sdg:Agent", i + 1)
            } else {
                format!("{loc}/rim:SlotValue/sdg:Agent")
            };
            (Agent::from_element(e), l)
        })
        .collect()
}

fn check_agent(run: &mut Run, agent: &Agent, loc: &str) {
    match &agent.identifier {
        None => run.fatal(
            "VARTI-EDM-COM-004",
            format!("{loc}/sdg:Identifier"),
            "the agent has no sdg:Identifier; add its identifier with a schemeID",
        ),
        Some(Identifier { scheme_id: None, .. }) => run.fatal(
            "VARTI-EDM-COM-004",
            format!("{loc}/sdg:Identifier/@schemeID"),
            "the agent identifier has no schemeID; add one such as urn:cef.eu:names:identifier:EAS:0009 (R-EDM-REQ-C010)",
        ),
        Some(Identifier {
            scheme_id: Some(scheme),
            value,
        }) => {
            let sloc = format!("{loc}/sdg:Identifier/@schemeID");
            if let Some(code) = scheme.strip_prefix(EAS_PREFIX) {
                run.code("VARTI-EDM-COM-005", "EAS", code, &sloc, "EAS scheme code");
            } else if !scheme.starts_with(UNREGISTERED_PREFIX) {
                run.fatal(
                    "VARTI-EDM-COM-005",
                    sloc,
                    format!("agent identifier scheme '{scheme}' is neither {EAS_PREFIX}<EAS code> nor {UNREGISTERED_PREFIX}:…; use the EAS code of the identifier (R-EDM-REQ-C012/C018)"),
                );
            }
            if value.is_empty() {
                run.fatal(
                    "VARTI-EDM-COM-004",
                    format!("{loc}/sdg:Identifier"),
                    "the agent identifier is empty",
                );
            }
        }
    }
    if let Some(c) = &agent.classification {
        run.code(
            "VARTI-EDM-COM-006",
            "AgentClassification",
            c,
            &format!("{loc}/sdg:Classification"),
            "agent classification",
        );
    }
}

fn check_agents(
    run: &mut Run,
    slot: Option<&Slot>,
    loc: &str,
    missing_id: &str,
    name: &str,
) -> Vec<Agent> {
    let Some(slot) = slot else {
        run.fatal(
            missing_id,
            loc,
            format!("the required slot {name} is missing; add it with an sdg:Agent"),
        );
        return Vec::new();
    };
    let agents = agents_of(slot, loc);
    if agents.is_empty() {
        run.fatal(
            missing_id,
            loc,
            format!("slot {name} holds no sdg:Agent; add the agent as rim:AnyValueType"),
        );
    }
    for (a, l) in &agents {
        check_agent(run, a, l);
    }
    agents.into_iter().map(|(a, _)| a).collect()
}

fn check_request(run: &mut Run, r: &EvidenceRequest, version: Option<EdmVersion>) {
    let loc = |n: &str| slot_loc(REQ_ROOT, n);
    match r.id.as_deref() {
        Some(id) if is_urn_uuid(id) => {}
        other => run.fatal(
            "VARTI-EDM-REQ-001",
            format!("{REQ_ROOT}/@id"),
            format!("the request id {other:?} must be urn:uuid: followed by an RFC 4122 UUID"),
        ),
    }
    typed(
        run,
        r.slot("SpecificationIdentifier"),
        &loc("SpecificationIdentifier"),
        &["StringValueType"],
    );
    let v = required(
        run,
        r.slot("IssueDateTime"),
        &loc("IssueDateTime"),
        "VARTI-EDM-REQ-002",
        "IssueDateTime",
        &["DateTimeValueType"],
        "R-EDM-REQ-C002",
    );
    date_time(run, v, &loc("IssueDateTime"), "IssueDateTime");

    // EDM 1.x writes the procedure as an international string, 2.0 as a plain string.
    let procedure_types: &[&str] = match version {
        Some(EdmVersion::V2_0) => &["StringValueType", "InternationalStringValueType"],
        _ => &["InternationalStringValueType", "StringValueType"],
    };
    if required(
        run,
        r.slot("Procedure"),
        &loc("Procedure"),
        "VARTI-EDM-REQ-003",
        "Procedure",
        procedure_types,
        "R-EDM-REQ-S",
    )
    .is_some()
    {
        if let Some(p) = r.procedure() {
            run.code(
                "VARTI-EDM-REQ-004",
                "Procedures",
                p,
                &loc("Procedure"),
                "procedure",
            );
        }
    }
    let v = required(
        run,
        r.slot("PossibilityForPreview"),
        &loc("PossibilityForPreview"),
        "VARTI-EDM-REQ-005",
        "PossibilityForPreview",
        &["BooleanValueType"],
        "R-EDM-REQ-S",
    );
    if v.is_some() && r.possibility_for_preview().is_none() {
        run.fatal(
            "VARTI-EDM-COM-003",
            loc("PossibilityForPreview"),
            "PossibilityForPreview must be an xs:boolean (true or false)",
        );
    }
    let v = required(
        run,
        r.slot("ExplicitRequestGiven"),
        &loc("ExplicitRequestGiven"),
        "VARTI-EDM-REQ-006",
        "ExplicitRequestGiven",
        &["BooleanValueType"],
        "R-EDM-REQ-S",
    );
    if v.is_some() && r.explicit_request_given().is_none() {
        run.fatal(
            "VARTI-EDM-COM-003",
            loc("ExplicitRequestGiven"),
            "ExplicitRequestGiven must be an xs:boolean (true or false)",
        );
    }
    if required(
        run,
        r.slot("Requirements"),
        &loc("Requirements"),
        "VARTI-EDM-REQ-007",
        "Requirements",
        &["CollectionValueType"],
        "R-EDM-REQ-S",
    )
    .is_some()
    {
        let reqs = r.requirements();
        if reqs.is_empty() {
            run.fatal("VARTI-EDM-REQ-007", loc("Requirements"), "Requirements holds no sdg:Requirement; add the requirement from the Evidence Broker");
        }
        for (i, q) in reqs.iter().enumerate() {
            if q.identifier.as_deref().is_none_or(str::is_empty) {
                run.fatal(
                    "VARTI-EDM-REQ-007",
                    format!(
                        "{}/rim:SlotValue/rim:Element[{}]/sdg:Requirement/sdg:Identifier",
                        loc("Requirements"),
                        i + 1
                    ),
                    "the requirement has no sdg:Identifier (R-EDM-REQ-C008)",
                );
            }
        }
    }

    let requesters = check_agents(
        run,
        r.slot("EvidenceRequester"),
        &loc("EvidenceRequester"),
        "VARTI-EDM-REQ-008",
        "EvidenceRequester",
    );
    let classified = |c: &str| {
        requesters
            .iter()
            .any(|a| a.classification.as_deref().map(str::trim) == Some(c))
    };
    if classified("IP") && !classified("ER") {
        run.fatal("VARTI-EDM-REQ-009", loc("EvidenceRequester"), "an intermediary platform (IP) agent is given without the evidence requester (ER) agent it acts for; add the ER agent");
    }
    check_agents(
        run,
        r.slot("EvidenceProvider"),
        &loc("EvidenceProvider"),
        "VARTI-EDM-REQ-010",
        "EvidenceProvider",
    );

    for (name, id) in [
        ("PreviewLocation", "VARTI-EDM-REQ-019"),
        ("ReturnLocation", "VARTI-EDM-REQ-019"),
    ] {
        let v = typed(run, r.slot(name), &loc(name), &["StringValueType"]);
        https(run, id, v, &loc(name), name);
    }

    let ro = r.response_option.as_ref().and_then(|a| {
        a.iter()
            .find(|a| a.name.is("", "returnType"))
            .map(|a| a.value.as_str())
    });
    if ro != Some(RETURN_TYPE) {
        run.fatal("VARTI-EDM-REQ-011", format!("{REQ_ROOT}/query:ResponseOption/@returnType"), format!("query:ResponseOption returnType is {ro:?}; it must be {RETURN_TYPE} (R-EDM-REQ-C024)"));
    }
    let Some(q) = &r.query else {
        run.fatal("VARTI-EDM-REQ-012", format!("{REQ_ROOT}/query:Query"), "query:Query is missing; add it with queryDefinition=\"DocumentQuery\" and the person and evidence slots");
        return;
    };
    if q.query_definition.as_deref() != Some(QUERY_DEFINITION) {
        run.fatal(
            "VARTI-EDM-REQ-012",
            format!("{REQ_ROOT}/query:Query/@queryDefinition"),
            format!(
                "queryDefinition is {:?}; it must be {QUERY_DEFINITION} (R-EDM-REQ-C025)",
                q.query_definition
            ),
        );
    }

    let natural = typed(
        run,
        r.query_slot("NaturalPerson"),
        &query_slot_loc("NaturalPerson"),
        &["AnyValueType"],
    )
    .is_some();
    let legal = typed(
        run,
        r.query_slot("LegalPerson"),
        &query_slot_loc("LegalPerson"),
        &["AnyValueType"],
    )
    .is_some();
    if natural == legal {
        run.fatal(
            "VARTI-EDM-REQ-013",
            format!("{REQ_ROOT}/query:Query"),
            "the query must hold exactly one of the NaturalPerson and LegalPerson slots",
        );
    }
    let mut persons = Vec::new();
    if let Some(p) = r.natural_person() {
        persons.push((
            p,
            query_slot_loc("NaturalPerson") + "/rim:SlotValue/sdg:Person",
        ));
    }
    if r.query_slot("AuthorizedRepresentative").is_some() {
        if let Some(p) = r.authorized_representative() {
            persons.push((
                p,
                query_slot_loc("AuthorizedRepresentative") + "/rim:SlotValue/sdg:Person",
            ));
        }
    }
    for (p, ploc) in &persons {
        check_loa(run, p.level_of_assurance.as_deref(), ploc);
        match &p.identifier {
            None => run.warn(
                "VARTI-EDM-REQ-020",
                format!("{ploc}/sdg:Identifier"),
                "the person has no eIDAS identifier; it SHOULD be given (R-EDM-REQ-C038)",
            ),
            Some(id) => check_eidas_id(run, id, &format!("{ploc}/sdg:Identifier")),
        }
        if let Some(d) = &p.date_of_birth {
            if !is_xsd_date(d) {
                run.fatal(
                    "VARTI-EDM-REQ-016",
                    format!("{ploc}/sdg:DateOfBirth"),
                    format!(
                        "DateOfBirth '{d}' is not an xsd:date; write YYYY-MM-DD (R-EDM-REQ-C043)"
                    ),
                );
            }
        }
    }
    if let Some(lp) = r.legal_person() {
        let lloc = query_slot_loc("LegalPerson") + "/rim:SlotValue/sdg:LegalPerson";
        check_loa(run, lp.level_of_assurance.as_deref(), &lloc);
        match &lp.legal_person_identifier {
            None => run.warn("VARTI-EDM-REQ-020", format!("{lloc}/sdg:LegalPersonIdentifier"), "the legal person has no eIDAS LegalPersonIdentifier; it SHOULD be given (R-EDM-REQ-C049)"),
            Some(id) => check_eidas_id(run, id, &format!("{lloc}/sdg:LegalPersonIdentifier")),
        }
    }

    let eloc = query_slot_loc("EvidenceRequest");
    if required(
        run,
        r.query_slot("EvidenceRequest"),
        &eloc,
        "VARTI-EDM-REQ-017",
        "EvidenceRequest",
        &["AnyValueType"],
        "R-EDM-REQ-S",
    )
    .is_some()
    {
        match r.evidence_type() {
            None => run.fatal("VARTI-EDM-REQ-017", &eloc, "EvidenceRequest holds no sdg:DataServiceEvidenceType; add the evidence type from the DSD"),
            Some(et) => {
                let tloc = format!("{eloc}/rim:SlotValue/sdg:DataServiceEvidenceType");
                if et.identifier.as_deref().is_none_or(str::is_empty) {
                    run.fatal("VARTI-EDM-REQ-017", format!("{tloc}/sdg:Identifier"), "the evidence type has no sdg:Identifier; use the one from the DSD (R-EDM-REQ-C026)");
                }
                if et.classification.as_deref().is_none_or(str::is_empty) {
                    run.fatal("VARTI-EDM-REQ-017", format!("{tloc}/sdg:EvidenceTypeClassification"), "the evidence type has no sdg:EvidenceTypeClassification (R-EDM-REQ-C027)");
                }
                for f in &et.formats {
                    run.code("VARTI-EDM-REQ-018", "OOTSMediaTypes", f, &format!("{tloc}/sdg:DistributedAs/sdg:Format"), "distribution format");
                }
            }
        }
    }
}

fn check_loa(run: &mut Run, loa: Option<&str>, loc: &str) {
    match loa {
        None => run.fatal("VARTI-EDM-REQ-014", format!("{loc}/sdg:LevelOfAssurance"), "sdg:LevelOfAssurance is missing; give the eIDAS level (Low, Substantial, High) (R-EDM-REQ-C036)"),
        Some(l) => run.code("VARTI-EDM-REQ-014", "LoA", l, &format!("{loc}/sdg:LevelOfAssurance"), "level of assurance"),
    }
}

/// An eIDAS identifier: schemeID `eidas`, value `XX/YY/…` (two country codes).
fn check_eidas_id(run: &mut Run, id: &Identifier, loc: &str) {
    if id.scheme_id.as_deref() != Some("eidas") {
        run.fatal(
            "VARTI-EDM-REQ-015",
            format!("{loc}/@schemeID"),
            format!(
                "the eIDAS identifier's schemeID is {:?}; it must be 'eidas' (R-EDM-REQ-C042)",
                id.scheme_id
            ),
        );
    }
    let parts: Vec<&str> = id.value.splitn(3, '/').collect();
    let shaped = parts.len() == 3
        && parts[..2]
            .iter()
            .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        && !parts[2].is_empty();
    if !shaped {
        run.fatal("VARTI-EDM-REQ-015", loc, format!("the eIDAS identifier '{}' must have the form XX/YY/ZZZ… (nationality of the identifier / destination country / identity, e.g. ES/AT/02635542Y) (R-EDM-REQ-C039)", id.value));
        return;
    }
    for c in &parts[..2] {
        run.code(
            "VARTI-EDM-REQ-015",
            "CountryIdentificationCode",
            c,
            loc,
            "eIDAS identifier country",
        );
    }
}

fn check_response_header(run: &mut Run, r: &QueryResponse, req_id_rule: &str) {
    match r.request_id.as_deref() {
        Some(id) if is_urn_uuid(id) => {}
        other => run.fatal(
            req_id_rule,
            format!("{RESP_ROOT}/@requestId"),
            format!("requestId {other:?} must be the request's id: urn:uuid: followed by an RFC 4122 UUID"),
        ),
    }
    typed(
        run,
        r.slot("SpecificationIdentifier"),
        &slot_loc(RESP_ROOT, "SpecificationIdentifier"),
        &["StringValueType"],
    );
}

fn check_response(run: &mut Run, r: &EvidenceResponse, version: Option<EdmVersion>) {
    let q = r.inner();
    let loc = |n: &str| slot_loc(RESP_ROOT, n);
    check_response_header(run, q, "VARTI-EDM-RESP-001");
    if q.status.as_deref() != Some(STATUS_SUCCESS) {
        run.fatal(
            "VARTI-EDM-RESP-002",
            format!("{RESP_ROOT}/@status"),
            format!(
                "an evidence response must have status {STATUS_SUCCESS}; found {:?}",
                q.status
            ),
        );
    }
    required(
        run,
        q.slot("EvidenceResponseIdentifier"),
        &loc("EvidenceResponseIdentifier"),
        "VARTI-EDM-RESP-003",
        "EvidenceResponseIdentifier",
        &["StringValueType"],
        "R-EDM-RESP-S",
    );
    let v = required(
        run,
        q.slot("IssueDateTime"),
        &loc("IssueDateTime"),
        "VARTI-EDM-RESP-004",
        "IssueDateTime",
        &["DateTimeValueType"],
        "R-EDM-RESP-S",
    );
    date_time(run, v, &loc("IssueDateTime"), "IssueDateTime");
    check_agents(
        run,
        q.slot("EvidenceProvider"),
        &loc("EvidenceProvider"),
        "VARTI-EDM-RESP-005",
        "EvidenceProvider",
    );
    check_agents(
        run,
        q.slot("EvidenceRequester"),
        &loc("EvidenceRequester"),
        "VARTI-EDM-RESP-006",
        "EvidenceRequester",
    );

    let evidences = r.evidences();
    if evidences.is_empty() {
        // A warning, not fatal: the EC's own test-event answers (TC02, TC08) are successful
        // responses with an empty list.
        run.warn("VARTI-EDM-RESP-007", format!("{RESP_ROOT}/rim:RegistryObjectList"), "the response carries no evidence; add a rim:RegistryObject per evidence, or answer with an error response when there is none");
    }
    if version == Some(EdmVersion::V2_0) {
        let top = q.registry_objects.iter().flatten();
        for (i, o) in top.enumerate() {
            if !o.is_type("RegistryPackageType") {
                run.fatal(
                    "VARTI-EDM-RESP-011",
                    format!(
                        "{RESP_ROOT}/rim:RegistryObjectList/rim:RegistryObject[{}]",
                        i + 1
                    ),
                    "EDM 2.0 wraps evidences in a rim:RegistryPackageType registry object",
                );
            }
        }
    }
    for (i, ev) in evidences.iter().enumerate() {
        let eloc = format!(
            "{RESP_ROOT}//rim:RegistryObject[@xsi:type='rim:ExtrinsicObjectType'][{}]",
            i + 1
        );
        if !ev.object_id.as_deref().is_some_and(is_urn_uuid) {
            run.fatal(
                "VARTI-EDM-RESP-008",
                format!("{eloc}/@id"),
                format!(
                    "the evidence registry object id {:?} must be urn:uuid: followed by a UUID",
                    ev.object_id
                ),
            );
        }
        match &ev.metadata {
            None => run.fatal(
                "VARTI-EDM-RESP-009",
                format!("{eloc}/rim:Slot[@name='EvidenceMetadata']"),
                "the evidence has no EvidenceMetadata slot with an sdg:Evidence",
            ),
            Some(md) => {
                if md.identifier.as_deref().is_none_or(str::is_empty) {
                    run.fatal("VARTI-EDM-RESP-009", format!("{eloc}/rim:Slot[@name='EvidenceMetadata']/rim:SlotValue/sdg:Evidence/sdg:Identifier"), "the evidence metadata has no sdg:Identifier");
                }
                if let Some(f) = &md.format {
                    run.code("VARTI-EDM-RESP-012", "OOTSMediaTypes", f, &format!("{eloc}/rim:Slot[@name='EvidenceMetadata']/rim:SlotValue/sdg:Evidence/sdg:Distribution/sdg:Format"), "evidence format");
                }
            }
        }
        match &ev.repository_item {
            Some(r) if r.href.starts_with("cid:") && r.href.len() > 4 => {}
            Some(r) => run.fatal(
                "VARTI-EDM-RESP-010",
                format!("{eloc}/rim:RepositoryItemRef/@xlink:href"),
                format!(
                    "RepositoryItemRef '{}' must be a cid: reference to the evidence attachment",
                    r.href
                ),
            ),
            None => run.fatal(
                "VARTI-EDM-RESP-010",
                format!("{eloc}/rim:RepositoryItemRef"),
                "the evidence has no rim:RepositoryItemRef pointing to its attachment",
            ),
        }
        if version == Some(EdmVersion::V2_0) && ev.classification.is_none() {
            run.fatal("VARTI-EDM-RESP-011", format!("{eloc}/rim:Classification"), format!("EDM 2.0 classifies each evidence with scheme {EDM_CLASSIFICATION_SCHEME} (MainEvidence, annex …)"));
        }
    }
}

fn check_error(run: &mut Run, e: &ErrorResponse, version: Option<EdmVersion>) {
    let q = e.inner();
    let loc = |n: &str| slot_loc(RESP_ROOT, n);
    check_response_header(run, q, "VARTI-EDM-ERR-001");
    if q.status.as_deref() != Some(STATUS_FAILURE) {
        run.fatal(
            "VARTI-EDM-ERR-002",
            format!("{RESP_ROOT}/@status"),
            format!(
                "an error response must have status {STATUS_FAILURE}; found {:?}",
                q.status
            ),
        );
    }
    required(
        run,
        q.slot("EvidenceResponseIdentifier"),
        &loc("EvidenceResponseIdentifier"),
        "VARTI-EDM-ERR-012",
        "EvidenceResponseIdentifier",
        &["StringValueType"],
        "R-EDM-ERR-S",
    );
    check_agents(
        run,
        q.slot("ErrorProvider"),
        &loc("ErrorProvider"),
        "VARTI-EDM-ERR-011",
        "ErrorProvider",
    );
    if q.slot("EvidenceRequester").is_some() {
        check_agents(
            run,
            q.slot("EvidenceRequester"),
            &loc("EvidenceRequester"),
            "VARTI-EDM-ERR-011",
            "EvidenceRequester",
        );
    }
    if q.exceptions.len() != 1 {
        run.fatal(
            "VARTI-EDM-ERR-003",
            format!("{RESP_ROOT}/rs:Exception"),
            format!(
                "an error response carries exactly one rs:Exception; found {}",
                q.exceptions.len()
            ),
        );
    }
    let Some(ex) = e.exception() else { return };
    let xloc = format!("{RESP_ROOT}/rs:Exception");
    let by_type = ex
        .exception_type
        .as_ref()
        .and_then(EdmErrorKind::from_exception_type);
    if by_type.is_none() {
        run.fatal("VARTI-EDM-ERR-006", format!("{xloc}/@xsi:type"), format!("exception type {:?} is not an EDM error type (rs:…ExceptionType or query:QueryExceptionType)", ex.exception_type.as_ref().map(|t| t.to_clark())));
    }
    match ex.code.as_deref() {
        None => run.fatal(
            "VARTI-EDM-ERR-004",
            format!("{xloc}/@code"),
            "the exception has no code; give the EDMErrorCodes code (EDM:ERR:0001 … EDM:ERR:0008)",
        ),
        Some(code) => {
            run.code(
                "VARTI-EDM-ERR-005",
                "EDMErrorCodes",
                code,
                &format!("{xloc}/@code"),
                "error code",
            );
            match (EdmErrorKind::from_code(code), by_type) {
                (None, _) => run.fatal(
                    "VARTI-EDM-ERR-005",
                    format!("{xloc}/@code"),
                    format!("'{code}' is not an EDM error code (EDM:ERR:0001 … EDM:ERR:0008)"),
                ),
                (Some(k), Some(t)) if k != t => run.fatal(
                    "VARTI-EDM-ERR-006",
                    format!("{xloc}/@xsi:type"),
                    format!(
                        "code {code} goes with exception type {}, not {}",
                        k.exception_type().local,
                        t.exception_type().local
                    ),
                ),
                _ => {}
            }
        }
    }
    if ex.message.as_deref().is_none_or(str::is_empty) {
        run.fatal(
            "VARTI-EDM-ERR-010",
            format!("{xloc}/@message"),
            "the exception has no message; say what went wrong",
        );
    }
    match ex.severity.as_deref() {
        None => run.fatal(
            "VARTI-EDM-ERR-007",
            format!("{xloc}/@severity"),
            format!("the exception has no severity; use {SEVERITY_ERROR}"),
        ),
        Some(s) => {
            // The EDM 1.0 code list spells the preview severity with sr.oots.tech.europa.eu;
            // EDM 2.0 moved the Semantic Repository to sr.oots.tech.ec.europa.eu.
            let v2_ok = version == Some(EdmVersion::V2_0)
                && (s == SEVERITY_ERROR || s == SEVERITY_PREVIEW_REQUIRED);
            if !v2_ok {
                run.code(
                    "VARTI-EDM-ERR-007",
                    "ErrorSeverity",
                    s,
                    &format!("{xloc}/@severity"),
                    "error severity",
                );
            }
        }
    }
    let sloc = |n: &str| format!("{xloc}/rim:Slot[@name='{n}']");
    let v = required(
        run,
        ex.slot("Timestamp"),
        &sloc("Timestamp"),
        "VARTI-EDM-ERR-009",
        "Timestamp",
        &["DateTimeValueType"],
        "R-EDM-ERR-S",
    );
    date_time(run, v, &sloc("Timestamp"), "Timestamp");
    let preview_severity = matches!(ex.severity.as_deref(), Some(s) if s == SEVERITY_PREVIEW_REQUIRED || s == SEVERITY_PREVIEW_REQUIRED_V1);
    if preview_severity {
        if by_type != Some(EdmErrorKind::Authorization) {
            run.fatal("VARTI-EDM-ERR-008", format!("{xloc}/@xsi:type"), "a PreviewRequired error must be an rs:AuthorizationExceptionType with code EDM:ERR:0002");
        }
        let v = required(
            run,
            ex.slot("PreviewLocation"),
            &sloc("PreviewLocation"),
            "VARTI-EDM-ERR-008",
            "PreviewLocation",
            &["StringValueType"],
            "R-EDM-ERR-S",
        );
        https(
            run,
            "VARTI-EDM-ERR-008",
            v,
            &sloc("PreviewLocation"),
            "PreviewLocation",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks() {
        assert!(is_urn_uuid("urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc797"));
        assert!(!is_urn_uuid("4ffb5281-179d-4578-adf2-39fd13ccc797"));
        assert!(!is_urn_uuid("urn:uuid:4ffb5281-179d-4578-adf2-39fd13ccc79"));
        for ok in [
            "2022-05-19T17:08:10.872Z",
            "2020-02-14T19:21:30+01:00",
            "2026-08-06T10:00:00",
        ] {
            assert!(is_xsd_date_time(ok), "{ok}");
        }
        for bad in [
            "2022-05-19",
            "2022-13-19T17:08:10Z",
            "2022-05-19 17:08:10Z",
            "2022-05-19T17:08:10.Z",
            "yesterday",
        ] {
            assert!(!is_xsd_date_time(bad), "{bad}");
        }
        assert!(is_xsd_date("1970-03-01"));
        assert!(!is_xsd_date("01/03/1970"));
        assert!(!is_xsd_date("undefined"));
    }
}
