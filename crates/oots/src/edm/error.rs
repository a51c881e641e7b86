//! The EDM error response: a `query:QueryResponse` with status Failure carrying one
//! `rs:Exception` (code list `EDMErrorCodes`).

use super::regrep::{RsException, Slot, SlotValue};
use super::response::{QueryResponse, STATUS_FAILURE};
use super::sdg::Agent;
use super::xml::{QName, NS_QUERY, NS_RS};
use super::EdmVersion;

/// Severity of a plain error.
pub const SEVERITY_ERROR: &str = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error";
/// Severity of the preview-required error (EDM 2.0 spelling).
pub(crate) const SEVERITY_PREVIEW_REQUIRED: &str =
    "urn:sr.oots.tech.ec.europa.eu:codes:ErrorSeverity:EDMErrorResponse:PreviewRequired";
/// Severity of the preview-required error as the EDM 1.0 artefacts spell it.
pub(crate) const SEVERITY_PREVIEW_REQUIRED_V1: &str =
    "urn:sr.oots.tech.europa.eu:codes:ErrorSeverity:EDMErrorResponse:PreviewRequired";

/// The kinds of EDM error, each with its code and `rs:Exception` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdmErrorKind {
    /// EDM:ERR:0001, rs:AuthenticationExceptionType
    Authentication,
    /// EDM:ERR:0002, rs:AuthorizationExceptionType (preview required)
    Authorization,
    /// EDM:ERR:0003, rs:InvalidRequestExceptionType (also every rule violation)
    InvalidRequest,
    /// EDM:ERR:0004, rs:ObjectNotFoundExceptionType
    ObjectNotFound,
    /// EDM:ERR:0005, rs:TimeoutExceptionType
    Timeout,
    /// EDM:ERR:0006, rs:UnresolvedReferenceExceptionType
    UnresolvedReference,
    /// EDM:ERR:0007, rs:UnsupportedCapabilityExceptionType
    UnsupportedCapability,
    /// EDM:ERR:0008, query:QueryExceptionType
    Query,
}

impl EdmErrorKind {
    /// Every kind, in code order.
    pub const ALL: [EdmErrorKind; 8] = [
        EdmErrorKind::Authentication,
        EdmErrorKind::Authorization,
        EdmErrorKind::InvalidRequest,
        EdmErrorKind::ObjectNotFound,
        EdmErrorKind::Timeout,
        EdmErrorKind::UnresolvedReference,
        EdmErrorKind::UnsupportedCapability,
        EdmErrorKind::Query,
    ];

    /// The `code` attribute, e.g. `EDM:ERR:0004`.
    pub fn code(self) -> &'static str {
        match self {
            EdmErrorKind::Authentication => "EDM:ERR:0001",
            EdmErrorKind::Authorization => "EDM:ERR:0002",
            EdmErrorKind::InvalidRequest => "EDM:ERR:0003",
            EdmErrorKind::ObjectNotFound => "EDM:ERR:0004",
            EdmErrorKind::Timeout => "EDM:ERR:0005",
            EdmErrorKind::UnresolvedReference => "EDM:ERR:0006",
            EdmErrorKind::UnsupportedCapability => "EDM:ERR:0007",
            EdmErrorKind::Query => "EDM:ERR:0008",
        }
    }

    /// The `xsi:type` of the `rs:Exception`.
    pub fn exception_type(self) -> QName {
        let (ns, local) = match self {
            EdmErrorKind::Authentication => (NS_RS, "AuthenticationExceptionType"),
            EdmErrorKind::Authorization => (NS_RS, "AuthorizationExceptionType"),
            EdmErrorKind::InvalidRequest => (NS_RS, "InvalidRequestExceptionType"),
            EdmErrorKind::ObjectNotFound => (NS_RS, "ObjectNotFoundExceptionType"),
            EdmErrorKind::Timeout => (NS_RS, "TimeoutExceptionType"),
            EdmErrorKind::UnresolvedReference => (NS_RS, "UnresolvedReferenceExceptionType"),
            EdmErrorKind::UnsupportedCapability => (NS_RS, "UnsupportedCapabilityExceptionType"),
            EdmErrorKind::Query => (NS_QUERY, "QueryExceptionType"),
        };
        QName::new(ns, local)
    }

    /// The kind with this code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code.trim())
    }

    /// The kind with this exception type.
    pub(crate) fn from_exception_type(t: &QName) -> Option<Self> {
        Self::ALL.into_iter().find(|k| &k.exception_type() == t)
    }
}

/// An EDM error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse(pub QueryResponse);

impl ErrorResponse {
    /// A new error response to `request_id`: status Failure, one exception of `kind` with
    /// `message`, severity Error and a `Timestamp` slot. For the preview case use
    /// [`ErrorResponse::preview_required`].
    pub fn new(
        request_id: &str,
        version: EdmVersion,
        kind: EdmErrorKind,
        message: &str,
        timestamp: &str,
    ) -> Self {
        let mut r = QueryResponse::new(request_id, STATUS_FAILURE, version);
        r.exceptions.push(RsException {
            exception_type: Some(kind.exception_type()),
            code: Some(kind.code().to_owned()),
            message: Some(message.to_owned()),
            detail: None,
            severity: Some(SEVERITY_ERROR.to_owned()),
            other_attributes: Vec::new(),
            slots: vec![Slot::new(
                "Timestamp",
                SlotValue::DateTime(timestamp.to_owned()),
            )],
            other_children: Vec::new(),
        });
        ErrorResponse(r)
    }

    /// The preview-required error (EDM:ERR:0002) sending the user to `preview_location`.
    pub fn preview_required(
        request_id: &str,
        version: EdmVersion,
        preview_location: &str,
        timestamp: &str,
    ) -> Self {
        let mut e = Self::new(
            request_id,
            version,
            EdmErrorKind::Authorization,
            "Missing Authorization",
            timestamp,
        );
        let ex = &mut e.0.exceptions[0];
        ex.severity = Some(
            if version.is_v1() {
                SEVERITY_PREVIEW_REQUIRED_V1
            } else {
                SEVERITY_PREVIEW_REQUIRED
            }
            .to_owned(),
        );
        ex.slots.push(Slot::new(
            "PreviewLocation",
            SlotValue::String(preview_location.to_owned()),
        ));
        e
    }

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
    /// The `ErrorProvider` agent.
    pub fn error_provider(&self) -> Option<Agent> {
        self.0.agents("ErrorProvider").into_iter().next()
    }
    /// The `EvidenceRequester` agent.
    pub fn evidence_requester(&self) -> Option<Agent> {
        self.0.agents("EvidenceRequester").into_iter().next()
    }
    /// The (first) exception.
    pub fn exception(&self) -> Option<&RsException> {
        self.0.exceptions.first()
    }
    /// The error kind, from the exception type (or from the code when the type is
    /// unknown).
    pub fn kind(&self) -> Option<EdmErrorKind> {
        let e = self.exception()?;
        e.exception_type
            .as_ref()
            .and_then(EdmErrorKind::from_exception_type)
            .or_else(|| e.code.as_deref().and_then(EdmErrorKind::from_code))
    }
    /// Whether this is the preview-required error (by its severity, either spelling).
    pub fn is_preview_required(&self) -> bool {
        self.exception()
            .and_then(|e| e.severity.as_deref())
            .is_some_and(|s| s == SEVERITY_PREVIEW_REQUIRED || s == SEVERITY_PREVIEW_REQUIRED_V1)
    }
    /// The exception's `PreviewLocation`.
    pub fn preview_location(&self) -> Option<&str> {
        self.exception()?
            .slot("PreviewLocation")?
            .value
            .as_ref()?
            .as_str()
    }
    /// The exception's `Timestamp` (lexical form).
    pub fn timestamp(&self) -> Option<&str> {
        self.exception()?
            .slot("Timestamp")?
            .value
            .as_ref()?
            .as_str()
    }
}
