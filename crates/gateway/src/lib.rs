//! Library side of the `varti` binary: the running access point's transport and operations.
//!
//! * [`access_point`] — the running access point: receiver, sender, submission.
//! * [`backend`] — the backend HTTP/JSON API (submit, list, download, acknowledge).
//! * [`config`] — the configuration file (`varti.toml`) with embedded defaults.
//! * [`server`] — the TLS (or, for local tests, plain) HTTP server and its MSH endpoint.
//! * [`client`] — the outbound HTTP client used to push messages to partners.
//! * [`pair`] — two access points on loopback (demo, benchmark, tests).
//! * [`ops`] — `/health`, `/ready` and Prometheus `/metrics`.
//! * [`webhooks`] — signed HTTP notifications to backends (received / sent / failed).
//! * [`common_services`] — the OOTS common services over HTTP (client transport, stand-in).
//! * [`oots`] — the OOTS gateway: requester and provider flows over AS4.

pub mod access_point;
pub mod backend;
pub mod client;
pub mod common_services;
pub mod config;
pub mod oots;
pub mod ops;
pub mod pair;
pub mod preview;
pub mod server;
pub mod webhooks;
