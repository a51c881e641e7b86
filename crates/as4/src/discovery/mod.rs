//! Dynamic discovery, the protocol part: from a participant identifier to the SMP's
//! answer about it, with no I/O (the DNS and HTTP calls live in `varti-access-point`).
//!
//! The chain (see `docs/discovery.md`):
//! 1. [`dns`] — the DNS name of a participant in an SML/BDXL zone: eDelivery BDXL
//!    (SHA-256, Base32), Peppol NAPTR (the same, lower case, value only) or the legacy
//!    Peppol SML (`B-` + MD5, a CNAME to the SMP host).
//! 2. [`naptr`] — the U-NAPTR records of that name (RFC 4848; service `meta:smp`) give
//!    the SMP's base URL.
//! 3. [`smp`] — the service-metadata URL for a document type, and the SMP's answer read
//!    in any of its three dialects (OASIS SMP 1.0, the Peppol SMP, OASIS SMP 2.0): the
//!    endpoint for a process and transport profile, current at a given time, with its
//!    certificate.
//! 4. [`signature`] — the SMP answer's enveloped XML-DSig signature, checked against the
//!    SMP trust anchors (and a signer for test stand-ins).
//!
//! Every failure is a [`DiscoveryError`] that says which step failed and why.

pub mod dns;
pub mod naptr;
pub mod signature;
pub mod smp;

pub use dns::{dns_name, DnsScheme};
pub use naptr::{smp_url_from_naptr, substitute, Naptr, SMP_NAPTR_SERVICE};
pub use signature::{sign_enveloped, verify_enveloped, SmpSigner};
pub use smp::{
    read_service_metadata, service_metadata_url, ChosenEndpoint, Endpoint, Process, Redirect,
    ServiceMetadata, SmpDialect, SmpResponse,
};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The eDelivery AS4 1.x transport profile (OASIS BDXR / "CEF AS4"), Domibus's default.
pub const TRANSPORT_BDXR_AS4: &str = "bdxr-transport-ebms3-as4-v1p0";
/// The Peppol AS4 v2 transport profile.
pub const TRANSPORT_PEPPOL_AS4_V2: &str = "peppol-transport-as4-v2_0";
/// The eDelivery AS4 2.0 transport profile as DomiSMP samples write it (not confirmed by
/// a specification, see `docs/discovery.md`).
pub const TRANSPORT_BDXR_AS4_V2: &str = "bdxr-transport-ebms3-as4-v2p0";

/// The ebCore party-id type prefix: such schemes are hashed whole with their value.
pub(crate) const EBCORE_PREFIX: &str = "urn:oasis:names:tc:ebcore:partyid-type:";

/// A `scheme::value` identifier (participant, document type or process).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier {
    /// The identifier scheme, e.g. `iso6523-actorid-upis` (may be empty in SMP 2.0).
    pub scheme: String,
    /// The value, e.g. `0088:123abc`.
    pub value: String,
}

impl Identifier {
    /// An identifier from its parts.
    pub fn new(scheme: impl Into<String>, value: impl Into<String>) -> Self {
        Identifier {
            scheme: scheme.into(),
            value: value.into(),
        }
    }

    /// Reads `scheme::value` (split at the first `::`, as SMP 1.0 §2.4 writes ids).
    pub fn parse(text: &str) -> Result<Self, DiscoveryError> {
        let text = text.trim();
        match text.split_once("::") {
            Some((scheme, value)) if !value.is_empty() => Ok(Identifier::new(scheme, value)),
            _ => Err(DiscoveryError::InvalidIdentifier(format!(
                "`{text}` is not in the form scheme::value (e.g. iso6523-actorid-upis::0088:123abc)"
            ))),
        }
    }

    /// The path segment of an SMP URL: `scheme::value` percent-encoded whole (SMP 1.0
    /// §2.4.5.3: everything outside RFC 3986's unreserved set, so `::` is `%3A%3A`).
    /// With an empty scheme (SMP 2.0) only the value.
    pub fn url_segment(&self) -> String {
        let text = if self.scheme.is_empty() {
            self.value.clone()
        } else {
            self.to_string()
        };
        utf8_percent_encode(&text, UNRESERVED_COMPLEMENT).to_string()
    }

    /// Whether `other` names the same identifier: schemes ignoring case; values ignoring
    /// case when `case_insensitive_value` (participants), exactly otherwise (document
    /// and process ids are case-sensitive).
    pub fn same_as(&self, other: &Identifier, case_insensitive_value: bool) -> bool {
        self.scheme.eq_ignore_ascii_case(&other.scheme)
            && if case_insensitive_value {
                self.value.to_lowercase() == other.value.to_lowercase()
            } else {
                self.value == other.value
            }
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.scheme, self.value)
    }
}

/// Characters to percent-encode: all but RFC 3986 unreserved (`A-Z a-z 0-9 - . _ ~`).
const UNRESERVED_COMPLEMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why discovery could not give an endpoint. Each says which step failed and what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A participant, document or process id that cannot be read.
    #[error("invalid identifier: {0}")]
    InvalidIdentifier(String),
    /// The network's configuration cannot serve (unknown scheme, missing zone, …).
    #[error("discovery is not configured correctly: {0}")]
    Config(String),
    /// The DNS says the participant's name does not exist or has no record of this kind.
    #[error("the participant is not registered: the DNS has no {record} record at {name} ({detail}); check the participant id, the SML zone and the DNS scheme")]
    NotRegistered {
        /// NAPTR or A/CNAME.
        record: &'static str,
        /// The name looked up.
        name: String,
        /// What the resolver said.
        detail: String,
    },
    /// The DNS look-up itself failed (timeout, server failure): worth a retry.
    #[error("DNS look-up of {name} failed: {detail}; check the DNS server and that this host reaches it")]
    Dns {
        /// The name looked up.
        name: String,
        /// The resolver's message.
        detail: String,
    },
    /// NAPTR records exist, but none gives an SMP URL.
    #[error("the NAPTR records at {name} name no SMP: {detail}")]
    NoSmpRecord {
        /// The name looked up.
        name: String,
        /// Why each record was skipped.
        detail: String,
    },
    /// The HTTP request to the SMP failed or was answered with an error status.
    #[error("the SMP request {url} failed: {detail}")]
    Smp {
        /// The URL requested.
        url: String,
        /// Status or transport error.
        detail: String,
    },
    /// The SMP answer is not well-formed or not an SMP document.
    #[error("the SMP answer cannot be read: {0}")]
    Malformed(String),
    /// The SMP answer carries no signature although verification is required.
    #[error("the SMP answer is not signed (no ds:Signature in its document element); a signed answer is required, use --no-verify only to diagnose")]
    Unsigned,
    /// The signature does not verify (altered answer, wrong key, unsupported algorithm).
    #[error("the SMP answer's signature does not verify: {0}")]
    BadSignature(String),
    /// The signer's certificate is not trusted as an SMP of this network.
    #[error("the SMP signer certificate is not trusted: {0}; configure the network's SMP trust anchors (smp_anchors)")]
    UntrustedSmp(String),
    /// The SMP answered for another participant or document than asked.
    #[error("the SMP answered for something else than was asked: {0}")]
    WrongAnswer(String),
    /// No process of the answer matches the requested process.
    #[error("the SMP offers document {document} for no process {process} (offered: {offered})")]
    NoProcess {
        /// The document type.
        document: String,
        /// The process asked for.
        process: String,
        /// The processes offered.
        offered: String,
    },
    /// The process has no endpoint for the transport profile.
    #[error("the SMP offers no endpoint with transport profile {wanted} (offered: {offered}); check the network's transport_profile")]
    TransportNotOffered {
        /// The profile asked for.
        wanted: String,
        /// The profiles offered.
        offered: String,
    },
    /// The endpoint is not active yet.
    #[error("the endpoint {url} is not active before {from} (checked at {at})")]
    NotYetActive {
        /// The endpoint URL.
        url: String,
        /// Its activation time.
        from: String,
        /// When it was checked.
        at: String,
    },
    /// The endpoint has expired.
    #[error("the endpoint {url} expired at {until} (checked at {at})")]
    Expired {
        /// The endpoint URL.
        url: String,
        /// Its expiration time.
        until: String,
        /// When it was checked.
        at: String,
    },
    /// The endpoint publishes no certificate that can be read.
    #[error("the endpoint {url} publishes no usable certificate: {detail}")]
    NoCertificate {
        /// The endpoint URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The endpoint's certificate does not chain to the network's AP anchors.
    #[error("the endpoint's certificate is not trusted as an access point of this network: {0}; configure the network's AP anchors (ap_anchors)")]
    UntrustedEndpoint(String),
    /// A redirect that cannot be followed (a second one, or a signer that differs).
    #[error("SMP redirect refused: {0}")]
    Redirect(String),
}
