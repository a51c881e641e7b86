//! The common services' answers, read into typed values.
//!
//! Both services answer with a RegRep `query:QueryResponse`: on success a
//! `rim:RegistryObjectList` whose objects each carry one any-value slot (`Requirement` for
//! the Evidence Broker, `DataServiceEvidenceType` for the Data Service Directory), on
//! failure one `rs:Exception` ([`CsException`]). The document is read with the EDM
//! crate's bounded XML reader (no DTD, no entities, size and depth limits) and its RegRep
//! reader; this module only gives the SDG elements their meaning.

use crate::edm::regrep::{RsException, SlotValue};
use crate::edm::response::{QueryResponse, STATUS_FAILURE};
use crate::edm::sdg::{lang_texts, text_of, Identifier, LangText};
use crate::edm::xml::{self, Element, NS_SDG};
use crate::edm::EdmError;

/// Why an answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not a readable `query:QueryResponse` (not XML, a DOCTYPE, over a limit, another
    /// root).
    #[error("the common-services answer is not a readable RegRep QueryResponse: {0}")]
    Document(#[from] EdmError),
    /// The service answered with an exception.
    #[error("{0}")]
    Exception(Box<CsException>),
    /// A QueryResponse, but not in the shape the query interface specifies.
    #[error("the common-services answer is malformed: {0}")]
    Malformed(String),
}

/// An `rs:Exception` from the Evidence Broker or the Data Service Directory (codes
/// `EB:ERR:000n` and `DSD:ERR:000n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsException {
    /// The `xsi:type` local name, e.g. `ObjectNotFoundExceptionType`.
    pub exception_type: Option<String>,
    /// `code`, e.g. `DSD:ERR:0005`.
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `detail`.
    pub detail: Option<String>,
    /// `severity`.
    pub severity: Option<String>,
    /// For `DSD:ERR:0005` (additional user input required): what to ask the user.
    pub additional_input: Option<AdditionalInput>,
}

impl std::fmt::Display for CsException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the common service answered with an exception: {} {}",
            self.code.as_deref().unwrap_or("(no code)"),
            self.exception_type.as_deref().unwrap_or("(no type)")
        )?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl CsException {
    /// Whether this is the "nothing found" answer (`EB:ERR:0001` empty requirement list,
    /// `DSD:ERR:0001` no data service): an ordinary, empty result rather than a failure.
    pub fn is_empty_result(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some("EB:ERR:0001") | Some("DSD:ERR:0001")
        )
    }

    /// Whether the DSD asks for additional user input (`DSD:ERR:0005`); the query is to be
    /// repeated with the answers (see [`AdditionalInput`]).
    pub fn needs_user_input(&self) -> bool {
        self.code.as_deref() == Some("DSD:ERR:0005")
    }

    fn from_rs(e: &RsException) -> CsException {
        let any = |name: &str| -> Vec<&Element> {
            e.slot(name)
                .and_then(|s| s.value.as_ref())
                .map(SlotValue::any_elements)
                .unwrap_or_default()
        };
        let evidence_type = any("DataServiceEvidenceType")
            .into_iter()
            .find(|el| el.name.is(NS_SDG, "DataServiceEvidenceType"))
            .and_then(|el| DataServiceEvidenceType::from_element(el, None).ok());
        let jurisdiction = any("JurisdictionDetermination")
            .into_iter()
            .find(|el| {
                el.name
                    .is(NS_SDG, "EvidenceProviderJurisdictionDetermination")
            })
            .map(JurisdictionDetermination::from_element);
        let classifications: Vec<ClassificationConcept> =
            any("UserRequestedClassificationConcepts")
                .into_iter()
                .filter(|el| el.name.is(NS_SDG, "EvidenceProviderClassification"))
                .map(ClassificationConcept::from_element)
                .collect();
        let additional_input =
            (evidence_type.is_some() || jurisdiction.is_some() || !classifications.is_empty())
                .then_some(AdditionalInput {
                    evidence_type,
                    jurisdiction,
                    classifications,
                });
        CsException {
            exception_type: e.exception_type.as_ref().map(|t| t.local.clone()),
            code: e.code.clone(),
            message: e.message.clone(),
            detail: e.detail.clone(),
            severity: e.severity.clone(),
            additional_input,
        }
    }
}

/// What a `DSD:ERR:0005` answer asks the user for before the query is repeated with
/// `evidence-type-id`, `jurisdiction-context-id`, `jurisdiction-admin-l2`/`-l3` and one
/// parameter per classification concept identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdditionalInput {
    /// The data service evidence type concerned (its identifier is the
    /// `evidence-type-id` of the second query).
    pub evidence_type: Option<DataServiceEvidenceType>,
    /// Where the user's jurisdiction must be given (e.g. place of birth, as a LAU code).
    pub jurisdiction: Option<JurisdictionDetermination>,
    /// Classifications the user must choose a value for.
    pub classifications: Vec<ClassificationConcept>,
}

/// A successful answer: the service's specification identifier and the items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    /// The `SpecificationIdentifier` slot, e.g. `oots-cs:v2.0` (absent in EDM 1.0
    /// samples).
    pub specification: Option<String>,
    /// The items, in document order.
    pub items: Vec<T>,
}

/// `sdg:Jurisdiction` (or a publisher's or evidence type's jurisdiction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jurisdiction {
    /// `sdg:AdminUnitLevel1`: the country code.
    pub country: Option<String>,
    /// `sdg:AdminUnitLevel2`: a NUTS code.
    pub level2: Option<String>,
    /// `sdg:AdminUnitLevel3`: a LAU code.
    pub level3: Option<String>,
    /// `sdg:AdditionalJurisdictionClassification`s: (`listID`, value).
    pub additional: Vec<(Option<String>, String)>,
}

impl Jurisdiction {
    fn from_element(el: &Element) -> Jurisdiction {
        Jurisdiction {
            country: text_of(el, "AdminUnitLevel1"),
            level2: text_of(el, "AdminUnitLevel2"),
            level3: text_of(el, "AdminUnitLevel3"),
            additional: el
                .children_named(NS_SDG, "AdditionalJurisdictionClassification")
                .map(|a| {
                    (
                        a.attr("", "listID").map(str::to_owned),
                        a.text().trim().to_owned(),
                    )
                })
                .collect(),
        }
    }
}

/// `sdg:ReferenceFramework`: a procedure as a country implements it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceFramework {
    /// `sdg:Identifier`.
    pub identifier: Option<String>,
    /// `sdg:Title`s.
    pub titles: Vec<LangText>,
    /// `sdg:Description`s.
    pub descriptions: Vec<LangText>,
    /// `sdg:RelatedTo/sdg:Identifier`: the SDGR procedure codes (e.g. `R1`, `T2`).
    pub related_to: Vec<String>,
    /// `sdg:Jurisdiction`s.
    pub jurisdictions: Vec<Jurisdiction>,
}

/// `sdg:EvidenceType` in an Evidence Broker answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceType {
    /// `sdg:EvidenceTypeClassification`: the Semantic Repository URL to ask the DSD about.
    pub classification: String,
    /// `sdg:Title`s.
    pub titles: Vec<LangText>,
    /// `sdg:Description`s.
    pub descriptions: Vec<LangText>,
    /// `sdg:Jurisdiction` of the evidence type itself (EDM 1.0 places it here).
    pub jurisdiction: Option<Jurisdiction>,
}

/// `sdg:EvidenceTypeList`: evidence types that together prove a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceTypeList {
    /// `sdg:Identifier`.
    pub identifier: Option<String>,
    /// `sdg:Name`s.
    pub names: Vec<LangText>,
    /// The `sdg:EvidenceType`s.
    pub evidence_types: Vec<EvidenceType>,
    /// `sdg:Jurisdiction` of the list (where the common services of TDD 2.0 place it).
    pub jurisdiction: Option<Jurisdiction>,
}

/// `sdg:Requirement` from the Evidence Broker, with the evidence-type lists in an
/// evidence-types answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The registry object's `id`.
    pub object_id: Option<String>,
    /// `sdg:Identifier`: the Semantic Repository URL (the `requirement-id` of the
    /// evidence-types query).
    pub identifier: String,
    /// `sdg:Name`s.
    pub names: Vec<LangText>,
    /// `sdg:Description`s.
    pub descriptions: Vec<LangText>,
    /// `sdg:ReferenceFramework`s.
    pub reference_frameworks: Vec<ReferenceFramework>,
    /// `sdg:EvidenceTypeList`s (evidence-types answers only).
    pub evidence_type_lists: Vec<EvidenceTypeList>,
}

impl Requirement {
    fn from_element(el: &Element, object_id: Option<String>) -> Result<Requirement, String> {
        let identifier = text_of(el, "Identifier")
            .filter(|s| !s.is_empty())
            .ok_or("an sdg:Requirement has no sdg:Identifier")?;
        let reference_frameworks = el
            .children_named(NS_SDG, "ReferenceFramework")
            .map(|rf| ReferenceFramework {
                identifier: text_of(rf, "Identifier"),
                titles: lang_texts(rf, "Title"),
                descriptions: lang_texts(rf, "Description"),
                related_to: rf
                    .children_named(NS_SDG, "RelatedTo")
                    .filter_map(|r| text_of(r, "Identifier"))
                    .collect(),
                jurisdictions: rf
                    .children_named(NS_SDG, "Jurisdiction")
                    .map(Jurisdiction::from_element)
                    .collect(),
            })
            .collect();
        let mut evidence_type_lists = Vec::new();
        for l in el.children_named(NS_SDG, "EvidenceTypeList") {
            let mut evidence_types = Vec::new();
            for t in l.children_named(NS_SDG, "EvidenceType") {
                evidence_types.push(EvidenceType {
                    classification: text_of(t, "EvidenceTypeClassification")
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            format!(
                                "an sdg:EvidenceType of requirement {identifier} has no sdg:EvidenceTypeClassification"
                            )
                        })?,
                    titles: lang_texts(t, "Title"),
                    descriptions: lang_texts(t, "Description"),
                    jurisdiction: t
                        .child(NS_SDG, "Jurisdiction")
                        .map(Jurisdiction::from_element),
                });
            }
            evidence_type_lists.push(EvidenceTypeList {
                identifier: text_of(l, "Identifier"),
                names: lang_texts(l, "Name"),
                evidence_types,
                jurisdiction: l
                    .child(NS_SDG, "Jurisdiction")
                    .map(Jurisdiction::from_element),
            });
        }
        Ok(Requirement {
            object_id,
            identifier,
            names: lang_texts(el, "Name"),
            descriptions: lang_texts(el, "Description"),
            reference_frameworks,
            evidence_type_lists,
        })
    }

    /// Every evidence type of every list, with the country it is for (the type's own
    /// jurisdiction, else its list's).
    pub fn evidence_types(&self) -> impl Iterator<Item = (&EvidenceType, Option<&str>)> {
        self.evidence_type_lists.iter().flat_map(|l| {
            l.evidence_types.iter().map(move |t| {
                let country = t
                    .jurisdiction
                    .as_ref()
                    .or(l.jurisdiction.as_ref())
                    .and_then(|j| j.country.as_deref());
                (t, country)
            })
        })
    }
}

/// `sdg:DistributedAs`: a form the evidence can be delivered in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// `sdg:Format`: a MIME type.
    pub format: String,
    /// `sdg:ConformsTo`: the data model (Semantic Repository URL).
    pub conforms_to: Option<String>,
    /// `sdg:Transformation`: a subset or transformation of that model.
    pub transformation: Option<String>,
    /// `sdg:Language`s.
    pub languages: Vec<String>,
}

/// `sdg:ClassificationConcept` / `sdg:EvidenceProviderClassification`: a quality that
/// selects among providers (e.g. "has the applicant resided in the country").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassificationConcept {
    /// `sdg:Identifier`: also the name of the query parameter carrying the user's value.
    pub identifier: String,
    /// `sdg:Type`, e.g. `Codelist`.
    pub concept_type: Option<String>,
    /// `sdg:ValueExpression`: the code list URL.
    pub value_expression: Option<String>,
    /// `sdg:Description`s.
    pub descriptions: Vec<LangText>,
    /// `sdg:SupportedValue/*`: the values this publisher supports.
    pub supported_values: Vec<String>,
}

impl ClassificationConcept {
    fn from_element(el: &Element) -> ClassificationConcept {
        ClassificationConcept {
            identifier: text_of(el, "Identifier").unwrap_or_default(),
            concept_type: text_of(el, "Type"),
            value_expression: text_of(el, "ValueExpression"),
            descriptions: lang_texts(el, "Description"),
            supported_values: el
                .child(NS_SDG, "SupportedValue")
                .map(|s| s.elements().map(|v| v.text().trim().to_owned()).collect())
                .unwrap_or_default(),
        }
    }
}

/// `sdg:EvidenceProviderJurisdictionDetermination`: which user attribute selects the
/// provider, and at which jurisdiction level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JurisdictionDetermination {
    /// `sdg:JurisdictionContextId`: the `jurisdiction-context-id` to send back.
    pub context_id: String,
    /// `sdg:JurisdictionContext`s, e.g. "Place Of Birth".
    pub contexts: Vec<LangText>,
    /// `sdg:JurisdictionLevel`, e.g. `LAU` or `NUTS2`.
    pub level: Option<String>,
}

impl JurisdictionDetermination {
    fn from_element(el: &Element) -> JurisdictionDetermination {
        JurisdictionDetermination {
            context_id: text_of(el, "JurisdictionContextId").unwrap_or_default(),
            contexts: lang_texts(el, "JurisdictionContext"),
            level: text_of(el, "JurisdictionLevel"),
        }
    }
}

/// `sdg:Publisher`: the evidence provider (corner 4, the AS4 `finalRecipient`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// `sdg:Identifier` with its `schemeID` (an EAS code or an ebCore party-id type).
    pub identifier: Identifier,
    /// `sdg:Name`s.
    pub names: Vec<LangText>,
    /// `sdg:Address/sdg:AdminUnitLevel1`.
    pub country: Option<String>,
    /// `sdg:Jurisdiction`.
    pub jurisdiction: Option<Jurisdiction>,
    /// `sdg:ClassificationConcept`s: the values it supports.
    pub classification_concepts: Vec<ClassificationConcept>,
}

/// `sdg:AccessService`: the data service of one provider, reached through an access point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessService {
    /// `sdg:Identifier` with its `schemeID`: the AS4 party id of the access point
    /// serving the provider (corner 3).
    pub identifier: Identifier,
    /// `sdg:Name`s (TDD 2.0).
    pub names: Vec<LangText>,
    /// `sdg:ConformsTo`: the EDM versions it speaks (e.g. `oots-edm:v2.0`).
    pub conforms_to: Vec<String>,
    /// `sdg:Publisher`: the evidence provider.
    pub publisher: Publisher,
}

/// `sdg:DataServiceEvidenceType` from the Data Service Directory: an evidence type as a
/// country's providers deliver it, with their access services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataServiceEvidenceType {
    /// The registry object's `id`.
    pub object_id: Option<String>,
    /// `sdg:Identifier`: what the evidence request's `DataServiceEvidenceType` carries.
    pub identifier: String,
    /// `sdg:EvidenceTypeClassification`.
    pub classification: String,
    /// `sdg:Title`s.
    pub titles: Vec<LangText>,
    /// `sdg:Description`s.
    pub descriptions: Vec<LangText>,
    /// `sdg:DistributedAs`.
    pub distributions: Vec<Distribution>,
    /// `sdg:AccessService`s, one per provider.
    pub access_services: Vec<AccessService>,
    /// `sdg:AuthenticationLevelOfAssurance` required of the user.
    pub level_of_assurance: Option<String>,
    /// `sdg:EvidenceProviderJurisdictionDetermination`.
    pub jurisdiction_determination: Option<JurisdictionDetermination>,
    /// `sdg:EvidenceProviderClassification`s.
    pub provider_classifications: Vec<ClassificationConcept>,
}

/// A flat view of one data service: where to send the evidence request for one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataService<'a> {
    /// The evidence type (its `identifier` goes into the request).
    pub evidence_type: &'a DataServiceEvidenceType,
    /// The access point's party id (AS4 `To` party, corner 3).
    pub access_point: &'a Identifier,
    /// The evidence provider's id (`finalRecipient`, the request's EvidenceProvider).
    pub provider: &'a Identifier,
    /// The provider's first name.
    pub provider_name: Option<&'a str>,
    /// The EDM versions the access service speaks.
    pub edm_versions: &'a [String],
}

impl DataServiceEvidenceType {
    fn from_element(el: &Element, object_id: Option<String>) -> Result<Self, String> {
        let identifier = text_of(el, "Identifier")
            .filter(|s| !s.is_empty())
            .ok_or("an sdg:DataServiceEvidenceType has no sdg:Identifier")?;
        let classification = text_of(el, "EvidenceTypeClassification")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                format!("the sdg:DataServiceEvidenceType {identifier} has no sdg:EvidenceTypeClassification")
            })?;
        let mut access_services = Vec::new();
        for a in el.children_named(NS_SDG, "AccessService") {
            let id = a.child(NS_SDG, "Identifier").map(Identifier::read);
            let publisher = a.child(NS_SDG, "Publisher");
            let (Some(id), Some(p)) = (id, publisher) else {
                return Err(format!(
                    "an sdg:AccessService of evidence type {identifier} lacks its sdg:Identifier or sdg:Publisher"
                ));
            };
            let pid = p
                .child(NS_SDG, "Identifier")
                .map(Identifier::read)
                .ok_or_else(|| {
                    format!(
                        "the sdg:Publisher of access service {} has no sdg:Identifier",
                        id.value
                    )
                })?;
            access_services.push(AccessService {
                identifier: id,
                names: lang_texts(a, "Name"),
                conforms_to: a
                    .children_named(NS_SDG, "ConformsTo")
                    .map(|c| c.text().trim().to_owned())
                    .collect(),
                publisher: Publisher {
                    identifier: pid,
                    names: lang_texts(p, "Name"),
                    country: p
                        .child(NS_SDG, "Address")
                        .and_then(|ad| text_of(ad, "AdminUnitLevel1")),
                    jurisdiction: p
                        .child(NS_SDG, "Jurisdiction")
                        .map(Jurisdiction::from_element),
                    classification_concepts: p
                        .children_named(NS_SDG, "ClassificationConcept")
                        .map(ClassificationConcept::from_element)
                        .collect(),
                },
            });
        }
        Ok(DataServiceEvidenceType {
            object_id,
            identifier,
            classification,
            titles: lang_texts(el, "Title"),
            descriptions: lang_texts(el, "Description"),
            distributions: el
                .children_named(NS_SDG, "DistributedAs")
                .map(|d| Distribution {
                    format: text_of(d, "Format").unwrap_or_default(),
                    conforms_to: text_of(d, "ConformsTo"),
                    transformation: text_of(d, "Transformation"),
                    languages: d
                        .children_named(NS_SDG, "Language")
                        .map(|l| l.text().trim().to_owned())
                        .collect(),
                })
                .collect(),
            access_services,
            level_of_assurance: text_of(el, "AuthenticationLevelOfAssurance"),
            jurisdiction_determination: el
                .child(NS_SDG, "EvidenceProviderJurisdictionDetermination")
                .map(JurisdictionDetermination::from_element),
            provider_classifications: el
                .children_named(NS_SDG, "EvidenceProviderClassification")
                .map(ClassificationConcept::from_element)
                .collect(),
        })
    }

    /// One entry per access service: where a request for this evidence type goes.
    pub fn data_services(&self) -> impl Iterator<Item = DataService<'_>> {
        self.access_services.iter().map(move |a| DataService {
            evidence_type: self,
            access_point: &a.identifier,
            provider: &a.publisher.identifier,
            provider_name: a.publisher.names.first().map(|n| n.text.trim()),
            edm_versions: &a.conforms_to,
        })
    }
}

/// Reads the response and fails with its exception, if any.
fn read_response(bytes: &[u8]) -> Result<QueryResponse, AnswerError> {
    let root = xml::parse(bytes)?;
    let r = QueryResponse::from_element(&root)?;
    if let Some(e) = r.exceptions.first() {
        return Err(AnswerError::Exception(Box::new(CsException::from_rs(e))));
    }
    if r.status.as_deref() == Some(STATUS_FAILURE) {
        return Err(AnswerError::Malformed(
            "the status is Failure but the answer carries no rs:Exception".into(),
        ));
    }
    Ok(r)
}

/// The `sdg:<local>` elements of each registry object's `slot`, with the object's id.
fn items<'a>(
    r: &'a QueryResponse,
    slot: &str,
    local: &str,
) -> Result<Vec<(&'a Element, Option<String>)>, AnswerError> {
    let mut out = Vec::new();
    for o in r.registry_objects.iter().flatten() {
        let found: Vec<&Element> = o
            .slot(slot)
            .and_then(|s| s.value.as_ref())
            .map(SlotValue::any_elements)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.name.is(NS_SDG, local))
            .collect();
        if found.is_empty() {
            return Err(AnswerError::Malformed(format!(
                "registry object {} has no {slot} slot holding an sdg:{local}",
                o.id.as_deref().unwrap_or("(without id)")
            )));
        }
        out.extend(found.into_iter().map(|e| (e, o.id.clone())));
    }
    Ok(out)
}

fn specification(r: &QueryResponse) -> Option<String> {
    r.slot("SpecificationIdentifier")
        .and_then(|s| s.value.as_ref())
        .and_then(SlotValue::as_str)
        .map(|s| s.trim().to_owned())
}

/// Reads an Evidence Broker answer (to the requirements or the evidence-types query).
pub fn parse_requirements(bytes: &[u8]) -> Result<Answer<Requirement>, AnswerError> {
    let r = read_response(bytes)?;
    let items = items(&r, "Requirement", "Requirement")?
        .into_iter()
        .map(|(el, id)| Requirement::from_element(el, id).map_err(AnswerError::Malformed))
        .collect::<Result<_, _>>()?;
    Ok(Answer {
        specification: specification(&r),
        items,
    })
}

/// Reads a Data Service Directory answer.
pub fn parse_data_services(bytes: &[u8]) -> Result<Answer<DataServiceEvidenceType>, AnswerError> {
    let r = read_response(bytes)?;
    let items = items(&r, "DataServiceEvidenceType", "DataServiceEvidenceType")?
        .into_iter()
        .map(|(el, id)| {
            DataServiceEvidenceType::from_element(el, id).map_err(AnswerError::Malformed)
        })
        .collect::<Result<_, _>>()?;
    Ok(Answer {
        specification: specification(&r),
        items,
    })
}
