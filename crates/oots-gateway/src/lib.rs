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

pub mod common_services;
pub mod config;
pub mod connector;
pub mod gateway;
pub mod lookup;
pub mod preview;
pub mod provider;
pub mod records;
pub mod requester;

pub use gateway::Gateway;
