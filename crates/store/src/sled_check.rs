//! The embedded store's integrity check: run by `varti serve` before it opens the store and
//! by `varti db check`.
//!
//! What it checks (and what it does not):
//! * **sled's recovery**: the database opens (an error or a panic inside sled is caught and
//!   reported), it was recovered from files when files exist, and no interrupted snapshot
//!   (`snap.*.generating`) was left behind;
//! * **every record**: decodes, is stored under its own id, obeys the state machine's
//!   invariants (state of its direction; settled time exactly when settled; a lease while
//!   `Sending`; a due time while waiting to be sent; history ending in the state) and has
//!   all its index entries;
//! * **payloads**: every unpurged payload of every record is present, of the recorded size
//!   and (when recorded) SHA-256 — every payload file is read;
//! * **sidecars**: no sidecar holds a message, or a state of one, that the database lost
//!   (that is how a power cut that broke sled's log shows up);
//! * **orphans**: payload files no record names, older than the in-flight window (a payload
//!   is written before its record, so younger ones may belong to a message being stored).
//!
//! Trees the check does not know (other features' indexes, the audit trail) are left
//! alone. Findings are *damage* (`serve` refuses to start; fix with `varti db recover`) or
//! *warnings* (reported; the store is usable).

use crate::payload::{file_reader, sha256_of, FilePayloadStore};
use crate::record::MessageRecord;
use crate::sidecar::{database_is_behind, Sidecars, Version};
use crate::state::State;
use crate::{SledStore, StoreError};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The store is damaged: `serve` refuses it; `varti db recover` rebuilds a clean copy.
    Damage,
    /// Worth knowing, not harmful: the store is usable.
    Warning,
}

/// What the check found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// sled refuses to open the database (or panicked opening it).
    DatabaseUnopenable,
    /// The database files are missing or empty while payloads or sidecars exist.
    DatabaseMissing,
    /// A `snap.*.generating` file: sled was stopped while writing a snapshot.
    InterruptedSnapshot,
    /// A record cannot be decoded, or is stored under another id.
    UnreadableRecord,
    /// A record breaks a state-machine invariant.
    BrokenInvariant,
    /// A record lacks index entries (it would not be listed, sent or purged).
    MissingIndex,
    /// A payload a record names is missing.
    MissingPayload,
    /// A payload's size or SHA-256 differs from the recorded one.
    PayloadMismatch,
    /// A sidecar names a message the database does not hold.
    LostMessage,
    /// A sidecar holds a later state than the database: the database lost a change.
    LostChange,
    /// A sidecar cannot be read.
    UnreadableSidecar,
    /// Records without a sidecar (written before sidecars existed, or cut mid-write).
    MissingSidecars,
    /// A payload file no record names, older than the in-flight window.
    OrphanPayload,
}

/// One thing the check found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// Damage or warning.
    pub severity: Severity,
    /// The message concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// What exactly is wrong, for a person.
    pub detail: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The store directory checked.
    pub store_dir: PathBuf,
    /// Records read from the database.
    pub records: usize,
    /// Payload files read and compared.
    pub payloads_checked: usize,
    /// Sidecars read.
    pub sidecars: usize,
    /// Everything found, damage first.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// True when any finding is damage.
    pub fn is_damaged(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Damage)
    }

    /// The damage findings.
    pub fn damage(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Damage)
    }

    /// The command that fixes the damage, for messages.
    pub fn fix_command(&self) -> String {
        let dir = self.store_dir.display();
        format!("varti db recover --data-dir {dir} --out {dir}.recovered")
    }

    fn add(
        &mut self,
        kind: FindingKind,
        severity: Severity,
        message_id: Option<&str>,
        detail: String,
    ) {
        self.findings.push(Finding {
            kind,
            severity,
            message_id: message_id.map(str::to_owned),
            detail,
        });
    }
}

/// How to check.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// "Now", for the age of orphan payloads.
    pub now: OffsetDateTime,
    /// Payload files younger than this that no record names are taken to be in flight.
    pub in_flight_window: Duration,
}

impl CheckOptions {
    /// The defaults: now, and an in-flight window of 15 minutes (far longer than any
    /// upload takes between writing a payload and storing its record).
    pub fn new(now: OffsetDateTime) -> Self {
        CheckOptions {
            now,
            in_flight_window: Duration::from_secs(15 * 60),
        }
    }
}

/// Why [`SledStore::open_checked`] did not return a store.
#[derive(Debug, thiserror::Error)]
pub enum CheckedOpenError {
    /// The check found damage; nothing was changed.
    #[error("{}", damage_summary(.0))]
    Damaged(Box<CheckReport>),
    /// The store could not be read at all.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A multi-line summary of the damage in `report` with the commands that fix it.
pub fn damage_summary(report: &CheckReport) -> String {
    let mut out = format!(
        "the embedded store at {} is damaged:",
        report.store_dir.display()
    );
    let damage: Vec<&Finding> = report.damage().collect();
    for f in damage.iter().take(10) {
        out.push_str("\n  - ");
        out.push_str(&f.detail);
    }
    if damage.len() > 10 {
        out.push_str(&format!("\n  … and {} more", damage.len() - 10));
    }
    out.push_str(&format!(
        "\n  fix: stop Varti, run `{}` (the original is not modified), check its report, \
         then point store.path at the recovered directory (or move it into place); \
         `varti db check --data-dir {}` shows every finding",
        report.fix_command(),
        report.store_dir.display()
    ));
    out
}

impl SledStore {
    /// Opens the store in `dir` after checking it: a damaged store is not opened (and not
    /// changed) but described. A directory without a store is created, as by
    /// [`SledStore::open`].
    pub fn open_checked(
        dir: impl AsRef<Path>,
        options: CheckOptions,
    ) -> Result<(SledStore, CheckReport), CheckedOpenError> {
        let dir = dir.as_ref();
        if !dir.join("db").exists() && !has_payloads_or_sidecars(dir) {
            // A new store: nothing to check.
            let store = SledStore::open(dir)?;
            return Ok((store, empty_report(dir)));
        }
        let (store, report) = check_dir(dir, options)?;
        match store {
            Some(store) if !report.is_damaged() => Ok((store, report)),
            _ => Err(CheckedOpenError::Damaged(Box::new(report))),
        }
    }
}

/// Checks the store in `dir` (which must exist) and closes it again.
pub fn check_store(
    dir: impl AsRef<Path>,
    options: CheckOptions,
) -> Result<CheckReport, StoreError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(StoreError::io(
            format!("there is no store at {}", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    if !dir.join("db").exists() && !has_payloads_or_sidecars(dir) {
        return Err(StoreError::io(
            format!(
                "{} holds no store (no db/, payloads/ or messages/ in it)",
                dir.display()
            ),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    check_dir(dir, options).map(|(_, report)| report)
}

fn empty_report(dir: &Path) -> CheckReport {
    CheckReport {
        store_dir: dir.to_owned(),
        records: 0,
        payloads_checked: 0,
        sidecars: 0,
        findings: Vec::new(),
    }
}

fn has_payloads_or_sidecars(dir: &Path) -> bool {
    let non_empty = |d: PathBuf| {
        fs::read_dir(d)
            .map(|entries| entries.flatten().any(|e| e.file_name() != "tmp"))
            .unwrap_or(false)
    };
    non_empty(dir.join("payloads")) || non_empty(dir.join("messages"))
}

/// Opens sled through [`SledStore::open`], turning a panic inside sled into an error.
pub(crate) fn open_catching(dir: &Path) -> Result<SledStore, String> {
    let dir = dir.to_owned();
    // sled 0.34 may panic on some damage instead of returning an error.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || SledStore::open(&dir));
    std::panic::set_hook(previous);
    match result {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "sled panicked opening the database: {}",
            panic_text(&panic)
        )),
    }
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// `snap.*.generating` files in the sled directory.
pub(crate) fn interrupted_snapshots(db_dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(db_dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("snap.") && n.ends_with(".generating"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn check_dir(
    dir: &Path,
    options: CheckOptions,
) -> Result<(Option<SledStore>, CheckReport), StoreError> {
    let mut report = empty_report(dir);
    let db_dir = dir.join("db");
    for name in interrupted_snapshots(&db_dir) {
        report.add(
            FindingKind::InterruptedSnapshot,
            Severity::Damage,
            None,
            format!(
                "sled was stopped while writing a snapshot: {} was left behind",
                db_dir.join(&name).display()
            ),
        );
    }
    let db_files_present = db_dir.join("conf").exists() && db_dir.join("db").exists();
    let others = has_payloads_or_sidecars(dir);
    let store = if !db_files_present && others {
        report.add(
            FindingKind::DatabaseMissing,
            Severity::Damage,
            None,
            format!(
                "the sled database files in {} are missing while payloads or message sidecars \
                 exist",
                db_dir.display()
            ),
        );
        None
    } else {
        match open_catching(dir) {
            Ok(store) => {
                if db_files_present && !store.db().was_recovered() {
                    report.add(
                        FindingKind::DatabaseMissing,
                        Severity::Damage,
                        None,
                        format!("sled found no database to recover in {}", db_dir.display()),
                    );
                }
                Some(store)
            }
            Err(why) if why.contains("could not acquire lock") => {
                return Err(StoreError::Database(format!(
                    "the store at {} is in use by another process (a running `varti serve`?): \
                     stop it first (a running serve backs itself up: store.backup_dir) ({why})",
                    dir.display()
                )));
            }
            Err(why) => {
                report.add(
                    FindingKind::DatabaseUnopenable,
                    Severity::Damage,
                    None,
                    format!("sled cannot open {}: {why}", db_dir.display()),
                );
                None
            }
        }
    };

    let payloads = FilePayloadStore::at(dir.join("payloads"));
    let mut referenced: HashSet<String> = HashSet::new();
    let mut in_database: HashMap<String, Version> = HashMap::new();
    if let Some(store) = &store {
        for item in store.scan_records() {
            let (key, record) = match item {
                Ok(item) => item,
                Err(e) => {
                    report.add(
                        FindingKind::UnreadableRecord,
                        Severity::Damage,
                        None,
                        format!("reading the records stopped: {e}"),
                    );
                    break;
                }
            };
            report.records += 1;
            let key_text = String::from_utf8_lossy(&key).into_owned();
            let record = match record {
                Ok(r) if r.id().as_bytes() == key.as_slice() => r,
                Ok(r) => {
                    report.add(
                        FindingKind::UnreadableRecord,
                        Severity::Damage,
                        Some(&key_text),
                        format!(
                            "record `{key_text}` holds message `{}` instead",
                            r.id().escape_debug()
                        ),
                    );
                    continue;
                }
                Err(e) => {
                    report.add(
                        FindingKind::UnreadableRecord,
                        Severity::Damage,
                        Some(&key_text),
                        format!("record `{}` cannot be read: {e}", key_text.escape_debug()),
                    );
                    continue;
                }
            };
            for broken in invariant_violations(&record) {
                report.add(
                    FindingKind::BrokenInvariant,
                    Severity::Damage,
                    Some(record.id()),
                    format!("message `{}`: {broken}", record.id()),
                );
            }
            let missing = store.missing_index_entries(&record)?;
            if !missing.is_empty() {
                report.add(
                    FindingKind::MissingIndex,
                    Severity::Damage,
                    Some(record.id()),
                    format!(
                        "message `{}` is missing from the index(es) {}",
                        record.id(),
                        missing.join(", ")
                    ),
                );
            }
            check_payloads(&payloads, &record, &mut report);
            for p in &record.meta.payloads {
                referenced.insert(p.stored.id.clone());
            }
            in_database.insert(record.id().to_owned(), (&record).into());
        }
    }

    // Sidecars: each is a promise made to a partner or a backend.
    let sidecars = Sidecars::open(dir, false)?;
    let mut with_sidecar = HashSet::new();
    for sidecar in sidecars.read_all()? {
        report.sidecars += 1;
        let record = match sidecar.record {
            Ok(r) => r,
            Err(e) => {
                report.add(
                    FindingKind::UnreadableSidecar,
                    Severity::Warning,
                    None,
                    format!("sidecar {} cannot be read: {e}", sidecar.path.display()),
                );
                continue;
            }
        };
        for p in &record.meta.payloads {
            referenced.insert(p.stored.id.clone());
        }
        with_sidecar.insert(record.id().to_owned());
        if store.is_none() {
            continue;
        }
        match in_database.get(record.id()) {
            None => report.add(
                FindingKind::LostMessage,
                Severity::Damage,
                Some(record.id()),
                format!(
                    "the database lost message `{}` (its sidecar says it was {})",
                    record.id(),
                    record.state
                ),
            ),
            Some(db) if database_is_behind(*db, (&record).into()) => report.add(
                FindingKind::LostChange,
                Severity::Damage,
                Some(record.id()),
                format!(
                    "the database lost a change of message `{}`: it says {} (updated {}), its \
                     sidecar {} (updated {})",
                    record.id(),
                    db.state,
                    db.updated_at,
                    record.state,
                    record.updated_at
                ),
            ),
            Some(_) => {}
        }
    }
    let without = in_database
        .keys()
        .filter(|id| !with_sidecar.contains(*id))
        .count();
    if without > 0 {
        report.add(
            FindingKind::MissingSidecars,
            Severity::Warning,
            None,
            format!(
                "{without} message(s) have no sidecar (stored before sidecars existed, or cut \
                 between the database and the sidecar); the next change of each writes one"
            ),
        );
    }

    for (path, age) in payload_files(payloads.dir(), options.now) {
        let Some(id) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if !referenced.contains(&id) && age > options.in_flight_window {
            report.add(
                FindingKind::OrphanPayload,
                Severity::Warning,
                None,
                format!(
                    "payload file {} belongs to no message (left by a crash between storing a \
                     payload and its message; safe to delete)",
                    path.display()
                ),
            );
        }
    }
    report
        .findings
        .sort_by_key(|f| f.severity == Severity::Warning);
    Ok((store, report))
}

fn check_payloads(payloads: &FilePayloadStore, record: &MessageRecord, report: &mut CheckReport) {
    if record.payloads_purged_at.is_some() {
        return;
    }
    for entry in &record.meta.payloads {
        let stored = &entry.stored;
        // A payload kept inline came with the record: its bytes are checked in place.
        if let Some(check) = stored.check_inline() {
            report.payloads_checked += 1;
            if let Err(why) = check {
                report.add(
                    FindingKind::PayloadMismatch,
                    Severity::Damage,
                    Some(record.id()),
                    format!(
                        "message `{}`: payload {}: {why}",
                        record.id(),
                        entry.content_id
                    ),
                );
            }
            continue;
        }
        let path = match payloads.path_of(stored) {
            Ok(path) => path,
            Err(e) => {
                report.add(
                    FindingKind::BrokenInvariant,
                    Severity::Damage,
                    Some(record.id()),
                    format!("message `{}`: {e}", record.id()),
                );
                continue;
            }
        };
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                report.add(
                    FindingKind::MissingPayload,
                    Severity::Damage,
                    Some(record.id()),
                    format!(
                        "message `{}`: payload {} ({}) is missing: {e}",
                        record.id(),
                        entry.content_id,
                        path.display()
                    ),
                );
                continue;
            }
        };
        report.payloads_checked += 1;
        // A gzip file is checked by what it inflates to: the payload's bytes.
        let (size, digest) = match sha256_of(&mut file_reader(file, stored.encoding())) {
            Ok(v) => v,
            Err(e) => {
                report.add(
                    FindingKind::PayloadMismatch,
                    Severity::Damage,
                    Some(record.id()),
                    format!(
                        "message `{}`: cannot read {}: {e}",
                        record.id(),
                        path.display()
                    ),
                );
                continue;
            }
        };
        let wrong_hash = stored.sha256.as_ref().is_some_and(|h| *h != digest);
        if size != stored.size || wrong_hash {
            report.add(
                FindingKind::PayloadMismatch,
                Severity::Damage,
                Some(record.id()),
                format!(
                    "message `{}`: payload {} ({}) is not what was stored: {size} bytes, SHA-256 \
                     {digest}; recorded {} bytes{}",
                    record.id(),
                    entry.content_id,
                    path.display(),
                    stored.size,
                    stored
                        .sha256
                        .as_ref()
                        .map(|h| format!(", SHA-256 {h}"))
                        .unwrap_or_default()
                ),
            );
        }
    }
}

/// The state machine's invariants a stored record must satisfy.
pub(crate) fn invariant_violations(record: &MessageRecord) -> Vec<String> {
    let mut out = Vec::new();
    if record.state.direction() != record.direction {
        out.push(format!(
            "state {} is not a state of a {} message",
            record.state, record.direction
        ));
    }
    if record.state.is_settled() != record.settled_at.is_some() {
        out.push(format!(
            "state {} but settled time {:?}",
            record.state, record.settled_at
        ));
    }
    if record.state == State::Sending && record.lease.is_none() {
        out.push("sending without a lease".into());
    }
    if matches!(record.state, State::Submitted | State::WaitingForRetry)
        && record.next_attempt_at.is_none()
    {
        out.push(format!("{} without a due time", record.state));
    }
    if let Some(last) = record.history.last() {
        if last.to != record.state {
            out.push(format!(
                "its history ends in {} but its state is {}",
                last.to, record.state
            ));
        }
    }
    if record.direction == crate::Direction::Inbound && record.receipt.is_none() {
        out.push("an inbound message without the receipt that answered it".into());
    }
    out
}

/// Every payload file under `dir` (the shard directories) with its age.
fn payload_files(dir: &Path, now: OffsetDateTime) -> Vec<(PathBuf, Duration)> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(dir) else {
        return out;
    };
    for shard in shards.flatten() {
        if shard.file_name() == "tmp" || !shard.path().is_dir() {
            continue;
        }
        let Ok(files) = fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let modified = file
                .metadata()
                .and_then(|m| m.modified())
                .map(OffsetDateTime::from)
                .unwrap_or(now);
            let age = (now - modified).try_into().unwrap_or(Duration::ZERO);
            out.push((file.path(), age));
        }
    }
    out
}
