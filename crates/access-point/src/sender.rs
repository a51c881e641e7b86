//! The sender: claims due outbound messages, seals and pushes them, records the outcome.
//!
//! Each claimed message is leased to this instance (`sender.lease_secs`), so a second
//! instance on the same store never sends it at the same time, and takes it over if this
//! one dies. One attempt: build the AS4 message from the stored record and the leg (sign,
//! encrypt, compress as the leg says) → POST it to the partner's endpoint, a large one
//! written into the request body as it goes → read the answer:
//!
//! * a receipt that verifies and whose non-repudiation information matches what we signed
//!   → `Acknowledged` (the receipt is kept as evidence), event `sent`;
//! * an ebMS error signal with a failure that retrying cannot fix (security, PMode,
//!   header errors) → `Failed`, event `failed`;
//! * anything else (connection refused, timeout, HTTP 5xx, a transient error, an invalid
//!   receipt) → `WaitingForRetry` after the leg's next retry interval, or, when the schedule
//!   is used up, `Failed` with EBMS:0301 MissingReceipt.

use std::io::{self, BufWriter, Read, Seek, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use openssl::x509::X509;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use varti_as4::error::{EbmsError, ErrorCode, Severity};
use varti_as4::inbound;
use varti_as4::leg::{self, send_policy, wire_party_id, MessageFields};
use varti_as4::message::mime::{MimeLimits, MimePackage};
use varti_as4::message::model::{MessageInfo, Property, SignalError, SignalKind, UserMessage};
use varti_as4::message::soap;
use varti_as4::outbound::{check_receipt, prepare, OutgoingPayload, Prepared, Reopen};
use varti_as4::pmode::model::{Binding, Leg, Party};
use varti_as4::security::sign::SignedReference;
use varti_as4::spool::SPOOL_MEMORY_MAX;
use varti_store::{AttemptOutcome, FileEncoding, MessageRecord};

use crate::access_point::{AccessPoint, MessageEvent};
use crate::client::OutboundBody;
use crate::discovery::{Found, LookupFailure};
use crate::ops::{Direction, Outcome};
use crate::pull;
use crate::reload::Snapshot;

/// Runs the sender until `token` is cancelled; then waits for the attempts in flight, so
/// that their outcome is recorded: up to the request timeout, and no longer than
/// `shutdown_wait` (the server's shutdown grace). An attempt still unfinished then is
/// left to its lease: it expires and the message is sent again (by any instance), which
/// the partner answers as a duplicate if the first one arrived.
pub async fn run(ap: Arc<AccessPoint>, token: CancellationToken, shutdown_wait: Duration) {
    let cfg = &ap.settings.sender;
    let lease = Duration::from_secs(cfg.lease_secs);
    let poll = Duration::from_millis(cfg.poll_interval_ms);
    let slots = Arc::new(Semaphore::new(cfg.concurrency));
    loop {
        if token.is_cancelled() {
            break;
        }
        let free = slots.available_permits();
        let mut claimed_all = false;
        // A store that takes no writes: claim nothing until the probe sees it back.
        if free > 0 && ap.may_claim() {
            let claim = {
                let ap = ap.clone();
                tokio::task::spawn_blocking(move || {
                    ap.store
                        .claim_due(&ap.instance, lease, free, ap.clock.now())
                })
                .await
            };
            match claim {
                Ok(Ok(records)) => {
                    claimed_all = records.len() == free;
                    for record in records {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let ap = ap.clone();
                        tokio::spawn(async move {
                            attempt(&ap, record).await;
                            drop(permit);
                        });
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "cannot claim outbound messages"),
                Err(e) => tracing::error!(error = %e, "the claiming task failed"),
            }
        }
        if claimed_all {
            // More may be due: claim again as soon as a slot frees up.
            tokio::select! {
                _ = token.cancelled() => break,
                _ = slots.clone().acquire_owned() => {}
            }
            continue;
        }
        tokio::select! {
            _ = token.cancelled() => break,
            _ = ap.wake_sender.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Let the attempts in flight record their outcome.
    let wait = Duration::from_secs(ap.settings.client.request_timeout_secs + 5).min(shutdown_wait);
    let all = u32::try_from(ap.settings.sender.concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(wait, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping with sends in flight; their leases expire and they are sent again"
        );
    }
}

/// What one attempt came to.
enum Verdict {
    Acknowledged(Vec<u8>),
    /// Retrying may help.
    Transient(String),
    /// The partner could not be reached at all (retrying may help).
    Unreachable(String),
    /// Retrying cannot help.
    Fatal(String),
}

/// A claimed message of a pull leg is never pushed: it waits for its partner to pull it.
/// Submission parks such messages far in the future, so the sender claims one only when
/// it was made due again (an administrator's resend): it is parked again here.
async fn park_for_pull(ap: &Arc<AccessPoint>, id: &str, leg: &Leg) {
    let error = format!(
        "waiting to be pulled on MPC {} ({} is a one-way/pull leg)",
        leg.mpc,
        leg.label()
    );
    tracing::info!(message_id = %id, %error, "not pushed");
    let recorded = {
        let ap = ap.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let now = ap.clock.now();
            let outcome = AttemptOutcome::Retry {
                at: pull::wait_for_pull(now),
                error,
            };
            ap.store.record_attempt(&id, &ap.instance, outcome, now)
        })
        .await
    };
    match recorded {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(message_id = %id, error = %e, "cannot park the message for pulling; its lease expires and it is parked again")
        }
        Err(e) => tracing::error!(message_id = %id, error = %e, "the recording task failed"),
    }
}

/// One attempt on a claimed record, with its outcome recorded.
async fn attempt(ap: &Arc<AccessPoint>, record: MessageRecord) {
    let started = Instant::now();
    let id = record.meta.message_id.clone();
    // A takeover (the other instance, or this one before a restart, died while sending)
    // is worth an operator's notice: the claim just made follows a LeaseExpired.
    if let [.., expired, claim] = record.history.as_slice() {
        if expired.event == varti_store::Event::LeaseExpired
            && claim.event == varti_store::Event::Claim
        {
            tracing::info!(
                message_id = %id,
                attempt = record.attempts,
                previous = expired.note.as_deref().unwrap_or("lease expired"),
                "taking over a message whose sender's lease expired"
            );
        }
    }
    // The set this attempt runs under, from sealing to judging the receipt: a reload
    // meanwhile applies from the next attempt on.
    let snap = ap.current();
    if let Some(leg) = snap
        .leg(&record.meta.pmode_id)
        .filter(|l| l.binding == Binding::Pull)
    {
        park_for_pull(ap, &id, leg).await;
        return;
    }
    // The verdict is turned into an outcome and recorded on the thread that judged the
    // answer: one hand-off to the blocking pool fewer per message.
    let settle = {
        let (ap, snap) = (ap.clone(), snap.clone());
        let (id, attempts, pmode_id) = (id.clone(), record.attempts, record.meta.pmode_id.clone());
        move |verdict| {
            let now = ap.clock.now();
            let outcome = outcome_of(&ap, &snap, &pmode_id, attempts, verdict, now);
            log_outcome(&id, attempts, &outcome);
            let recorded = ap
                .store
                .record_attempt(&id, &ap.instance, outcome.clone(), now);
            (outcome, recorded)
        }
    };
    let outcome = match exchange(ap, &snap, &record, settle).await {
        Ok((outcome, Ok(_))) => outcome,
        Ok((_, Err(e))) => {
            tracing::warn!(message_id = %id, error = %e, "cannot record the attempt");
            return;
        }
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "the attempt's judging and recording task failed; its lease expires and it is sent again");
            return;
        }
    };
    let owner = record.meta.owner.clone();
    match outcome {
        AttemptOutcome::Acknowledged { .. } => {
            ap.metrics.message(Direction::Outbound, Outcome::Success);
            ap.metrics
                .observe_latency(Direction::Outbound, started.elapsed());
            ap.announce(MessageEvent::Sent {
                message_id: id,
                owner,
            });
        }
        AttemptOutcome::Failed { error } => {
            ap.metrics.message(Direction::Outbound, Outcome::Failed);
            ap.announce(MessageEvent::Failed {
                message_id: id,
                owner,
                error,
            });
        }
        AttemptOutcome::Retry { .. } => {}
    }
}

/// What an attempt's verdict means for the message: acknowledged, failed for good, or
/// retried after the leg's next interval (failed once the intervals are used up).
fn outcome_of(
    ap: &AccessPoint,
    snap: &Snapshot,
    pmode_id: &str,
    attempts: u32,
    verdict: Verdict,
    now: time::OffsetDateTime,
) -> AttemptOutcome {
    match verdict {
        Verdict::Acknowledged(receipt) => AttemptOutcome::Acknowledged { receipt },
        Verdict::Fatal(error) => AttemptOutcome::Failed { error },
        Verdict::Transient(error) | Verdict::Unreachable(error) => {
            let intervals = snap
                .leg(pmode_id)
                .map(|l| l.reception.retry.intervals())
                .unwrap_or_default();
            // `attempts` counts this one: the first retry follows attempt 1.
            match intervals.get(attempts.saturating_sub(1) as usize) {
                Some(wait) => {
                    ap.metrics.retry();
                    AttemptOutcome::Retry {
                        at: now + *wait,
                        error,
                    }
                }
                None => AttemptOutcome::Failed {
                    error: format!(
                        "{}: no receipt after {attempts} attempt(s); last problem: {error}",
                        ErrorCode::MissingReceipt,
                    ),
                },
            }
        }
    }
}

fn log_outcome(id: &str, attempt: u32, outcome: &AttemptOutcome) {
    match outcome {
        AttemptOutcome::Acknowledged { .. } => {
            tracing::info!(message_id = %id, attempt, "message acknowledged by the partner")
        }
        AttemptOutcome::Retry { at, error } => {
            tracing::warn!(message_id = %id, attempt, retry_at = %at, %error, "send failed; will retry")
        }
        AttemptOutcome::Failed { error } => {
            tracing::error!(message_id = %id, attempt, %error, "message failed")
        }
    }
}

/// Whether a sealing error came from the store being unavailable (database or I/O), as
/// opposed to the stored message itself.
fn store_trouble(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<varti_store::StoreError>(),
            Some(varti_store::StoreError::Database(_) | varti_store::StoreError::Io { .. })
        ) || cause.is::<std::io::Error>()
    })
}

/// Seals, pushes and judges the answer; then runs `settle` on the verdict, on the blocking
/// thread that judged it (`settle` may write to the store). An error if that task failed.
async fn exchange<R: Send + 'static>(
    ap: &Arc<AccessPoint>,
    snap: &Arc<Snapshot>,
    record: &MessageRecord,
    settle: impl FnOnce(Verdict) -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    match push(ap, snap, record).await {
        Pushed::Early(verdict) => tokio::task::spawn_blocking(move || settle(verdict)).await,
        Pushed::Answered(answer) => {
            let (ap, snap) = (ap.clone(), snap.clone());
            let record = record.clone();
            tokio::task::spawn_blocking(move || {
                let Answer {
                    response,
                    partner,
                    discovered,
                    references,
                } = answer;
                settle(judge(
                    &ap,
                    &snap,
                    &record,
                    &partner,
                    discovered.as_deref(),
                    response,
                    &references,
                ))
            })
            .await
        }
    }
}

/// How far [`push`] got.
enum Pushed {
    /// The attempt ended before an answer (no route, no sealing, the partner unreachable).
    Early(Verdict),
    /// The partner answered: the answer is still to be judged.
    Answered(Answer),
}

/// The partner's answer with what judging it needs.
struct Answer {
    response: crate::client::OutboundResponse,
    partner: String,
    discovered: Option<Arc<Found>>,
    references: Vec<SignedReference>,
}

/// Seals the message and pushes it to the partner.
async fn push(ap: &Arc<AccessPoint>, snap: &Arc<Snapshot>, record: &MessageRecord) -> Pushed {
    let early = Pushed::Early;
    let Some(leg) = snap.leg(&record.meta.pmode_id) else {
        return early(Verdict::Fatal(format!(
            "{}: the leg `{}` is no longer in the PModes; restore it and resend the message",
            ErrorCode::ProcessingModeMismatch,
            record.meta.pmode_id
        )));
    };
    let Some(partner) = snap.counterpart(leg, Some(&record.meta.to_party)) else {
        return early(Verdict::Fatal(format!(
            "{}: no party with id `{}` on the leg {}",
            ErrorCode::ProcessingModeMismatch,
            record.meta.to_party,
            leg.label()
        )));
    };
    // A dynamic party's endpoint and certificates are the ones its SMP publishes.
    let discovered = match snap.dynamic.get(&partner.name) {
        None => None,
        Some(d) => match d.find(ap.clock.now()).await {
            Ok(found) => Some(Arc::new(found)),
            Err(LookupFailure::Transient(e)) => return early(Verdict::Unreachable(e)),
            Err(LookupFailure::Refused(e)) => return early(Verdict::Fatal(e)),
        },
    };
    let endpoint = match (&discovered, &partner.endpoint) {
        (Some(found), _) => found.url.clone(),
        (None, Some(e)) => e.clone(),
        (None, None) => {
            return early(Verdict::Fatal(format!(
                "party `{}` has no endpoint in the PModes: add `endpoint = \"https://…/msh\"`",
                partner.name
            )))
        }
    };
    let cert = discovered.as_ref().map(|f| f.certificate.clone());
    let Sealing {
        body,
        content_type,
        references,
        writing,
    } = match start_sealing(ap, snap, record, cert).await {
        Ok(sealing) => sealing,
        Err(e) => return early(sealing_verdict(&e)),
    };
    let posted = snap
        .client
        .post(&partner.name, &endpoint, &content_type, body)
        .await;
    // A package written while it went out: its writer ends once the request has (the body
    // is dropped with it). Had writing failed on our side, that, not the broken request it
    // caused, is what the attempt ran into.
    let written = match writing {
        Some(task) => match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sealing_verdict(&e)),
            Err(e) => Err(Verdict::Transient(format!("the sealing task failed: {e}"))),
        },
        None => Ok(()),
    };
    match (posted, written) {
        (_, Err(verdict)) => early(verdict),
        (Ok(response), Ok(())) => Pushed::Answered(Answer {
            response,
            partner: partner.name.clone(),
            discovered,
            references,
        }),
        (Err(e), Ok(())) => early(Verdict::Unreachable(e.to_string())),
    }
}

/// A message being sealed for one attempt: the body to post, with what goes before it.
struct Sealing {
    body: OutboundBody,
    content_type: String,
    references: Vec<SignedReference>,
    /// The task still writing `body`, for a message too large to seal in memory first.
    writing: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Seals `record` for this attempt. Every attempt seals the message anew and signs the
/// same bytes (the signed parts' ids derive from the MessageId, the compression is
/// deterministic, the timestamp is the submission's), so a partner that already stored a
/// first copy answers the duplicate with its original receipt, whose non-repudiation
/// information still matches — which is also what lets the other instance of a pair take
/// a message over.
///
/// A message whose payloads fit in [`SPOOL_MEMORY_MAX`] is sealed in memory and sent with
/// its length. A larger one is signed first (the content key chosen, its parts read once
/// for their digests), then its package is written straight into the request body while
/// it goes out, chunked: no sealed copy is written to disk and read back. With
/// `client.chunked = false` it is sealed into a spool file and sent with its length.
async fn start_sealing(
    ap: &Arc<AccessPoint>,
    snap: &Arc<Snapshot>,
    record: &MessageRecord,
    cert: Option<X509>,
) -> anyhow::Result<Sealing> {
    let (ap, snap) = (ap.clone(), snap.clone());
    let record = record.clone();
    let size: u64 = record.meta.payloads.iter().map(|p| p.stored.size).sum();
    if size <= SPOOL_MEMORY_MAX as u64 {
        let sealed = tokio::task::spawn_blocking(move || {
            seal_with(&ap, &snap, &record, cert.as_ref(), |prepared| {
                let mut bytes = Vec::with_capacity(SPOOL_MEMORY_MAX);
                let sent = prepared.write_to(&mut bytes).map_err(ebms_failure)?;
                Ok(Sealing {
                    body: OutboundBody::from_bytes(bytes),
                    content_type: sent.content_type,
                    references: sent.references,
                    writing: None,
                })
            })
        });
        return sealed.await.context("the sealing task failed")?;
    }
    if !ap.settings.client.chunked {
        // Sent with its length: sealed into a spool file first (removed with the body).
        let sealed = tokio::task::spawn_blocking(move || {
            let (file, content_type, references) = seal(&ap, &snap, &record, cert.as_ref())?;
            Ok(Sealing {
                body: OutboundBody::from_file(file)?,
                content_type,
                references,
                writing: None,
            })
        });
        return sealed.await.context("the sealing task failed")?;
    }
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let writing = tokio::task::spawn_blocking(move || {
        seal_with(&ap, &snap, &record, cert.as_ref(), move |prepared| {
            let (mut writer, body) = OutboundBody::written();
            let references = prepared.references().to_vec();
            if head_tx
                .send((body, prepared.content_type(), references))
                .is_err()
            {
                return Ok(()); // the attempt was given up before it began
            }
            let mut w = BufWriter::with_capacity(64 * 1024, &mut writer);
            let written = match prepared.write_to(&mut w) {
                Ok(_) => w.flush().map_err(anyhow::Error::from),
                Err(e) => Err(ebms_failure(e)),
            };
            drop(w);
            match written {
                Ok(()) => Ok(writer.finish()?),
                // The request ended first (refused, timed out, answered before the whole
                // body): what the attempt comes to is the post's to say, not ours.
                Err(_) if writer.is_abandoned() => Ok(()),
                Err(e) => Err(e),
            }
        })
    });
    match head_rx.await {
        Ok((body, content_type, references)) => Ok(Sealing {
            body,
            content_type,
            references,
            writing: Some(writing),
        }),
        // The task ended before the message was signed: its error says why.
        Err(_) => match writing.await.context("the sealing task failed")? {
            Err(e) => Err(e),
            Ok(()) => anyhow::bail!("sealing ended without a message"),
        },
    }
}

/// What an attempt whose message could not be sealed comes to. The store failing (a
/// database failover outlasting the store's own retries, a full disk) or our key's token
/// being away may be over by the next attempt; a message that cannot be built from what
/// is stored never will be.
fn sealing_verdict(e: &anyhow::Error) -> Verdict {
    if store_trouble(e) || e.downcast_ref::<KeyUnavailable>().is_some() {
        Verdict::Transient(format!("cannot build the message now: {e:#}"))
    } else {
        Verdict::Fatal(format!("cannot build the message: {e:#}"))
    }
}

/// An AS4 failure to seal, as an error the verdicts tell apart.
fn ebms_failure(e: EbmsError) -> anyhow::Error {
    if e.transient {
        // Our key is in a token that is away for now: the next attempt re-opens it.
        anyhow::Error::new(KeyUnavailable(e.detail))
    } else {
        anyhow::anyhow!("{}: {}", e.code, e.detail)
    }
}

/// Builds the AS4 message of `record` into an unnamed spool file: (file, Content-Type, what
/// we signed). Used for answers to pull requests, and for pushes sent with their length.
pub(crate) fn seal(
    ap: &AccessPoint,
    snap: &Snapshot,
    record: &MessageRecord,
    discovered_cert: Option<&X509>,
) -> anyhow::Result<(std::fs::File, String, Vec<SignedReference>)> {
    std::fs::create_dir_all(ap.spool_dir())?;
    let mut file = tempfile::tempfile_in(ap.spool_dir())?;
    let sent = seal_with(ap, snap, record, discovered_cert, |prepared| {
        let mut w = BufWriter::with_capacity(64 * 1024, &mut file);
        let sent = prepared.write_to(&mut w).map_err(ebms_failure)?;
        w.flush()?;
        Ok(sent)
    })?;
    file.rewind()?;
    Ok((file, sent.content_type, sent.references))
}

/// Prepares the AS4 message of `record` (signed, its content key chosen: see
/// [`varti_as4::outbound::prepare`]) and hands it to `write`, which writes the package
/// where it goes.
fn seal_with<T>(
    ap: &AccessPoint,
    snap: &Snapshot,
    record: &MessageRecord,
    discovered_cert: Option<&X509>,
    write: impl FnOnce(Prepared<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let leg = snap
        .leg(&record.meta.pmode_id)
        .context("the leg disappeared from the PModes")?;
    let partner = snap
        .counterpart(leg, Some(&record.meta.to_party))
        .context("the partner disappeared from the PModes")?;
    let um = user_message(snap, leg, partner, record)?;
    // As kept: a payload stored in gzip is sent as it is when the leg compresses it. The
    // payloads never change under their ids, so each can be read again where it is (for
    // the signature's digest, then for the package) instead of being copied first.
    let store = ap.store.payloads();
    let mut readers = Vec::new();
    for p in &record.meta.payloads {
        readers.push(
            store
                .open_as_kept(&p.stored)
                .with_context(|| format!("payload {} is not in the store", p.content_id))?,
        );
    }
    let reopeners: Vec<Box<Reopen<'_>>> = record
        .meta
        .payloads
        .iter()
        .map(|p| {
            let reopen = move || {
                let (reader, _) = store.open_as_kept(&p.stored).map_err(io::Error::other)?;
                Ok(reader as Box<dyn Read>)
            };
            Box::new(reopen) as Box<Reopen<'_>>
        })
        .collect();
    let payloads: Vec<OutgoingPayload<'_>> = record
        .meta
        .payloads
        .iter()
        .zip(readers.iter_mut())
        .zip(&reopeners)
        .map(|((p, (r, kept)), reopen)| OutgoingPayload {
            content_id: p.content_id.trim_start_matches("cid:").to_owned(),
            mime_type: p.mime_type.clone(),
            properties: p
                .properties
                .iter()
                .map(|q| Property {
                    name: q.name.clone(),
                    type_: q.type_.clone(),
                    value: q.value.clone(),
                })
                .collect(),
            content: r as &mut dyn Read,
            content_is_gzip: *kept == FileEncoding::Gzip,
            reopen: Some(&**reopen),
            // Recorded as the payload came in: the signature of a part sent uncompressed
            // takes it instead of reading the payload once more.
            sha256: p
                .stored
                .sha256
                .as_deref()
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| h.try_into().ok()),
        })
        .collect();
    let receiver_cert = discovered_cert.or_else(|| {
        snap.partners
            .get(&partner.name)
            .and_then(|c| c.encryption.as_ref())
    });
    let (signing_key, signing_cert) = snap.identity.current_signing();
    let policy = send_policy(leg, signing_key, signing_cert, receiver_cert).map_err(|e| {
        anyhow::anyhow!(
            "{}: add an encryption_cert to party `{}` in the PModes",
            e.detail,
            partner.name
        )
    })?;
    let prepared = prepare(&um, payloads, &policy).map_err(ebms_failure)?;
    write(prepared)
}

/// Sealing failed because our private key is unavailable for now (its token went away):
/// the attempt is retried like a network failure.
#[derive(Debug)]
struct KeyUnavailable(String);

impl std::fmt::Display for KeyUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "our signing key is unavailable: {}", self.0)
    }
}

impl std::error::Error for KeyUnavailable {}

/// The `eb:UserMessage` of a stored outbound record on `leg`.
fn user_message(
    snap: &Snapshot,
    leg: &Leg,
    partner: &Party,
    record: &MessageRecord,
) -> anyhow::Result<UserMessage> {
    let me = snap
        .pmodes
        .party(&snap.identity.party)
        .context("our own party disappeared from the PModes")?;
    let from = wire_party_id(me, &record.meta.from_party).context("our party has no id")?;
    let to = wire_party_id(partner, &record.meta.to_party).context("the partner has no id")?;
    let mut info = MessageInfo::new(record.meta.message_id.clone());
    // The submission time, not the time of sealing: every sealing of this message (by
    // either instance of a pair, before or after a restart) signs the same eb:Messaging
    // header, so a duplicate's original receipt still matches (see `outbound::send`).
    info.timestamp = varti_as4::message::model::Timestamp::from_datetime(record.created_at);
    info.ref_to_message_id = record.meta.ref_to_message_id.clone();
    Ok(leg::user_message(
        leg,
        MessageFields {
            info,
            from,
            to,
            service: Some(record.meta.service.clone()),
            action: Some(record.meta.action.clone()),
            conversation_id: record.meta.conversation_id.clone(),
            properties: record
                .meta
                .properties
                .iter()
                .map(|p| Property {
                    name: p.name.clone(),
                    type_: p.type_.clone(),
                    value: p.value.clone(),
                })
                .collect(),
        },
    ))
}

/// Judges the partner's answer to the message.
fn judge(
    ap: &AccessPoint,
    snap: &Snapshot,
    record: &MessageRecord,
    partner: &str,
    discovered: Option<&Found>,
    response: crate::client::OutboundResponse,
    references: &[SignedReference],
) -> Verdict {
    let status = response.status;
    let content_type = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let package =
        match MimePackage::read_http_body(&response.body[..], content_type, &MimeLimits::default())
        {
            Ok(p) => p,
            Err(e) => {
                return Verdict::Transient(format!("HTTP {status} without an ebMS answer ({e})"))
            }
        };
    let root = package.root().content.clone();
    let envelope = match soap::parse_envelope(&root) {
        Ok(env) => env,
        Err(e) => {
            return Verdict::Transient(format!(
                "HTTP {status}: the answer is not an ebMS message ({})",
                e.detail
            ))
        }
    };
    let signals = &envelope.messaging.signals;
    if let Some(errors) = signals.iter().find_map(|s| match &s.kind {
        SignalKind::Errors(e) => Some(e),
        _ => None,
    }) {
        let text = errors_text(errors);
        return if errors_retryable(errors) {
            Verdict::Transient(format!("the partner answered with an error: {text}"))
        } else {
            Verdict::Fatal(format!("the partner refused the message: {text}"))
        };
    }
    if !signals
        .iter()
        .any(|s| matches!(s.kind, SignalKind::Receipt(_)))
    {
        return Verdict::Transient(format!("HTTP {status}: the answer holds no receipt"));
    }
    let Some(leg) = snap.leg(&record.meta.pmode_id) else {
        return Verdict::Fatal("the leg disappeared from the PModes".into());
    };
    let Some(party) = snap.pmodes.party(partner) else {
        return Verdict::Fatal("the partner disappeared from the PModes".into());
    };
    let mut policy = snap.receive_policy(leg, party, ap.clock.now(), &ap.spool_dir());
    policy.require_encryption = false;
    if let (Some(found), Some(d)) = (discovered, snap.dynamic.get(partner)) {
        // The receipt must be signed with the discovered certificate (an SMP 2.0 endpoint
        // may publish a separate signing certificate), chaining to the network's anchors.
        let signer = found
            .signing_certificate
            .clone()
            .unwrap_or_else(|| found.certificate.clone());
        policy.partner_certificates = vec![signer.clone()];
        policy.expected_signer = Some(signer);
        policy.trust_anchors = d.ap_anchors().to_vec();
    }
    let received = match inbound::receive_envelope(&package, envelope, &policy) {
        Ok(r) => r,
        Err(e) => return Verdict::Transient(receipt_problem(&e)),
    };
    let expected: &[SignedReference] = if leg.receipt.non_repudiation {
        references
    } else {
        &[]
    };
    match check_receipt(&received, &record.meta.message_id, expected) {
        Ok(()) => Verdict::Acknowledged(root),
        Err(e) => Verdict::Transient(receipt_problem(&e)),
    }
}

/// The ebMS errors of an error signal as one line: `EBMS:0101 detail; …`.
pub(crate) fn errors_text(errors: &[SignalError]) -> String {
    errors
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.error_code,
                e.error_detail
                    .clone()
                    .or_else(|| e.description.as_ref().map(|d| d.text.clone()))
                    .or_else(|| e.short_description.clone())
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether sending the message again may succeed after these errors (warnings and
/// transient failures), or the partner refused it for good (security, PMode, header).
pub(crate) fn errors_retryable(errors: &[SignalError]) -> bool {
    errors.iter().all(|e| {
        e.severity() == Some(Severity::Warning)
            || matches!(
                e.code,
                Some(
                    ErrorCode::Other
                        | ErrorCode::ConnectionFailure
                        | ErrorCode::MessagePersistenceTimeout
                        | ErrorCode::DeliveryFailure
                )
            )
    })
}

pub(crate) fn receipt_problem(e: &EbmsError) -> String {
    format!(
        "{}: the receipt does not hold: {}",
        ErrorCode::InvalidReceipt,
        e.detail
    )
}

/// Why a single exchange did not end with a valid receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeFailure {
    /// The partner could not be reached (connection, TLS, timeout).
    Unreachable(String),
    /// The partner answered, but not with a valid receipt (an error signal, an invalid
    /// receipt, an HTTP error).
    Refused(String),
}

/// One exchange outside the queue, for `varti ping`: seals `record` (claimed by the caller),
/// pushes it and judges the answer. Returns the partner's receipt.
pub async fn exchange_once(
    ap: &Arc<AccessPoint>,
    record: &MessageRecord,
) -> Result<Vec<u8>, ExchangeFailure> {
    match exchange(ap, &ap.current(), record, |verdict| verdict).await {
        Ok(Verdict::Acknowledged(receipt)) => Ok(receipt),
        Ok(Verdict::Unreachable(e)) => Err(ExchangeFailure::Unreachable(e)),
        Ok(Verdict::Transient(e) | Verdict::Fatal(e)) => Err(ExchangeFailure::Refused(e)),
        Err(e) => Err(ExchangeFailure::Refused(format!(
            "the receipt-checking task failed: {e}"
        ))),
    }
}
