//! The embedded store's safety net: the integrity check detects each kind of damage,
//! recovery rebuilds a clean store (also from sidecars alone), backup and restore round-trip.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;
use varti_store::{
    check_store, recover_store, restore_backup, sled_config, AttemptOutcome, CheckOptions,
    CheckedOpenError, FileEncoding, FindingKind, MessageMeta, NewInbound, NewOutbound,
    PayloadEntry, SledStore, State, Store,
};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The first payload of message `id`: large enough for a payload file of its own.
fn file_payload(id: &str) -> String {
    format!("<payload of {id}/>").repeat(4000)
}

/// The second payload of message `id`: small, kept inline in the record.
fn inline_payload(id: &str) -> String {
    format!("<note of {id}/>")
}

/// The message whose payload file is kept in gzip, as a large part received compressed is.
const GZIP_KEPT: &str = "in-1@t";

/// Every message has two payloads: a payload file, and a small one kept inline, so that
/// each safety net is shown to carry both kinds. The payload file of [`GZIP_KEPT`] holds
/// its bytes in gzip (taken over as a receiver takes a spool file over), so that each
/// safety net is shown to read such a file as the payload it inflates to.
fn meta(store: &SledStore, id: &str) -> MessageMeta {
    let stored = if id == GZIP_KEPT {
        use std::io::Write as _;
        let bytes = file_payload(id);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes.as_bytes()).unwrap();
        let spooled = store.file_payloads().dir().join("tmp").join("received.gz");
        fs::write(&spooled, gz.finish().unwrap()).unwrap();
        let sha256 = openssl::sha::sha256(bytes.as_bytes());
        store
            .payloads()
            .adopt(&spooled, FileEncoding::Gzip, bytes.len() as u64, &sha256)
            .unwrap()
            .expect("taken over")
    } else {
        store
            .payloads()
            .put(&mut file_payload(id).as_bytes())
            .unwrap()
    };
    assert!(!stored.is_inline());
    let note = store
        .payloads()
        .put(&mut inline_payload(id).as_bytes())
        .unwrap();
    assert!(note.is_inline());
    MessageMeta {
        payloads: vec![
            PayloadEntry {
                content_id: "cid:p@varti.test".into(),
                mime_type: "application/xml".into(),
                stored,
                properties: Vec::new(),
            },
            PayloadEntry {
                content_id: "cid:note@varti.test".into(),
                mime_type: "application/xml".into(),
                stored: note,
                properties: Vec::new(),
            },
        ],
        ..meta_without_payloads(id)
    }
}

/// The metadata of message `id`, without payloads.
fn meta_without_payloads(id: &str) -> MessageMeta {
    MessageMeta {
        message_id: id.into(),
        owner: "backend".into(),
        from_party: "red".into(),
        to_party: "blue".into(),
        service: "urn:example:service".into(),
        action: "Deliver".into(),
        conversation_id: id.into(),
        ref_to_message_id: None,
        pmode_id: "p".into(),
        payloads: Vec::new(),
        properties: Vec::new(),
    }
}

/// A store with 3 inbound (one delivered) and 2 outbound (one acknowledged) messages.
fn populated(dir: &Path) {
    let store = SledStore::open(dir).unwrap();
    for i in 0..3 {
        let id = format!("in-{i}@t");
        store
            .insert_inbound(
                NewInbound {
                    meta: meta(&store, &id),
                    receipt: format!("<receipt {id}/>").into_bytes(),
                    peer: None,
                },
                now(),
            )
            .unwrap();
    }
    assert!(store.mark_delivered("in-0@t", now()).unwrap());
    for i in 0..2 {
        let id = format!("out-{i}@t");
        store
            .insert_outbound(
                NewOutbound {
                    meta: meta(&store, &id),
                    not_before: now(),
                },
                now(),
            )
            .unwrap();
    }
    let claimed = store
        .claim_due("me", Duration::from_secs(60), 1, now())
        .unwrap();
    store
        .record_attempt(
            claimed[0].id(),
            "me",
            AttemptOutcome::Acknowledged {
                receipt: b"<their receipt/>".to_vec(),
            },
            now(),
        )
        .unwrap();
}

fn kinds(dir: &Path) -> Vec<FindingKind> {
    let report = check_store(dir, CheckOptions::new(now())).unwrap();
    report.damage().map(|f| f.kind).collect()
}

fn payload_file_of(dir: &Path, id: &str) -> std::path::PathBuf {
    let store = SledStore::open(dir).unwrap();
    let record = store.get(id).unwrap().unwrap();
    store
        .file_payloads()
        .path_of(&record.meta.payloads[0].stored)
        .unwrap()
}

/// Every message of `populated` is in the store at `dir` (rebuilt by recovery or a
/// restore), in its state, payloads intact.
fn assert_all_there(dir: &Path) {
    let store = SledStore::open(dir).unwrap();
    for (id, state) in [
        ("in-0@t", State::Delivered),
        ("in-1@t", State::Received),
        ("in-2@t", State::Received),
        ("out-1@t", State::Submitted),
    ] {
        let record = store
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!(record.state, state, "{id}");
        for (entry, expected) in record
            .meta
            .payloads
            .iter()
            .zip([file_payload(id), inline_payload(id)])
        {
            let mut bytes = String::new();
            store
                .payloads()
                .open(&entry.stored)
                .unwrap()
                .read_to_string(&mut bytes)
                .unwrap();
            assert_eq!(bytes, expected, "{id}");
        }
        assert!(record.meta.payloads[1].stored.is_inline(), "{id}");
        // A rebuilt store holds copies of the payloads' bytes, [`GZIP_KEPT`]'s too.
        assert_eq!(
            record.meta.payloads[0].stored.encoding(),
            FileEncoding::Plain,
            "{id}"
        );
    }
    let acked = store.get("out-0@t").unwrap().unwrap();
    assert_eq!(acked.state, State::Acknowledged);
}

#[test]
fn a_clean_store_passes_and_payloads_carry_their_sha256() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let report = check_store(dir.path(), CheckOptions::new(now())).unwrap();
    assert!(!report.is_damaged(), "{:?}", report.findings);
    assert_eq!(report.records, 5);
    // Each message's payload file and its inline payload.
    assert_eq!(report.payloads_checked, 10);
    assert_eq!(report.sidecars, 5);
    let store = SledStore::open(dir.path()).unwrap();
    let record = store.get("in-1@t").unwrap().unwrap();
    assert_eq!(
        record.meta.payloads[0]
            .stored
            .sha256
            .as_deref()
            .map(str::len),
        Some(64)
    );
    // The gzip file was checked by what it inflates to; damage in it is found.
    let stored = &record.meta.payloads[0].stored;
    assert_eq!(stored.encoding(), FileEncoding::Gzip);
    let path = store.file_payloads().path_of(stored).unwrap();
    drop(store);
    let mut gz = fs::read(&path).unwrap();
    let at = gz.len() / 2;
    gz[at] ^= 0x55;
    fs::write(&path, gz).unwrap();
    assert_eq!(kinds(dir.path()), vec![FindingKind::PayloadMismatch]);
}

#[test]
fn a_deleted_payload_is_detected_and_recovery_reports_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    fs::remove_file(payload_file_of(dir.path(), "in-1@t")).unwrap();
    assert_eq!(kinds(dir.path()), vec![FindingKind::MissingPayload]);
    let err = SledStore::open_checked(dir.path(), CheckOptions::new(now())).unwrap_err();
    let CheckedOpenError::Damaged(report) = &err else {
        panic!("{err}")
    };
    assert_eq!(report.damage().count(), 1);
    let text = err.to_string();
    assert!(
        text.contains("in-1@t") && text.contains("varti db recover"),
        "{text}"
    );

    let out = dir.path().join("recovered");
    let report = recover_store(dir.path(), &out, now()).unwrap();
    assert_eq!(report.messages_saved, 5);
    assert_eq!(report.payloads_lost.len(), 1, "{:?}", report.payloads_lost);
    assert!(report.payloads_lost[0].starts_with("in-1@t"));
    assert!(kinds(&out).is_empty());
    let store = SledStore::open(&out).unwrap();
    let record = store.get("in-1@t").unwrap().unwrap();
    assert!(record.payloads_purged_at.is_some());
    assert_eq!(record.receipt.as_deref(), Some(&b"<receipt in-1@t/>"[..]));
}

#[test]
fn a_flipped_byte_in_a_payload_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let path = payload_file_of(dir.path(), "in-2@t");
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let report = check_store(dir.path(), CheckOptions::new(now())).unwrap();
    let damage: Vec<_> = report.damage().collect();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0].kind, FindingKind::PayloadMismatch);
    assert_eq!(damage[0].message_id.as_deref(), Some("in-2@t"));
    assert!(damage[0].detail.contains("SHA-256"), "{}", damage[0].detail);
}

#[test]
fn a_leftover_generating_snapshot_is_detected_and_recovery_saves_everything() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    fs::write(
        dir.path()
            .join("db")
            .join("snap.0000000000001234.generating"),
        b"half a snapshot",
    )
    .unwrap();
    assert!(kinds(dir.path()).contains(&FindingKind::InterruptedSnapshot));
    let out = dir.path().join("recovered");
    let report = recover_store(dir.path(), &out, now()).unwrap();
    assert!(report.database_opened);
    assert_eq!(report.messages_saved, 5);
    assert!(report.payloads_lost.is_empty());
    assert!(kinds(&out).is_empty());
    assert_all_there(&out);
    // The original was not touched.
    assert!(dir
        .path()
        .join("db")
        .join("snap.0000000000001234.generating")
        .exists());
}

#[test]
fn a_truncated_sled_log_is_detected_and_the_sidecars_bring_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let log = dir.path().join("db").join("db");
    let len = fs::metadata(&log).unwrap().len();
    let file = fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let damage = kinds(dir.path());
    assert!(!damage.is_empty(), "a truncated log went unnoticed");
    let out = dir.path().join("recovered");
    let report = recover_store(dir.path(), &out, now()).unwrap();
    assert_eq!(report.messages_saved, 5, "{report:?}");
    assert!(kinds(&out).is_empty());
    assert_all_there(&out);
}

#[test]
fn a_store_without_its_sled_files_is_rebuilt_from_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    fs::remove_dir_all(dir.path().join("db")).unwrap();
    assert_eq!(kinds(dir.path()), vec![FindingKind::DatabaseMissing]);
    // serve's open refuses rather than starting empty.
    assert!(SledStore::open_checked(dir.path(), CheckOptions::new(now())).is_err());
    let out = dir.path().join("recovered");
    let report = recover_store(dir.path(), &out, now()).unwrap();
    assert!(!report.database_opened);
    assert_eq!(report.from_sidecars, 5);
    assert_all_there(&out);
    // A recovered store works: the waiting outbound message can be claimed.
    let store = SledStore::open(&out).unwrap();
    let claimed = store
        .claim_due("me", Duration::from_secs(60), 10, now())
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id(), "out-1@t");
}

/// The bytes of inline payloads live in sled's `inline` tree: lost with it, they are
/// damage the check names, and recovery takes them from the sidecars, which carry them.
#[test]
fn inline_bytes_lost_from_the_database_are_found_in_the_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = sled_config(&dir.path().join("db")).open().unwrap();
        let inline = db.open_tree("inline").unwrap();
        assert_eq!(inline.len(), 5, "one inline payload per message");
        inline.clear().unwrap();
        db.flush().unwrap();
    }
    assert!(
        !kinds(dir.path()).is_empty(),
        "the check sees the lost bytes"
    );
    let out = dir.path().join("recovered");
    let report = recover_store(dir.path(), &out, now()).unwrap();
    assert!(
        report.payloads_lost.is_empty(),
        "{:?}",
        report.payloads_lost
    );
    assert_eq!(report.from_database, 5);
    assert!(kinds(&out).is_empty());
    assert_all_there(&out);
}

#[test]
fn recovery_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let out = dir.path().join("taken");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("x"), b"mine").unwrap();
    let err = recover_store(dir.path(), &out, now()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(fs::read(out.join("x")).unwrap(), b"mine");
}

#[test]
fn backup_and_restore_round_trip_and_a_damaged_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    let mut backup = Vec::new();
    {
        let store = SledStore::open(dir.path()).unwrap();
        let summary = store.backup(&mut backup, now()).unwrap();
        // Payload files only: the inline payloads travel in their records.
        assert_eq!((summary.messages, summary.payloads), (5, 5));
    }
    let out = dir.path().join("restored");
    let summary = restore_backup(&mut &backup[..], &out).unwrap();
    assert_eq!((summary.messages, summary.payloads), (5, 5));
    assert!(kinds(&out).is_empty());
    assert_all_there(&out);

    // Truncated anywhere, or a flipped byte: refused, and nothing left behind.
    for cut in [backup.len() / 2, backup.len() - 3] {
        let target = dir.path().join(format!("cut-{cut}"));
        let err = restore_backup(&mut &backup[..cut], &target).unwrap_err();
        assert!(err.to_string().contains("cannot restore"), "{err}");
        assert!(!target.exists());
    }
    let mut flipped = backup.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x20;
    let target = dir.path().join("flipped");
    assert!(restore_backup(&mut &flipped[..], &target).is_err());
    assert!(!target.exists());
}

/// Another feature's tree (here "audit") survives backup/restore and recovery untouched,
/// and the check does not mind it.
#[test]
fn trees_of_other_features_are_carried_along() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = sled_config(&dir.path().join("db")).open().unwrap();
        let audit = db.open_tree("audit").unwrap();
        audit
            .insert(b"0001", &b"operator purged nothing"[..])
            .unwrap();
        db.flush().unwrap();
    }
    assert!(kinds(dir.path()).is_empty());
    let read_audit = |store_dir: &Path| {
        let db = sled_config(&store_dir.join("db")).open().unwrap();
        let value = db.open_tree("audit").unwrap().get(b"0001").unwrap();
        value.map(|v| v.to_vec())
    };
    let mut backup = Vec::new();
    SledStore::open(dir.path())
        .unwrap()
        .backup(&mut backup, now())
        .unwrap();
    let restored = dir.path().join("restored");
    restore_backup(&mut &backup[..], &restored).unwrap();
    assert_eq!(
        read_audit(&restored).as_deref(),
        Some(&b"operator purged nothing"[..])
    );
    let recovered = dir.path().join("recovered");
    let report = recover_store(dir.path(), &recovered, now()).unwrap();
    // The webhook outbox (issue 18) is data of its own too: its pending events survive.
    assert_eq!(
        report.other_trees,
        vec!["audit".to_owned(), "outbox".to_owned()]
    );
    assert_eq!(
        read_audit(&recovered).as_deref(),
        Some(&b"operator purged nothing"[..])
    );
}

/// Stores `count` inbound messages, each with one 10 KiB payload kept inline, and returns
/// whether sled had a file under `db/blobs` (a page kept outside its synced log) after any
/// of them. (sled removes such a file once the page is written anew, so what is left at
/// the end depends on which leaves were rewritten last: each store call is looked after.)
fn blob_files_seen_with_inline_messages(store: &SledStore, dir: &Path, count: usize) -> bool {
    let mut seen = false;
    for i in 0..count {
        let id = format!("inline-{i:04}@t");
        // Distinct bytes per message, so that nothing shares or shrinks them.
        let bytes: Vec<u8> = (0..10 * 1024u32)
            .map(|k| (k.wrapping_mul(2_654_435_761).wrapping_add(i as u32 * 7919) >> 11) as u8)
            .collect();
        let stored = store.payloads().put(&mut &bytes[..]).unwrap();
        assert!(stored.is_inline());
        let mut meta = meta_without_payloads(&id);
        meta.payloads.push(PayloadEntry {
            content_id: "cid:inline@varti.test".into(),
            mime_type: "application/octet-stream".into(),
            stored,
            properties: Vec::new(),
        });
        store
            .insert_inbound(
                NewInbound {
                    meta,
                    receipt: format!("<receipt {id}/>").into_bytes(),
                    peer: None,
                },
                now(),
            )
            .unwrap();
        seen |=
            fs::read_dir(dir.join("db/blobs")).is_ok_and(|mut entries| entries.next().is_some());
    }
    seen
}

/// sled writes a page larger than a quarter of its segment into a file of its own, which it
/// never syncs. A new store's segments are large enough that the leaves of inline payloads
/// stay in the synced log; a store whose database sled made with its default segment size
/// (every store before) still opens with that size, and there the same load makes such
/// files: the difference is the segment size, nothing else.
#[test]
fn a_new_store_keeps_inline_payload_pages_in_its_synced_log_and_an_older_one_still_opens() {
    let new = tempfile::tempdir().unwrap();
    let store = SledStore::open(new.path()).unwrap();
    assert!(
        !blob_files_seen_with_inline_messages(&store, new.path(), 200),
        "a new store kept a page outside its log"
    );
    let conf = String::from_utf8_lossy(&fs::read(new.path().join("db/conf")).unwrap()).into_owned();
    assert!(conf.contains("segment_size: 8388608"), "{conf}");

    let older = tempfile::tempdir().unwrap();
    drop(
        sled::Config::new()
            .path(older.path().join("db"))
            .open()
            .unwrap(),
    );
    // It opens, with sled's default segment size kept.
    let store = SledStore::open(older.path()).unwrap();
    let conf =
        String::from_utf8_lossy(&fs::read(older.path().join("db/conf")).unwrap()).into_owned();
    assert!(conf.contains("segment_size: 524288"), "{conf}");
    assert!(
        blob_files_seen_with_inline_messages(&store, older.path(), 200),
        "with sled's default segment size, the same load keeps pages outside the log"
    );
    assert!(store.get("inline-0199@t").unwrap().is_some());
}
