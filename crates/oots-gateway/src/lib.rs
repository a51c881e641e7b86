//! The OOTS gateway runtime, on top of the access point (`varti_access_point`).
//!
//! * [`gateway`] — the [`Gateway`]: claims the OOTS service on the access point, mounts
//!   its routes on the backend API and runs the task that handles inbound OOTS messages.
//! * [`requester`] — portals' evidence requests out, answers in ([`records`] keeps them).
//! * [`provider`] — evidence requests in, answered through a data-service [`connector`].
//! * [`preview`] — the preview space where a citizen sees evidence before it is sent.
//! * [`lookup`] and [`common_services`] — the OOTS common services asked for portals.
//! * [`config`] — the `[oots]` table.

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
