//! Library side of the `varti` binary: what its commands, tests and benchmarks share.
//!
//! * [`config`] — the configuration file (`varti.toml`) with embedded defaults: the access
//!   point's sections (owned by `varti_access_point`), `[oots]` and `[preview]` (owned by
//!   `varti_oots_gateway`), and the binary's own (`[store]`, `[log]`, `[ops]`, `[backend]`).
//! * [`pair`] — two access points on loopback (demo, benchmark, tests).

#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub mod config;
pub mod pair;
