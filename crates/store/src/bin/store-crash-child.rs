//! Crash-test helper for `tests/crash.rs` (not a user tool).
//!
//! `store-crash-child DIR ROUND` opens the sled store in DIR and, until it is killed:
//! * on its main thread, stores inbound messages (payload first, then the record) and prints
//!   `ack ID` only after `insert_inbound` returned — the moment a real access point would send
//!   the receipt;
//! * on two delivery threads that compete for the same messages, marks every `Received`
//!   message delivered and prints `delivered ID` only when `mark_delivered` returned `true`
//!   (the moment a backend would be handed the message);
//! * first checks that re-sending a few stored messages yields their original receipts.
//!
//! `store-crash-child DIR drain` delivers whatever is left and exits 0.
//! Any broken expectation prints `BAD …` and exits with status 3.

use std::io::Write;
use std::time::Duration;
use time::OffsetDateTime;
use varti_store::{
    Direction, InsertOutcome, ListFilter, MessageMeta, NewInbound, PayloadEntry, SledStore, State,
    Store,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: store-crash-child DIR ROUND|drain");
        std::process::exit(2);
    }
    let store = SledStore::open(&args[1]).unwrap_or_else(|e| bad(&format!("open: {e}")));
    if args[2] == "drain" {
        while deliver_pending(&store) > 0 {}
        return;
    }
    check_duplicates(&store);
    let round = &args[2];
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                if deliver_pending(&store) == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        for i in 0.. {
            let id = format!("crash-{round}-{i}@varti.test");
            insert(&store, &id);
            say(&format!("ack {id}"));
        }
    });
}

/// The payload bytes of message `id` (the parent checks them after the crashes).
fn payload_of(id: &str) -> Vec<u8> {
    format!("<payload of {id}/>").repeat(16).into_bytes()
}

/// The receipt stored for message `id`.
fn receipt_of(id: &str) -> Vec<u8> {
    format!("<receipt for {id}/>").into_bytes()
}

fn message(store: &SledStore, id: &str, receipt: Vec<u8>) -> NewInbound {
    let stored = store
        .payloads()
        .put(&mut &payload_of(id)[..])
        .unwrap_or_else(|e| bad(&format!("payload: {e}")));
    NewInbound {
        meta: MessageMeta {
            message_id: id.to_owned(),
            owner: "backend".into(),
            from_party: "red".into(),
            to_party: "blue".into(),
            service: "urn:example:service".into(),
            action: "Deliver".into(),
            conversation_id: id.to_owned(),
            ref_to_message_id: None,
            pmode_id: "crash".into(),
            payloads: vec![PayloadEntry {
                content_id: "cid:p@varti.test".into(),
                mime_type: "application/xml".into(),
                stored,
                properties: Vec::new(),
            }],
            properties: Vec::new(),
        },
        receipt,
        peer: None,
    }
}

fn insert(store: &SledStore, id: &str) {
    let msg = message(store, id, receipt_of(id));
    match store.insert_inbound(msg, OffsetDateTime::now_utc()) {
        Ok(InsertOutcome::Inserted) => {}
        other => bad(&format!("insert {id}: {other:?}")),
    }
}

/// Resends the newest stored messages: each must be a duplicate answered with its receipt.
fn check_duplicates(store: &SledStore) {
    let page = store
        .list(&ListFilter {
            limit: 5,
            ..ListFilter::default()
        })
        .unwrap_or_else(|e| bad(&format!("list: {e}")));
    for record in page.records {
        let id = record.meta.message_id;
        let msg = message(store, &id, b"<a different receipt/>".to_vec());
        match store.insert_inbound(msg, OffsetDateTime::now_utc()) {
            Ok(InsertOutcome::Duplicate {
                original_receipt, ..
            }) if original_receipt == receipt_of(&id) => {}
            other => bad(&format!("duplicate of {id}: {other:?}")),
        }
    }
}

/// Marks every received message delivered; returns how many were pending.
fn deliver_pending(store: &SledStore) -> usize {
    let page = store
        .list(&ListFilter {
            direction: Some(Direction::Inbound),
            states: vec![State::Received],
            limit: 50,
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
