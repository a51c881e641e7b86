//! The OOTS gateway: evidence requests and responses over AS4 between member states.
//!
//! * **Requester side** ([`requester`]): a procedure portal POSTs the data of an evidence
//!   request to the backend API (`/api/v1/oots/requests`); Varti builds the EDM request,
//!   sends it over AS4 on the OOTS PMode (`QueryManager` / `ExecuteQueryRequest`), and
//!   correlates the answer (`ExecuteQueryResponse` or `ExceptionResponse`) to it by
//!   `RefToMessageId`, else `ConversationId`, checked against the EDM `requestId`. The portal
//!   GETs the outcome and downloads the evidence files; a request with no answer within
//!   `oots.request_timeout_secs` ends `timed_out`.
//! * **Look-ups** ([`lookup`]): portals ask the common services (Evidence Broker, Data
//!   Service Directory) through `GET /api/v1/oots/lookup/…`; Varti finds them (configured
//!   URL or DNS NAPTR), verifies the answers' signatures and caches them.
//! * **Provider side** ([`provider`]): an evidence request received over AS4 is validated
//!   (Varti's EDM model; XSD and Schematron when `oots.schemas` / `oots.rules` are set),
//!   routed by evidence type to a data service connector ([`connector`]: an HTTP call to
//!   the national register) and answered over AS4 with the evidence response, or with the
//!   EDM error response that says what went wrong. Evidence types whose connector says
//!   `preview = true` are sent only after the citizen approved them in the preview space
//!   (two requests on one conversation; see [`provider`]).
//!
//! * **Intermediary platform**: one gateway may serve many portals (each a backend client
//!   with its own `oots_party`, seeing only its own requests) and many providers (each
//!   connector may name the provider it serves); `[oots] platform` names the gateway as
//!   the `IP` agent. Evidence does not outlive its hand-over by more than
//!   `oots.evidence_retention_secs` on either side ([`records`], [`provider::answer_sent`]).
//!
//! Inbound OOTS messages are stored under the owner [`OWNER`], which no backend has: the
//! gateway, not a portal, consumes them. The [`run`] task picks them up (claiming each with
//! `Store::mark_delivered`, so with several instances on one store exactly one handles a
//! message) and watches the deadlines of open requests.

pub mod config;
pub mod connector;
pub mod lookup;
pub mod provider;
pub mod records;
pub mod requester;

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use varti_store::{Direction, ListFilter, State};

pub use config::{OotsConfig, OotsRole};

use crate::access_point::{AccessPoint, MessageEvent};
use crate::preview::PreviewSpace;

/// Owner of inbound OOTS messages: the gateway itself (no backend has this name).
pub const OWNER: &str = "varti:oots";
/// The OOTS AS4 service.
pub const SERVICE: &str = "QueryManager";
/// Its type.
pub const SERVICE_TYPE: &str = "urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0";
/// The evidence request action.
pub const ACTION_REQUEST: &str = "ExecuteQueryRequest";
/// The evidence response action.
pub const ACTION_RESPONSE: &str = "ExecuteQueryResponse";
/// The error response action.
pub const ACTION_ERROR: &str = "ExceptionResponse";
/// The media type of the EDM document (first payload).
pub const EDM_MIME: &str = "application/x-ebrs+xml";
/// The largest EDM document read into memory (evidence files are separate parts).
pub const MAX_EDM_BYTES: u64 = 10 * 1024 * 1024;

/// Whether the gateway (not a backend) consumes an inbound message of `service`: the OOTS
/// gateway is on and the message is on the OOTS service.
pub fn consumes(ap: &AccessPoint, service: &str) -> bool {
    ap.config.oots.role != OotsRole::Off && service == SERVICE
}

/// The gateway task: handles inbound OOTS messages and the deadlines of open requests
/// until `token` is cancelled.
/// `preview` is the instance's preview space, for connectors that need preview.
pub async fn run(
    ap: Arc<AccessPoint>,
    preview: Option<Arc<PreviewSpace>>,
    token: CancellationToken,
) {
    if ap.config.oots.role == OotsRole::Off {
        return;
    }
    let previews = Arc::new(provider::Previews::new(preview));
    let mut events = ap.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(role = ?ap.config.oots.role, "OOTS gateway running");
    let sweep_every = sweep_interval(&ap.config.oots);
    let mut last_sweep: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            event = events.recv() => match event {
                Ok(MessageEvent::Failed { message_id, error, .. }) => {
                    let ap = ap.clone();
                    let _ = tokio::task::spawn_blocking(move || requester::request_failed(&ap, &message_id, &error)).await;
                }
                Ok(MessageEvent::Received { owner, .. }) if owner == OWNER => {
                    pick_up(&ap, &previews).await;
                }
                Ok(MessageEvent::Sent { message_id, owner }) if owner == OWNER && ap.config.oots.role.provides() => {
                    tokio::spawn(provider::answer_sent(ap.clone(), message_id));
                }
                // Lagging only means a scan is due; the tick does it anyway.
                _ => {}
            },
            _ = tick.tick() => {
                pick_up(&ap, &previews).await;
                let ap2 = ap.clone();
                let _ = tokio::task::spawn_blocking(move || requester::expire(&ap2, OffsetDateTime::now_utc())).await;
                if ap.config.oots.role.requests() && last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                    last_sweep = Some(Instant::now());
                    let ap2 = ap.clone();
                    let _ = tokio::task::spawn_blocking(move || records::purge_due(&ap2, OffsetDateTime::now_utc())).await;
                }
            }
        }
    }
}

/// How often the requester's purge sweeps the settled requests: often enough for the
/// shorter retention (a hand-over with retention 0 is purged at once, not by the sweep),
/// between 1 s and 60 s.
fn sweep_interval(c: &OotsConfig) -> Duration {
    let shortest = match c.evidence_retention_secs {
        0 => c.record_retention_secs,
        e => e.min(c.record_retention_secs),
    };
    Duration::from_secs((shortest / 4).clamp(1, 60))
}

/// Claims every waiting inbound OOTS message and hands it to its side.
async fn pick_up(ap: &Arc<AccessPoint>, previews: &Arc<provider::Previews>) {
    let ap2 = ap.clone();
    let claimed = tokio::task::spawn_blocking(move || {
        let filter = ListFilter {
            direction: Some(Direction::Inbound),
            states: vec![State::Received],
            owner: Some(OWNER.to_owned()),
            limit: 100,
            ..ListFilter::default()
        };
        let page = match ap2.store.list(&filter) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "OOTS: cannot list waiting messages");
                return Vec::new();
            }
        };
        let now = OffsetDateTime::now_utc();
        page.records
            .into_iter()
            .filter(|r| matches!(ap2.store.mark_delivered(r.id(), now), Ok(true)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for record in claimed {
        let id = record.id().to_owned();
        match record.meta.action.as_str() {
            ACTION_REQUEST if ap.config.oots.role.provides() => {
                // A connector may take long (timeouts, retries): each request on its own.
                tokio::spawn(provider::handle(ap.clone(), previews.clone(), record));
            }
            ACTION_RESPONSE | ACTION_ERROR if ap.config.oots.role.requests() => {
                let ap = ap.clone();
                let _ =
                    tokio::task::spawn_blocking(move || requester::answer_received(&ap, &record))
                        .await;
            }
            action => {
                tracing::warn!(message_id = %id, action, role = ?ap.config.oots.role, "OOTS message this gateway does not handle in its configured role (oots.role); it is kept, not answered");
            }
        }
    }
}
