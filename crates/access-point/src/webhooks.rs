//! Webhooks: tells each backend what happened to its messages, by an HMAC-signed HTTP POST.
//!
//! The [`Dispatcher`] listens to the access point's [`MessageEvent`]s and notifies the
//! backend that owns the message (its `[[backend.clients]]` entry's `webhook_url`). It is
//! the one notification engine of the runtime: features announce their own events as a
//! [`Notice`] ([`AccessPoint::notify`](crate::AccessPoint::notify)), and the same
//! dispatcher signs, sends and retries them (the OOTS gateway's `oots_request` event).
//!
//! # What is notified, and how often
//!
//! * **`received`** — an inbound message waits for its backend. For a backend with a
//!   webhook, *the webhook is the delivery*: the dispatcher first calls
//!   [`Store::mark_delivered`](varti_store::Store::mark_delivered), and only the one caller
//!   that gets `true` notifies. So a duplicate of the message, a second `Received` event, or
//!   a second instance sharing the same PostgreSQL store never makes the backend hear of
//!   the message twice. A backend *without* a webhook is left alone: it polls the backend
//!   API (downloads are recorded in the history, the message stays `received`) and
//!   acknowledges what it processed (`POST /messages/{id}/ack` → `downloaded`).
//! * **`sent`** — the partner acknowledged an outbound message (its receipt checked).
//! * **`failed`** — an outbound message failed for good; `error` carries the ebMS error
//!   (EBMS:0301 after the last retry is reported this way).
//!
//! Delivery is **at least once, across instances** (issue 18): the store writes each
//! message event to its outbox in the same transaction as the state change it reports
//! ([`varti_store::OutboxEvent`]). The instance that announced the change claims the event
//! with a lease ([`WebhookOptions::outbox_lease`], extended to cover each retry's wait) and
//! removes it once the backend answered 2xx or the attempts ran out; a sweep
//! ([`WebhookOptions::outbox_sweep`]) claims the events nobody is delivering (their
//! instance died mid-flight, or an announcement was missed or dropped), so the other
//! instance of a pair delivers them. The `X-Varti-Delivery` id of an outbox event is its
//! event id, the same on every attempt from any instance: the backend drops repeats by it.
//! A received message claimed by a takeover is notified even though the dead instance had
//! already marked it delivered. Events announced without an outbox entry (feature notices,
//! events of messages the store does not hold) are retried in memory only.
//!
//! # The request
//!
//! `POST <webhook_url>` with the JSON body
//! `{"event": "received|sent|failed", "message_id": "…", "owner": "…", "error": "…",
//! "at": "<RFC 3339>"}` (`error` only for `failed`; `at` is when the notification was
//! made) and the headers
//!
//! * `Content-Type: application/json`
//! * `X-Varti-Event: received|sent|failed`
//! * `X-Varti-Delivery: <UUID>` — one id per notification, the same on each retry;
//! * `X-Varti-Signature: sha256=<hex>` — HMAC-SHA256 of the exact body bytes under the
//!   client's `webhook_secret` (see [`signature`]). A backend must recompute it over the raw
//!   body and compare in constant time before trusting anything in the body.
//!
//! # Retries, limits, transport
//!
//! A non-2xx answer, a connection or TLS error, or no answer within 10 s is a failed
//! attempt, logged with the message id. Attempts are retried after 1 s, 2 s, 4 s, …
//! (doubling, capped at 5 minutes), at most 10 attempts in all, then the dispatcher gives up
//! and logs an error. Each backend client has its own share: at most 8 of its requests
//! in flight and 10 000 of its notifications pending, so a client whose target hangs or is
//! down delays nobody else's notifications. The event listener never waits for
//! them (each notification is its own task), and if it still falls behind the broadcast
//! channel, it logs how many events it missed. On shutdown, requests in flight may finish
//! within [`WebhookOptions::shutdown_wait`] (the server's shutdown grace), then are
//! abandoned; waiting retries are abandoned at once, each logged. An abandoned outbox
//! event stays in the outbox and is delivered later.
//!
//! `http://` and `https://` URLs are accepted (a backend on the same host or a protected
//! network may use plain HTTP; the signature still authenticates the body, but does not hide
//! it). `https://` servers are verified against the operating system's CA certificates
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` override where they are read from), so an in-house CA
//! is trusted by adding it to the system store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use varti_store::{OutboxClaim, OutboxEvent};

use crate::access_point::{AccessPoint, MessageEvent};
use crate::https::{error_chain, https_client, HttpsClient, HttpsOptions};
use crate::server::tls;

/// Header naming the event (`received`, `sent`, `failed`).
pub(crate) const EVENT_HEADER: &str = "x-varti-event";
/// Header with the notification's id, the same on every retry of it.
pub(crate) const DELIVERY_HEADER: &str = "x-varti-delivery";
/// Header with `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-varti-signature";

/// Largest response body read from a backend (the answer is ignored apart from its status).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why the dispatcher cannot start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A `webhook_url` cannot be used.
    #[error("backend.clients `{client}`: webhook_url `{url}` {problem}")]
    Url {
        /// The backend client.
        client: String,
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A `webhook_url` without a `webhook_secret`.
    #[error("backend.clients `{0}`: webhook_url is set but webhook_secret is not; give both (a random secret, e.g. `openssl rand -hex 32`)")]
    MissingSecret(String),
    /// No CA certificate to verify `https://` webhook servers with.
    #[error("cannot verify https webhook URLs: {0} (install the system's CA certificates, e.g. the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle)")]
    Roots(String),
    /// The TLS client cannot be set up.
    #[error("cannot set up TLS for webhooks: {0}")]
    Tls(String),
}

/// How the dispatcher retries and bounds its work. [`Default`] gives the documented
/// behaviour; tests shorten the delays. Deliberately not part of the configuration file.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// Delay before the first retry; doubled for each later one. Default 1 s.
    pub retry_base: Duration,
    /// Longest delay between two attempts. Default 5 minutes.
    pub max_delay: Duration,
    /// Attempts per notification, the first included. Default 10.
    pub max_attempts: u32,
    /// Limit on one request (connect, send, read the answer). Default 10 s.
    pub request_timeout: Duration,
    /// Requests in flight at once to one backend client's webhook. Each client has its
    /// own share, so a client whose target hangs or is down delays only its own
    /// notifications. Default 8.
    pub concurrency: usize,
    /// Notifications waiting or in flight at once for one backend client; beyond this, its
    /// new events are logged and dropped (a `received` one before its message is marked
    /// delivered, so the backend's listing still shows it as new). Other clients' events
    /// are not affected. Default 10 000.
    pub max_pending: usize,
    /// CA certificates for `https://` webhook servers; `None`: the operating system's.
    pub trusted_cas: Option<Vec<CertificateDer<'static>>>,
    /// How long an outbox event claimed by this instance stays leased to it (extended
    /// to cover each retry's wait); if the instance dies, another one delivers the event
    /// after this. Also how long an event nobody claimed waits before a sweep takes it.
    /// Default 60 s (`[webhooks] lease_secs`).
    pub outbox_lease: Duration,
    /// How often the outbox is swept for events nobody is delivering. Default 5 s.
    pub outbox_sweep: Duration,
    /// How long a request in flight when shutdown begins may still take before it is
    /// abandoned; its outbox event stays and is delivered later, by any instance. `varti
    /// serve` sets its shutdown grace. Default 5 s.
    pub shutdown_wait: Duration,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            retry_base: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts: 10,
            request_timeout: Duration::from_secs(10),
            concurrency: 8,
            max_pending: 10_000,
            trusted_cas: None,
            outbox_lease: Duration::from_secs(60),
            outbox_sweep: Duration::from_secs(5),
            shutdown_wait: Duration::from_secs(5),
        }
    }
}

/// The JSON body of a webhook request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Notification {
    /// `received`, `sent` or `failed`.
    pub event: &'static str,
    /// The ebMS MessageId.
    pub message_id: String,
    /// The backend the message belongs to.
    pub owner: String,
    /// The ebMS error, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the notification was made (RFC 3339, UTC).
    pub at: String,
}

impl Notification {
    /// The notification of `event`, made at `at`.
    pub(crate) fn new(event: &MessageEvent, at: OffsetDateTime) -> Notification {
        let error = match event {
            MessageEvent::Failed { error, .. } => Some(error.clone()),
            _ => None,
        };
        Notification {
            event: event.kind(),
            message_id: event.message_id().to_owned(),
            owner: event.owner().to_owned(),
            error,
            // RFC 3339 formatting of a UTC time cannot fail for years 0..=9999.
            at: at
                .to_offset(time::UtcOffset::UTC)
                .format(&Rfc3339)
                .unwrap_or_default(),
        }
    }

    /// The notification of an outbox event (its `at` is when the change happened).
    pub(crate) fn of_outbox(event: &OutboxEvent) -> Notification {
        Notification {
            event: static_kind(&event.kind),
            message_id: event.message_id.clone(),
            owner: event.owner.clone(),
            error: event.error.clone(),
            at: event
                .at
                .to_offset(time::UtcOffset::UTC)
                .format(&Rfc3339)
                .unwrap_or_default(),
        }
    }

    /// The request body (compact JSON).
    pub(crate) fn to_body(&self) -> Vec<u8> {
        // Serialising a struct of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The event name of an outbox event's kind.
fn static_kind(kind: &str) -> &'static str {
    match kind {
        "received" => "received",
        "sent" => "sent",
        "failed" => "failed",
        _ => "unknown",
    }
}

/// The `X-Varti-Signature` value of `body` under `secret`: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the exact body bytes.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mac = hmac_sha256(secret, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in mac {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Whether `header` (an `X-Varti-Signature` value) is the signature of `body` under
/// `secret`, compared in constant time. What a backend does before trusting a body.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    let expected = hmac_sha256(secret, body);
    given.len() == expected.len() && openssl::memcmp::eq(&given, &expected)
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> Vec<u8> {
    // OpenSSL HMAC accepts any key length (including empty) and SHA-256 is always available,
    // so these calls only fail on memory exhaustion.
    let key = PKey::hmac(secret).expect("OpenSSL cannot create an HMAC key");
    let mut signer =
        Signer::new(MessageDigest::sha256(), &key).expect("OpenSSL cannot start HMAC-SHA256");
    signer
        .sign_oneshot_to_vec(body)
        .expect("OpenSSL cannot compute HMAC-SHA256")
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Delay after failed attempt number `attempt` (1-based): `base`·2^(attempt−1), at most
/// `cap`.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    1u32.checked_shl(attempt.saturating_sub(1))
        .and_then(|factor| base.checked_mul(factor))
        .map_or(cap, |d| d.min(cap))
}

/// One backend's webhook, with its own share of the dispatcher's capacity.
struct Hook {
    uri: Uri,
    secret: Vec<u8>,
    /// Its requests in flight (`concurrency`).
    in_flight: Semaphore,
    /// Its notifications waiting or in flight (`max_pending`).
    pending: AtomicUsize,
}

type HttpClient = HttpsClient<Full<Bytes>>;

struct Inner {
    ap: Arc<AccessPoint>,
    hooks: HashMap<String, Hook>,
    client: HttpClient,
    options: WebhookOptions,
    reports: broadcast::Sender<Report>,
}

/// How one notification ended, announced by [`Dispatcher::reports`] once nothing more will
/// happen to it (no later attempt, no retry): what tests and operators can wait on instead
/// of waiting for time to pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The backend client.
    pub owner: String,
    /// The event name (`received`, `sent`, `failed`, or a feature's notice).
    pub event: &'static str,
    /// The message (or request) it was about.
    pub subject: String,
    /// How it ended.
    pub ending: Ending,
}

/// The end of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The backend answered 2xx on this attempt.
    Delivered {
        /// Attempts made, this one included.
        attempts: u32,
    },
    /// Every attempt failed.
    GaveUp {
        /// Attempts made.
        attempts: u32,
    },
    /// Shutdown came first.
    Abandoned {
        /// Attempts made before it.
        attempts: u32,
    },
    /// The received message was already marked delivered (a duplicate event, or another
    /// instance notified): not notified again.
    AlreadyDelivered,
    /// The message could not be marked delivered (store trouble): not notified.
    NotMarked,
    /// The backend has no webhook.
    NoWebhook,
    /// Too many notifications were pending (`max_pending`): dropped unsent.
    Dropped,
}

/// Listens to an access point's events and notifies the backends (see the
/// [module documentation](self)).
pub struct Dispatcher {
    inner: Arc<Inner>,
    events: broadcast::Receiver<MessageEvent>,
    notices: broadcast::Receiver<Notice>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("backends", &self.inner.hooks.keys().collect::<Vec<_>>())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// A notification a feature of the runtime wants delivered to one backend's webhook, with
/// the same signing, retries and limits as the message events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The backend client to notify (nothing happens when it has no webhook).
    pub owner: String,
    /// The event name (`X-Varti-Event`).
    pub event: &'static str,
    /// What the notice is about, for the logs (a message or request id).
    pub subject: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// One notification on its way.
struct Outgoing {
    owner: String,
    kind: &'static str,
    subject: String,
    /// A received message the backend hears of through this notification: marked delivered
    /// first, and only the caller that marks it notifies.
    delivers: Option<String>,
    /// The body, made when the notification is sent (a message event's `at` is then).
    body: Option<Bytes>,
    event: Option<MessageEvent>,
    /// Its outbox event, once claimed: the delivery id is the event id, and the event is
    /// removed from the outbox when the backend answered (or the attempts ran out).
    outbox: Option<OutboxEvent>,
    /// Claimed by a sweep (its first deliverer died or never came): a received message
    /// already marked delivered is notified all the same.
    recovered: bool,
}

impl Outgoing {
    fn of_event(event: MessageEvent) -> Outgoing {
        Outgoing {
            owner: event.owner().to_owned(),
            kind: event.kind(),
            subject: event.message_id().to_owned(),
            delivers: matches!(event, MessageEvent::Received { .. })
                .then(|| event.message_id().to_owned()),
            body: None,
            event: Some(event),
            outbox: None,
            recovered: false,
        }
    }

    fn of_outbox(event: OutboxEvent) -> Outgoing {
        let kind = static_kind(&event.kind);
        Outgoing {
            owner: event.owner.clone(),
            kind,
            subject: event.message_id.clone(),
            delivers: (kind == "received").then(|| event.message_id.clone()),
            body: None,
            event: None,
            outbox: Some(event),
            recovered: true,
        }
    }

    fn of_notice(notice: Notice) -> Outgoing {
        Outgoing {
            owner: notice.owner,
            kind: notice.event,
            subject: notice.subject,
            delivers: None,
            body: Some(Bytes::from(notice.body)),
            event: None,
            outbox: None,
            recovered: false,
        }
    }
}

impl Dispatcher {
    /// Reads the webhooks of `ap`'s backend clients and subscribes to its events at once
    /// (events announced after this returns are not missed, even before [`Dispatcher::run`]
    /// is polled).
    pub fn new(ap: Arc<AccessPoint>, options: WebhookOptions) -> Result<Dispatcher, WebhookError> {
        let mut hooks = HashMap::new();
        // The webhooks of the start-up settings: a reload that changes them reports
        // "needs restart" (see `crate::reload`).
        for c in &ap.settings.clients {
            let Some(url) = &c.webhook_url else { continue };
            let secret = c
                .webhook_secret
                .as_ref()
                .ok_or_else(|| WebhookError::MissingSecret(c.name.clone()))?;
            let bad = |problem: &str| WebhookError::Url {
                client: c.name.clone(),
                url: url.clone(),
                problem: problem.to_owned(),
            };
            let uri: Uri = url
                .parse()
                .map_err(|e| bad(&format!("is not a valid URL ({e})")))?;
            match uri.scheme_str() {
                Some("http") | Some("https") => {}
                _ => return Err(bad("must start with http:// or https://")),
            }
            if uri.host().is_none_or(str::is_empty) {
                return Err(bad("has no host"));
            }
            hooks.insert(
                c.name.clone(),
                Hook {
                    uri,
                    secret: secret.as_bytes().to_vec(),
                    in_flight: Semaphore::new(options.concurrency.max(1)),
                    pending: AtomicUsize::new(0),
                },
            );
        }
        // The events of other backends would only wait in the outbox for a sweep to
        // remove them: the store no longer writes them.
        ap.store
            .set_outbox_owners(Some(hooks.keys().cloned().collect()));
        let needs_roots = hooks.values().any(|h| h.uri.scheme_str() == Some("https"));
        let client = http_client(&options, needs_roots)?;
        let events = ap.subscribe();
        let notices = ap.subscribe_notices();
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                ap,
                hooks,
                client,
                reports: broadcast::channel(1024).0,
                options,
            }),
            events,
            notices,
        })
    }

    /// Reports how each notification ended, from now on.
    pub fn reports(&self) -> broadcast::Receiver<Report> {
        self.inner.reports.subscribe()
    }

    /// Notifies until `token` is cancelled (or the access point is dropped), then gives
    /// requests in flight up to [`WebhookOptions::shutdown_wait`] and abandons waiting
    /// retries.
    pub async fn run(mut self, token: CancellationToken) {
        if self.inner.hooks.is_empty() {
            tracing::debug!("no backend has a webhook_url; webhooks are off");
        } else {
            tracing::info!(
                backends = ?self.inner.hooks.keys().collect::<Vec<_>>(),
                "webhooks on"
            );
        }
        let tasks = TaskTracker::new();
        // The sweep: events nobody is delivering (their instance died, an announcement was
        // missed or dropped), and those of backends without a webhook (removed).
        tasks.spawn(sweep(self.inner.clone(), tasks.clone(), token.clone()));
        loop {
            let next = tokio::select! {
                biased;
                _ = token.cancelled() => break,
                event = self.events.recv() => event.map(Outgoing::of_event),
                notice = self.notices.recv() => notice.map(Outgoing::of_notice),
            };
            match next {
                Ok(outgoing) => dispatch(&self.inner, outgoing, &tasks, &token),
                Err(RecvError::Lagged(missed)) => tracing::warn!(
                    missed,
                    "the webhook dispatcher fell behind and missed {missed} event(s); the \
                     outbox sweep delivers them later"
                ),
                Err(RecvError::Closed) => break,
            }
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// Most outbox events one sweep claims.
const SWEEP_BATCH: usize = 256;

/// Claims the outbox events nobody is delivering, every `outbox_sweep`, until `token` is
/// cancelled. A store that cannot be reached is tried again at the next sweep.
async fn sweep(inner: Arc<Inner>, tasks: TaskTracker, token: CancellationToken) {
    let mut tick = tokio::time::interval(inner.options.outbox_sweep.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !inner.ap.may_claim() {
            continue;
        }
        let ap = inner.ap.clone();
        let lease = inner.options.outbox_lease;
        let claimed = tokio::task::spawn_blocking(move || {
            ap.store
                .claim_outbox_due(&ap.instance, lease, lease, SWEEP_BATCH, ap.clock.now())
        })
        .await;
        let events = match claimed {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot sweep the webhook outbox; trying again later");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the webhook outbox sweep failed");
                continue;
            }
        };
        if token.is_cancelled() {
            // Shutting down: what was just claimed stays leased to this instance until the
            // lease runs out, then a sweep (of any instance) takes it over.
            tracing::debug!(
                events = events.len(),
                "shutting down: swept webhook events left for a later sweep"
            );
            return;
        }
        // Events of backends without a webhook (none, or removed): nobody to notify, so
        // they are finished together, in one store step.
        let (events, unhooked): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|e| inner.hooks.contains_key(&e.owner));
        if !unhooked.is_empty() && inner.complete(&unhooked).await {
            tracing::debug!(
                events = unhooked.len(),
                "webhook events of backends without a webhook removed from the outbox"
            );
            // Their end: nothing more will happen to them.
            for event in unhooked {
                let _ = inner.reports.send(Report {
                    owner: event.owner,
                    event: static_kind(&event.kind),
                    subject: event.message_id,
                    ending: Ending::NoWebhook,
                });
            }
        }
        for event in events {
            tracing::info!(
                message_id = %event.message_id,
                event = %event.kind,
                delivery = %event.event_id,
                "webhook event taken over from the outbox"
            );
            dispatch(&inner, Outgoing::of_outbox(event), &tasks, &token);
        }
    }
}

/// Starts the notification as its own task (never waits for it).
fn dispatch(inner: &Arc<Inner>, event: Outgoing, tasks: &TaskTracker, token: &CancellationToken) {
    let Some(hook) = inner.hooks.get(&event.owner) else {
        // Nobody to notify (and the store wrote no outbox event for it: see `new`).
        return;
    };
    let pending = hook.pending.fetch_add(1, Ordering::SeqCst);
    if pending >= inner.options.max_pending {
        hook.pending.fetch_sub(1, Ordering::SeqCst);
        tracing::error!(
            message_id = %event.subject,
            owner = %event.owner,
            event = event.kind,
            pending,
            "too many webhook notifications pending; this one waits in the outbox (is the \
             backend down?)"
        );
        let _ = inner.reports.send(Report {
            owner: event.owner,
            event: event.kind,
            subject: event.subject,
            ending: Ending::Dropped,
        });
        return;
    }
    let inner = inner.clone();
    let token = token.clone();
    tasks.spawn(async move {
        let (owner, event_name, subject) = (event.owner.clone(), event.kind, event.subject.clone());
        let ending = inner.deliver(event, &token).await;
        if let Some(hook) = inner.hooks.get(&owner) {
            hook.pending.fetch_sub(1, Ordering::SeqCst);
        }
        let _ = inner.reports.send(Report {
            owner,
            event: event_name,
            subject,
            ending,
        });
    });
}

impl Inner {
    /// Delivers one notification: marks a received message delivered first, then posts
    /// and retries. Says how it ended.
    async fn deliver(&self, mut event: Outgoing, token: &CancellationToken) -> Ending {
        let Some(hook) = self.hooks.get(&event.owner) else {
            return Ending::NoWebhook;
        };
        let message_id = event.subject.clone();
        if let (None, Some(announced)) = (&event.outbox, &event.event) {
            // An announced change: its outbox event, which the store wrote with it.
            match self.claim(announced).await {
                Some(OutboxClaim::Claimed(claimed)) => event.outbox = Some(claimed),
                Some(OutboxClaim::Busy) => {
                    tracing::debug!(
                        message_id,
                        event = event.kind,
                        "another delivery of this event is under way (a duplicate \
                         announcement, or another instance); not notified again"
                    );
                    return Ending::AlreadyDelivered;
                }
                // No outbox event (or the store cannot tell): notified as announced.
                Some(OutboxClaim::Absent) | None => {}
            }
        }
        if event.delivers.is_some() {
            let store = self.ap.store.clone();
            let id = message_id.clone();
            let now = self.ap.clock.now();
            let marked = tokio::task::spawn_blocking(move || store.mark_delivered(&id, now)).await;
            match marked {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) if event.recovered => {
                    // Marked by an instance that died before the backend answered.
                }
                Ok(Ok(false)) => {
                    if let Some(claimed) = event.outbox {
                        self.complete(&[claimed]).await;
                    }
                    tracing::debug!(
                        message_id,
                        "already delivered (a duplicate event, or another instance); not notified again"
                    );
                    return Ending::AlreadyDelivered;
                }
                Ok(Err(e)) => {
                    tracing::error!(message_id, error = %e, "cannot mark the message delivered; the backend is not notified (its API listing still shows it)");
                    return Ending::NotMarked;
                }
                Err(e) => {
                    tracing::error!(message_id, error = %e, "the delivery-marking task failed; the backend is not notified (its API listing still shows it)");
                    return Ending::NotMarked;
                }
            }
        }
        let body = match (event.body, &event.outbox, &event.event) {
            (Some(body), _, _) => body,
            (None, Some(claimed), _) => Bytes::from(Notification::of_outbox(claimed).to_body()),
            (None, None, Some(e)) => {
                Bytes::from(Notification::new(e, self.ap.clock.now()).to_body())
            }
            (None, None, None) => return Ending::NoWebhook,
        };
        let signature = signature(&hook.secret, &body);
        // An outbox event's id is its delivery id, the same from any instance.
        let delivery = event
            .outbox
            .as_ref()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |e| e.event_id.clone());
        let outbox = event.outbox;
        let kind = event.kind;
        let max = self.options.max_attempts.max(1);
        for attempt in 1..=max {
            let permit = tokio::select! {
                // Shutdown first: once it began, no new attempt starts.
                biased;
                _ = token.cancelled() => {
                    tracing::warn!(message_id, event = kind, delivery, attempt, "shutting down: webhook not sent");
                    return Ending::Abandoned { attempts: attempt - 1 };
                }
                permit = hook.in_flight.acquire() => permit,
            };
            let post = self.post(&hook.uri, body.clone(), kind, &delivery, &signature);
            let shutdown_waited = async {
                token.cancelled().await;
                tokio::time::sleep(self.options.shutdown_wait).await;
            };
            let outcome = tokio::select! {
                outcome = post => outcome,
                _ = shutdown_waited => {
                    tracing::warn!(message_id, event = kind, delivery, attempt, "shutting down: the webhook request got no answer in time; abandoned");
                    return Ending::Abandoned { attempts: attempt };
                }
            };
            drop(permit);
            let problem = match outcome {
                Ok(status) if status.is_success() => {
                    tracing::info!(
                        message_id,
                        event = kind,
                        delivery,
                        attempt,
                        "backend notified"
                    );
                    if let Some(claimed) = outbox {
                        self.complete(&[claimed]).await;
                    }
                    return Ending::Delivered { attempts: attempt };
                }
                Ok(status) => format!("the backend answered HTTP {status}"),
                Err(problem) => problem,
            };
            if attempt == max {
                tracing::error!(
                    message_id,
                    event = kind,
                    delivery,
                    attempts = attempt,
                    error = %problem,
                    url = %hook.uri,
                    "webhook failed; giving up (the backend's API listing still shows the message)"
                );
                if let Some(claimed) = outbox {
                    self.complete(&[claimed]).await;
                }
                return Ending::GaveUp { attempts: attempt };
            }
            let delay = backoff(self.options.retry_base, self.options.max_delay, attempt);
            tracing::warn!(
                message_id,
                event = kind,
                delivery,
                attempt,
                error = %problem,
                url = %hook.uri,
                retry_in = ?delay,
                "webhook failed; will retry"
            );
            if let Some(claimed) = &outbox {
                // The lease covers the wait and the next attempt, so no other instance
                // takes the event over meanwhile.
                self.extend(claimed, delay).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = token.cancelled() => {
                    tracing::warn!(message_id, event = kind, delivery, attempt, "shutting down: webhook not retried");
                    return Ending::Abandoned { attempts: attempt };
                }
            }
        }
        Ending::GaveUp { attempts: max }
    }

    /// Claims the outbox event of an announced change for this instance. `None` when the
    /// store cannot be reached (logged).
    async fn claim(&self, announced: &MessageEvent) -> Option<OutboxClaim> {
        let ap = self.ap.clone();
        let (id, kind) = (announced.message_id().to_owned(), announced.kind());
        let lease = self.options.outbox_lease;
        let claimed = tokio::task::spawn_blocking(move || {
            ap.store
                .claim_outbox_event(&id, kind, &ap.instance, lease, ap.clock.now())
        })
        .await;
        match claimed {
            Ok(Ok(claim)) => Some(claim),
            Ok(Err(e)) => {
                tracing::warn!(message_id = announced.message_id(), error = %e, "cannot claim the webhook event in the outbox; notifying without it");
                None
            }
            Err(e) => {
                tracing::error!(message_id = announced.message_id(), error = %e, "the outbox claim task failed");
                None
            }
        }
    }

    /// Extends this instance's lease on `event` to cover `wait` and one more lease.
    async fn extend(&self, event: &OutboxEvent, wait: Duration) {
        let ap = self.ap.clone();
        let leased = event.clone();
        let until = self.ap.clock.now() + wait + self.options.outbox_lease;
        let extended = tokio::task::spawn_blocking(move || {
            ap.store.extend_outbox_lease(&leased, &ap.instance, until)
        })
        .await;
        match extended {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(message_id = %event.message_id, delivery = %event.event_id, "the webhook event's lease was lost; another instance may deliver it too")
            }
            Ok(Err(e)) => {
                tracing::warn!(message_id = %event.message_id, error = %e, "cannot extend the webhook event's lease")
            }
            Err(e) => {
                tracing::error!(message_id = %event.message_id, error = %e, "the lease task failed")
            }
        }
    }

    /// Removes `events` from the outbox: nothing more will be done about them. If the store
    /// cannot be reached, they stay and are delivered once more later (at least once).
    /// Whether they were removed.
    async fn complete(&self, events: &[OutboxEvent]) -> bool {
        let ap = self.ap.clone();
        let done = events.to_vec();
        let done =
            tokio::task::spawn_blocking(move || ap.store.complete_outbox_events(&done)).await;
        let problem = match done {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the outbox task failed: {e}"),
        };
        for event in events {
            tracing::warn!(message_id = %event.message_id, delivery = %event.event_id, error = %problem, "cannot remove the webhook event from the outbox; it will be delivered again");
        }
        false
    }

    /// One attempt: the status, or what went wrong.
    async fn post(
        &self,
        uri: &Uri,
        body: Bytes,
        kind: &'static str,
        delivery: &str,
        signature: &str,
    ) -> Result<StatusCode, String> {
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("varti/", env!("CARGO_PKG_VERSION")),
            )
            .header(EVENT_HEADER, kind)
            .header(DELIVERY_HEADER, delivery)
            .header(SIGNATURE_HEADER, signature)
            .header(header::CONTENT_LENGTH, HeaderValue::from(body.len()))
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            // Read (a bounded part of) the answer so the connection can be reused.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await;
            Ok(status)
        };
        tokio::time::timeout(self.options.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {:?}",
                    self.options.request_timeout
                ))
            })
    }
}

/// The pooled client for http and https webhook URLs.
fn http_client(options: &WebhookOptions, needs_roots: bool) -> Result<HttpClient, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.trusted_cas {
        Some(cas) => {
            for ca in cas {
                roots
                    .add(ca.clone())
                    .map_err(|e| WebhookError::Tls(format!("a trusted CA certificate: {e}")))?;
            }
        }
        None if needs_roots => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or("none found".to_owned(), |e| e.to_string());
                return Err(WebhookError::Roots(format!(
                    "no usable system CA certificate ({why})"
                )));
            }
            for e in &found.errors {
                tracing::warn!(error = %e, "some system CA certificates could not be read");
            }
        }
        None => {}
    }
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(tls::VERSIONS)
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(https_client(HttpsOptions {
        allow_plain_http: true,
        connect_timeout: Some(options.request_timeout),
        ..HttpsOptions::new(config)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (HMAC-SHA256, key "Jefe").
    #[test]
    fn signature_matches_rfc4231() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_verifies_and_rejects_changes() {
        let body = br#"{"event":"sent","message_id":"m@x"}"#;
        let sig = signature(b"s3cret", body);
        assert!(verify_signature(b"s3cret", body, &sig));
        assert!(!verify_signature(b"other", body, &sig));
        let mut changed = body.to_vec();
        changed[3] ^= 1;
        assert!(!verify_signature(b"s3cret", &changed, &sig));
        assert!(
            !verify_signature(b"s3cret", body, &sig[7..]),
            "prefix required"
        );
        assert!(!verify_signature(b"s3cret", body, &sig[..sig.len() - 2]));
        assert!(!verify_signature(b"s3cret", body, "sha256=zz"));
        assert!(verify_signature(
            b"s3cret",
            body,
            &format!("sha256={}", sig[7..].to_uppercase())
        ));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        let cap = s(300);
        let delays: Vec<_> = (1..=10).map(|a| backoff(s(1), cap, a)).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300].map(s).to_vec()
        );
        assert_eq!(backoff(s(1), cap, 40), cap, "no overflow");
        assert_eq!(backoff(s(1), cap, u32::MAX), cap);
    }

    #[test]
    fn body_has_error_only_for_failed() {
        let at = time::macros::datetime!(2026-11-30 12:00:00 UTC);
        let sent = Notification::new(
            &MessageEvent::Sent {
                message_id: "m1".into(),
                owner: "portal".into(),
            },
            at,
        );
        let json: serde_json::Value = serde_json::from_slice(&sent.to_body()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "sent", "message_id": "m1", "owner": "portal",
                "at": "2026-11-30T12:00:00Z"})
        );
        let failed = Notification::new(
            &MessageEvent::Failed {
                message_id: "m2".into(),
                owner: "portal".into(),
                error: "EBMS:0301 MissingReceipt".into(),
            },
            at,
        );
        let json: serde_json::Value = serde_json::from_slice(&failed.to_body()).unwrap();
        assert_eq!(json["event"], "failed");
        assert_eq!(json["error"], "EBMS:0301 MissingReceipt");
    }
}
