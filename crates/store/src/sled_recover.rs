//! Rebuilding a clean embedded store from a damaged one (`varti db recover`).
//!
//! The damaged store is only read, never changed: its sled files are copied aside and the
//! copy is opened (sled's own recovery writes to the files it opens). Every message comes
//! from the newer of two sources: the database's record (where the copy opens and the
//! record reads) and the message's sidecar (its last acknowledged state, written after
//! every durable change). Payloads are copied only after their size and SHA-256 check out;
//! a message whose payload is missing or damaged keeps its record (the receipt and history
//! are evidence) with its payloads marked purged, and is listed as a loss. Trees the
//! recovery does not know (other features' data) are copied as they are when the database
//! opens (and the signal ids). The new store is built under `<out>.partial` and renamed into place when done.

use crate::payload::{sync_dir, FilePayloadStore, PayloadStore};
use crate::record::MessageRecord;
use crate::sidecar::{database_is_behind, Sidecars};
use crate::sled_check::{interrupted_snapshots, panic_text};
use crate::sled_store::is_rebuilt_from_records;
use crate::{SledStore, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// What a recovery saved and what it lost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoverReport {
    /// The recovered store's directory.
    pub out: PathBuf,
    /// Whether the damaged database opened (from a copy).
    pub database_opened: bool,
    /// Why it did not open, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_error: Option<String>,
    /// Messages saved in all.
    pub messages_saved: usize,
    /// Of those, taken from the database.
    pub from_database: usize,
    /// Of those, taken from their sidecar (the database lacked them or an acknowledged
    /// change of them).
    pub from_sidecars: usize,
    /// Payload files copied (each checked against its size and SHA-256).
    pub payloads_saved: usize,
    /// Payloads that could not be saved: `message id: content id: why`.
    pub payloads_lost: Vec<String>,
    /// Database records or sidecars that could not be read (their messages are lost unless
    /// the other source had them).
    pub unreadable: Vec<String>,
    /// Trees of other features copied as they were.
    pub other_trees: Vec<String>,
}

/// Rebuilds the store in `damaged` into the new directory `out` (which must not exist or
/// be empty). `now` marks payloads that were lost as purged.
pub fn recover_store(
    damaged: impl AsRef<Path>,
    out: impl AsRef<Path>,
    now: OffsetDateTime,
) -> Result<RecoverReport, StoreError> {
    let damaged = damaged.as_ref();
    let out = out.as_ref();
    if !damaged.is_dir() {
        return Err(StoreError::InvalidInput(format!(
            "there is no store at {} to recover",
            damaged.display()
        )));
    }
    if out.exists()
        && fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(StoreError::InvalidInput(format!(
            "{} already exists and is not empty: recovery writes a new store; name a new \
             directory",
            out.display()
        )));
    }
    if same_dir(damaged, out) {
        return Err(StoreError::InvalidInput(
            "the recovered store must go to a new directory, not the damaged one".into(),
        ));
    }
    let partial = with_suffix(out, ".partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| {
            StoreError::io(
                format!("cannot remove the leftover {}", partial.display()),
                e,
            )
        })?;
    }
    fs::create_dir_all(&partial)
        .map_err(|e| StoreError::io(format!("cannot create {}", partial.display()), e))?;
    let mut report = RecoverReport {
        out: out.to_owned(),
        ..RecoverReport::default()
    };

    // 1. What the database still holds, read from a copy of its files.
    let copy = partial.join("damaged-db-copy");
    copy_dir(&damaged.join("db"), &copy)?;
    // An interrupted snapshot is exactly what makes sled 0.34 refuse to open; the log holds
    // the same data, so the copy is opened without it.
    for name in interrupted_snapshots(&copy) {
        let _ = fs::remove_file(copy.join(name));
    }
    let mut from_db: BTreeMap<String, MessageRecord> = BTreeMap::new();
    let mut other_trees: Trees = Vec::new();
    if copy.join("conf").exists() {
        match read_database(&copy, &mut report) {
            Ok((records, trees)) => {
                report.database_opened = true;
                from_db = records;
                other_trees = trees;
            }
            Err(why) => report.database_error = Some(why),
        }
    } else {
        report.database_error = Some("the sled database files are missing".into());
    }
    fs::remove_dir_all(&copy)
        .map_err(|e| StoreError::io(format!("cannot remove {}", copy.display()), e))?;

    // 2. The sidecars: the last acknowledged state of each message.
    let mut chosen = from_db;
    let mut from_sidecar = std::collections::HashSet::new();
    for sidecar in Sidecars::open(damaged, false)?.read_all()? {
        match sidecar.record {
            Ok(record) => {
                let take = match chosen.get(record.id()) {
                    None => true,
                    Some(db) => database_is_behind(db.into(), (&record).into()),
                };
                if take {
                    from_sidecar.insert(record.id().to_owned());
                    chosen.insert(record.id().to_owned(), record);
                } else if let Some(db) = chosen.get_mut(record.id()) {
                    // The database's record is current, but the bytes of an inline payload
                    // may be lost with its `inline` tree: the sidecar carries them too.
                    restore_inline_bytes(db, &record);
                }
            }
            Err(e) => report
                .unreadable
                .push(format!("sidecar {}: {e}", sidecar.path.display())),
        }
    }

    // 3. The new store: each message with its checked payloads.
    let store = SledStore::open(&partial)?;
    let old_payloads = FilePayloadStore::at(damaged.join("payloads"));
    for (id, mut record) in chosen {
        if record.payloads_purged_at.is_none() {
            let mut lost = false;
            for entry in &record.meta.payloads {
                // An inline payload came with its record: only its integrity is checked.
                let saved = match entry.stored.check_inline() {
                    Some(check) => check.map_err(StoreError::Corrupt),
                    // Copied as the payload's bytes (a file kept in gzip is read inflated
                    // and checked against the recorded SHA-256), so the copy is plain.
                    None => old_payloads.open(&entry.stored).and_then(|mut reader| {
                        store.file_payloads().import(&entry.stored, &mut reader)
                    }),
                };
                match saved {
                    Ok(()) => report.payloads_saved += 1,
                    Err(e) => {
                        lost = true;
                        let why = match e {
                            StoreError::NotFound { .. } => "the payload file is missing".to_owned(),
                            other => other.to_string(),
                        };
                        report
                            .payloads_lost
                            .push(format!("{id}: {}: {why}", entry.content_id));
                    }
                }
            }
            for entry in &mut record.meta.payloads {
                entry.stored.copied_plain();
            }
            if lost {
                // The record stays (receipt and history are evidence); its payloads are
                // gone, which is what "purged" means to every reader of the store.
                for entry in &record.meta.payloads {
                    let _ = store.file_payloads().remove(&entry.stored);
                }
                record.mark_payloads_purged(now);
            }
        }
        store.put_record_as_is(&record)?;
        if from_sidecar.contains(&id) {
            report.from_sidecars += 1;
        } else {
            report.from_database += 1;
        }
        report.messages_saved += 1;
    }
    for (name, entries) in other_trees {
        if entries.is_empty() {
            continue;
        }
        let tree = store.db().open_tree(&name).map_err(sled_error)?;
        for (k, v) in entries {
            tree.insert(k, v).map_err(sled_error)?;
        }
        report.other_trees.push(name);
    }
    store.finish_rebuild(&partial)?;
    drop(store);

    fs::rename(&partial, out).map_err(|e| {
        StoreError::io(
            format!("cannot move {} to {}", partial.display(), out.display()),
            e,
        )
    })?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(report)
}

/// Trees of other features: name and entries.
type Trees = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Reads every record (and every tree this module does not know) from the sled files in
/// `db_dir`, surviving a sled panic.
fn read_database(
    db_dir: &Path,
    report: &mut RecoverReport,
) -> Result<(BTreeMap<String, MessageRecord>, Trees), String> {
    let db_dir = db_dir.to_owned();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        let db = crate::sled_store::sled_config(&db_dir)
            .open()
            .map_err(|e| format!("sled cannot open the copy: {e}"))?;
        let mut records = BTreeMap::new();
        let mut unreadable = Vec::new();
        let tree = db.open_tree("records").map_err(|e| e.to_string())?;
        let inline = db.open_tree("inline").map_err(|e| e.to_string())?;
        for item in tree.iter() {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    unreadable.push(format!("database records after an error: {e}"));
                    break;
                }
            };
            match serde_json::from_slice::<MessageRecord>(&value) {
                Ok(mut r) if r.id().as_bytes() == &key[..] => {
                    // Inline bytes the damaged tree cannot give back stay empty: the
                    // payload's size and SHA-256 then fail, and the sidecar (which carries
                    // the bytes) or the loss report takes over.
                    let _ = crate::sled_store::attach_inline(&mut r, |k| inline.get(k));
                    records.insert(r.id().to_owned(), r);
                }
                _ => unreadable.push(format!(
                    "database record `{}`",
                    String::from_utf8_lossy(&key).escape_debug()
                )),
            }
        }
        let mut others = Vec::new();
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            if is_rebuilt_from_records(&name) {
                continue;
            }
            let tree = db.open_tree(&name).map_err(|e| e.to_string())?;
            let entries = tree
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            others.push((name, entries));
        }
        Ok((records, others, unreadable))
    });
    std::panic::set_hook(previous);
    match result {
        Ok(Ok((records, others, unreadable))) => {
            report.unreadable.extend(unreadable);
            Ok((records, others))
        }
        Ok(Err(e)) => Err(e),
        Err(panic) => Err(format!("sled panicked: {}", panic_text(&panic))),
    }
}

fn sled_error(e: sled::Error) -> StoreError {
    StoreError::Database(format!("sled: {e}"))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(to)
        .map_err(|e| StoreError::io(format!("cannot create {}", to.display()), e))?;
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|e| {
                StoreError::io(format!("cannot copy {}", entry.path().display()), e)
            })?;
        }
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Puts into `record` the bytes of each inline payload that fails its size and SHA-256
/// check, from the same payload (same id) of `sidecar` where those pass.
fn restore_inline_bytes(record: &mut MessageRecord, sidecar: &MessageRecord) {
    for entry in &mut record.meta.payloads {
        if !matches!(entry.stored.check_inline(), Some(Err(_))) {
            continue;
        }
        let good = sidecar.meta.payloads.iter().find(|p| {
            p.stored.id == entry.stored.id && matches!(p.stored.check_inline(), Some(Ok(())))
        });
        if let Some(bytes) = good.and_then(|p| p.stored.inline_bytes()) {
            entry.stored.put_inline(bytes);
        }
    }
}
