//! The requester side's memory: one JSON file per evidence request under
//! `<data_dir>/oots/requests/<uuid>.json`, written atomically (temporary file, fsync,
//! rename), so a restart keeps every open request and its deadline; an empty marker
//! `<data_dir>/oots/open/<uuid>` per open request keeps the deadline watch cheap.
//!
//! The evidence files themselves are not copied here: they stay the payloads of the
//! response message in the message store, and a record names that message.
//!
//! Retention: a settled request has a marker `<data_dir>/oots/settled/<uuid>` until its
//! record is purged. Its evidence (the payloads of the answer, and of the request once its
//! sending ended) is purged `oots.evidence_retention_secs` after the hand-over — the owning
//! portal has downloaded every evidence file, or the request settled without evidence —
//! and the record `oots.record_retention_secs` after settling (with any evidence never
//! handed over: that is the only purge before a hand-over). See [`purge_due`].
//!
//! Refused answers (see [`crate::requester`]) are never stored; what is known of each —
//! metadata only, never a payload — is appended as one JSON line to
//! `<data_dir>/oots/refused/<YYYY-MM-DD>.jsonl` for audit ([`note_refused`]); a day's file
//! goes `oots.record_retention_secs` after that day ended ([`purge_refusals_due`]).
//!
//! Known limit: with two instances on one PostgreSQL store (`deploy/pair/`) each instance
//! keeps its own records, so a portal must ask the instance it created the request on.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::gateway::Gateway;

/// Serialises read-modify-write of records within this process (the API handlers and the
/// gateway task both update them).
static LOCK: Mutex<()> = Mutex::new(());

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RequestState {
    /// Submitted over AS4; waiting for the answer.
    Sent,
    /// The provider answered with evidence.
    Answered,
    /// The provider answered with an EDM error response.
    Error,
    /// The provider asks for preview (EDM:ERR:0002): the portal sends the user to
    /// `preview_location` and POSTs `…/preview-return`, which sends the second request
    /// and puts the record back to `Sent`.
    PreviewRequired,
    /// No answer within the request timeout.
    TimedOut,
    /// The AS4 message could not be delivered (EBMS:0301 after the last retry, or a
    /// fatal ebMS error).
    Failed,
}

impl RequestState {
    /// Whether the request is settled (nothing more will change it).
    pub(crate) fn is_final(self) -> bool {
        self != RequestState::Sent
    }
}

/// One evidence of an answered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EvidenceFile {
    /// Index of the payload in the response message.
    pub payload: usize,
    /// Its Content-ID.
    pub content_id: String,
    /// Its media type.
    pub mime_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The title of its `RepositoryItemRef`.
    pub title: Option<String>,
    /// Its EDM 2.0 classification (`MainEvidence`, annex …).
    pub classification: Option<String>,
    /// RFC 3339: when the owning portal first downloaded it whole.
    #[serde(default)]
    pub downloaded_at: Option<String>,
}

/// The EDM error of a request answered with an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EdmErrorInfo {
    /// `EDM:ERR:000n`.
    pub code: Option<String>,
    /// The exception type (`rs:ObjectNotFoundExceptionType` …).
    pub exception_type: Option<String>,
    /// The provider's message.
    pub message: Option<String>,
    /// The provider's detail (e.g. the rule ids an invalid request broke).
    pub detail: Option<String>,
    /// The severity.
    pub severity: Option<String>,
}

/// An evidence request of a portal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RequestRecord {
    /// The id the API uses (a UUID; the EDM request id is `urn:uuid:<id>`).
    pub id: String,
    /// The backend client that made it.
    pub owner: String,
    /// Where it is.
    pub state: RequestState,
    /// RFC 3339.
    pub created_at: String,
    /// Unix seconds after which an unanswered request times out.
    pub deadline_unix: i64,
    /// The provider's access point (PMode party).
    pub provider_party: String,
    /// The evidence provider the request named (its EvidenceProvider identifier and the
    /// `finalRecipient`); an answer must come from it. `None` in records written before it
    /// was kept: the request message's `finalRecipient` says it then.
    #[serde(default)]
    pub provider_id: Option<String>,
    /// The identifier scheme of `provider_id`.
    #[serde(default)]
    pub provider_scheme: Option<String>,
    /// The AS4 MessageId of the request (the latest one: after preview, the second).
    pub request_message_id: String,
    /// The EDM id of the latest request when it is not `urn:uuid:<id>` (the second
    /// request of a preview exchange has its own); answers must name it.
    #[serde(default)]
    pub edm_request_id: Option<String>,
    /// The AS4 ConversationId.
    pub conversation_id: String,
    /// The evidence type identifier asked for.
    pub evidence_type: String,
    /// The AS4 MessageId of the answer.
    pub response_message_id: Option<String>,
    /// The evidence files, when answered.
    pub evidences: Vec<EvidenceFile>,
    /// The EDM error, when answered with one.
    pub error: Option<EdmErrorInfo>,
    /// Where the user previews, when preview is required.
    pub preview_location: Option<String>,
    /// Why it failed or timed out, in words.
    pub reason: Option<String>,
    /// RFC 3339, when it settled.
    pub settled_at: Option<String>,
    /// Unix seconds of the hand-over: every evidence file downloaded by the owner, or the
    /// settling when there is no evidence to hand over.
    #[serde(default)]
    pub handed_over_unix: Option<i64>,
    /// RFC 3339, when the evidence (the exchange's payloads) was purged.
    #[serde(default)]
    pub evidence_purged_at: Option<String>,
}

impl RequestRecord {
    /// Whether the portal has everything it can get: settled, and every evidence file
    /// downloaded (trivially so without evidence).
    fn handed_over(&self) -> bool {
        // A request waiting for its preview is not over: its second request is built
        // from the first request message, which must stay stored.
        self.state.is_final()
            && self.state != RequestState::PreviewRequired
            && self.evidences.iter().all(|e| e.downloaded_at.is_some())
    }
}

/// Why a record cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("OOTS request record {path}: {problem}")]
pub(crate) struct RecordError {
    path: PathBuf,
    problem: String,
}

fn dir(gw: &Gateway) -> PathBuf {
    gw.ap.settings.data_dir.join("oots").join("requests")
}

/// Whether `id` is a plain UUID (records are files named by it: nothing else may reach
/// the file system).
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

/// One empty marker file per open request, so the deadline watch reads only those.
fn open_dir(gw: &Gateway) -> PathBuf {
    gw.ap.settings.data_dir.join("oots").join("open")
}

/// One empty marker file per settled request whose record is not purged yet.
fn settled_dir(gw: &Gateway) -> PathBuf {
    gw.ap.settings.data_dir.join("oots").join("settled")
}

fn path_of(gw: &Gateway, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| dir(gw).join(format!("{id}.json")))
}

fn err(path: &Path, problem: impl std::fmt::Display) -> RecordError {
    RecordError {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Reads a record (`None`: no such request).
pub(crate) fn load(gw: &Gateway, id: &str) -> Result<Option<RequestRecord>, RecordError> {
    let Some(path) = path_of(gw, id) else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| err(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&path, e)),
    }
}

fn write(gw: &Gateway, record: &RequestRecord) -> Result<(), RecordError> {
    let path = path_of(gw, &record.id).ok_or_else(|| err(Path::new(&record.id), "not a UUID"))?;
    let d = dir(gw);
    std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
    let tmp = d.join(format!(".{}.tmp", record.id));
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| err(&path, e))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| err(&tmp, e))?;
        f.sync_all().map_err(|e| err(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))
}

/// Stores a new record.
pub(crate) fn create(gw: &Gateway, record: &RequestRecord) -> Result<(), RecordError> {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    write(gw, record)?;
    if !record.state.is_final() {
        let d = open_dir(gw);
        std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
        let marker = d.join(&record.id);
        std::fs::write(&marker, b"").map_err(|e| err(&marker, e))?;
    }
    Ok(())
}

/// Applies `change` to the record `id` while it is still open (`Sent`); returns the
/// updated record, or `None` when there is no such record or it had already settled (a
/// late answer after a timeout changes nothing).
pub(crate) fn settle(
    gw: &Gateway,
    id: &str,
    change: impl FnOnce(&mut RequestRecord),
) -> Result<Option<RequestRecord>, RecordError> {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut record) = load(gw, id)? else {
        return Ok(None);
    };
    if record.state.is_final() {
        return Ok(None);
    }
    change(&mut record);
    if record.state.is_final() && record.settled_at.is_none() {
        record.settled_at = Some(rfc3339_now(gw));
    }
    if record.handed_over() {
        record.handed_over_unix = Some(gw.ap.clock.now().unix_timestamp());
    }
    if record.state.is_final() {
        // The settled marker before the record says settled: a crash in between leaves a
        // marker for an open record, which the sweep skips, never a record without one.
        let d = settled_dir(gw);
        std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
        let marker = d.join(&record.id);
        std::fs::write(&marker, b"").map_err(|e| err(&marker, e))?;
    }
    write(gw, &record)?;
    if record.state.is_final() {
        let _ = std::fs::remove_file(open_dir(gw).join(&record.id));
    }
    Ok(Some(record))
}

/// Notes that the owner downloaded evidence file `n` of the settled request `id` whole;
/// returns the updated record (`None`: no such record or file).
pub(crate) fn mark_downloaded(
    gw: &Gateway,
    id: &str,
    n: usize,
) -> Result<Option<RequestRecord>, RecordError> {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut record) = load(gw, id)? else {
        return Ok(None);
    };
    let Some(file) = record.evidences.get_mut(n) else {
        return Ok(None);
    };
    if file.downloaded_at.is_some() {
        return Ok(Some(record));
    }
    file.downloaded_at = Some(rfc3339_now(gw));
    if record.handed_over() && record.handed_over_unix.is_none() {
        record.handed_over_unix = Some(gw.ap.clock.now().unix_timestamp());
    }
    write(gw, &record)?;
    Ok(Some(record))
}

/// Purges what is due at `now` (see the module documentation); returns how many requests'
/// evidence and how many records were purged. Call on a blocking thread.
pub(crate) fn purge_due(gw: &Gateway, now: time::OffsetDateTime) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(settled_dir(gw)) else {
        return (0, 0);
    };
    let ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| valid_id(id))
        .collect();
    let (mut evidence, mut records) = (0, 0);
    for id in ids {
        match purge_one(gw, &id, now) {
            Ok((e, r)) => {
                evidence += usize::from(e);
                records += usize::from(r);
            }
            Err(e) => tracing::warn!(request = %id, error = %e, "OOTS: cannot purge"),
        }
    }
    (evidence, records)
}

/// Purges what is due for the one request `id` at `now` (right after its hand-over, so
/// that `evidence_retention_secs = 0` does not wait for the next sweep).
pub(crate) fn purge_request(gw: &Gateway, id: &str, now: time::OffsetDateTime) {
    if let Err(e) = purge_one(gw, id, now) {
        tracing::warn!(request = %id, error = %e, "OOTS: cannot purge");
    }
}

/// The purge of one settled request: (evidence purged, record purged).
fn purge_one(
    gw: &Gateway,
    id: &str,
    now: time::OffsetDateTime,
) -> Result<(bool, bool), RecordError> {
    let cfg = &gw.config;
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut record) = load(gw, id)? else {
        let _ = std::fs::remove_file(settled_dir(gw).join(id));
        return Ok((false, false));
    };
    if !record.state.is_final() {
        return Ok((false, false));
    }
    let settled_unix = record
        .settled_at
        .as_deref()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        // Settled records always have the time; without it, never treat one as expired.
        .map_or(now.unix_timestamp(), |t| t.unix_timestamp());
    let expired =
        settled_unix.saturating_add(cfg.record_retention_secs as i64) <= now.unix_timestamp();
    let handed_over_due = record.handed_over_unix.is_some_and(|t| {
        t.saturating_add(cfg.evidence_retention_secs as i64) <= now.unix_timestamp()
    });
    let mut purged_evidence = false;
    if record.evidence_purged_at.is_none() && (handed_over_due || expired) {
        purge_exchange(gw, &record, now)?;
        record.evidence_purged_at = Some(rfc3339_now(gw));
        purged_evidence = true;
        if !expired {
            write(gw, &record)?;
        }
        tracing::info!(request = %id, handed_over = handed_over_due, "OOTS: evidence purged");
    }
    if expired {
        if let Some(path) = path_of(gw, id) {
            std::fs::remove_file(&path).map_err(|e| err(&path, e))?;
        }
        let _ = std::fs::remove_file(settled_dir(gw).join(id));
        tracing::info!(request = %id, "OOTS: request record purged");
    }
    Ok((purged_evidence, expired))
}

/// Purges the payloads of the request's answer and (when its sending ended) of the request
/// message itself.
fn purge_exchange(
    gw: &Gateway,
    record: &RequestRecord,
    now: time::OffsetDateTime,
) -> Result<(), RecordError> {
    let messages = [
        record.response_message_id.as_deref(),
        Some(record.request_message_id.as_str()),
    ];
    for message_id in messages.into_iter().flatten() {
        match gw.ap.store.purge_payloads_of(message_id, now) {
            Ok(_) | Err(varti_store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(err(Path::new(message_id), e)),
        }
    }
    Ok(())
}

/// Every stored record (unreadable ones are logged and left out). Reads them all: the
/// records are bounded by `oots.record_retention_secs`.
pub(crate) fn all(gw: &Gateway) -> Vec<RequestRecord> {
    let Ok(entries) = std::fs::read_dir(dir(gw)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .filter(|id| valid_id(id))
        .filter_map(|id| match load(gw, &id) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "OOTS: unreadable request record left out");
                None
            }
        })
        .collect()
}

/// Puts the record `id` back to `Sent` when it is in state `from` (the second request
/// of a preview exchange), applying `change`; returns the updated record, or `None` when
/// there is no such record or it is in another state.
pub(crate) fn reopen(
    gw: &Gateway,
    id: &str,
    from: RequestState,
    change: impl FnOnce(&mut RequestRecord),
) -> Result<Option<RequestRecord>, RecordError> {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut record) = load(gw, id)? else {
        return Ok(None);
    };
    if record.state != from {
        return Ok(None);
    }
    change(&mut record);
    record.state = RequestState::Sent;
    record.settled_at = None;
    // The marker first: a record that is open must be watched for its deadline.
    let d = open_dir(gw);
    std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
    let marker = d.join(&record.id);
    std::fs::write(&marker, b"").map_err(|e| err(&marker, e))?;
    write(gw, &record)?;
    Ok(Some(record))
}

/// The ids of every open request (from the markers; a marker whose record settled is
/// dropped).
pub(crate) fn open_ids(gw: &Gateway) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(open_dir(gw)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| valid_id(id))
        .filter(|id| {
            let open = load(gw, id)
                .ok()
                .flatten()
                .is_some_and(|r| !r.state.is_final());
            if !open {
                let _ = std::fs::remove_file(open_dir(gw).join(id));
            }
            open
        })
        .collect()
}

/// The day a journal of refusals is named by.
const DAY: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

fn refused_dir(gw: &Gateway) -> PathBuf {
    gw.ap.settings.data_dir.join("oots").join("refused")
}

/// Appends the audit record of a refused answer (`entry`: metadata only) to today's
/// journal of refusals.
pub(crate) fn note_refused(gw: &Gateway, entry: &serde_json::Value) -> Result<(), RecordError> {
    use std::io::Write;
    let d = refused_dir(gw);
    std::fs::create_dir_all(&d).map_err(|e| err(&d, e))?;
    let day = gw
        .ap
        .clock
        .now()
        .date()
        .format(DAY)
        .map_err(|e| err(&d, e))?;
    let path = d.join(format!("{day}.jsonl"));
    let mut line = serde_json::to_vec(entry).map_err(|e| err(&path, e))?;
    line.push(b'\n');
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| err(&path, e))?;
    f.write_all(&line).map_err(|e| err(&path, e))?;
    f.sync_data().map_err(|e| err(&path, e))
}

/// Removes the journals of refusals whose day ended more than
/// `oots.record_retention_secs` before `now`; returns how many.
pub(crate) fn purge_refusals_due(gw: &Gateway, now: time::OffsetDateTime) -> usize {
    let Ok(entries) = std::fs::read_dir(refused_dir(gw)) else {
        return 0;
    };
    let mut purged = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(day) = name
            .strip_suffix(".jsonl")
            .and_then(|d| time::Date::parse(d, DAY).ok())
        else {
            continue;
        };
        let Some(end) = day.next_day() else { continue };
        let ended = end.midnight().assume_utc().unix_timestamp();
        if ended.saturating_add(gw.config.record_retention_secs as i64) <= now.unix_timestamp() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => purged += 1,
                Err(x) => {
                    tracing::warn!(file = %e.path().display(), error = %x, "OOTS: cannot remove an old journal of refusals")
                }
            }
        }
    }
    purged
}

/// Now as RFC 3339.
pub(crate) fn rfc3339_now(gw: &Gateway) -> String {
    gw.ap
        .clock
        .now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn only_uuids_name_records() {
        assert!(valid_id("4ffb5281-179d-4578-adf2-39fd13ccc797"));
        assert!(!valid_id("../../../../etc/passwd-aaaaaaaaaaaaaaaaa"));
        assert!(!valid_id("4ffb5281-179d-4578-adf2-39fd13ccc79/"));
        assert!(!valid_id("4ffb5281x179d-4578-adf2-39fd13ccc797"));
    }
}
