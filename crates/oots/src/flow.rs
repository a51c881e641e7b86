//! Building the EDM documents of an evidence exchange from plain data: the request a
//! procedure portal asks for, the response an evidence provider answers with, and the error
//! response for each failure.
//!
//! The inputs are serde types, so a gateway can take them straight from a portal's JSON
//! (requester side) or from a national register's answer (provider side). The documents
//! built here pass Varti's own EDM model ([`crate::validate::model`]) for their version;
//! the unit tests check that for every builder.

use serde::{Deserialize, Serialize};

use crate::edm::error::EdmErrorKind;
use crate::edm::regrep::{
    Classification, RegistryObject, RegistryObjectPart, RepositoryItemRef, Slot, SlotValue,
};
use crate::edm::request::EvidenceRequest;
use crate::edm::response::{QueryResponse, EDM_CLASSIFICATION_SCHEME, STATUS_SUCCESS};
use crate::edm::sdg::{Agent, Identifier as SdgIdentifier, LangText, Requirement};
use crate::edm::xml::{Element, QName, NS_RIM, NS_SDG};
use crate::edm::{EdmVersion, ErrorResponse, EvidenceResponse};

/// `collectionType` of the agent and requirement collections.
const SET: &str = "urn:oasis:names:tc:ebxml-regrep:CollectionType:Set";

/// An identifier with its scheme (an EAS code such as
/// `urn:cef.eu:names:identifier:EAS:0009`, or `eidas` for persons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemeId {
    /// The scheme.
    pub scheme: String,
    /// The identifier.
    pub value: String,
}

/// An organisation taking part in the exchange: the evidence requester (`ER`), the
/// provider (`EP`), an intermediary platform (`IP`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentData {
    /// Its identifier (also what the four-corner `originalSender` / `finalRecipient`
    /// properties carry).
    pub identifier: SchemeId,
    /// Its name.
    pub name: String,
    /// The language of the name (default `EN`).
    #[serde(default)]
    pub lang: Option<String>,
    /// Its country (ISO 3166 alpha-2), when known.
    #[serde(default)]
    pub country: Option<String>,
}

impl AgentData {
    fn agent(&self, classification: Option<&str>) -> Agent {
        Agent {
            identifier: Some(SdgIdentifier {
                scheme_id: Some(self.identifier.scheme.clone()),
                value: self.identifier.value.clone(),
            }),
            names: vec![LangText {
                lang: Some(self.lang.clone().unwrap_or_else(|| "EN".into())),
                text: self.name.clone(),
            }],
            country: self.country.clone(),
            classification: classification.map(str::to_owned),
        }
    }

    /// Reads an agent back (the identifier is required).
    pub fn from_agent(a: &Agent) -> Option<AgentData> {
        let id = a.identifier.as_ref()?;
        Some(AgentData {
            identifier: SchemeId {
                scheme: id.scheme_id.clone().unwrap_or_default(),
                value: id.value.clone(),
            },
            name: a.names.first().map(|n| n.text.clone()).unwrap_or_default(),
            lang: a.names.first().and_then(|n| n.lang.clone()),
            country: a.country.clone(),
        })
    }
}

/// The natural person the evidence is about (eIDAS minimum data set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NaturalPersonData {
    /// eIDAS identifier `XX/YY/…` (nationality / destination / identity).
    #[serde(default)]
    pub identifier: Option<String>,
    /// Family name.
    pub family_name: String,
    /// Given name.
    pub given_name: String,
    /// Date of birth, `YYYY-MM-DD`.
    pub date_of_birth: String,
    /// eIDAS level of assurance (`Low`, `Substantial`, `High`; default `High`).
    #[serde(default)]
    pub level_of_assurance: Option<String>,
}

/// The legal person the evidence is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalPersonData {
    /// eIDAS legal person identifier `XX/YY/…`.
    pub identifier: String,
    /// Legal name.
    pub legal_name: String,
    /// eIDAS level of assurance (default `High`).
    #[serde(default)]
    pub level_of_assurance: Option<String>,
}

/// The evidence type asked for, as the Data Service Directory names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceTypeData {
    /// The DSD's `DataServiceEvidenceType` identifier.
    pub identifier: String,
    /// The evidence type classification (a Semantic Repository URL).
    pub classification: String,
    /// Its title.
    #[serde(default)]
    pub title: Option<String>,
    /// The distribution format asked for (an `OOTSMediaTypes` code, e.g. `application/pdf`).
    #[serde(default)]
    pub format: Option<String>,
}

/// The requirement of the procedure the evidence satisfies (from the Evidence Broker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequirementData {
    /// Its identifier (a Semantic Repository URL).
    pub identifier: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Everything an evidence request needs, as a procedure portal gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestData {
    /// The EDM version (default `oots-edm:v2.0`).
    #[serde(default)]
    pub edm_version: Option<String>,
    /// The procedure (code list `Procedures`, e.g. `T1`).
    pub procedure: String,
    /// The procedure's requirements the evidence satisfies.
    pub requirements: Vec<RequirementData>,
    /// The evidence type.
    pub evidence_type: EvidenceTypeData,
    /// The competent authority asking (agent `ER`).
    pub requester: AgentData,
    /// The intermediary platform acting for it (agent `IP`), if any.
    #[serde(default)]
    pub intermediary: Option<AgentData>,
    /// The evidence provider (from the DSD).
    pub provider: AgentData,
    /// The natural person, or …
    #[serde(default)]
    pub natural_person: Option<NaturalPersonData>,
    /// … the legal person the evidence is about.
    #[serde(default)]
    pub legal_person: Option<LegalPersonData>,
    /// Whether the user may preview the evidence (`PossibilityForPreview`).
    #[serde(default)]
    pub preview: bool,
    /// Whether the user explicitly asked for the exchange (`ExplicitRequestGiven`).
    #[serde(default = "yes")]
    pub explicit_request_given: bool,
    /// The preferred language of the evidence (`xml:lang`), if any.
    #[serde(default)]
    pub language: Option<String>,
}

fn yes() -> bool {
    true
}

/// Why a request cannot be built from the data given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A value is missing or not usable; the message names it.
    #[error("{0}")]
    Invalid(String),
}

/// A new `urn:uuid:` identifier (random, RFC 4122 version 4).
pub fn new_urn_uuid() -> String {
    format!("urn:uuid:{}", uuid_v4())
}

/// A random RFC 4122 version 4 UUID (OpenSSL's random generator).
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).expect("OpenSSL's random generator works");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Now as an `xsd:dateTime` in UTC with milliseconds (`2026-08-06T10:00:00.000Z`).
pub fn now_xsd() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn agents_slot(name: &str, agents: Vec<Agent>, collection: bool) -> Slot {
    let value = if collection {
        SlotValue::Collection {
            collection_type: Some(SET.into()),
            elements: agents
                .into_iter()
                .map(|a| SlotValue::Any(vec![a.to_element()]))
                .collect(),
        }
    } else {
        SlotValue::Any(agents.into_iter().map(|a| a.to_element()).collect())
    };
    Slot::new(name, value)
}

fn sdg(local: &str, text: &str) -> Element {
    Element::new(NS_SDG, local).with_text(text)
}

fn eidas_id(local: &str, value: &str) -> Element {
    sdg(local, value).with_attr(QName::plain("schemeID"), "eidas")
}

/// Builds an evidence request with a fresh `urn:uuid:` id.
pub fn build_request(data: &RequestData) -> Result<EvidenceRequest, BuildError> {
    build_request_with_id(data, &new_urn_uuid())
}

/// Builds an evidence request with the id `id` (`urn:uuid:…`).
pub fn build_request_with_id(data: &RequestData, id: &str) -> Result<EvidenceRequest, BuildError> {
    let version = match data.edm_version.as_deref() {
        None => EdmVersion::V2_0,
        Some(v) => EdmVersion::from_identifier(v).ok_or_else(|| {
            BuildError::Invalid(format!(
                "edm_version `{v}` is not one Varti speaks; use oots-edm:v1.0, oots-edm:v1.2 or oots-edm:v2.0"
            ))
        })?,
    };
    match (&data.natural_person, &data.legal_person) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(BuildError::Invalid(
                "give exactly one of natural_person and legal_person".into(),
            ))
        }
        _ => {}
    }
    if data.requirements.is_empty() {
        return Err(BuildError::Invalid(
            "requirements is empty; give the requirement (from the Evidence Broker) the evidence satisfies"
                .into(),
        ));
    }
    let mut r = EvidenceRequest::new(id, version);
    r.lang = data.language.clone();
    r.set_slot(Slot::new("IssueDateTime", SlotValue::DateTime(now_xsd())));
    // EDM 1.x writes the procedure as an international string, 2.0 as a plain string.
    let procedure = if version.is_v1() {
        SlotValue::InternationalString(vec![crate::edm::regrep::LocalizedString {
            lang: Some("EN".into()),
            value: data.procedure.clone(),
        }])
    } else {
        SlotValue::String(data.procedure.clone())
    };
    r.set_slot(Slot::new("Procedure", procedure));
    r.set_slot(Slot::new(
        "PossibilityForPreview",
        SlotValue::Boolean(data.preview.to_string()),
    ));
    r.set_slot(Slot::new(
        "ExplicitRequestGiven",
        SlotValue::Boolean(data.explicit_request_given.to_string()),
    ));
    r.set_slot(Slot::new(
        "Requirements",
        SlotValue::Collection {
            collection_type: Some(SET.into()),
            elements: data
                .requirements
                .iter()
                .map(|q| {
                    SlotValue::Any(vec![Requirement {
                        identifier: Some(q.identifier.clone()),
                        names: q
                            .name
                            .iter()
                            .map(|n| LangText {
                                lang: Some("EN".into()),
                                text: n.clone(),
                            })
                            .collect(),
                    }
                    .to_element()])
                })
                .collect(),
        },
    ));
    let mut requesters = vec![data.requester.agent(Some("ER"))];
    if let Some(ip) = &data.intermediary {
        requesters.push(ip.agent(Some("IP")));
    }
    r.set_slot(agents_slot("EvidenceRequester", requesters, true));
    r.set_slot(agents_slot(
        "EvidenceProvider",
        vec![data.provider.agent(None)],
        false,
    ));

    let loa = |l: &Option<String>| l.clone().unwrap_or_else(|| "High".into());
    if let Some(p) = &data.natural_person {
        let mut el = Element::new(NS_SDG, "Person")
            .with_child(sdg("LevelOfAssurance", &loa(&p.level_of_assurance)));
        if let Some(id) = &p.identifier {
            el = el.with_child(eidas_id("Identifier", id));
        }
        el = el
            .with_child(sdg("FamilyName", &p.family_name))
            .with_child(sdg("GivenName", &p.given_name))
            .with_child(sdg("DateOfBirth", &p.date_of_birth));
        r.set_query_slot(Slot::new("NaturalPerson", SlotValue::Any(vec![el])));
    }
    if let Some(p) = &data.legal_person {
        let el = Element::new(NS_SDG, "LegalPerson")
            .with_child(sdg("LevelOfAssurance", &loa(&p.level_of_assurance)))
            .with_child(eidas_id("LegalPersonIdentifier", &p.identifier))
            .with_child(sdg("LegalName", &p.legal_name));
        r.set_query_slot(Slot::new("LegalPerson", SlotValue::Any(vec![el])));
    }
    let et = &data.evidence_type;
    let mut el = Element::new(NS_SDG, "DataServiceEvidenceType")
        .with_child(sdg("Identifier", &et.identifier))
        .with_child(sdg("EvidenceTypeClassification", &et.classification));
    if let Some(t) = &et.title {
        el = el.with_child(sdg("Title", t).with_attr(QName::plain("lang"), "EN"));
    }
    if let Some(f) = &et.format {
        el = el.with_child(Element::new(NS_SDG, "DistributedAs").with_child(sdg("Format", f)));
    }
    r.set_query_slot(Slot::new("EvidenceRequest", SlotValue::Any(vec![el])));
    Ok(r)
}

/// One evidence of a response: its metadata and the `cid:` of the attachment that carries
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceData {
    /// The Content-ID of its attachment (without `cid:`).
    pub content_id: String,
    /// Its media type (an `OOTSMediaTypes` code).
    pub mime_type: String,
    /// A title (the attachment's `xlink:title`).
    #[serde(default)]
    pub title: Option<String>,
    /// The date it was issued (`YYYY-MM-DD`).
    #[serde(default)]
    pub issuing_date: Option<String>,
}

/// Builds the evidence response to `request`: `provider` is the issuing authority (agent
/// `EP`); each evidence is an `ExtrinsicObjectType` pointing at its attachment (EDM 2.0
/// wraps them in a classified registry package).
pub fn build_response(
    request: &EvidenceRequest,
    provider: &Agent,
    evidences: &[EvidenceData],
) -> EvidenceResponse {
    let version = request
        .specification_identifier()
        .and_then(EdmVersion::from_identifier)
        .unwrap_or(EdmVersion::V2_0);
    let mut q = QueryResponse::new(
        request.id.as_deref().unwrap_or_default(),
        STATUS_SUCCESS,
        version,
    );
    q.set_slot(Slot::new(
        "EvidenceResponseIdentifier",
        SlotValue::String(uuid_v4()),
    ));
    q.set_slot(Slot::new("IssueDateTime", SlotValue::DateTime(now_xsd())));
    let mut ep = provider.clone();
    ep.classification = Some("EP".into());
    q.set_slot(agents_slot("EvidenceProvider", vec![ep], true));
    q.set_slot(agents_slot(
        "EvidenceRequester",
        request
            .evidence_requesters()
            .into_iter()
            .filter(|a| a.classification.as_deref() != Some("IP"))
            .take(1)
            .collect(),
        false,
    ));
    let about = request.natural_person();
    let evidence_type = request.evidence_type();
    let classification = evidence_type
        .as_ref()
        .and_then(|e| e.classification.clone());
    let type_titles = evidence_type.map(|e| e.titles).unwrap_or_default();
    let objects: Vec<RegistryObject> = evidences
        .iter()
        .map(|ev| {
            let mut md = Element::new(NS_SDG, "Evidence").with_child(sdg("Identifier", &uuid_v4()));
            if let Some(p) = &about {
                let mut np = Element::new(NS_SDG, "NaturalPerson");
                if let Some(id) = &p.identifier {
                    np = np.with_child(eidas_id("Identifier", &id.value));
                }
                for (local, v) in [
                    ("FamilyName", &p.family_name),
                    ("GivenName", &p.given_name),
                    ("DateOfBirth", &p.date_of_birth),
                ] {
                    if let Some(v) = v {
                        np = np.with_child(sdg(local, v));
                    }
                }
                md = md.with_child(Element::new(NS_SDG, "IsAbout").with_child(np));
            }
            let mut issuer = provider.to_element();
            issuer.name = QName::new(NS_SDG, "IssuingAuthority");
            // The issuing authority carries identifier and name only.
            issuer.children.retain(|c| match c {
                crate::edm::xml::Node::Element(e) => {
                    e.name.is(NS_SDG, "Identifier") || e.name.is(NS_SDG, "Name")
                }
                crate::edm::xml::Node::Text(_) => false,
            });
            md = md.with_child(issuer);
            if let Some(c) = &classification {
                // The schema requires a title after the classification: the requested
                // evidence type's, else the evidence's own.
                let mut conformant = Element::new(NS_SDG, "IsConformantTo")
                    .with_child(sdg("EvidenceTypeClassification", c));
                let titles = if type_titles.is_empty() {
                    vec![LangText {
                        lang: None,
                        text: ev.title.clone().unwrap_or_else(|| "Evidence".into()),
                    }]
                } else {
                    type_titles.clone()
                };
                for t in titles {
                    conformant = conformant.with_child(
                        sdg("Title", &t.text)
                            .with_attr(QName::plain("lang"), t.lang.as_deref().unwrap_or("EN")),
                    );
                }
                md = md.with_child(conformant);
            }
            if let Some(d) = &ev.issuing_date {
                md = md.with_child(sdg("IssuingDate", d));
            }
            md = md.with_child(
                Element::new(NS_SDG, "Distribution").with_child(sdg("Format", &ev.mime_type)),
            );
            let mut parts = vec![RegistryObjectPart::Slot(Slot::new(
                "EvidenceMetadata",
                SlotValue::Any(vec![md]),
            ))];
            if !version.is_v1() {
                parts.push(RegistryObjectPart::Classification(Classification {
                    id: Some(new_urn_uuid()),
                    scheme: Some(EDM_CLASSIFICATION_SCHEME.into()),
                    node: Some("MainEvidence".into()),
                    other_attributes: Vec::new(),
                    children: Vec::new(),
                }));
            }
            parts.push(RegistryObjectPart::RepositoryItemRef(RepositoryItemRef {
                href: format!("cid:{}", ev.content_id.trim_start_matches("cid:")),
                title: Some(ev.title.clone().unwrap_or_else(|| "Evidence".into())),
                other_attributes: Vec::new(),
            }));
            RegistryObject {
                object_type: Some(QName::new(NS_RIM, "ExtrinsicObjectType")),
                id: Some(new_urn_uuid()),
                other_attributes: Vec::new(),
                parts,
            }
        })
        .collect();
    // No evidence (the user rejected it in the preview, test event TC08): an empty
    // RegistryObjectList, not an empty registry package.
    q.registry_objects = Some(if version.is_v1() || objects.is_empty() {
        objects
    } else {
        vec![RegistryObject {
            object_type: Some(QName::new(NS_RIM, "RegistryPackageType")),
            id: Some(new_urn_uuid()),
            other_attributes: Vec::new(),
            parts: vec![RegistryObjectPart::RegistryObjectList(objects)],
        }]
    });
    EvidenceResponse(q)
}

/// Builds the error response to `request_id` (declaring `version`): `kind`, a `message`
/// for people, a `detail` (e.g. the rule ids an invalid request broke), the error provider
/// (agent `ERRP`) and, when known, the requester.
pub fn build_error(
    request_id: &str,
    version: EdmVersion,
    kind: EdmErrorKind,
    message: &str,
    detail: Option<&str>,
    error_provider: &Agent,
    requester: Option<&Agent>,
) -> ErrorResponse {
    let mut e = ErrorResponse::new(request_id, version, kind, message, &now_xsd());
    if let Some(d) = detail {
        e.0.exceptions[0].detail = Some(d.to_owned());
    }
    with_error_slots(e, error_provider, requester)
}

/// Builds the preview-required error (EDM:ERR:0002, severity PreviewRequired) to
/// `request_id`, sending the user to `preview_location` (an `https://` URL, as rule
/// R-EDM-ERR-C019 demands), with the same response identifier and agents as
/// [`build_error`].
pub fn build_preview_required(
    request_id: &str,
    version: EdmVersion,
    preview_location: &str,
    error_provider: &Agent,
    requester: Option<&Agent>,
) -> ErrorResponse {
    let e = ErrorResponse::preview_required(request_id, version, preview_location, &now_xsd());
    with_error_slots(e, error_provider, requester)
}

/// The slots every error response carries besides its exception: a fresh
/// `EvidenceResponseIdentifier`, the error provider (agent `ERRP`) and, when known, the
/// requester.
fn with_error_slots(
    mut e: ErrorResponse,
    error_provider: &Agent,
    requester: Option<&Agent>,
) -> ErrorResponse {
    e.0.set_slot(Slot::new(
        "EvidenceResponseIdentifier",
        SlotValue::String(uuid_v4()),
    ));
    let mut ep = error_provider.clone();
    ep.classification = Some("ERRP".into());
    // One sdg:Agent straight in an AnyValueType slot value (the test of rule
    // R-EDM-ERR-S020, the EC's and France's samples), not a collection.
    e.0.set_slot(agents_slot("ErrorProvider", vec![ep], false));
    if let Some(r) = requester {
        e.0.set_slot(agents_slot("EvidenceRequester", vec![r.clone()], false));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edm::EdmDocument;
    use crate::validate::codelist::CodeLists;
    use crate::validate::model::ModelValidator;
    use crate::validate::{has_fatal, Finding};

    fn lists() -> CodeLists {
        let specs = std::env::var("VARTI_SPECS").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/specs").into()
        });
        let dir = std::path::Path::new(&specs).join("oots-edm-v1/codelists");
        if !dir.is_dir() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the OOTS code lists are missing at {}",
                dir.display()
            );
            eprintln!(
                "WARNING: no code lists at {}: checking without them",
                dir.display()
            );
            return CodeLists::default();
        }
        CodeLists::load_dir(&dir).unwrap()
    }

    fn fatal(doc: &EdmDocument) -> Vec<Finding> {
        let bytes = doc.to_xml();
        let findings = ModelValidator::new(lists()).validate_bytes(bytes.as_bytes());
        findings
            .into_iter()
            .filter(|f| f.severity == crate::validate::Severity::Fatal)
            .collect()
    }

    pub(crate) fn sample(version: Option<&str>) -> RequestData {
        serde_json::from_value(serde_json::json!({
            "edm_version": version,
            "procedure": "T1",
            "requirements": [{"identifier": "https://sr.oots.tech.ec.europa.eu/requirements/315cfd75-6605-49c4-b0fe-799833b41099", "name": "Proof of birth"}],
            "evidence_type": {
                "identifier": "RegistrationCertificate-LV",
                "classification": "https://sr.oots.tech.ec.europa.eu/evidencetypeclassifications/LV/9a1e7f3c-0d6b-4e59-b8f5-0d8f6c1e2a33",
                "title": "Certificate of Birth",
                "format": "application/pdf"
            },
            "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "value": "DK22233223"}, "name": "Portal", "country": "DK"},
            "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:9939", "value": "LV90000011588"}, "name": "Register", "country": "LV"},
            "natural_person": {"identifier": "DK/LV/010190-1234", "family_name": "Jensen", "given_name": "Ida", "date_of_birth": "1990-01-01"}
        }))
        .unwrap()
    }

    #[test]
    fn built_request_passes_the_model_in_every_version() {
        for v in ["oots-edm:v1.0", "oots-edm:v2.0"] {
            let r = build_request(&sample(Some(v))).unwrap();
            let doc = EdmDocument::Request(r.clone());
            assert_eq!(fatal(&doc), vec![], "{v}:\n{}", doc.to_xml());
            let back = EdmDocument::parse(doc.to_xml().as_bytes()).unwrap();
            let EdmDocument::Request(back) = back else {
                panic!("not a request")
            };
            assert_eq!(
                back.natural_person().unwrap().family_name.as_deref(),
                Some("Jensen")
            );
            assert_eq!(
                back.evidence_type().unwrap().identifier.as_deref(),
                Some("RegistrationCertificate-LV")
            );
        }
    }

    #[test]
    fn preview_required_and_the_empty_response_after_a_rejected_preview_pass_the_model() {
        for v in ["oots-edm:v1.0", "oots-edm:v2.0"] {
            let req = build_request(&sample(Some(v))).unwrap();
            let provider = req.evidence_provider().unwrap();
            let e = build_preview_required(
                req.id.as_deref().unwrap(),
                EdmVersion::from_identifier(v).unwrap(),
                "https://preview.example.lv/preview/abc.def",
                &provider,
                req.evidence_requesters().first(),
            );
            assert!(e.is_preview_required());
            assert_eq!(e.kind(), Some(EdmErrorKind::Authorization));
            assert_eq!(
                e.preview_location(),
                Some("https://preview.example.lv/preview/abc.def")
            );
            let doc = EdmDocument::Error(e);
            assert_eq!(fatal(&doc), vec![], "{v}:\n{}", doc.to_xml());
            // Test event TC08: the rejected preview is answered with success and an empty
            // RegistryObjectList.
            let resp = build_response(&req, &provider, &[]);
            assert!(resp.evidences().is_empty());
            let xml = EdmDocument::Response(resp).to_xml();
            assert!(!xml.contains("RegistryPackage"), "{v}:\n{xml}");
            assert!(xml.contains("RegistryObjectList"), "{v}:\n{xml}");
        }
    }

    #[test]
    fn request_needs_exactly_one_person() {
        let mut d = sample(None);
        d.natural_person = None;
        assert!(
            matches!(build_request(&d), Err(BuildError::Invalid(m)) if m.contains("exactly one"))
        );
        let mut d = sample(Some("oots-edm:v9"));
        d.edm_version = Some("oots-edm:v9".into());
        assert!(build_request(&d).is_err());
    }

    #[test]
    fn built_response_and_errors_pass_the_model() {
        for v in ["oots-edm:v1.0", "oots-edm:v2.0"] {
            let req = build_request(&sample(Some(v))).unwrap();
            let provider = req.evidence_provider().unwrap();
            let resp = build_response(
                &req,
                &provider,
                &[EvidenceData {
                    content_id: "ev1@varti".into(),
                    mime_type: "application/pdf".into(),
                    title: Some("Birth certificate".into()),
                    issuing_date: Some("2020-02-02".into()),
                }],
            );
            let doc = EdmDocument::Response(resp.clone());
            assert_eq!(fatal(&doc), vec![], "{v}:\n{}", doc.to_xml());
            let ev = resp.evidences();
            assert_eq!(ev.len(), 1);
            assert_eq!(
                ev[0].repository_item.as_ref().unwrap().href,
                "cid:ev1@varti"
            );
            assert_eq!(resp.request_id(), req.id.as_deref());
            for kind in [
                EdmErrorKind::InvalidRequest,
                EdmErrorKind::ObjectNotFound,
                EdmErrorKind::Timeout,
                EdmErrorKind::UnresolvedReference,
                EdmErrorKind::Query,
            ] {
                let requester = req.evidence_requesters().into_iter().next();
                let e = build_error(
                    req.id.as_deref().unwrap(),
                    EdmVersion::from_identifier(v).unwrap(),
                    kind,
                    "it went wrong",
                    Some("R-EDM-REQ-C002"),
                    &provider,
                    requester.as_ref(),
                );
                let doc = EdmDocument::Error(e.clone());
                let f = fatal(&doc);
                assert!(!has_fatal(&f), "{v} {kind:?}: {f:?}\n{}", doc.to_xml());
                assert_eq!(e.kind(), Some(kind));
            }
        }
    }
}
