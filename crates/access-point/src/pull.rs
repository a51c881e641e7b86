//! One-way/pull (ebMS3 Core §3.4, issue #4): messages on a pull leg wait at the sending
//! access point (the leg's initiator, the `eb:From` side) until the receiving one (the
//! responder, `eb:To`) pulls them from their message partition channel (MPC).
//!
//! **Holding side** (we are on the From side of a pull leg):
//!
//! * [`submit`](crate::submit::submit) parks the message far in the future
//!   (`wait_for_pull`), so the push sender never takes it.
//! * A `PullRequest` on `/msh` (`answer_pull_request`) must be signed, by the signing
//!   certificate of a party that is the responder of a pull leg on that MPC: that is how the
//!   puller is authorised (else EBMS:0101; unsigned, EBMS:0103). It is good once
//!   (`fresh_once`): a stale timestamp or a MessageId already answered by any instance
//!   sharing the store is EBMS:0101. Its oldest waiting message for that party is
//!   claimed ([`Store::claim_message`](varti_store::Store::claim_message), leased for
//!   `sender.lease_secs`), sealed exactly as a push would seal it, and streamed back as the
//!   HTTP response. Nothing waiting: an EBMS:0006 EmptyMessagePartitionChannel warning.
//! * The receipt comes back later as a request of its own (`answer_signal`): verified (it
//!   must be signed by the puller, and its non-repudiation information must match what we
//!   sealed), it acknowledges the message (event `sent`). An error signal fails it, or,
//!   when retrying may help, releases it to be pulled again. A pulled message whose receipt
//!   never comes is pulled again once its lease expired (reliability); the puller's
//!   duplicate detection answers with its original receipt, which matches the first sealing
//!   (every sealing's references are kept, see [`SealedForPull`]).
//!
//! **Pulling side** (we are the responder of a pull leg): [`run`] sends a signed
//! `PullRequest` for each (MPC, partner) every `sender.poll_interval_ms` (every 5 s while
//! the MPC is empty or the partner unreachable). A message in the answer is received
//! exactly like a pushed one (`accept_user_message`); the receipt (or error signal) it
//! produces is then pushed to the partner's endpoint.
//!
//! Limits: a pulled message travels in an HTTP response, which the puller's client reads
//! into memory up to `client.max_response_bytes`; the pull legs of one MPC share one
//! security profile (the pull request is verified with the first one's).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{header, HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use openssl::x509::X509;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use varti_as4::error::{EbmsError, ErrorCode};
use varti_as4::inbound::{self, ReceivePolicy, ReceivedMessage};
use varti_as4::leg::profile_of;
use varti_as4::message::mime::MimePackage;
use varti_as4::message::model::{SignalKind, SignalMessage};
use varti_as4::message::soap;
use varti_as4::outbound::{build_pull_request, check_receipt};
use varti_as4::pmode::model::{Binding, Leg, Party};
use varti_as4::receive::Arrival;
use varti_as4::security::sign::SignedReference;
use varti_store::{AttemptOutcome, Direction as StoreDirection, ListFilter, MessageRecord, State};

use crate::access_point::{AccessPoint, MessageEvent};
use crate::client::OutboundBody;
use crate::ops::{Direction, Outcome};
use crate::receiver::{
    accept_user_message, error_response, internal_fault, read_message, signing_identity,
};
use crate::reload::Snapshot;
use crate::sender::{errors_retryable, errors_text, receipt_problem, seal};
use crate::server::{MshResponse, MshResponseBody};
use crate::submit::leg_key;

/// Content type of the SOAP 1.2 signals we push (pull requests, receipts of pulled
/// messages).
const SOAP12: &str = "application/soap+xml; charset=UTF-8";

/// How long a puller waits before asking again when the MPC was empty or the partner
/// could not be reached.
const EMPTY_BACKOFF: Duration = Duration::from_secs(5);

/// How far in the future a message waiting to be pulled is due: never, for the push
/// sender (see [`wait_for_pull`]).
const PULL_PARKING: time::Duration = time::Duration::days(100 * 365);

/// When a message waiting to be pulled is due for the push sender: a hundred years from
/// `now`, so that [`claim_due`](varti_store::Store::claim_due) never takes it (a pull
/// request takes it with [`claim_message`](varti_store::Store::claim_message)).
pub(crate) fn wait_for_pull(now: OffsetDateTime) -> OffsetDateTime {
    now + PULL_PARKING
}

/// Most messages whose sealed references are remembered at once (oldest forgotten first).
const MAX_REMEMBERED: usize = 10_000;
/// Most sealings remembered per message (each pull of it is one).
const MAX_SEALINGS: usize = 16;

/// The references we signed in each sealing of a pulled message, until its receipt came:
/// what the receipt's non-repudiation information must echo. Kept in memory: a receipt
/// that reaches another instance, or this one after a restart, is checked without them
/// (signature and reference only; logged).
#[derive(Debug, Default)]
pub struct SealedForPull {
    inner: Mutex<Sealed>,
}

#[derive(Debug, Default)]
struct Sealed {
    by_id: HashMap<String, Vec<Vec<SignedReference>>>,
    order: VecDeque<String>,
}

impl SealedForPull {
    /// Remembers the references of one sealing of `message_id`.
    pub(crate) fn remember(&self, message_id: &str, references: Vec<SignedReference>) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !s.by_id.contains_key(message_id) {
            s.order.push_back(message_id.to_owned());
            while s.order.len() > MAX_REMEMBERED {
                if let Some(old) = s.order.pop_front() {
                    s.by_id.remove(&old);
                }
            }
        }
        let sealings = s.by_id.entry(message_id.to_owned()).or_default();
        if sealings.len() >= MAX_SEALINGS {
            // Keep the first (a duplicate's original receipt names it) and the newest.
            sealings.remove(1);
        }
        sealings.push(references);
    }

    /// Every remembered sealing of `message_id`.
    pub(crate) fn sealings(&self, message_id: &str) -> Option<Vec<Vec<SignedReference>>> {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.by_id.get(message_id).cloned()
    }

    /// Forgets `message_id` (its receipt came).
    pub fn forget(&self, message_id: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.by_id.remove(message_id).is_some() {
            s.order.retain(|id| id != message_id);
        }
    }
}

/// Our pull legs on `mpc`: those we send on (we are on their From side).
fn held_legs<'a>(snap: &'a Snapshot, mpc: &str) -> Vec<&'a Leg> {
    let me = &snap.identity.party;
    snap.pmodes
        .legs
        .iter()
        .filter(|l| l.binding == Binding::Pull && l.mpc == mpc && l.from.parties.contains(me))
        .collect()
}

/// Answers a `PullRequest` for `mpc` (blocking: runs in the MSH handler's thread).
pub(crate) fn answer_pull_request(
    ap: &AccessPoint,
    package: &MimePackage,
    signal: &SignalMessage,
    mpc: &str,
) -> MshResponse {
    let request_id = signal.message_info.message_id.as_str();
    let snap = ap.current();
    let legs = held_legs(&snap, mpc);
    let Some(first) = legs.first().copied() else {
        let e = EbmsError::new(
            ErrorCode::ProcessingModeMismatch,
            format!(
                "this access point offers no messages to pull on MPC `{mpc}`: no one-way/pull \
                 leg of its PModes sends on it (check the MPC of the pull leg)"
            ),
        );
        tracing::warn!(request = %request_id, %mpc, "pull request refused: unknown MPC");
        return error_response(&e, Some(request_id), None);
    };
    let refuse = |e: EbmsError| {
        tracing::warn!(request = %request_id, %mpc, code = e.code.code(), error = %e.detail, "pull request refused");
        ap.metrics.message(Direction::Inbound, Outcome::Rejected);
        error_response(&e, Some(request_id), Some(&signing_identity(&snap, first)))
    };
    // Who may pull: the responders of these legs, by their signing certificates.
    let mut pullers: Vec<(&Party, &X509)> = Vec::new();
    for leg in &legs {
        for name in &leg.to.parties {
            let cert = snap.partners.get(name).and_then(|c| c.signing.as_ref());
            if let (Some(party), Some(cert)) = (snap.pmodes.party(name), cert) {
                if !pullers.iter().any(|(p, _)| p.name == party.name) {
                    pullers.push((party, cert));
                }
            }
        }
    }
    let now = ap.clock.now();
    let certs: Vec<X509> = pullers.iter().map(|(_, c)| (*c).clone()).collect();
    let mut policy = ReceivePolicy::strict(profile_of(first.security.profile));
    // The signature is what authorises the puller: required whatever the leg says.
    policy.require_signature = true;
    policy.require_encryption = false;
    policy.partner_certificates = certs.clone();
    policy.trust_anchors = if snap.identity.trust_anchors.is_empty() {
        certs
    } else {
        snap.identity.trust_anchors.clone()
    };
    // Revocation: the CRL files the PModes name for the possible pullers.
    policy.crl_files = pullers.iter().flat_map(|(p, _)| p.crls.clone()).collect();
    policy.at = now;
    policy.spool_dir = Some(ap.spool_dir());
    let received = match inbound::receive(package, &policy) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    let Some(signer) = received.signature.as_ref().map(|s| &s.signer) else {
        return refuse(EbmsError::new(
            ErrorCode::FailedAuthentication,
            "the PullRequest is not signed; sign it with the puller's signing key",
        ));
    };
    let Some(puller) = pullers
        .iter()
        .find(|(_, cert)| same_cert(cert, signer))
        .map(|(p, _)| *p)
    else {
        let allowed: Vec<&str> = pullers.iter().map(|(p, _)| p.name.as_str()).collect();
        return refuse(EbmsError::new(
            ErrorCode::FailedAuthentication,
            format!(
                "the PullRequest is signed by `{}`, which is not the signing certificate of a \
                 party allowed to pull from MPC `{mpc}` (the responders of its pull legs: \
                 {allowed:?}); messages on it are not for the signer",
                subject_of(signer)
            ),
        ));
    };
    if let Err(e) = fresh_once(ap, &received, now) {
        return refuse(e);
    }
    // The puller's legs on this MPC, and its waiting messages on them, oldest first.
    let keys: Vec<String> = legs
        .iter()
        .filter(|l| l.to.parties.contains(&puller.name))
        .map(|l| leg_key(l))
        .collect();
    let waiting = match waiting_for(ap, &keys, puller, now) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the messages waiting to be pulled");
            return internal_fault("the access point cannot read its messages right now");
        }
    };
    let lease = Duration::from_secs(ap.settings.sender.lease_secs);
    for id in waiting {
        let record = match ap.store.claim_message(&id, &ap.instance, lease, now) {
            Ok(Some(r)) => r,
            // Taken by a concurrent pull, or purged: the next one.
            Ok(None) | Err(varti_store::StoreError::NotFound { .. }) => continue,
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "cannot claim a message to be pulled");
                return internal_fault("the access point cannot read its messages right now");
            }
        };
        let (file, content_type, references) = match seal(ap, &snap, &record, None) {
            Ok(s) => s,
            Err(e) => {
                fail_for_good(ap, &record, format!("cannot build the message: {e:#}"), now);
                continue;
            }
        };
        ap.pulled.remember(&id, references);
        tracing::info!(message_id = %id, puller = %puller.name, %mpc, attempt = record.attempts, "message pulled");
        let mut headers = HeaderMap::new();
        match HeaderValue::from_str(&content_type) {
            Ok(v) => headers.insert(header::CONTENT_TYPE, v),
            Err(_) => return internal_fault("the sealed message has an invalid Content-Type"),
        };
        return MshResponse {
            status: StatusCode::OK,
            headers,
            body: MshResponseBody::Reader(Box::new(file)),
        };
    }
    tracing::debug!(puller = %puller.name, %mpc, "pull request: nothing waiting");
    let e = EbmsError::new(
        ErrorCode::EmptyMessagePartitionChannel,
        format!("no message waits for `{}` on MPC `{mpc}`", puller.name),
    );
    error_response(&e, Some(request_id), Some(&signing_identity(&snap, first)))
}

/// A signed PullRequest is good once: its `eb:Timestamp` within
/// `sender.pull_request_max_age_secs` of our clock, and its MessageId never answered
/// before by any instance sharing the store. Otherwise anyone holding a copy of one signed
/// request (a TLS-terminating proxy, a message dump) could keep claiming the MPC's
/// messages. Reads the verified envelope, not the one parsed before verification.
fn fresh_once(
    ap: &AccessPoint,
    received: &ReceivedMessage,
    now: OffsetDateTime,
) -> Result<(), EbmsError> {
    let Some(info) = received
        .messaging()
        .signals
        .iter()
        .find(|s| matches!(s.kind, SignalKind::PullRequest(_)))
        .map(|s| &s.message_info)
    else {
        return Err(EbmsError::new(
            ErrorCode::InvalidHeader,
            "the verified envelope holds no SignalMessage",
        ));
    };
    let window = Duration::from_secs(ap.settings.sender.pull_request_max_age_secs);
    let stamped = info.timestamp.instant();
    if stamped < now - window || stamped > now + window {
        return Err(EbmsError::new(
            ErrorCode::FailedAuthentication,
            format!(
                "the PullRequest's eb:Timestamp {} is more than {} s from this access point's \
                 clock ({now}); send a new PullRequest (and check both clocks)",
                info.timestamp.as_str(),
                window.as_secs()
            ),
        ));
    }
    // Ids older than twice the window are forgotten: their timestamps are refused anyway.
    match ap
        .store
        .note_signal(&info.message_id, now, now - window * 2)
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(EbmsError::new(
            ErrorCode::FailedAuthentication,
            format!(
                "a PullRequest with MessageId `{}` was already answered: a replayed request \
                 hands out nothing; each PullRequest needs a new MessageId",
                info.message_id
            ),
        )),
        Err(e) => {
            tracing::error!(error = %e, "cannot note the PullRequest's MessageId");
            Err(EbmsError::new(
                ErrorCode::Other,
                "the access point cannot check the PullRequest for replay right now; try again",
            ))
        }
    }
}

/// The ids of the outbound messages on the legs `keys` addressed to `puller` that a pull
/// may take now, oldest first.
fn waiting_for(
    ap: &AccessPoint,
    keys: &[String],
    puller: &Party,
    now: OffsetDateTime,
) -> Result<Vec<String>, varti_store::StoreError> {
    let mut filter = ListFilter {
        direction: Some(StoreDirection::Outbound),
        states: vec![State::Submitted, State::WaitingForRetry, State::Sending],
        limit: varti_store::MAX_PAGE_SIZE,
        ..ListFilter::default()
    };
    let mut found: Vec<(OffsetDateTime, String)> = Vec::new();
    loop {
        let page = ap.store.list(&filter)?;
        for r in page.records {
            if keys.contains(&r.meta.pmode_id)
                && puller.has_id(&r.meta.to_party, None)
                && r.is_claimable_ignoring_due(now)
            {
                found.push((r.created_at, r.meta.message_id));
            }
        }
        match page.next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// Records a failure no retry can fix and announces it.
fn fail_for_good(ap: &AccessPoint, record: &MessageRecord, error: String, now: OffsetDateTime) {
    let id = record.meta.message_id.clone();
    tracing::error!(message_id = %id, %error, "message failed");
    let outcome = AttemptOutcome::Failed {
        error: error.clone(),
    };
    match ap.store.record_attempt(&id, &ap.instance, outcome, now) {
        Ok(_) => {
            ap.metrics.message(Direction::Outbound, Outcome::Failed);
            ap.announce(MessageEvent::Failed {
                message_id: id,
                owner: record.meta.owner.clone(),
                error,
            });
        }
        Err(e) => tracing::warn!(message_id = %id, error = %e, "cannot record the failure"),
    }
}

/// A receipt or error signal on `/msh` that answers a message a partner pulled from us:
/// verified and recorded. `None` when the signal is about no pulled message (the caller
/// ignores it, as before).
pub(crate) fn answer_signal(
    ap: &AccessPoint,
    package: &MimePackage,
    signal: &SignalMessage,
) -> Option<MshResponse> {
    let ref_to = signal.message_info.ref_to_message_id.as_deref()?;
    let record = match ap.store.get(ref_to) {
        Ok(Some(r)) if r.direction == StoreDirection::Outbound => r,
        Ok(_) => return None,
        Err(e) => {
            tracing::error!(message_id = %ref_to, error = %e, "cannot read the message a signal answers");
            return Some(internal_fault(
                "the access point cannot read its messages right now",
            ));
        }
    };
    let snap = ap.current();
    let leg = snap
        .leg(&record.meta.pmode_id)
        .filter(|l| l.binding == Binding::Pull)?;
    let signal_id = signal.message_info.message_id.as_str();
    let refuse = |e: EbmsError| {
        tracing::warn!(message_id = %ref_to, signal = %signal_id, code = e.code.code(), error = %e.detail, "answer to a pulled message refused");
        let identity = leg.security.sign.then(|| signing_identity(&snap, leg));
        Some(error_response(&e, Some(signal_id), identity.as_ref()))
    };
    let Some(partner) = snap.counterpart(leg, Some(&record.meta.to_party)) else {
        return refuse(EbmsError::new(
            ErrorCode::ProcessingModeMismatch,
            format!(
                "no party with id `{}` on the leg {}",
                record.meta.to_party,
                leg.label()
            ),
        ));
    };
    let now = ap.clock.now();
    let mut policy = snap.receive_policy(leg, partner, now, &ap.spool_dir());
    policy.require_encryption = false;
    let received = match inbound::receive(package, &policy) {
        Ok(r) => r,
        Err(e) => return refuse(e),
    };
    if let Some(sig) = &received.signature {
        let expected = snap
            .partners
            .get(&partner.name)
            .and_then(|c| c.signing.as_ref());
        if !expected.is_some_and(|c| same_cert(c, &sig.signer)) {
            return refuse(EbmsError::new(
                ErrorCode::FailedAuthentication,
                format!(
                    "the signal is signed by `{}`, not by `{}`, who pulled the message",
                    subject_of(&sig.signer),
                    partner.name
                ),
            ));
        }
    }
    let id = record.meta.message_id.clone();
    let accepted = MshResponse {
        status: StatusCode::ACCEPTED,
        headers: HeaderMap::new(),
        body: MshResponseBody::Empty,
    };
    let not_waiting = |what: &str| {
        refuse(EbmsError::new(
            ErrorCode::InvalidReceipt,
            format!(
                "message `{id}` is {}, not waiting for an answer: it was not pulled (or was \
                 settled otherwise), so this {what} changes nothing",
                record.state.as_str()
            ),
        ))
    };
    match &signal.kind {
        SignalKind::Receipt(_) => {
            if record.state == State::Acknowledged {
                tracing::info!(message_id = %id, "receipt for a message already acknowledged");
                return Some(accepted);
            }
            if record.state != State::Sending {
                return not_waiting("receipt");
            }
            let root = &package.root().content;
            let checked = if !leg.receipt.non_repudiation {
                check_receipt(&received, &id, &[])
            } else if let Some(sealings) = ap.pulled.sealings(&id) {
                // The receipt matches one of the times the message was pulled.
                sealings
                    .iter()
                    .map(|refs| check_receipt(&received, &id, refs))
                    .find(Result::is_ok)
                    .unwrap_or_else(|| check_receipt(&received, &id, &sealings[0]))
            } else {
                tracing::warn!(message_id = %id, "the references of the pulled message are not known to this instance (restarted, or another instance sealed it): the receipt's non-repudiation information is not compared");
                check_receipt(&received, &id, &[])
            };
            if let Err(e) = checked {
                return refuse(EbmsError::new(
                    ErrorCode::InvalidReceipt,
                    receipt_problem(&e),
                ));
            }
            let outcome = AttemptOutcome::Acknowledged {
                receipt: root.clone(),
            };
            match ap.store.record_attempt(&id, &ap.instance, outcome, now) {
                Ok(_) => {
                    ap.pulled.forget(&id);
                    tracing::info!(message_id = %id, puller = %partner.name, "pulled message acknowledged");
                    ap.metrics.message(Direction::Outbound, Outcome::Success);
                    ap.announce(MessageEvent::Sent {
                        message_id: id,
                        owner: record.meta.owner.clone(),
                    });
                    Some(accepted)
                }
                // Failed meanwhile (say, an administrator cancelled it): the receipt came
                // too late to count.
                Err(e @ varti_store::StoreError::InvalidTransition { .. }) => {
                    tracing::warn!(message_id = %id, error = %e, "receipt for a message that no longer awaits one; refused");
                    not_waiting("receipt")
                }
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "cannot record the receipt");
                    Some(internal_fault(
                        "the access point cannot store the receipt right now",
                    ))
                }
            }
        }
        SignalKind::Errors(errors) => {
            if record.state != State::Sending {
                return not_waiting("error signal");
            }
            let text = errors_text(errors);
            if errors_retryable(errors) {
                // Release the lease at once: the next pull request takes it again.
                tracing::warn!(message_id = %id, error = %text, "the puller reported a transient error; the message may be pulled again");
                let outcome = AttemptOutcome::Retry {
                    at: wait_for_pull(now),
                    error: format!("the partner answered with an error: {text}"),
                };
                if let Err(e) = ap.store.record_attempt(&id, &ap.instance, outcome, now) {
                    tracing::info!(message_id = %id, error = %e, "the lease of the pulled message is not ours; it expires by itself");
                }
            } else {
                fail_for_good(
                    ap,
                    &record,
                    format!("the partner refused the message: {text}"),
                    now,
                );
            }
            Some(accepted)
        }
        SignalKind::PullRequest(_) => None,
    }
}

fn same_cert(a: &X509, b: &X509) -> bool {
    matches!((a.to_der(), b.to_der()), (Ok(x), Ok(y)) if x == y)
}

fn subject_of(cert: &X509) -> String {
    varti_as4::security::token::distinguished_name_string(cert.subject_name())
}

/// One channel we pull from: an MPC at a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullChannel {
    /// The MPC.
    pub mpc: String,
    /// The partner holding the messages (a `[[party]]` name).
    pub partner: String,
    /// Its endpoint.
    pub endpoint: String,
    /// The key of the first pull leg of the channel (its security signs the request).
    pub leg: String,
}

/// The channels to pull from: one per (MPC, partner) of every pull leg we are the
/// responder of. Partners without an endpoint are left out (logged).
pub fn pull_channels(snap: &Snapshot) -> Vec<PullChannel> {
    let me = &snap.identity.party;
    let mut channels: Vec<PullChannel> = Vec::new();
    for leg in snap
        .pmodes
        .legs
        .iter()
        .filter(|l| l.binding == Binding::Pull && l.to.parties.contains(me))
    {
        for name in leg.from.parties.iter().filter(|p| *p != me) {
            if channels
                .iter()
                .any(|c| c.mpc == leg.mpc && c.partner == *name)
            {
                continue;
            }
            let Some(endpoint) = snap.pmodes.party(name).and_then(|p| p.endpoint.clone()) else {
                tracing::warn!(partner = %name, leg = %leg.label(), "cannot pull from a party without an endpoint: add `endpoint = \"https://…/msh\"` to it");
                continue;
            };
            channels.push(PullChannel {
                mpc: leg.mpc.clone(),
                partner: name.clone(),
                endpoint,
                leg: leg_key(leg),
            });
        }
    }
    channels
}

/// What one pull came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// A message came (and was answered with its receipt or an error signal).
    Message(String),
    /// The MPC was empty (EBMS:0006).
    Empty,
    /// Something went wrong (logged).
    Problem(String),
}

/// Runs the puller until `token` is cancelled: one loop per [`PullChannel`].
pub async fn run(ap: Arc<AccessPoint>, token: CancellationToken) {
    // The channels are fixed at start-up; a reload that changes them says "needs restart".
    let channels = pull_channels(&ap.current());
    if channels.is_empty() {
        return;
    }
    let poll = Duration::from_millis(ap.settings.sender.poll_interval_ms);
    let mut loops = tokio::task::JoinSet::new();
    for channel in channels {
        let (ap, token) = (ap.clone(), token.clone());
        tracing::info!(mpc = %channel.mpc, partner = %channel.partner, "pulling messages");
        loops.spawn(async move {
            loop {
                if !ap.may_claim() {
                    // The store takes no writes: pull nothing until the probe sees it back.
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(EMPTY_BACKOFF.max(poll)) => {}
                    }
                    continue;
                }
                let wait = tokio::select! {
                    _ = token.cancelled() => return,
                    pulled = pull_once(&ap, &channel) => match pulled {
                        Pulled::Message(_) => poll,
                        Pulled::Empty => EMPTY_BACKOFF.max(poll),
                        Pulled::Problem(problem) => {
                            tracing::warn!(mpc = %channel.mpc, partner = %channel.partner, %problem, "pull failed");
                            EMPTY_BACKOFF.max(poll)
                        }
                    },
                };
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }
    while loops.join_next().await.is_some() {}
}

/// One pull on `channel`: request, receive what came, push back its receipt.
pub(crate) async fn pull_once(ap: &Arc<AccessPoint>, channel: &PullChannel) -> Pulled {
    // One set for the whole pull: request, the message received, its receipt.
    let snap = ap.current();
    let request = {
        let (snap, channel) = (snap.clone(), channel.clone());
        tokio::task::spawn_blocking(move || -> Result<String, String> {
            let leg = snap
                .leg(&channel.leg)
                .ok_or_else(|| "the pull leg disappeared from the PModes".to_owned())?;
            build_pull_request(Some(&channel.mpc), Some(&signing_identity(&snap, leg)))
                .map_err(|e| format!("cannot build the pull request: {}", e.detail))
        })
        .await
    };
    let envelope = match request {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return Pulled::Problem(e),
        Err(e) => return Pulled::Problem(format!("the signing task failed: {e}")),
    };
    let response = match snap
        .client
        .post(
            &channel.partner,
            &channel.endpoint,
            SOAP12,
            OutboundBody::from_bytes(envelope),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return Pulled::Problem(e.to_string()),
    };
    let processed = {
        let ap = ap.clone();
        let endpoint = channel.endpoint.clone();
        tokio::task::spawn_blocking(move || receive_pulled_from(&ap, response, &endpoint)).await
    };
    let (pulled, answer) = match processed {
        Ok(p) => p,
        Err(e) => return Pulled::Problem(format!("the receiving task failed: {e}")),
    };
    if let Some((content_type, body)) = answer {
        let id = match &pulled {
            Pulled::Message(id) => id.clone(),
            _ => String::new(),
        };
        match snap
            .client
            .post(
                &channel.partner,
                &channel.endpoint,
                &content_type,
                OutboundBody::from_bytes(body),
            )
            .await
        {
            Ok(r) if r.status.is_success() && !body_is_error(&r) => {
                tracing::info!(message_id = %id, partner = %channel.partner, "receipt of the pulled message delivered")
            }
            Ok(r) => {
                tracing::warn!(message_id = %id, partner = %channel.partner, status = %r.status, answer = %String::from_utf8_lossy(&r.body), "the partner did not accept the receipt of the pulled message; it offers the message again and gets the receipt again")
            }
            Err(e) => {
                tracing::warn!(message_id = %id, partner = %channel.partner, error = %e, "cannot deliver the receipt of the pulled message; the partner offers the message again and gets the receipt again")
            }
        }
    }
    pulled
}

/// Whether a partner's answer carries an ebMS error signal.
fn body_is_error(response: &crate::client::OutboundResponse) -> bool {
    !response.body.is_empty()
        && soap::parse_envelope(&response.body).is_ok_and(|env| {
            env.messaging
                .signals
                .iter()
                .any(|s| matches!(s.kind, SignalKind::Errors(_)))
        })
}

/// Receives the answer to a pull request (blocking): a user message is accepted exactly
/// like a pushed one. Returns what came and the signal to push back to the partner (its
/// Content-Type and bytes: the receipt, or the error signal refusing the message).
pub fn receive_pulled(
    ap: &AccessPoint,
    response: crate::client::OutboundResponse,
) -> (Pulled, Option<(String, Bytes)>) {
    receive_pulled_from(ap, response, "a partner's MSH")
}

/// [`receive_pulled`] of the answer from `endpoint` (the partner's MSH URL), which the
/// history of a pulled message names as its peer.
fn receive_pulled_from(
    ap: &AccessPoint,
    response: crate::client::OutboundResponse,
    endpoint: &str,
) -> (Pulled, Option<(String, Bytes)>) {
    let status = response.status;
    let content_type = response
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let spool = ap.spool_dir();
    if let Err(e) = std::fs::create_dir_all(&spool) {
        return (
            Pulled::Problem(format!("cannot create {}: {e}", spool.display())),
            None,
        );
    }
    // The set the answer is received under, to the end.
    let snap = ap.current();
    let package = match read_message(
        ap,
        &snap,
        Arrival::Pulled,
        &response.body[..],
        &content_type,
    ) {
        Ok(p) => p,
        Err(e) => {
            return (
                Pulled::Problem(format!("HTTP {status} without an ebMS answer ({e})")),
                None,
            )
        }
    };
    let envelope = match soap::parse_envelope(&package.root().content) {
        Ok(env) => env,
        Err(e) => {
            return (
                Pulled::Problem(format!(
                    "HTTP {status}: the answer is not an ebMS message ({})",
                    e.detail
                )),
                None,
            )
        }
    };
    if let Some(id) = envelope
        .messaging
        .user_message
        .as_ref()
        .map(|um| um.message_info.message_id.clone())
    {
        let answer = accept_user_message(
            ap,
            &snap,
            &package,
            envelope,
            Arrival::Pulled,
            Some(format!("a pull from {endpoint}")),
        );
        return match answer.body {
            // A receipt (200), or an error signal refusing the message (200, or 500 with a
            // WS-Security fault): the partner gets it. A bare fault (500, nothing stored and
            // no eb:Messaging) is not an answer to push.
            MshResponseBody::Bytes(body)
                if answer.status == StatusCode::OK || soap::parse_envelope(&body).is_ok() =>
            {
                let ct = answer
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(SOAP12)
                    .to_owned();
                (Pulled::Message(id), Some((ct, body)))
            }
            // Not stored (a fault): no receipt; the partner offers it again.
            _ => (
                Pulled::Problem(format!(
                    "the pulled message {id} could not be stored (HTTP {})",
                    answer.status
                )),
                None,
            ),
        };
    }
    let errors: Vec<_> = envelope
        .messaging
        .signals
        .iter()
        .filter_map(|s| match &s.kind {
            SignalKind::Errors(e) => Some(e),
            _ => None,
        })
        .flatten()
        .collect();
    if !errors.is_empty()
        && errors
            .iter()
            .all(|e| e.code == Some(ErrorCode::EmptyMessagePartitionChannel))
    {
        return (Pulled::Empty, None);
    }
    if errors.is_empty() {
        return (
            Pulled::Problem(format!(
                "HTTP {status}: the answer holds neither a message nor an error"
            )),
            None,
        );
    }
    let owned: Vec<_> = errors.into_iter().cloned().collect();
    (
        Pulled::Problem(format!(
            "the partner refused the pull request: {}",
            errors_text(&owned)
        )),
        None,
    )
}
