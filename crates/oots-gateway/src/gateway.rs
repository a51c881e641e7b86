//! The OOTS gateway: evidence requests and responses over AS4 between member states.
//!
//! * **Requester side** (`requester`): a procedure portal POSTs the data of an evidence
//!   request to the backend API (`/api/v1/oots/requests`); Varti builds the EDM request,
//!   sends it over AS4 on the OOTS PMode (`QueryManager` / `ExecuteQueryRequest`), and
//!   correlates the answer (`ExecuteQueryResponse` or `ExceptionResponse`) to it by
//!   `RefToMessageId`, else `ConversationId`, checked against the EDM `requestId`; an answer
//!   not from the gateway asked, or not in the name of the provider asked, is refused before
//!   it is stored (`requester::check_answer`). The portal
//!   GETs the outcome and downloads the evidence files; a request with no answer within
//!   `oots.request_timeout_secs` ends `timed_out`.
//! * **Look-ups** (`lookup`): portals ask the common services (Evidence Broker, Data
//!   Service Directory) through `GET /api/v1/oots/lookup/…`; Varti finds them (configured
//!   URL or DNS NAPTR), verifies the answers' signatures and caches them.
//! * **Provider side** (`provider`): an evidence request received over AS4 is validated
//!   (Varti's EDM model; XSD and Schematron when `oots.schemas` / `oots.rules` are set),
//!   routed by evidence type to a data service connector (`connector`: an HTTP call to
//!   the national register) and answered over AS4 with the evidence response, or with the
//!   EDM error response that says what went wrong — also when its `originalSender` is not
//!   the EvidenceRequester it names (EDM:ERR:0003, before any register is called). Evidence
//!   types whose connector says
//!   `preview = true` are sent only after the citizen approved them in the preview space
//!   (two requests on one conversation; see `provider`).
//!
//! * **Intermediary platform**: one gateway may serve many portals (each a backend client
//!   with its own `oots_party`, seeing only its own requests) and many providers (each
//!   connector may name the provider it serves); `[oots] platform` names the gateway as
//!   the `IP` agent. Evidence does not outlive its hand-over by more than
//!   `oots.evidence_retention_secs` on either side (`records`, `provider::answer_sent`).
//!
//! [`Gateway::new`] claims the OOTS service on the access point, so inbound OOTS messages
//! are stored under the owner [`OWNER`], which no backend has: the gateway, not a portal,
//! consumes them. The [`run`] task picks them up (claiming each with
//! `Store::mark_delivered`, so with several instances on one store exactly one handles a
//! message) and watches the deadlines of open requests.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use varti_access_point::access_point::{InboundCheck, InboundMessage, InboundRefusal};
use varti_access_point::api::ApiRouter;
use varti_access_point::{AccessPoint, MessageEvent};
use varti_store::{Direction, ListFilter, State};

use crate::common_services::CommonServices;
use crate::config::{OotsConfig, OotsParty, OotsRole};
use crate::preview::PreviewSpace;
use crate::{lookup, provider, records, requester};

/// The OOTS gateway over a running access point.
pub struct Gateway {
    /// The access point that carries the gateway's AS4 messages.
    pub ap: Arc<AccessPoint>,
    /// `[oots]`.
    pub config: OotsConfig,
    /// The procedure portal each backend client is (`oots_party` of `[[backend.clients]]`),
    /// by client name.
    pub portals: HashMap<String, OotsParty>,
    /// The instance's preview space, for connectors that need preview.
    pub preview: Option<Arc<PreviewSpace>>,
    /// The common services portals look things up in (requester role).
    pub common_services: Option<Arc<CommonServices>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("role", &self.config.role)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// The gateway over `ap` with `config`; when a role is set, claims the OOTS service on
    /// `ap`, so inbound OOTS messages are stored for the gateway, not a backend client, and
    /// has every inbound answer checked before it is stored
    /// (`requester::check_answer`). Call it before the MSH listener serves.
    pub fn new(
        ap: Arc<AccessPoint>,
        config: OotsConfig,
        portals: HashMap<String, OotsParty>,
        preview: Option<Arc<PreviewSpace>>,
        common_services: Option<Arc<CommonServices>>,
    ) -> Arc<Gateway> {
        Arc::new_cyclic(|me| {
            if config.role != OotsRole::Off {
                ap.claim_service(SERVICE, OWNER);
                ap.check_inbound(SERVICE, Arc::new(AnswerCheck { gw: me.clone() }));
            }
            Gateway {
                ap,
                config,
                portals,
                preview,
                common_services,
            }
        })
    }

    /// Mounts the gateway's backend API routes (`/oots/…`) and their OpenAPI fragment.
    pub fn mount(self: &Arc<Self>, router: &mut ApiRouter) {
        router
            .add_openapi(OPENAPI_OOTS)
            .expect("the OOTS OpenAPI fragment fits the message routes' document");
        let gw = self.clone();
        router.mount("POST", "/oots/requests", move |c| {
            Box::pin(requester::create(gw.clone(), c.client, c.request))
        });
        let gw = self.clone();
        router.mount("GET", "/oots/requests", move |c| {
            let gw = gw.clone();
            Box::pin(async move { requester::list(gw, c.client, &c.query).await })
        });
        let gw = self.clone();
        router.mount("GET", "/oots/requests/{id}", move |c| {
            let id = c.param(0);
            Box::pin(requester::show(gw.clone(), c.client, id))
        });
        let gw = self.clone();
        router.mount("GET", "/oots/requests/{id}/evidence/{n}", move |c| {
            let (gw, id, n) = (gw.clone(), c.param(0), c.param(1));
            Box::pin(async move { requester::evidence(gw, c.client, id, &n).await })
        });
        let gw = self.clone();
        router.mount("POST", "/oots/requests/{id}/preview-return", move |c| {
            let id = c.param(0);
            Box::pin(requester::preview_return(
                gw.clone(),
                c.client,
                id,
                c.request,
            ))
        });
        for (path, what) in [
            ("/oots/lookup/requirements", lookup::Lookup::Requirements),
            ("/oots/lookup/evidence-types", lookup::Lookup::EvidenceTypes),
            ("/oots/lookup/data-services", lookup::Lookup::DataServices),
        ] {
            let gw = self.clone();
            router.mount("GET", path, move |c| {
                let gw = gw.clone();
                Box::pin(async move { lookup::lookup(gw, what, &c.query).await })
            });
        }
    }
}

/// The gateway's check of inbound OOTS messages on the access point (a weak handle: the
/// access point outlives nothing of the gateway through it).
struct AnswerCheck {
    gw: Weak<Gateway>,
}

impl InboundCheck for AnswerCheck {
    fn check(&self, message: &InboundMessage<'_>) -> Result<(), InboundRefusal> {
        match self.gw.upgrade() {
            Some(gw) => requester::check_answer(&gw, message),
            None => Ok(()),
        }
    }
}

/// The OpenAPI fragment of the gateway's routes.
const OPENAPI_OOTS: &str = include_str!("../openapi/oots.json");

/// Owner of inbound OOTS messages: the gateway itself (no backend has this name).
pub const OWNER: &str = "varti:oots";
/// The OOTS AS4 service.
pub const SERVICE: &str = "QueryManager";
/// Its type.
pub const SERVICE_TYPE: &str = "urn:oasis:names:tc:ebcore:ebrs:ebms:binding:1.0";
/// The evidence request action.
pub(crate) const ACTION_REQUEST: &str = "ExecuteQueryRequest";
/// The evidence response action.
pub(crate) const ACTION_RESPONSE: &str = "ExecuteQueryResponse";
/// The error response action.
pub(crate) const ACTION_ERROR: &str = "ExceptionResponse";
/// The media type of the EDM document (first payload).
pub const EDM_MIME: &str = "application/x-ebrs+xml";
/// The largest EDM document read into memory (evidence files are separate parts).
pub(crate) const MAX_EDM_BYTES: u64 = 10 * 1024 * 1024;

/// The gateway task: handles inbound OOTS messages and the deadlines of open requests
/// until `token` is cancelled.
pub async fn run(gw: Arc<Gateway>, token: CancellationToken) {
    if gw.config.role == OotsRole::Off {
        return;
    }
    let ap = gw.ap.clone();
    let previews = Arc::new(provider::Previews::new(gw.preview.clone()));
    let mut events = ap.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(role = ?gw.config.role, "OOTS gateway running");
    let sweep_every = sweep_interval(&gw.config);
    let mut last_sweep: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            event = events.recv() => match event {
                Ok(MessageEvent::Failed { message_id, error, .. }) => {
                    let gw = gw.clone();
                    let _ = tokio::task::spawn_blocking(move || requester::request_failed(&gw, &message_id, &error)).await;
                }
                Ok(MessageEvent::Received { owner, .. }) if owner == OWNER => {
                    pick_up(&gw, &previews).await;
                }
                Ok(MessageEvent::Sent { message_id, owner }) if owner == OWNER && gw.config.role.provides() => {
                    tokio::spawn(provider::answer_sent(gw.clone(), message_id));
                }
                // Lagging only means a scan is due; the tick does it anyway.
                _ => {}
            },
            _ = tick.tick() => {
                pick_up(&gw, &previews).await;
                let gw2 = gw.clone();
                let _ = tokio::task::spawn_blocking(move || { let now = gw2.ap.clock.now(); requester::expire(&gw2, now) }).await;
                if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                    last_sweep = Some(Instant::now());
                    let gw2 = gw.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let now = gw2.ap.clock.now();
                        if gw2.config.role.requests() {
                            records::purge_due(&gw2, now);
                        }
                        records::purge_refusals_due(&gw2, now);
                    }).await;
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
async fn pick_up(gw: &Arc<Gateway>, previews: &Arc<provider::Previews>) {
    let ap2 = gw.ap.clone();
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
        let now = ap2.clock.now();
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
            ACTION_REQUEST if gw.config.role.provides() => {
                // A connector may take long (timeouts, retries): each request on its own.
                tokio::spawn(provider::handle(gw.clone(), previews.clone(), record));
            }
            ACTION_RESPONSE | ACTION_ERROR if gw.config.role.requests() => {
                let gw = gw.clone();
                let _ =
                    tokio::task::spawn_blocking(move || requester::answer_received(&gw, &record))
                        .await;
            }
            action => {
                tracing::warn!(message_id = %id, action, role = ?gw.config.role, "OOTS message this gateway does not handle in its configured role (oots.role); it is kept, not answered");
            }
        }
    }
}
