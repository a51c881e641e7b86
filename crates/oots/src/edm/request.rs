//! The evidence request: `query:QueryRequest` with the SDG profile's slots.

use super::regrep::{find_slot, is_slot, other_attributes, set_slot, Slot, SlotValue};
use super::sdg::{Agent, EvidenceType, LegalPerson, Person, Requirement};
use super::xml::{Attribute, Element, QName, NS_QUERY, NS_SDG, NS_XML};
use super::{EdmError, EdmVersion};

/// Fixed `returnType` of an evidence request.
pub(crate) const RETURN_TYPE: &str = "LeafClassWithRepositoryItem";
/// Fixed `queryDefinition` of an evidence request.
pub(crate) const QUERY_DEFINITION: &str = "DocumentQuery";

/// `query:Query`: the query definition and its parameter slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `queryDefinition` (`DocumentQuery`).
    pub query_definition: Option<String>,
    /// Other attributes, kept.
    pub other_attributes: Vec<Attribute>,
    /// Its slots: NaturalPerson / LegalPerson / AuthorizedRepresentative, EvidenceRequest.
    pub slots: Vec<Slot>,
    /// Other children, kept.
    pub other_children: Vec<Element>,
}

/// An evidence request (`query:QueryRequest`), with typed accessors for the EDM slots.
/// Unknown slots and attributes are kept, so nothing is lost when it is written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRequest {
    /// The request `id` (`urn:uuid:…`).
    pub id: Option<String>,
    /// `xml:lang`, the preferred language of the evidence.
    pub lang: Option<String>,
    /// Other attributes of the root, kept.
    pub other_attributes: Vec<Attribute>,
    /// The top-level slots, in order.
    pub slots: Vec<Slot>,
    /// The attributes of `query:ResponseOption`, when present.
    pub response_option: Option<Vec<Attribute>>,
    /// The `query:Query`, when present.
    pub query: Option<Query>,
    /// Other children of the root, kept.
    pub other_children: Vec<Element>,
}

impl EvidenceRequest {
    /// A new, empty request for `version` with the fixed response option and query
    /// definition; add slots with [`EvidenceRequest::set_slot`] and
    /// `EvidenceRequest::set_query_slot`.
    pub fn new(id: &str, version: EdmVersion) -> Self {
        EvidenceRequest {
            id: Some(id.to_owned()),
            lang: None,
            other_attributes: Vec::new(),
            slots: vec![Slot::new(
                "SpecificationIdentifier",
                SlotValue::String(version.identifier().to_owned()),
            )],
            response_option: Some(vec![Attribute {
                name: QName::plain("returnType"),
                value: RETURN_TYPE.to_owned(),
            }]),
            query: Some(Query {
                query_definition: Some(QUERY_DEFINITION.to_owned()),
                other_attributes: Vec::new(),
                slots: Vec::new(),
                other_children: Vec::new(),
            }),
            other_children: Vec::new(),
        }
    }

    /// Reads a request from its root element.
    pub(crate) fn from_element(root: &Element) -> Result<Self, EdmError> {
        if !root.name.is(NS_QUERY, "QueryRequest") {
            return Err(EdmError::UnexpectedRoot(root.name.to_clark()));
        }
        let mut req = EvidenceRequest {
            id: root.attr("", "id").map(str::to_owned),
            lang: root.attr(NS_XML, "lang").map(str::to_owned),
            other_attributes: other_attributes(root, &["id", "xml:lang"]),
            slots: Vec::new(),
            response_option: None,
            query: None,
            other_children: Vec::new(),
        };
        for c in root.elements() {
            if is_slot(c) {
                req.slots.push(Slot::from_element(c)?);
            } else if c.name.is(NS_QUERY, "ResponseOption") && req.response_option.is_none() {
                req.response_option = Some(c.attributes.clone());
                req.other_children.extend(c.elements().cloned());
            } else if c.name.is(NS_QUERY, "Query") && req.query.is_none() {
                let mut q = Query {
                    query_definition: c.attr("", "queryDefinition").map(str::to_owned),
                    other_attributes: other_attributes(c, &["queryDefinition"]),
                    slots: Vec::new(),
                    other_children: Vec::new(),
                };
                for qc in c.elements() {
                    if is_slot(qc) {
                        q.slots.push(Slot::from_element(qc)?);
                    } else {
                        q.other_children.push(qc.clone());
                    }
                }
                req.query = Some(q);
            } else {
                req.other_children.push(c.clone());
            }
        }
        Ok(req)
    }

    /// Builds the root element (slots, ResponseOption, Query, then anything kept).
    pub(crate) fn to_element(&self) -> Element {
        let mut root = Element::new(NS_QUERY, "QueryRequest");
        if let Some(l) = &self.lang {
            root.set_attr(QName::new(NS_XML, "lang"), l.clone());
        }
        if let Some(id) = &self.id {
            root.set_attr(QName::plain("id"), id.clone());
        }
        root.attributes
            .extend(self.other_attributes.iter().cloned());
        for s in &self.slots {
            root = root.with_child(s.to_element());
        }
        if let Some(attrs) = &self.response_option {
            let mut ro = Element::new(NS_QUERY, "ResponseOption");
            ro.attributes = attrs.clone();
            root = root.with_child(ro);
        }
        if let Some(q) = &self.query {
            let mut qe = Element::new(NS_QUERY, "Query");
            if let Some(d) = &q.query_definition {
                qe.set_attr(QName::plain("queryDefinition"), d.clone());
            }
            qe.attributes.extend(q.other_attributes.iter().cloned());
            for s in &q.slots {
                qe = qe.with_child(s.to_element());
            }
            for c in &q.other_children {
                qe = qe.with_child(c.clone());
            }
            root = root.with_child(qe);
        }
        for c in &self.other_children {
            root = root.with_child(c.clone());
        }
        root
    }

    /// The top-level slot called `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        find_slot(&self.slots, name)
    }

    /// The slot of `query:Query` called `name`.
    pub(crate) fn query_slot(&self, name: &str) -> Option<&Slot> {
        self.query.as_ref().and_then(|q| find_slot(&q.slots, name))
    }

    /// Sets a top-level slot (replacing one of the same name).
    pub fn set_slot(&mut self, slot: Slot) {
        set_slot(&mut self.slots, slot);
    }

    /// Sets a slot of `query:Query` (creating the query when missing).
    pub(crate) fn set_query_slot(&mut self, slot: Slot) {
        let q = self.query.get_or_insert_with(|| Query {
            query_definition: Some(QUERY_DEFINITION.to_owned()),
            other_attributes: Vec::new(),
            slots: Vec::new(),
            other_children: Vec::new(),
        });
        set_slot(&mut q.slots, slot);
    }

    fn simple(&self, name: &str) -> Option<&str> {
        self.slot(name)?.value.as_ref()?.as_str()
    }

    /// The `SpecificationIdentifier` value, e.g. `oots-edm:v2.0`.
    pub fn specification_identifier(&self) -> Option<&str> {
        self.simple("SpecificationIdentifier")
    }

    /// The `IssueDateTime` value (lexical form).
    pub fn issue_date_time(&self) -> Option<&str> {
        self.simple("IssueDateTime")
    }

    /// The `Procedure` code: a plain string (EDM 2.0) or the first localized string
    /// (EDM 1.x).
    pub fn procedure(&self) -> Option<&str> {
        match self.slot("Procedure")?.value.as_ref()? {
            SlotValue::InternationalString(ls) => ls.first().map(|l| l.value.as_str()),
            v => v.as_str(),
        }
    }

    /// `PossibilityForPreview` as a boolean.
    pub fn possibility_for_preview(&self) -> Option<bool> {
        self.slot("PossibilityForPreview")?
            .value
            .as_ref()?
            .as_bool()
    }

    /// `ExplicitRequestGiven` as a boolean.
    pub fn explicit_request_given(&self) -> Option<bool> {
        self.slot("ExplicitRequestGiven")?.value.as_ref()?.as_bool()
    }

    /// The `PreviewLocation` (second request after a preview).
    pub fn preview_location(&self) -> Option<&str> {
        self.simple("PreviewLocation")
    }

    /// The `ReturnLocation` (EDM 2.0).
    pub fn return_location(&self) -> Option<&str> {
        self.simple("ReturnLocation")
    }

    fn sdg_elements(slot: Option<&Slot>, local: &str) -> Vec<Element> {
        slot.and_then(|s| s.value.as_ref())
            .map(|v| {
                v.any_elements()
                    .into_iter()
                    .filter(|e| e.name.is(NS_SDG, local))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `Requirements`.
    pub fn requirements(&self) -> Vec<Requirement> {
        Self::sdg_elements(self.slot("Requirements"), "Requirement")
            .iter()
            .map(Requirement::from_element)
            .collect()
    }

    /// The `EvidenceRequester` agents (ER, and IP when an intermediary acts).
    pub fn evidence_requesters(&self) -> Vec<Agent> {
        Self::sdg_elements(self.slot("EvidenceRequester"), "Agent")
            .iter()
            .map(Agent::from_element)
            .collect()
    }

    /// The `EvidenceProvider` agent.
    pub fn evidence_provider(&self) -> Option<Agent> {
        Self::sdg_elements(self.slot("EvidenceProvider"), "Agent")
            .first()
            .map(Agent::from_element)
    }

    /// The `NaturalPerson` the evidence is about.
    pub fn natural_person(&self) -> Option<Person> {
        Self::sdg_elements(self.query_slot("NaturalPerson"), "Person")
            .first()
            .map(Person::from_element)
    }

    /// The `LegalPerson` the evidence is about.
    pub fn legal_person(&self) -> Option<LegalPerson> {
        Self::sdg_elements(self.query_slot("LegalPerson"), "LegalPerson")
            .first()
            .map(LegalPerson::from_element)
    }

    /// The `AuthorizedRepresentative`, when one acts.
    pub(crate) fn authorized_representative(&self) -> Option<Person> {
        Self::sdg_elements(self.query_slot("AuthorizedRepresentative"), "Person")
            .first()
            .map(Person::from_element)
    }

    /// The `EvidenceRequest`: which evidence type is asked for.
    pub fn evidence_type(&self) -> Option<EvidenceType> {
        Self::sdg_elements(
            self.query_slot("EvidenceRequest"),
            "DataServiceEvidenceType",
        )
        .first()
        .map(EvidenceType::from_element)
    }
}
