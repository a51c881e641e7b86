//! Operations: liveness, readiness and Prometheus metrics.
//!
//! The routes themselves live in [`crate::server::OpsRoutes`]; this module holds the state
//! they report and the response builders.

mod health;
mod metrics;

pub(crate) use health::ready_status;
pub use health::{health, ready, Readiness};
pub use metrics::{cert_expiry_days, metrics, CertExpiryError, Direction, Metrics, Outcome};
