//! Power-cut test helper for `tests/power_cut.rs` (not a user tool).
//!
//! `store-powercut-child DIR ROUND` opens the sled store in DIR and, until it is killed,
//! puts it under load from three threads, printing a line only once the store call that
//! makes the promise returned (the moment a partner or backend would be told):
//! * `ack ID`: an inbound message stored (its receipt would leave now);
//! * `delivered ID`: an inbound message marked delivered (`mark_delivered` returned true);
//! * `submitted ID`: an outbound message accepted from a backend;
//! * `acknowledged ID`: an outbound message's receipt recorded.
//!
//! Any broken expectation prints `BAD …` and exits with status 3.
//!
//! `store-powercut-child --selftest DIR` instead makes a few file changes with and without
//! fsync (see `selftest`), prints `ready` and waits to be killed: the test checks that the
//! shim keeps exactly the durable ones.

use std::io::Write;
use std::time::Duration;
use time::OffsetDateTime;
use varti_store::{
    AttemptOutcome, Direction, InsertOutcome, ListFilter, MessageMeta, NewInbound, NewOutbound,
    PayloadEntry, SledStore, State, Store,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: store-powercut-child DIR ROUND");
        std::process::exit(2);
    }
    if args[1] == "--selftest" {
        selftest(std::path::Path::new(&args[2]));
    }
    let store = SledStore::open(&args[1]).unwrap_or_else(|e| bad(&format!("open: {e}")));
    let round = &args[2];
    std::thread::scope(|s| {
        s.spawn(|| loop {
            if deliver_pending(&store) == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        s.spawn(|| {
            for i in 0.. {
                let id = format!("pc-out-{round}-{i}@varti.test");
                let msg = NewOutbound {
                    meta: meta(&store, &id),
                    not_before: OffsetDateTime::now_utc(),
                };
                store
                    .insert_outbound(msg, OffsetDateTime::now_utc())
                    .unwrap_or_else(|e| bad(&format!("submit {id}: {e}")));
                say(&format!("submitted {id}"));
                let now = OffsetDateTime::now_utc();
                let claimed = store
                    .claim_due("child", Duration::from_secs(600), 4, now)
                    .unwrap_or_else(|e| bad(&format!("claim: {e}")));
                for record in claimed {
                    let id = record.id().to_owned();
                    let receipt = format!("<receipt from partner for {id}/>").into_bytes();
                    store
                        .record_attempt(&id, "child", AttemptOutcome::Acknowledged { receipt }, now)
                        .unwrap_or_else(|e| bad(&format!("acknowledge {id}: {e}")));
                    say(&format!("acknowledged {id}"));
                }
            }
        });
        for i in 0.. {
            let id = format!("pc-in-{round}-{i}@varti.test");
            let msg = NewInbound {
                meta: meta(&store, &id),
                receipt: format!("<receipt for {id}/>").into_bytes(),
                peer: None,
            };
            match store.insert_inbound(msg, OffsetDateTime::now_utc()) {
                Ok(InsertOutcome::Inserted) => say(&format!("ack {id}")),
                other => bad(&format!("insert {id}: {other:?}")),
            }
        }
    });
}

/// File changes the power-cut shim must keep (fsync'd, directory fsync'd) or undo.
fn selftest(dir: &std::path::Path) -> ! {
    use std::fs;
    let sync_dir = || fs::File::open(dir).and_then(|d| d.sync_all());
    let step = || -> std::io::Result<()> {
        // Durable: written, fsync'd, its directory fsync'd.
        let mut f = fs::File::create(dir.join("kept"))?;
        f.write_all(b"kept")?;
        f.sync_all()?;
        sync_dir()?;
        // An existing file overwritten without fsync: the old bytes come back.
        let mut f = fs::OpenOptions::new().write(true).open(dir.join("old"))?;
        f.write_all(b"NEW")?;
        // Appended without fsync: cut back to the old length.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("grown"))?;
        f.write_all(b"def")?;
        // A new file fsync'd, but not its directory entry: gone.
        let mut f = fs::File::create(dir.join("unlisted"))?;
        f.write_all(b"x")?;
        f.sync_all()?;
        // Renamed over an existing file without a directory fsync: the old file is back.
        let mut f = fs::File::create(dir.join("tmp"))?;
        f.write_all(b"replacement")?;
        f.sync_all()?;
        fs::rename(dir.join("tmp"), dir.join("replaced"))?;
        // Removed without a directory fsync: back.
        fs::remove_file(dir.join("removed"))?;
        Ok(())
    };
    step().unwrap_or_else(|e| bad(&format!("selftest: {e}")));
    say("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The payload bytes of message `id` (the test checks them after each cut).
fn payload_of(id: &str) -> Vec<u8> {
    format!("<payload of {id}/>").repeat(40).into_bytes()
}

fn meta(store: &SledStore, id: &str) -> MessageMeta {
    let stored = store
        .payloads()
        .put(&mut &payload_of(id)[..])
        .unwrap_or_else(|e| bad(&format!("payload: {e}")));
    MessageMeta {
        message_id: id.to_owned(),
        owner: "backend".into(),
        from_party: "red".into(),
        to_party: "blue".into(),
        service: "urn:example:service".into(),
        action: "Deliver".into(),
        conversation_id: id.to_owned(),
        ref_to_message_id: None,
        pmode_id: "powercut".into(),
        payloads: vec![PayloadEntry {
            content_id: "cid:p@varti.test".into(),
            mime_type: "application/xml".into(),
            stored,
            properties: Vec::new(),
        }],
        properties: Vec::new(),
    }
}

/// Marks every received message delivered; returns how many were pending.
fn deliver_pending(store: &SledStore) -> usize {
    let page = store
        .list(&ListFilter {
            direction: Some(Direction::Inbound),
            states: vec![State::Received],
            limit: 20,
            ..ListFilter::default()
        })
        .unwrap_or_else(|e| bad(&format!("list: {e}")));
    let pending = page.records.len();
    for record in page.records {
        let id = record.meta.message_id;
        match store.mark_delivered(&id, OffsetDateTime::now_utc()) {
            Ok(true) => say(&format!("delivered {id}")),
            Ok(false) => {}
            Err(e) => bad(&format!("deliver {id}: {e}")),
        }
    }
    pending
}

/// One line on stdout, written and flushed before the caller goes on.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(4);
    }
}

fn bad(what: &str) -> ! {
    say(&format!("BAD {what}"));
    std::process::exit(3);
}
