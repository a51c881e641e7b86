//! Prometheus metrics, registered in one place and updated through [`Metrics`].
//!
//! Exposed names (OpenMetrics text on `/metrics`):
//! * `varti_messages_total{direction,outcome}` — AS4 user messages by direction and outcome;
//! * `varti_retries_total` — outbound send retries;
//! * `varti_processing_latency_seconds{direction}` — histogram: inbound, request received →
//!   response ready; outbound, submit → receipt;
//! * `varti_queue_depth` — outbound messages waiting to be sent or retried;
//! * `varti_cert_expiry_days{cert}` — days until a certificate expires (negative: expired);
//! * `varti_refusals_total{owner,reason}` — messages a feature of the runtime refused (the
//!   OOTS gateway: answers bound to other parties, requests whose parties do not agree…),
//!   by the feature's owner name and a short reason;
//! * `varti_ready{condition}` — 1 when the readiness condition (`store`, `pmodes`, …) holds,
//!   0 when it does not (what `/ready` reports, for alerting);
//! * `varti_store_up` — 1 when the last probe of the store succeeded, 0 when it failed.
//!
//! `deploy/prometheus/varti-alerts.yml` and `deploy/grafana/varti-dashboard.json` use these;
//! a test checks that every name they use is exported.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{header, HeaderValue, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::server::http::full;
use crate::server::Body;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Received from a partner.
    Inbound,
    /// Sent to a partner.
    Outbound,
}

/// How a message's processing ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Inbound: stored and receipted. Outbound: acknowledged by the receiver.
    Success,
    /// Inbound: refused with an ebMS error (invalid, untrusted, not agreed).
    Rejected,
    /// A resend of a message already received; answered with the original receipt.
    Duplicate,
    /// Outbound: failed for good after the last retry (EBMS:0301 reported to the backend).
    Failed,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.label())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    direction: Direction,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    owner: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    cert: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    condition: String,
}

type LatencyFamily = Family<DirectionLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s in powers of two: covers a receipt round trip and a 1 GiB transfer.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// All of Varti's metrics. Share it as `Arc<Metrics>`; every method is cheap and lock-free
/// except [`Metrics::encode`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    retries: Counter,
    latency: LatencyFamily,
    queue_depth: Gauge,
    cert_expiry: Family<CertLabels, Gauge<f64, AtomicU64>>,
    refusals: Family<RefusalLabels, Counter>,
    ready: Family<ConditionLabels, Gauge>,
    store_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric (once; each [`Metrics`] has its own registry).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let messages = Family::<MessageLabels, Counter>::default();
        let retries = Counter::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let queue_depth = Gauge::default();
        let cert_expiry = Family::<CertLabels, Gauge<f64, AtomicU64>>::default();
        let refusals = Family::<RefusalLabels, Counter>::default();
        let ready = Family::<ConditionLabels, Gauge>::default();
        let store_up = Gauge::default();
        registry.register(
            "varti_ready",
            "1 when the readiness condition holds, 0 when it does not",
            ready.clone(),
        );
        registry.register(
            "varti_store_up",
            "1 when the last probe of the store succeeded, 0 when it failed",
            store_up.clone(),
        );
        registry.register(
            "varti_messages",
            "AS4 user messages by direction and outcome",
            messages.clone(),
        );
        registry.register("varti_retries", "Outbound send retries", retries.clone());
        registry.register(
            "varti_processing_latency_seconds",
            "Processing latency: inbound request to response, outbound submit to receipt",
            latency.clone(),
        );
        registry.register(
            "varti_queue_depth",
            "Outbound messages waiting to be sent or retried",
            queue_depth.clone(),
        );
        registry.register(
            "varti_cert_expiry_days",
            "Days until the certificate expires (negative when expired)",
            cert_expiry.clone(),
        );
        registry.register(
            "varti_refusals",
            "Messages a feature of the runtime refused, by feature (owner) and reason",
            refusals.clone(),
        );
        // Create every labelled series up front so that dashboards and rate() see zeros
        // instead of missing series before the first message.
        for direction in [Direction::Inbound, Direction::Outbound] {
            for outcome in [
                Outcome::Success,
                Outcome::Rejected,
                Outcome::Duplicate,
                Outcome::Failed,
            ] {
                let _ = messages.get_or_create(&MessageLabels { direction, outcome });
            }
            let _ = latency.get_or_create(&DirectionLabels { direction });
        }
        Metrics {
            registry,
            messages,
            retries,
            latency,
            queue_depth,
            cert_expiry,
            refusals,
            ready,
            store_up,
        }
    }

    /// Sets `varti_ready{condition}` (kept in step by [`crate::ops::Readiness`]).
    pub(crate) fn set_ready(&self, condition: &str, ready: bool) {
        self.ready
            .get_or_create(&ConditionLabels {
                condition: condition.to_owned(),
            })
            .set(i64::from(ready));
    }

    /// Records the outcome of a probe of the store.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Counts one message the feature `owner` refused for `reason` (a short fixed word).
    pub fn refusal(&self, owner: &str, reason: &str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                owner: owner.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one message.
    pub fn message(&self, direction: Direction, outcome: Outcome) {
        self.messages
            .get_or_create(&MessageLabels { direction, outcome })
            .inc();
    }

    /// Counts one outbound retry.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Records one processing latency.
    pub(crate) fn observe_latency(&self, direction: Direction, latency: Duration) {
        self.latency
            .get_or_create(&DirectionLabels { direction })
            .observe(latency.as_secs_f64());
    }

    /// Sets the outbound queue depth.
    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.set(depth.min(i64::MAX as u64) as i64);
    }

    /// Sets the days until certificate `cert` (a short name such as `tls`) expires.
    pub fn set_cert_expiry_days(&self, cert: &str, days: f64) {
        self.cert_expiry
            .get_or_create(&CertLabels {
                cert: cert.to_owned(),
            })
            .set(days);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `/metrics`: the OpenMetrics text exposition.
pub fn metrics(metrics: &Metrics) -> Response<Body> {
    let mut response = Response::new(full(metrics.encode()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Days from now until the first certificate in the PEM file `path` expires (negative when
/// it has expired).
pub fn cert_expiry_days(path: &Path) -> Result<f64, CertExpiryError> {
    let pem = std::fs::read(path).map_err(|source| CertExpiryError::Read {
        path: path.to_owned(),
        source,
    })?;
    let openssl = |source| CertExpiryError::Certificate {
        path: path.to_owned(),
        source,
    };
    let cert = openssl::x509::X509::from_pem(&pem).map_err(openssl)?;
    let now = openssl::asn1::Asn1Time::days_from_now(0).map_err(openssl)?;
    let diff = now.diff(cert.not_after()).map_err(openssl)?;
    Ok(f64::from(diff.days) + f64::from(diff.secs) / 86_400.0)
}

/// Why [`cert_expiry_days`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum CertExpiryError {
    /// The file cannot be read.
    #[error("cannot read certificate {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a PEM certificate, or its expiry cannot be compared with now.
    #[error("{} is not a PEM certificate whose expiry can be read: {source}", path.display())]
    Certificate {
        /// The file.
        path: std::path::PathBuf,
        /// OpenSSL's errors.
        source: openssl::error::ErrorStack,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric_and_label() {
        let m = Metrics::new();
        m.message(Direction::Inbound, Outcome::Success);
        m.message(Direction::Inbound, Outcome::Success);
        m.message(Direction::Outbound, Outcome::Failed);
        m.retry();
        m.observe_latency(Direction::Inbound, Duration::from_millis(3));
        m.set_queue_depth(7);
        m.set_cert_expiry_days("tls", 42.5);
        m.refusal("varti:oots", "wrong_gateway");
        m.set_ready("store", false);
        m.set_store_up(true);
        let text = m.encode();
        assert!(
            text.contains("varti_ready{condition=\"store\"} 0"),
            "{text}"
        );
        assert!(text.contains("varti_store_up 1"), "{text}");
        assert!(
            text.contains("varti_messages_total{direction=\"inbound\",outcome=\"success\"} 2"),
            "{text}"
        );
        assert!(text.contains("varti_messages_total{direction=\"outbound\",outcome=\"failed\"} 1"));
        assert!(text.contains("varti_retries_total 1"));
        assert!(text.contains("varti_processing_latency_seconds_count{direction=\"inbound\"} 1"));
        assert!(text.contains("varti_queue_depth 7"));
        assert!(text.contains("varti_cert_expiry_days{cert=\"tls\"} 42.5"));
        assert!(
            text.contains("varti_refusals_total{owner=\"varti:oots\",reason=\"wrong_gateway\"} 1"),
            "{text}"
        );
    }
}
