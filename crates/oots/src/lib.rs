//! OOTS for Varti: the Evidence Exchange Data Model (EDM) messages and their validation.
//!
//! - [`edm`]: typed evidence request, evidence response and error response (EDM 1.x and
//!   2.0), parsed from and written to XML.
//! - [`validate`]: findings from the official XSD schemas ([`validate::xsd`]) and from
//!   Varti's own EDM model with code lists ([`validate::model`]).
//! - [`flow`]: building the request, response and error documents of an exchange from
//!   plain (serde) data: what a portal asks for, what a register answers.
//! - [`common_services`]: the Evidence Broker and Data Service Directory client (queries,
//!   typed answers, signature verification, caching) and its local stand-in.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod common_services;
pub mod edm;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod validate;
