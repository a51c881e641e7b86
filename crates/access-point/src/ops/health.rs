//! `/health` (liveness) and `/ready` (readiness).
//!
//! Liveness answers 200 as long as the process serves HTTP at all. Readiness is a set of
//! named conditions (e.g. `store`, `pmodes`) that the owner of each resource marks ready
//! once it is usable; `/ready` answers 200 only when all are, and otherwise 503 listing
//! what is still missing and why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Response, StatusCode};

use crate::ops::Metrics;
use crate::server::http::text_response;
use crate::server::Body;

/// Shared readiness conditions. Cloning shares the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
    /// Where each change is also published as `varti_ready{condition}`, for alerting.
    metrics: Option<Arc<Metrics>>,
}

impl Readiness {
    /// Readiness over the named conditions, all initially "not ready: starting".
    pub fn new(conditions: &[&str]) -> Readiness {
        let readiness = Readiness::default();
        for name in conditions {
            readiness.set_not_ready(name, "starting");
        }
        readiness
    }

    /// Publishes every condition, now and on each change, as `varti_ready{condition}`.
    pub fn reporting_to(mut self, metrics: Arc<Metrics>) -> Readiness {
        for (name, state) in self.lock().iter() {
            metrics.set_ready(name, state.is_ok());
        }
        self.metrics = Some(metrics);
        self
    }

    /// Marks a condition ready (adding it if new).
    pub fn set_ready(&self, condition: &str) {
        self.set(condition, Ok(()));
    }

    /// Marks a condition not ready, with the reason shown by `/ready`.
    pub fn set_not_ready(&self, condition: &str, reason: impl Into<String>) {
        self.set(condition, Err(reason.into()));
    }

    fn set(&self, condition: &str, state: Result<(), String>) {
        let mut conditions = self.lock();
        if let Some(m) = &self.metrics {
            m.set_ready(condition, state.is_ok());
        }
        conditions.insert(condition.to_owned(), state);
    }

    /// True when every condition is ready (and there is at least one).
    pub(crate) fn is_ready(&self) -> bool {
        let conditions = self.lock();
        !conditions.is_empty() && conditions.values().all(|c| c.is_ok())
    }

    /// One line per condition: `name: ready` or `name: not ready (reason)`.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (name, state) in self.lock().iter() {
            match state {
                Ok(()) => out.push_str(&format!("{name}: ready\n")),
                Err(reason) => out.push_str(&format!("{name}: not ready ({reason})\n")),
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Result<(), String>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.conditions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `/health`: 200 while the process serves requests.
pub fn health() -> Response<Body> {
    text_response(StatusCode::OK, "ok\n")
}

/// `/ready`: 200 when every readiness condition holds, else 503; the body lists them.
pub fn ready(readiness: &Readiness) -> Response<Body> {
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text_response(status, readiness.report())
}

/// `/ready` on a listener partners reach: 200 or 503, without the conditions' details.
pub(crate) fn ready_status(ready: bool) -> Response<Body> {
    if ready {
        text_response(StatusCode::OK, "ready\n")
    } else {
        text_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_all_conditions_hold() {
        let r = Readiness::new(&["store", "pmodes"]);
        assert!(!r.is_ready());
        r.set_ready("store");
        assert!(!r.is_ready());
        assert!(r.report().contains("pmodes: not ready (starting)"));
        r.set_ready("pmodes");
        assert!(r.is_ready());
        r.set_not_ready("store", "disk full");
        assert!(!r.is_ready());
        assert!(r.report().contains("store: not ready (disk full)"));
        assert!(!Readiness::default().is_ready());
    }
}
