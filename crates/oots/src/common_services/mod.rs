//! The OOTS common services, as a requester uses them: the Evidence Broker (which
//! evidence types prove a procedure's requirement in a country) and the Data Service
//! Directory (which provider, behind which access point, delivers an evidence type).
//!
//! - [`query`]: the three queries and their RegRep 4 REST URLs.
//! - [`answer`]: the answers read into typed values; exceptions as [`CsException`].
//! - [`signature`]: the answers' JAdES HTTP-header signatures, verified against
//!   configured trust anchors (and made, for the stand-in).
//! - [`client`]: fetch through a [`Transport`], verify, read, cache.
//! - [`standin`]: a local test double answering from the published sample answers.
//!
//! Instance discovery by DNS NAPTR needs a resolver, so it lives in the gateway
//! (`varti_oots_gateway::common_services::discovery`); [`query::discovery_name`] gives the name.

pub mod answer;
pub mod client;
pub mod query;
pub mod signature;
pub mod standin;

pub use answer::{
    parse_data_services, parse_requirements, AccessService, Answer, AnswerError, CsException,
    DataService, DataServiceEvidenceType, EvidenceType, Requirement,
};
pub use client::{Client, ClientConfig, CsError, Fetched, HttpReply, Transport, TransportError};
pub use query::{DataServicesQuery, Query, Service};
pub use signature::{verify_response, ResponseSigner, SignatureError, TrustAnchors};
