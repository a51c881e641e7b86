//! The evidence response: `query:QueryResponse` with status Success, the evidence metadata
//! in its `rim:RegistryObjectList` and `rim:RepositoryItemRef`s to the attachments.
//!
//! [`QueryResponse`] is the shared RegRep shape; [`EvidenceResponse`] and
//! [`crate::edm::ErrorResponse`] give it EDM meaning.

use super::regrep::{
    find_slot, is_slot, other_attributes, read_object_list, set_slot, write_object_list,
    RegistryObject, RepositoryItemRef, RsException, Slot,
};
use super::sdg::{Agent, EvidenceMetadata};
use super::xml::{Attribute, Element, QName, NS_QUERY, NS_RIM, NS_RS, NS_SDG};
use super::{EdmError, EdmVersion};

/// `urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success`
pub const STATUS_SUCCESS: &str = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success";
/// `urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure`
pub const STATUS_FAILURE: &str = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure";
/// The EDM 2.0 classification scheme of evidences in a package.
pub(crate) const EDM_CLASSIFICATION_SCHEME: &str = "urn:fdc:oots:classification:edm";

/// A `query:QueryResponse` as RegRep defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryResponse {
    /// `requestId`: the id of the request answered.
    pub request_id: Option<String>,
    /// `status` (Success or Failure URN).
    pub status: Option<String>,
    /// Other attributes, kept.
    pub other_attributes: Vec<Attribute>,
    /// The slots, in order.
    pub slots: Vec<Slot>,
    /// `rs:Exception`s (an EDM error response has exactly one).
    pub exceptions: Vec<RsException>,
    /// `rim:RegistryObjectList`, when present.
    pub registry_objects: Option<Vec<RegistryObject>>,
    /// Other children, kept.
    pub other_children: Vec<Element>,
}

impl QueryResponse {
    /// Reads a response from its root element.
    pub(crate) fn from_element(root: &Element) -> Result<Self, EdmError> {
        if !root.name.is(NS_QUERY, "QueryResponse") {
            return Err(EdmError::UnexpectedRoot(root.name.to_clark()));
        }
        let mut r = QueryResponse {
            request_id: root.attr("", "requestId").map(str::to_owned),
            status: root.attr("", "status").map(str::to_owned),
            other_attributes: other_attributes(root, &["requestId", "status"]),
            slots: Vec::new(),
            exceptions: Vec::new(),
            registry_objects: None,
            other_children: Vec::new(),
        };
        for c in root.elements() {
            if is_slot(c) {
                r.slots.push(Slot::from_element(c)?);
            } else if c.name.is(NS_RS, "Exception") {
                r.exceptions.push(RsException::from_element(c)?);
            } else if c.name.is(NS_RIM, "RegistryObjectList") && r.registry_objects.is_none() {
                r.registry_objects = Some(read_object_list(c)?);
            } else {
                r.other_children.push(c.clone());
            }
        }
        Ok(r)
    }

    /// Builds the root element (slots, exceptions, object list, then anything kept).
    pub(crate) fn to_element(&self) -> Element {
        let mut root = Element::new(NS_QUERY, "QueryResponse");
        if let Some(s) = &self.status {
            root.set_attr(QName::plain("status"), s.clone());
        }
        if let Some(id) = &self.request_id {
            root.set_attr(QName::plain("requestId"), id.clone());
        }
        root.attributes
            .extend(self.other_attributes.iter().cloned());
        for s in &self.slots {
            root = root.with_child(s.to_element());
        }
        for e in &self.exceptions {
            root = root.with_child(e.to_element());
        }
        if let Some(l) = &self.registry_objects {
            root = root.with_child(write_object_list(l));
        }
        for c in &self.other_children {
            root = root.with_child(c.clone());
        }
        root
    }

    /// The slot called `name`.
    pub fn slot(&self, name: &str) -> Option<&Slot> {
        find_slot(&self.slots, name)
    }

    /// Sets a slot (replacing one of the same name).
    pub fn set_slot(&mut self, slot: Slot) {
        set_slot(&mut self.slots, slot);
    }

    pub(crate) fn simple(&self, name: &str) -> Option<&str> {
        self.slot(name)?.value.as_ref()?.as_str()
    }

    pub(crate) fn agents(&self, slot: &str) -> Vec<Agent> {
        self.slot(slot)
            .and_then(|s| s.value.as_ref())
            .map(|v| {
                v.any_elements()
                    .into_iter()
                    .filter(|e| e.name.is(NS_SDG, "Agent"))
                    .map(Agent::from_element)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A new response answering `request_id` with `status`, declaring `version`.
    pub fn new(request_id: &str, status: &str, version: EdmVersion) -> Self {
        QueryResponse {
            request_id: Some(request_id.to_owned()),
            status: Some(status.to_owned()),
            other_attributes: Vec::new(),
            slots: vec![Slot::new(
                "SpecificationIdentifier",
                super::regrep::SlotValue::String(version.identifier().to_owned()),
            )],
            exceptions: Vec::new(),
            registry_objects: None,
            other_children: Vec::new(),
        }
    }
}

/// One evidence of a response: its metadata and where its file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceItem {
    /// The `id` of its `rim:ExtrinsicObjectType` registry object.
    pub object_id: Option<String>,
    /// The `EvidenceMetadata` slot's `sdg:Evidence`, when present and readable.
    pub metadata: Option<EvidenceMetadata>,
    /// The EDM 2.0 classification node (`MainEvidence`, annex …), when classified.
    pub classification: Option<String>,
    /// The reference to the attachment.
    pub repository_item: Option<RepositoryItemRef>,
}

/// An evidence response (`query:QueryResponse`, status Success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceResponse(pub QueryResponse);

impl EvidenceResponse {
    /// The underlying RegRep response.
    pub fn inner(&self) -> &QueryResponse {
        &self.0
    }
    /// The `requestId`.
    pub fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    /// The `SpecificationIdentifier` value.
    pub fn specification_identifier(&self) -> Option<&str> {
        self.0.simple("SpecificationIdentifier")
    }
    /// The `EvidenceResponseIdentifier`.
    pub fn response_identifier(&self) -> Option<&str> {
        self.0.simple("EvidenceResponseIdentifier")
    }
    /// The `IssueDateTime` (lexical form).
    pub fn issue_date_time(&self) -> Option<&str> {
        self.0.simple("IssueDateTime")
    }
    /// The `EvidenceProvider` agents.
    pub fn evidence_providers(&self) -> Vec<Agent> {
        self.0.agents("EvidenceProvider")
    }
    /// The `EvidenceRequester` agents.
    pub fn evidence_requesters(&self) -> Vec<Agent> {
        self.0.agents("EvidenceRequester")
    }

    /// Every evidence, whether listed directly (EDM 1.x) or inside registry packages
    /// (EDM 2.0), in document order.
    pub fn evidences(&self) -> Vec<EvidenceItem> {
        let mut out = Vec::new();
        for o in self.0.registry_objects.iter().flatten() {
            collect_evidences(o, &mut out);
        }
        out
    }
}

fn collect_evidences(o: &RegistryObject, out: &mut Vec<EvidenceItem>) {
    if o.is_type("RegistryPackageType") {
        for m in o.members() {
            collect_evidences(m, out);
        }
        return;
    }
    let metadata = o
        .slot("EvidenceMetadata")
        .and_then(|s| s.value.as_ref())
        .and_then(|v| {
            v.any_elements()
                .into_iter()
                .find(|e| e.name.is(NS_SDG, "Evidence"))
                .map(EvidenceMetadata::from_element)
        });
    out.push(EvidenceItem {
        object_id: o.id.clone(),
        metadata,
        classification: o
            .classifications()
            .find(|c| c.scheme.as_deref() == Some(EDM_CLASSIFICATION_SCHEME))
            .and_then(|c| c.node.clone()),
        repository_item: o.repository_item_ref().cloned(),
    });
}
