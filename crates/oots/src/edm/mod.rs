//! The OOTS Evidence Exchange Data Model (EDM): evidence request, evidence response and
//! error response for EDM 1.x and 2.0, read from and written to XML.
//!
//! [`EdmDocument::parse`] reads any of the three (any namespace prefixes; DOCTYPE and
//! entities refused); [`EdmDocument::to_xml`] writes it back. Parsing what was written
//! gives an equal value, and nothing but layout, comments and unused namespace
//! declarations is lost from the original.

pub mod error;
pub mod regrep;
pub(crate) mod request;
pub(crate) mod response;
pub mod sdg;
pub mod xml;

pub use error::{EdmErrorKind, ErrorResponse};
pub use request::EvidenceRequest;
pub use response::{EvidenceResponse, QueryResponse, STATUS_FAILURE, STATUS_SUCCESS};

use xml::{Element, NS_QUERY, NS_RS};

/// Why a document could not be read as an EDM document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdmError {
    /// Not well-formed XML, or a namespace prefix not declared.
    #[error("not well-formed XML: {0}")]
    Xml(String),
    /// A DOCTYPE declaration (refused: entity expansion is an attack vector).
    #[error("the document has a DOCTYPE declaration; EDM documents must not have one (DTDs and entities are refused)")]
    Doctype,
    /// Not UTF-8.
    #[error("{0}")]
    Encoding(String),
    /// Over a size limit.
    #[error("the document is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Over a structural limit (depth, element count).
    #[error("the document is too complex: {0}")]
    Limit(String),
    /// The root is not `query:QueryRequest` or `query:QueryResponse`.
    #[error("the root element {0} is not an EDM document; expected {{urn:oasis:names:tc:ebxml-regrep:xsd:query:4.0}}QueryRequest or QueryResponse")]
    UnexpectedRoot(String),
    /// A RegRep construct that cannot be read (e.g. a slot without a name).
    #[error("{0}")]
    Structure(String),
}

/// An EDM version, as named by the `SpecificationIdentifier` slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdmVersion {
    /// `oots-edm:v1.0`
    V1_0,
    /// `oots-edm:v1.2`
    V1_2,
    /// `oots-edm:v2.0`
    V2_0,
}

impl EdmVersion {
    /// Every version, oldest first.
    pub const ALL: [EdmVersion; 3] = [EdmVersion::V1_0, EdmVersion::V1_2, EdmVersion::V2_0];

    /// The specification identifier, e.g. `oots-edm:v2.0`.
    pub fn identifier(self) -> &'static str {
        match self {
            EdmVersion::V1_0 => "oots-edm:v1.0",
            EdmVersion::V1_2 => "oots-edm:v1.2",
            EdmVersion::V2_0 => "oots-edm:v2.0",
        }
    }

    /// The version with this specification identifier.
    pub fn from_identifier(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.identifier() == s.trim())
    }

    /// Whether this is a 1.x version (not compatible with 2.0).
    pub fn is_v1(self) -> bool {
        self != EdmVersion::V2_0
    }
}

/// What kind of EDM document this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdmKind {
    /// `query:QueryRequest`
    Request,
    /// `query:QueryResponse` with status Success (or no exception)
    Response,
    /// `query:QueryResponse` with status Failure or an `rs:Exception`
    Error,
}

/// Any EDM document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdmDocument {
    /// An evidence request.
    Request(EvidenceRequest),
    /// An evidence response.
    Response(EvidenceResponse),
    /// An error response.
    Error(ErrorResponse),
}

impl EdmDocument {
    /// Reads an EDM document from XML bytes (UTF-8).
    pub fn parse(input: &[u8]) -> Result<Self, EdmError> {
        Self::from_element(&xml::parse(input)?)
    }

    /// Reads an EDM document from its root element.
    pub(crate) fn from_element(root: &Element) -> Result<Self, EdmError> {
        if root.name.is(NS_QUERY, "QueryRequest") {
            return Ok(EdmDocument::Request(EvidenceRequest::from_element(root)?));
        }
        let r = QueryResponse::from_element(root)?;
        // A response is an error response when it says Failure or carries an exception;
        // an inconsistent one (Failure without exception) still reads as an error so the
        // validator can report it against the error rules.
        let failed =
            r.status.as_deref() == Some(STATUS_FAILURE) || root.child(NS_RS, "Exception").is_some();
        Ok(if failed {
            EdmDocument::Error(ErrorResponse(r))
        } else {
            EdmDocument::Response(EvidenceResponse(r))
        })
    }

    /// The root element this document writes.
    pub(crate) fn to_element(&self) -> Element {
        match self {
            EdmDocument::Request(r) => r.to_element(),
            EdmDocument::Response(r) => r.0.to_element(),
            EdmDocument::Error(r) => r.0.to_element(),
        }
    }

    /// Writes the document as XML (UTF-8, with declaration).
    pub fn to_xml(&self) -> String {
        xml::write(&self.to_element())
    }

    /// Its kind.
    pub fn kind(&self) -> EdmKind {
        match self {
            EdmDocument::Request(_) => EdmKind::Request,
            EdmDocument::Response(_) => EdmKind::Response,
            EdmDocument::Error(_) => EdmKind::Error,
        }
    }

    /// The `SpecificationIdentifier` value as written.
    pub fn specification_identifier(&self) -> Option<&str> {
        match self {
            EdmDocument::Request(r) => r.specification_identifier(),
            EdmDocument::Response(r) => r.specification_identifier(),
            EdmDocument::Error(r) => r.specification_identifier(),
        }
    }

    /// The EDM version the document declares, when it declares a known one.
    pub(crate) fn declared_version(&self) -> Option<EdmVersion> {
        self.specification_identifier()
            .and_then(EdmVersion::from_identifier)
    }

    /// The EDM version: the declared one, else inferred from 2.0-only features (the
    /// `sr.oots.tech.ec.europa.eu` Semantic Repository host or severity, registry
    /// packages) or 1.0-only ones (`sr.oots.tech.europa.eu`). None when nothing tells.
    pub fn version(&self) -> Option<EdmVersion> {
        if let Some(v) = self.declared_version() {
            return Some(v);
        }
        let written = self.to_xml();
        if written.contains("sr.oots.tech.ec.europa.eu") || written.contains("RegistryPackageType")
        {
            Some(EdmVersion::V2_0)
        } else if written.contains("sr.oots.tech.europa.eu") {
            Some(EdmVersion::V1_0)
        } else {
            None
        }
    }
}
