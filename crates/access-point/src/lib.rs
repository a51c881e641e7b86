//! The running eDelivery AS4 access point: what `varti serve` runs, without any OOTS.
//!
//! A message enters through [`server`] (`POST /msh`), is verified and acknowledged by
//! [`receiver`] (the protocol work is `varti_as4`'s), stored in the `varti_store`, and
//! handed to its owner: a backend client through the [`api`] and [`webhooks`], or a
//! feature of the runtime that claimed its service ([`AccessPoint::claim_service`]).
//! Outbound, [`submit`] stores a backend's submission and [`sender`] (or [`pull`]) delivers
//! it through [`client`]. [`discovery`] finds dynamic partners' endpoints and certificates
//! through SML/BDXL and SMP.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod access_point;
pub mod api;
pub mod audit;
pub mod client;
pub(crate) mod clock;
pub mod config;
pub mod console;
pub mod discovery;
#[doc(hidden)]
pub mod fuzzing;
pub mod https;
pub mod ops;
pub mod pull;
pub mod receiver;
pub mod reload;
pub mod sender;
pub mod server;
pub mod submit;
#[cfg(test)]
mod test_support;
pub mod webhooks;

pub use access_point::{AccessPoint, MessageEvent};
pub use clock::Clock;
pub use reload::{ReloadHook, ReloadReport, Snapshot};
