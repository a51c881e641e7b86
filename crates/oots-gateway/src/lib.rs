//! The OOTS gateway runtime, on top of the access point (`varti_access_point`).
//!
//! * [`gateway`] — the [`Gateway`]: claims the OOTS service on the access point, mounts
//!   its routes on the backend API and runs the task that handles inbound OOTS messages.
//! * [`preview`] — the preview space where a citizen sees evidence before it is sent.
//! * [`common_services`] — the OOTS common services asked for portals.
//! * [`config`] — the `[oots]` table.
//!
//! That is the whole public surface: the binary builds a [`Gateway`], mounts it and runs
//! it. The flows behind it are crate-private — `requester` (portals' evidence requests
//! out, answers in, kept by `records`), `provider` (evidence requests in, answered
//! through a data-service `connector`) and `lookup` (common-services look-ups for the
//! API).

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod common_services;
pub mod config;
pub(crate) mod connector;
pub mod gateway;
pub(crate) mod lookup;
pub mod preview;
pub(crate) mod provider;
pub(crate) mod records;
pub(crate) mod requester;

pub use gateway::Gateway;
