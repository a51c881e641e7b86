//! Library side of the `varti` binary: the running access point's transport and operations.
//!
//! * [`access_point`] — the running access point: receiver, sender, submission.
//! * [`backend`] — the backend HTTP/JSON API (submit, list, download, acknowledge).
//! * [`config`] — the configuration file (`varti.toml`) with embedded defaults.
//! * [`server`] — the TLS (or, for local tests, plain) HTTP server and its MSH endpoint.
//! * [`client`] — the outbound HTTP client used to push messages to partners.
//! * [`ops`] — `/health`, `/ready` and Prometheus `/metrics`.

pub mod access_point;
pub mod backend;
pub mod client;
pub mod config;
pub mod ops;
pub mod server;
