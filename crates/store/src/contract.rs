//! The store contract: behaviour every [`Store`] implementation must show, written once.
//!
//! Each function takes a fresh, empty store and panics if the store breaks the contract.
//! [`store_contract_tests!`](crate::store_contract_tests) turns them into one `#[test]` each
//! for a given store factory:
//!
//! ```no_run
//! varti_store::store_contract_tests!(|| {
//!     let dir = tempfile::tempdir().unwrap();
//!     (varti_store::SledStore::open(dir.path()).unwrap(), dir) // (store, guard kept alive)
//! });
//! ```
//!
//! Times are explicit and start at a fixed instant, so the suite never sleeps.

use crate::{
    AttemptOutcome, AuditFilter, AuditOutcome, Direction, Event, InsertOutcome, ListFilter,
    MessageMeta, MessageProperty, NewAuditEntry, NewInbound, NewOutbound, PayloadEntry, State,
    Store, StoreError, TransitionOutcome,
};
use std::collections::HashSet;
use std::io::Read;
use std::sync::Barrier;
use std::time::Duration;
use time::OffsetDateTime;

/// The suite's starting instant (fixed, so runs are reproducible).
pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("valid timestamp")
}

fn at(seconds: i64) -> OffsetDateTime {
    t0() + time::Duration::seconds(seconds)
}

/// Header data for a test message owned by `owner`, without payloads.
pub fn meta(id: &str, owner: &str) -> MessageMeta {
    MessageMeta {
        message_id: id.to_owned(),
        owner: owner.to_owned(),
        from_party: "urn:oasis:names:tc:ebcore:partyid-type:unregistered:red".into(),
        to_party: "urn:oasis:names:tc:ebcore:partyid-type:unregistered:blue".into(),
        service: "urn:example:service".into(),
        action: "Deliver".into(),
        conversation_id: format!("conv-{id}"),
        ref_to_message_id: None,
        pmode_id: "pm-test/leg1".into(),
        payloads: Vec::new(),
        properties: vec![MessageProperty {
            name: "originalSender".into(),
            value: "urn:oasis:names:tc:ebcore:partyid-type:unregistered:C1".into(),
            type_: None,
        }],
    }
}

/// Stores `bytes` through the store's payload store and describes it as a message payload.
pub fn payload<S: Store>(store: &S, bytes: &[u8]) -> PayloadEntry {
    let stored = store
        .payloads()
        .put(&mut &bytes[..])
        .expect("payload stored");
    assert_eq!(stored.size, bytes.len() as u64);
    PayloadEntry {
        content_id: "cid:part1@varti.test".into(),
        mime_type: "application/xml".into(),
        stored,
        properties: Vec::new(),
    }
}

fn read_payload<S: Store>(store: &S, entry: &PayloadEntry) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    store
        .payloads()
        .open(&entry.stored)?
        .read_to_end(&mut out)
        .expect("payload readable");
    Ok(out)
}

/// Payload `index` of message `id` as the store has it now (a purge changes it: the
/// reference a caller kept from before still holds the bytes of an inline payload).
fn stored_payload<S: Store>(store: &S, id: &str, index: usize) -> PayloadEntry {
    store
        .get(id)
        .unwrap()
        .expect("message stored")
        .meta
        .payloads[index]
        .clone()
}

fn inbound(id: &str, owner: &str, receipt: &[u8]) -> NewInbound {
    NewInbound {
        meta: meta(id, owner),
        receipt: receipt.to_vec(),
        peer: Some("127.0.0.1:40000".into()),
    }
}

fn outbound(id: &str, owner: &str, not_before: OffsetDateTime) -> NewOutbound {
    NewOutbound {
        meta: meta(id, owner),
        not_before,
    }
}

const LEASE: Duration = Duration::from_secs(30);

/// A duplicate inbound message gets the original receipt, is counted, and its own payload
/// copy is dropped while the original's stays.
pub fn duplicate_returns_original_receipt<S: Store>(store: S) {
    let mut first = inbound("m1@red", "backend-a", b"<receipt original/>");
    let original_payload = payload(&store, b"<original/>");
    first.meta.payloads.push(original_payload.clone());
    assert_eq!(
        store.insert_inbound(first, at(0)).unwrap(),
        InsertOutcome::Inserted
    );

    let mut again = inbound("m1@red", "backend-a", b"<receipt second/>");
    // Large enough for a payload file of its own, which the store must remove (a small
    // one is inline in the duplicate's record, which is never stored).
    let copy = vec![b'c'; crate::payload::INLINE_PAYLOAD_MAX + 1];
    let duplicate_payload = payload(&store, &copy);
    assert!(!duplicate_payload.stored.is_inline());
    again.meta.payloads.push(duplicate_payload.clone());
    assert_eq!(
        store.insert_inbound(again, at(5)).unwrap(),
        InsertOutcome::Duplicate {
            original_receipt: b"<receipt original/>".to_vec(),
            state: State::Received,
        }
    );
    let record = store.get("m1@red").unwrap().expect("original kept");
    assert_eq!(record.receipt.as_deref(), Some(&b"<receipt original/>"[..]));
    assert_eq!(record.duplicates, 1);
    assert_eq!(record.meta.payloads, vec![original_payload.clone()]);
    assert_eq!(
        read_payload(&store, &original_payload).unwrap(),
        b"<original/>"
    );
    assert!(matches!(
        read_payload(&store, &duplicate_payload),
        Err(StoreError::NotFound { .. })
    ));

    // After delivery a duplicate still gets the original receipt and reports the state.
    assert!(store.mark_delivered("m1@red", at(6)).unwrap());
    match store
        .insert_inbound(inbound("m1@red", "backend-a", b"<third/>"), at(7))
        .unwrap()
    {
        InsertOutcome::Duplicate {
            original_receipt,
            state,
        } => {
            assert_eq!(original_receipt, b"<receipt original/>");
            assert_eq!(state, State::Delivered);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
}

/// Concurrent inserts of one MessageId: exactly one is inserted, every other one gets the
/// winner's receipt.
pub fn concurrent_duplicates_insert_once<S: Store>(store: S) {
    const N: usize = 8;
    let barrier = Barrier::new(N);
    let outcomes: Vec<(usize, InsertOutcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let receipt = format!("receipt-{i}");
                    let out = store
                        .insert_inbound(inbound("race@red", "b", receipt.as_bytes()), at(0))
                        .unwrap();
                    (i, out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| *o == InsertOutcome::Inserted)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one insert wins: {outcomes:?}");
    let winner_receipt = format!("receipt-{}", winners[0]).into_bytes();
    for (_, outcome) in &outcomes {
        if let InsertOutcome::Duplicate {
            original_receipt, ..
        } = outcome
        {
            assert_eq!(original_receipt, &winner_receipt);
        }
    }
    let record = store.get("race@red").unwrap().unwrap();
    assert_eq!(record.receipt, Some(winner_receipt));
    assert_eq!(record.duplicates as usize, N - 1);
}

/// MessageIds are unique across directions; outbound ids cannot be reused.
pub fn message_ids_are_unique<S: Store>(store: S) {
    store
        .insert_outbound(outbound("o1@us", "b", at(0)), at(0))
        .unwrap();
    assert!(matches!(
        store.insert_outbound(outbound("o1@us", "b", at(0)), at(1)),
        Err(StoreError::AlreadyExists {
            direction: Direction::Outbound,
            ..
        })
    ));
    assert!(matches!(
        store.insert_inbound(inbound("o1@us", "b", b"r"), at(1)),
        Err(StoreError::AlreadyExists {
            direction: Direction::Outbound,
            ..
        })
    ));
    assert!(matches!(
        store.insert_inbound(inbound("", "b", b"r"), at(1)),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.insert_inbound(inbound("x", "bad\0owner", b"r"), at(1)),
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(store.get("o1@us").unwrap().unwrap().state, State::Submitted);
    assert!(store.get("nope").unwrap().is_none());
}

/// The send queue counts outbound messages in progress — submitted, sending, waiting for
/// a retry — and nothing else.
pub fn queue_depth_counts_outbound_in_progress<S: Store>(store: S) {
    assert_eq!(store.queue_depth().unwrap(), 0);
    store
        .insert_inbound(inbound("in@them", "alpha", b"r"), at(0))
        .unwrap();
    for id in ["q1@us", "q2@us", "q3@us"] {
        store
            .insert_outbound(outbound(id, "alpha", at(0)), at(0))
            .unwrap();
    }
    assert_eq!(store.queue_depth().unwrap(), 3, "submitted");
    let claimed = store.claim_due("n1", LEASE, 2, at(1)).unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(store.queue_depth().unwrap(), 3, "sending still counts");
    store
        .record_attempt(
            claimed[0].id(),
            "n1",
            AttemptOutcome::Retry {
                at: at(60),
                error: "partner down".into(),
            },
            at(2),
        )
        .unwrap();
    assert_eq!(
        store.queue_depth().unwrap(),
        3,
        "waiting for a retry counts"
    );
    store
        .record_attempt(
            claimed[1].id(),
            "n1",
            AttemptOutcome::Acknowledged {
                receipt: b"<receipt/>".to_vec(),
            },
            at(2),
        )
        .unwrap();
    assert_eq!(
        store.queue_depth().unwrap(),
        2,
        "acknowledged leaves the queue"
    );
}

/// Work is claimed only when due; a claim sets the lease and counts the attempt.
pub fn claims_only_due_work<S: Store>(store: S) {
    store
        .insert_outbound(outbound("later@us", "b", at(10)), at(0))
        .unwrap();
    store
        .insert_inbound(inbound("in@them", "b", b"r"), at(0))
        .unwrap();
    assert!(store
        .claim_due("node-a", LEASE, 10, at(9))
        .unwrap()
        .is_empty());
    let claimed = store.claim_due("node-a", LEASE, 10, at(10)).unwrap();
    assert_eq!(claimed.len(), 1, "only the due outbound message");
    let record = &claimed[0];
    assert_eq!(record.id(), "later@us");
    assert_eq!(record.state, State::Sending);
    assert_eq!(record.attempts, 1);
    let lease = record.lease.as_ref().expect("leased");
    assert_eq!(lease.holder, "node-a");
    assert_eq!(lease.expires_at, at(40));
    assert_eq!(store.get("later@us").unwrap().unwrap(), *record);
    // Its lease is valid: nobody else gets it, not even the holder again.
    assert!(store
        .claim_due("node-b", LEASE, 10, at(20))
        .unwrap()
        .is_empty());
    assert!(store
        .claim_due("node-a", LEASE, 10, at(20))
        .unwrap()
        .is_empty());
    assert!(store
        .claim_due("node-a", LEASE, 0, at(99))
        .unwrap()
        .is_empty());
}

/// Concurrent claimers never get the same message while its lease is valid, and together
/// they get all of it.
pub fn concurrent_claimers_never_share<S: Store>(store: S) {
    const MESSAGES: usize = 60;
    const CLAIMERS: usize = 4;
    for i in 0..MESSAGES {
        store
            .insert_outbound(outbound(&format!("w{i}@us"), "b", at(0)), at(0))
            .unwrap();
    }
    let barrier = Barrier::new(CLAIMERS);
    let per_claimer: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLAIMERS)
            .map(|c| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    loop {
                        let batch = store
                            .claim_due(&format!("node-{c}"), LEASE, 3, at(1))
                            .unwrap();
                        if batch.is_empty() {
                            return mine;
                        }
                        for r in batch {
                            assert_eq!(r.lease.as_ref().unwrap().holder, format!("node-{c}"));
                            mine.push(r.meta.message_id);
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<&String> = per_claimer.iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a message was claimed twice");
    assert_eq!(unique.len(), MESSAGES, "every due message was claimed");
    for i in 0..MESSAGES {
        let r = store.get(&format!("w{i}@us")).unwrap().unwrap();
        assert_eq!((r.state, r.attempts), (State::Sending, 1));
    }
}

/// An expired lease (its holder died) is claimed by another instance; the old holder can no
/// longer record a retry or failure, but a receipt it got still counts.
pub fn expired_leases_are_reclaimable<S: Store>(store: S) {
    store
        .insert_outbound(outbound("x@us", "b", at(0)), at(0))
        .unwrap();
    assert_eq!(store.claim_due("node-a", LEASE, 1, at(0)).unwrap().len(), 1);
    assert!(store
        .claim_due("node-b", LEASE, 1, at(29))
        .unwrap()
        .is_empty());
    let taken = store.claim_due("node-b", LEASE, 1, at(30)).unwrap();
    assert_eq!(taken.len(), 1, "an expired lease is claimable");
    let record = &taken[0];
    assert_eq!(record.attempts, 2);
    assert_eq!(record.lease.as_ref().unwrap().holder, "node-b");
    let events: Vec<Event> = record.history.iter().map(|h| h.event).collect();
    assert_eq!(
        events,
        [Event::Claim, Event::LeaseExpired, Event::Claim],
        "the takeover is in the history"
    );
    let retry = AttemptOutcome::Retry {
        at: at(100),
        error: "timeout".into(),
    };
    match store.record_attempt("x@us", "node-a", retry, at(31)) {
        Err(StoreError::LeaseLost { holder, .. }) => assert_eq!(holder.as_deref(), Some("node-b")),
        other => panic!("the old holder must have lost the lease, got {other:?}"),
    }
    let acked = store
        .record_attempt(
            "x@us",
            "node-a",
            AttemptOutcome::Acknowledged {
                receipt: b"late receipt".to_vec(),
            },
            at(32),
        )
        .unwrap();
    assert_eq!(acked.state, State::Acknowledged);
    assert_eq!(acked.lease, None);
    assert_eq!(acked.receipt.as_deref(), Some(&b"late receipt"[..]));
    assert!(store
        .claim_due("node-c", LEASE, 1, at(999))
        .unwrap()
        .is_empty());
}

/// `claim_message` takes one named message whenever it waits, due or not (a partner pulls
/// it), with the effects of a claim; never while its lease is valid, and never a settled or
/// inbound message.
pub fn claim_message_ignores_due_time<S: Store>(store: S) {
    let far = at(100 * 365 * 86_400);
    store
        .insert_outbound(outbound("p@us", "b", far), at(0))
        .unwrap();
    store
        .insert_outbound(outbound("other@us", "b", far), at(0))
        .unwrap();
    assert!(store
        .claim_due("node-a", LEASE, 10, at(1))
        .unwrap()
        .is_empty());
    let record = store
        .claim_message("p@us", "node-a", LEASE, at(1))
        .unwrap()
        .expect("a waiting message is claimable whatever its due time");
    assert_eq!(record.id(), "p@us");
    assert_eq!((record.state, record.attempts), (State::Sending, 1));
    let lease = record.lease.as_ref().expect("leased");
    assert_eq!(
        (lease.holder.as_str(), lease.expires_at),
        ("node-a", at(31))
    );
    assert_eq!(store.get("p@us").unwrap().unwrap(), record);
    assert_eq!(
        store.get("other@us").unwrap().unwrap().state,
        State::Submitted,
        "only the named message is claimed"
    );

    // Leased: nobody gets it, not even the holder, and claim_due does not either.
    assert_eq!(
        store
            .claim_message("p@us", "node-b", LEASE, at(30))
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .claim_message("p@us", "node-a", LEASE, at(30))
            .unwrap(),
        None
    );
    assert!(store
        .claim_due("node-b", LEASE, 10, at(30))
        .unwrap()
        .is_empty());

    // The lease expired (the receipt never came): claimable again, the takeover recorded.
    let again = store
        .claim_message("p@us", "node-b", LEASE, at(31))
        .unwrap()
        .expect("an expired lease is claimable");
    assert_eq!(again.attempts, 2);
    assert_eq!(again.lease.as_ref().unwrap().holder, "node-b");
    let events: Vec<Event> = again.history.iter().map(|h| h.event).collect();
    assert_eq!(events, [Event::Claim, Event::LeaseExpired, Event::Claim]);

    // Waiting for a retry far away: claimable now.
    store
        .record_attempt(
            "p@us",
            "node-b",
            AttemptOutcome::Retry {
                at: far,
                error: "waiting".into(),
            },
            at(32),
        )
        .unwrap();
    let third = store
        .claim_message("p@us", "node-a", LEASE, at(33))
        .unwrap()
        .expect("a message waiting for its retry is claimable");
    assert_eq!((third.state, third.attempts), (State::Sending, 3));

    // Settled: never again.
    store
        .record_attempt(
            "p@us",
            "node-a",
            AttemptOutcome::Acknowledged {
                receipt: b"receipt".to_vec(),
            },
            at(34),
        )
        .unwrap();
    assert_eq!(
        store
            .claim_message("p@us", "node-a", LEASE, at(999))
            .unwrap(),
        None
    );
    assert_eq!(
        store.get("p@us").unwrap().unwrap().state,
        State::Acknowledged
    );

    // Inbound messages are not claimable; unknown ids and bad holders are errors.
    store
        .insert_inbound(inbound("in@them", "b", b"r"), at(0))
        .unwrap();
    assert_eq!(
        store
            .claim_message("in@them", "node-a", LEASE, at(1))
            .unwrap(),
        None
    );
    assert_eq!(
        store.get("in@them").unwrap().unwrap().state,
        State::Received
    );
    assert!(matches!(
        store.claim_message("nope@us", "node-a", LEASE, at(1)),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.claim_message("other@us", "", LEASE, at(1)),
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(
        store.get("other@us").unwrap().unwrap().state,
        State::Submitted
    );
}

/// Concurrent `claim_message` calls on one message: exactly one gets it.
pub fn concurrent_claim_message_once<S: Store>(store: S) {
    const CLAIMERS: usize = 8;
    store
        .insert_outbound(outbound("one@us", "b", at(0)), at(0))
        .unwrap();
    let barrier = Barrier::new(CLAIMERS);
    let winners: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLAIMERS)
            .map(|c| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    store
                        .claim_message("one@us", &format!("node-{c}"), LEASE, at(1))
                        .unwrap()
                        .map(|r| r.lease.unwrap().holder)
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(winners.len(), 1, "exactly one claimer wins: {winners:?}");
    let r = store.get("one@us").unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (State::Sending, 1));
    assert_eq!(r.lease.unwrap().holder, winners[0]);
}

/// A failed attempt schedules the retry; the last one fails the message; an administrator
/// may resend it.
pub fn retries_then_failure_then_resend<S: Store>(store: S) {
    store
        .insert_outbound(outbound("r@us", "b", at(0)), at(0))
        .unwrap();
    store.claim_due("n", LEASE, 1, at(0)).unwrap();
    let r = store
        .record_attempt(
            "r@us",
            "n",
            AttemptOutcome::Retry {
                at: at(60),
                error: "HTTP 503".into(),
            },
            at(1),
        )
        .unwrap();
    assert_eq!(r.state, State::WaitingForRetry);
    assert_eq!(r.next_attempt_at, Some(at(60)));
    assert_eq!(r.lease, None);
    assert_eq!(r.last_error.as_deref(), Some("HTTP 503"));
    assert!(store.claim_due("n", LEASE, 1, at(59)).unwrap().is_empty());
    assert_eq!(store.claim_due("n", LEASE, 1, at(60)).unwrap().len(), 1);
    let r = store
        .record_attempt(
            "r@us",
            "n",
            AttemptOutcome::Failed {
                error: "EBMS:0301 no receipt after 2 attempts".into(),
            },
            at(61),
        )
        .unwrap();
    assert_eq!(r.state, State::Failed);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.settled_at, Some(at(61)));
    assert!(store.claim_due("n", LEASE, 1, at(999)).unwrap().is_empty());

    assert_eq!(
        store
            .transition("r@us", State::Failed, Event::Resend, at(70))
            .unwrap(),
        TransitionOutcome::Applied(State::Submitted)
    );
    let r = store.get("r@us").unwrap().unwrap();
    assert_eq!(
        (r.attempts, r.next_attempt_at, r.settled_at),
        (0, Some(at(70)), None)
    );
    assert_eq!(store.claim_due("n", LEASE, 1, at(70)).unwrap().len(), 1);
}

/// Applying the same effect twice is a no-op, not an error, and writes nothing.
pub fn idempotent_transitions<S: Store>(store: S) {
    store
        .insert_outbound(outbound("i@us", "b", at(0)), at(0))
        .unwrap();
    store.claim_due("n", LEASE, 1, at(0)).unwrap();
    let ack = || AttemptOutcome::Acknowledged {
        receipt: b"receipt".to_vec(),
    };
    let first = store.record_attempt("i@us", "n", ack(), at(1)).unwrap();
    assert_eq!(first.state, State::Acknowledged);
    let second = store.record_attempt("i@us", "other", ack(), at(2)).unwrap();
    assert_eq!(second, first, "a repeated acknowledgement changes nothing");
    assert_eq!(
        store
            .transition("i@us", State::Sending, Event::Acknowledge, at(3))
            .unwrap(),
        TransitionOutcome::AlreadyApplied(State::Acknowledged)
    );
    assert_eq!(
        store
            .transition("i@us", State::Acknowledged, Event::Acknowledge, at(3))
            .unwrap(),
        TransitionOutcome::AlreadyApplied(State::Acknowledged)
    );
    assert_eq!(store.get("i@us").unwrap().unwrap(), first);

    store
        .insert_inbound(inbound("d@them", "b", b"r"), at(0))
        .unwrap();
    assert!(store.mark_delivered("d@them", at(1)).unwrap());
    assert_eq!(
        store
            .transition("d@them", State::Delivered, Event::Download, at(2))
            .unwrap(),
        TransitionOutcome::Applied(State::Downloaded)
    );
    assert_eq!(
        store
            .transition("d@them", State::Delivered, Event::Download, at(3))
            .unwrap(),
        TransitionOutcome::AlreadyApplied(State::Downloaded)
    );
    assert!(!store.mark_delivered("d@them", at(4)).unwrap());
    let r = store.get("d@them").unwrap().unwrap();
    let steps: Vec<(Event, State, State)> =
        r.history.iter().map(|h| (h.event, h.from, h.to)).collect();
    assert_eq!(
        steps,
        [
            (Event::Receive, State::Received, State::Received),
            (Event::Deliver, State::Received, State::Delivered),
            (Event::Download, State::Delivered, State::Downloaded),
        ]
    );
    assert_eq!(r.history[1].at, at(1));
    assert_eq!(r.history[2].at, at(2));
}

/// Steps the state machine forbids are refused and change nothing; so is a compare-and-set
/// on a stale state.
pub fn invalid_transitions_refused<S: Store>(store: S) {
    store
        .insert_outbound(outbound("v@us", "b", at(0)), at(0))
        .unwrap();
    store
        .insert_inbound(inbound("w@them", "b", b"r"), at(0))
        .unwrap();
    let before = store.get("v@us").unwrap().unwrap();
    assert!(matches!(
        store.transition("v@us", State::Submitted, Event::Deliver, at(1)),
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        store.transition("v@us", State::Submitted, Event::Resend, at(1)),
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        store.transition("v@us", State::Submitted, Event::Claim, at(1)),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.transition("v@us", State::WaitingForRetry, Event::Fail, at(1)),
        Err(StoreError::StateConflict {
            expected: State::WaitingForRetry,
            actual: State::Submitted,
            ..
        })
    ));
    assert!(matches!(
        store.transition("w@them", State::Received, Event::Resend, at(1)),
        Err(StoreError::InvalidTransition { .. })
    ));
    // History notes are never transitions.
    assert!(matches!(
        store.transition("w@them", State::Received, Event::Fetch, at(1)),
        Err(StoreError::InvalidTransition { .. })
    ));
    assert!(matches!(
        store.mark_delivered("v@us", at(1)),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.transition("missing", State::Received, Event::Deliver, at(1)),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.mark_delivered("missing", at(1)),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get("v@us").unwrap().unwrap(), before);

    // Given up is final: a late receipt is refused (the backend already heard EBMS:0301).
    assert_eq!(
        store
            .transition("v@us", State::Submitted, Event::Fail, at(2))
            .unwrap(),
        TransitionOutcome::Applied(State::Failed)
    );
    assert!(matches!(
        store.record_attempt(
            "v@us",
            "n",
            AttemptOutcome::Acknowledged {
                receipt: b"late".to_vec()
            },
            at(3)
        ),
        Err(StoreError::InvalidTransition { .. })
    ));
    // Only the lease holder records a retry.
    assert!(matches!(
        store.record_attempt(
            "v@us",
            "n",
            AttemptOutcome::Retry {
                at: at(9),
                error: "x".into()
            },
            at(3)
        ),
        Err(StoreError::LeaseLost { .. })
    ));
}

/// N threads mark the same message delivered: exactly one call reports that it did it.
pub fn mark_delivered_once_under_concurrency<S: Store>(store: S) {
    const N: usize = 8;
    const MESSAGES: usize = 5;
    for m in 0..MESSAGES {
        store
            .insert_inbound(inbound(&format!("once{m}@them"), "b", b"r"), at(0))
            .unwrap();
    }
    let barrier = Barrier::new(N);
    let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (0..MESSAGES)
                        .map(|m| {
                            store
                                .mark_delivered(&format!("once{m}@them"), at(1))
                                .unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for m in 0..MESSAGES {
        let winners = wins.iter().filter(|w| w[m]).count();
        assert_eq!(winners, 1, "message {m}: exactly one delivery");
        let r = store.get(&format!("once{m}@them")).unwrap().unwrap();
        assert_eq!(r.state, State::Delivered);
        // The arrival, then the one delivery.
        assert_eq!(r.history.len(), 2);
    }
}

/// A signal id is noted once: concurrent notes of one id have exactly one first; a repeat
/// is recognised until the id is forgotten, which happens only before `forget_before`.
pub fn signal_ids_are_noted_once<S: Store>(store: S) {
    const N: usize = 8;
    let barrier = Barrier::new(N);
    let firsts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    store.note_signal("pull-1@them", at(0), at(-600)).unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|first| *first)
            .count()
    });
    assert_eq!(
        firsts, 1,
        "exactly one of {N} concurrent notes is the first"
    );
    // Still remembered while inside the window.
    assert!(!store.note_signal("pull-1@them", at(599), at(-1)).unwrap());
    assert!(store.note_signal("pull-2@them", at(599), at(-1)).unwrap());
    // Forgotten once older than `forget_before`: a later note is a first again.
    assert!(store.note_signal("pull-1@them", at(700), at(1)).unwrap());
    assert!(!store.note_signal("pull-2@them", at(700), at(1)).unwrap());
    assert!(matches!(
        store.note_signal("", at(700), at(1)),
        Err(StoreError::InvalidInput(_))
    ));
}

/// Purging payloads removes the files of settled messages only and keeps their metadata;
/// purging metadata removes settled records only.
pub fn purge_removes_payloads_not_metadata<S: Store>(store: S) {
    // Delivered at t=10: purgeable after retention.
    let mut delivered = inbound("p1@them", "b", b"r");
    let p1 = payload(&store, b"evidence");
    delivered.meta.payloads.push(p1.clone());
    store.insert_inbound(delivered, at(0)).unwrap();
    assert!(store.mark_delivered("p1@them", at(10)).unwrap());
    // Received, never delivered: must keep its payload.
    let mut pending = inbound("p2@them", "b", b"r");
    let p2 = payload(&store, b"waiting");
    pending.meta.payloads.push(p2.clone());
    store.insert_inbound(pending, at(0)).unwrap();
    // Outbound still to be sent: must keep its payload.
    let mut out = outbound("p3@us", "b", at(0));
    let p3 = payload(&store, b"to send");
    out.meta.payloads.push(p3.clone());
    store.insert_outbound(out, at(0)).unwrap();

    assert_eq!(
        store.purge_payloads(at(10), at(100)).unwrap(),
        0,
        "cut-off is exclusive"
    );
    assert_eq!(store.purge_payloads(at(11), at(100)).unwrap(), 1);
    assert!(matches!(
        read_payload(&store, &stored_payload(&store, "p1@them", 0)),
        Err(StoreError::NotFound { .. })
    ));
    let kept = store.get("p1@them").unwrap().expect("metadata kept");
    assert_eq!(kept.payloads_purged_at, Some(at(100)));
    assert_eq!(kept.state, State::Delivered);
    assert_eq!(read_payload(&store, &p2).unwrap(), b"waiting");
    assert_eq!(read_payload(&store, &p3).unwrap(), b"to send");
    assert_eq!(
        store.purge_payloads(at(1000), at(1000)).unwrap(),
        0,
        "nothing left"
    );

    assert_eq!(store.purge_metadata(at(11)).unwrap(), 1);
    assert!(store.get("p1@them").unwrap().is_none());
    assert!(store.get("p2@them").unwrap().is_some());
    assert!(store.get("p3@us").unwrap().is_some());
    let all = store.list(&ListFilter::default()).unwrap();
    assert_eq!(
        all.records.len(),
        2,
        "the purged record left the listing too"
    );
}

/// One settled message's payloads are purged on demand, whatever the retention; one in
/// progress keeps them; an unknown id is `NotFound`.
pub fn purge_payloads_of_one_message<S: Store>(store: S) {
    let mut delivered = inbound("q1@them", "b", b"r");
    let p1 = payload(&store, b"evidence");
    delivered.meta.payloads.push(p1.clone());
    store.insert_inbound(delivered, at(0)).unwrap();
    let mut other = inbound("q2@them", "b", b"r");
    let p2 = payload(&store, b"other evidence");
    other.meta.payloads.push(p2.clone());
    store.insert_inbound(other, at(0)).unwrap();
    assert!(store.mark_delivered("q2@them", at(1)).unwrap());

    // Received, not yet delivered: in progress, kept.
    assert!(!store.purge_payloads_of("q1@them", at(5)).unwrap());
    assert_eq!(read_payload(&store, &p1).unwrap(), b"evidence");

    assert!(store.mark_delivered("q1@them", at(10)).unwrap());
    assert!(store.purge_payloads_of("q1@them", at(11)).unwrap());
    assert!(matches!(
        read_payload(&store, &stored_payload(&store, "q1@them", 0)),
        Err(StoreError::NotFound { .. })
    ));
    let kept = store.get("q1@them").unwrap().expect("metadata kept");
    assert_eq!(kept.payloads_purged_at, Some(at(11)));
    assert!(
        !store.purge_payloads_of("q1@them", at(12)).unwrap(),
        "already purged"
    );
    // Only that message: the other settled one keeps its payload.
    assert_eq!(read_payload(&store, &p2).unwrap(), b"other evidence");
    assert!(store
        .get("q2@them")
        .unwrap()
        .unwrap()
        .payloads_purged_at
        .is_none());
    assert!(matches!(
        store.purge_payloads_of("nobody@them", at(12)),
        Err(StoreError::NotFound { .. })
    ));
}

/// Small payloads are kept inline in their record, larger ones in the payload store proper;
/// callers read both the same way. A message's inline bytes are bounded (the excess moves
/// to the payload store when it is inserted); a purge removes inline bytes like files.
pub fn inline_and_stored_payloads<S: Store>(store: S) {
    use crate::payload::{INLINE_MESSAGE_MAX, INLINE_PAYLOAD_MAX};
    let bytes = |n: usize, seed: u8| -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    };
    let small = bytes(10 * 1024, 1);
    let largest_inline = bytes(INLINE_PAYLOAD_MAX, 2);
    let large = bytes(INLINE_PAYLOAD_MAX + 1, 3);
    let mut msg = inbound("i1@them", "b", b"r");
    for b in [&small, &largest_inline, &large] {
        msg.meta.payloads.push(payload(&store, b));
    }
    assert!(msg.meta.payloads[0].stored.is_inline());
    assert!(msg.meta.payloads[1].stored.is_inline());
    assert!(!msg.meta.payloads[2].stored.is_inline());
    store.insert_inbound(msg, at(0)).unwrap();
    for (i, b) in [&small, &largest_inline, &large].into_iter().enumerate() {
        let entry = stored_payload(&store, "i1@them", i);
        assert_eq!(entry.stored.is_inline(), i < 2, "payload {i}");
        assert_eq!(&read_payload(&store, &entry).unwrap(), b, "payload {i}");
    }

    // More small payloads than a record holds: all read back; the record keeps at most
    // INLINE_MESSAGE_MAX bytes inline, the rest went to the payload store.
    let chunk = bytes(INLINE_PAYLOAD_MAX, 4);
    let count = INLINE_MESSAGE_MAX / INLINE_PAYLOAD_MAX + 2;
    let mut out = outbound("i2@us", "b", at(0));
    for _ in 0..count {
        out.meta.payloads.push(payload(&store, &chunk));
    }
    store.insert_outbound(out, at(0)).unwrap();
    let record = store.get("i2@us").unwrap().unwrap();
    let inline: u64 = record
        .meta
        .payloads
        .iter()
        .filter(|p| p.stored.is_inline())
        .map(|p| p.stored.size)
        .sum();
    assert_eq!(inline, INLINE_MESSAGE_MAX as u64);
    assert_eq!(record.meta.payloads.len(), count);
    for entry in &record.meta.payloads {
        assert_eq!(read_payload(&store, entry).unwrap(), chunk);
    }

    // A duplicate's inline payload is simply dropped; the original's stays.
    let mut again = inbound("i1@them", "b", b"r2");
    again.meta.payloads.push(payload(&store, b"<duplicate/>"));
    assert!(matches!(
        store.insert_inbound(again, at(1)).unwrap(),
        InsertOutcome::Duplicate { .. }
    ));
    assert_eq!(
        read_payload(&store, &stored_payload(&store, "i1@them", 0)).unwrap(),
        small
    );

    // Purged: no bytes are left of either kind, in the record or elsewhere.
    assert!(store.mark_delivered("i1@them", at(10)).unwrap());
    assert_eq!(store.purge_payloads(at(11), at(20)).unwrap(), 1);
    let purged = store.get("i1@them").unwrap().unwrap();
    assert_eq!(purged.payloads_purged_at, Some(at(20)));
    for (i, entry) in purged.meta.payloads.iter().enumerate() {
        assert!(!entry.stored.is_inline(), "payload {i}");
        assert!(
            matches!(
                read_payload(&store, entry),
                Err(StoreError::NotFound { .. })
            ),
            "payload {i}"
        );
    }
    // Sizes and digests stay as evidence of what was received.
    assert_eq!(purged.meta.payloads[0].stored.size, small.len() as u64);
    // The outbound message keeps its payloads (not settled).
    let kept = store.get("i2@us").unwrap().unwrap();
    assert!(kept.meta.payloads.iter().any(|p| p.stored.is_inline()));
}

/// Listing filters by owner (a backend sees only its own), direction, state and time, and
/// pages newest first.
pub fn listing_filters_by_owner<S: Store>(store: S) {
    for i in 0..3 {
        store
            .insert_inbound(inbound(&format!("a{i}@them"), "alpha", b"r"), at(i))
            .unwrap();
    }
    for i in 0..2 {
        store
            .insert_outbound(outbound(&format!("b{i}@us"), "beta", at(0)), at(10 + i))
            .unwrap();
    }
    store
        .insert_outbound(outbound("a9@us", "alpha", at(0)), at(20))
        .unwrap();
    store.mark_delivered("a1@them", at(30)).unwrap();

    let ids = |filter: ListFilter| -> Vec<String> {
        let page = store.list(&filter).unwrap();
        assert!(page.next.is_none());
        page.records
            .into_iter()
            .map(|r| r.meta.message_id)
            .collect()
    };
    let alpha = |f: ListFilter| ListFilter {
        owner: Some("alpha".into()),
        ..f
    };
    assert_eq!(
        ids(alpha(ListFilter::default())),
        ["a9@us", "a2@them", "a1@them", "a0@them"]
    );
    assert_eq!(
        ids(ListFilter {
            owner: Some("beta".into()),
            ..ListFilter::default()
        }),
        ["b1@us", "b0@us"]
    );
    assert!(ids(ListFilter {
        owner: Some("gamma".into()),
        ..ListFilter::default()
    })
    .is_empty());
    assert_eq!(
        ids(alpha(ListFilter {
            direction: Some(Direction::Inbound),
            states: vec![State::Received],
            ..ListFilter::default()
        })),
        ["a2@them", "a0@them"]
    );
    assert_eq!(
        ids(ListFilter {
            created_from: Some(at(1)),
            created_until: Some(at(11)),
            ..ListFilter::default()
        }),
        ["b0@us", "a2@them", "a1@them"]
    );

    // Pages of two, following the cursor, cover everything exactly once.
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        limit: 2,
        ..ListFilter::default()
    };
    loop {
        let page = store.list(&filter).unwrap();
        assert!(page.records.len() <= 2);
        seen.extend(page.records.into_iter().map(|r| r.meta.message_id));
        match page.next {
            Some(cursor) => filter.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["a9@us", "b1@us", "b0@us", "a2@them", "a1@them", "a0@them"]
    );
}

/// A message to search for: `id`, inbound from / outbound to `partner`.
fn searchable(
    id: &str,
    direction: Direction,
    partner: &str,
    service: &str,
    action: &str,
    conversation: &str,
    properties: &[(&str, &str)],
) -> MessageMeta {
    let mut m = meta(id, "alpha");
    match direction {
        Direction::Inbound => m.from_party = partner.to_owned(),
        Direction::Outbound => m.to_party = partner.to_owned(),
    }
    m.service = service.to_owned();
    m.action = action.to_owned();
    m.conversation_id = conversation.to_owned();
    m.properties = properties
        .iter()
        .map(|(name, value)| MessageProperty {
            name: (*name).to_owned(),
            value: (*value).to_owned(),
            type_: None,
        })
        .collect();
    m
}

/// Every search field (partner, time, conversation, service, action, property, id
/// prefix, test traffic) selects exactly its messages, alone and combined with each other
/// and with direction, state and owner, newest first; a search pages with its cursor.
pub fn search_by_every_field<S: Store>(store: S) {
    use Direction::{Inbound, Outbound};
    let sender = "urn:oasis:names:tc:ebcore:partyid-type:unregistered:C1";
    // id, direction, partner, service, action, conversation, properties
    type Row<'a> = (
        &'a str,
        Direction,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
    );
    let rows: [Row; 8] = [
        (
            "lv-1@x",
            Inbound,
            "lv",
            "svc:a",
            "Req",
            "c1",
            &[("originalSender", sender)],
        ),
        ("lv-2@x", Inbound, "lv", "svc:a", "Resp", "c1", &[]),
        (
            "ee-1@x",
            Inbound,
            "ee",
            "svc:b",
            "Req",
            "c2",
            &[("originalSender", "other")],
        ),
        (
            "ee-2@us",
            Outbound,
            "ee",
            "svc:a",
            "Req",
            "c2",
            &[("originalSender", sender), ("finalRecipient", "R")],
        ),
        (
            "lv-3@us",
            Outbound,
            "lv",
            "svc:b",
            "Resp",
            "c3",
            &[("finalRecipient", "R")],
        ),
        // The ebMS test service and the EC connectivity test: test traffic.
        (
            "ping-1@x",
            Inbound,
            "lv",
            crate::TEST_SERVICE,
            crate::TEST_ACTION,
            "c9",
            &[],
        ),
        (
            "ping-2@x",
            Inbound,
            "ee",
            crate::CONNECTIVITY_SERVICE,
            "submitMessage",
            "c9",
            &[],
        ),
        // The same names with another meaning must not match: `l` ‖ `v…` vs `lv`.
        (
            "l-9@x",
            Inbound,
            "l",
            "vsvc:a",
            "Req",
            "c",
            &[("original", "Sender")],
        ),
    ];
    for (i, (id, direction, partner, service, action, conversation, props)) in
        rows.iter().enumerate()
    {
        let m = searchable(
            id,
            *direction,
            partner,
            service,
            action,
            conversation,
            props,
        );
        match direction {
            Inbound => store
                .insert_inbound(
                    NewInbound {
                        meta: m,
                        receipt: b"r".to_vec(),
                        peer: None,
                    },
                    at(i as i64),
                )
                .map(|_| ())
                .unwrap(),
            Outbound => store
                .insert_outbound(
                    NewOutbound {
                        meta: m,
                        not_before: at(100),
                    },
                    at(i as i64),
                )
                .unwrap(),
        }
    }
    let ids = |filter: ListFilter| -> Vec<String> {
        let page = store.list(&filter).unwrap();
        assert!(page.next.is_none(), "{filter:?}");
        page.records
            .into_iter()
            .map(|r| r.meta.message_id)
            .collect()
    };
    let base = || ListFilter {
        exclude_test: true,
        ..ListFilter::default()
    };
    assert_eq!(
        ids(base()),
        ["l-9@x", "lv-3@us", "ee-2@us", "ee-1@x", "lv-2@x", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter::default()).len(),
        8,
        "test traffic is listed when not excluded"
    );
    assert_eq!(
        ids(ListFilter {
            partner: Some("lv".into()),
            ..base()
        }),
        ["lv-3@us", "lv-2@x", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            partner: Some("lv".into()),
            ..ListFilter::default()
        }),
        ["ping-1@x", "lv-3@us", "lv-2@x", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            partner: Some("ee".into()),
            direction: Some(Outbound),
            ..base()
        }),
        ["ee-2@us"]
    );
    assert_eq!(
        ids(ListFilter {
            conversation_id: Some("c2".into()),
            ..base()
        }),
        ["ee-2@us", "ee-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            service: Some("svc:a".into()),
            ..base()
        }),
        ["ee-2@us", "lv-2@x", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            action: Some("Resp".into()),
            ..base()
        }),
        ["lv-3@us", "lv-2@x"]
    );
    assert_eq!(
        ids(ListFilter {
            service: Some("svc:a".into()),
            action: Some("Req".into()),
            ..base()
        }),
        ["ee-2@us", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            properties: vec![("originalSender".into(), sender.into())],
            ..base()
        }),
        ["ee-2@us", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            properties: vec![
                ("originalSender".into(), sender.into()),
                ("finalRecipient".into(), "R".into())
            ],
            ..base()
        }),
        ["ee-2@us"]
    );
    assert!(ids(ListFilter {
        properties: vec![("originalSender".into(), "nobody".into())],
        ..base()
    })
    .is_empty());
    assert_eq!(
        ids(ListFilter {
            id_prefix: Some("lv-".into()),
            ..base()
        }),
        ["lv-3@us", "lv-2@x", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            id_prefix: Some("lv-".into()),
            direction: Some(Inbound),
            ..base()
        }),
        ["lv-2@x", "lv-1@x"]
    );
    assert_eq!(
        ids(ListFilter {
            id_prefix: Some("l".into()),
            partner: Some("lv".into()),
            ..base()
        }),
        ["lv-3@us", "lv-2@x", "lv-1@x"]
    );
    // Time range (since inclusive, until exclusive) with a field.
    assert_eq!(
        ids(ListFilter {
            partner: Some("lv".into()),
            created_from: Some(at(1)),
            created_until: Some(at(4)),
            ..base()
        }),
        ["lv-2@x"]
    );
    assert_eq!(
        ids(ListFilter {
            partner: Some("ee".into()),
            states: vec![State::Submitted],
            owner: Some("alpha".into()),
            ..base()
        }),
        ["ee-2@us"]
    );
    assert!(ids(ListFilter {
        partner: Some("ee".into()),
        owner: Some("beta".into()),
        ..base()
    })
    .is_empty());
    // Pages of one through a search cover it exactly once, in order, whatever index
    // serves it.
    for filter in [
        ListFilter {
            partner: Some("lv".into()),
            ..base()
        },
        ListFilter {
            service: Some("svc:a".into()),
            ..base()
        },
        ListFilter {
            id_prefix: Some("lv-".into()),
            ..base()
        },
        ListFilter {
            properties: vec![("finalRecipient".into(), "R".into())],
            ..base()
        },
    ] {
        let all = ids(filter.clone());
        let mut seen = Vec::new();
        let mut paged = ListFilter { limit: 1, ..filter };
        loop {
            let page = store.list(&paged).unwrap();
            seen.extend(page.records.into_iter().map(|r| r.meta.message_id));
            match page.next {
                Some(cursor) => paged.after = Some(cursor),
                None => break,
            }
        }
        assert_eq!(seen, all, "{paged:?}");
    }
    // Bad search input is refused, not searched.
    let err = store
        .list(&ListFilter {
            partner: Some("a\0b".into()),
            ..base()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
}

/// The history of an inbound message starts with its arrival (sending party and peer);
/// each payload download is recorded without changing the state; the backend's
/// acknowledgement moves it to `downloaded`.
pub fn arrival_and_downloads_are_recorded<S: Store>(store: S) {
    store
        .insert_inbound(inbound("in@them", "alpha", b"r"), at(0))
        .unwrap();
    let record = store.get("in@them").unwrap().unwrap();
    assert_eq!(record.history.len(), 1);
    let arrival = &record.history[0];
    assert_eq!(arrival.event, Event::Receive);
    assert_eq!(
        (arrival.from, arrival.to),
        (State::Received, State::Received)
    );
    let note = arrival.note.as_deref().unwrap();
    assert!(note.contains(&record.meta.from_party), "{note}");
    assert!(note.contains("127.0.0.1:40000"), "{note}");

    store
        .record_download("in@them", 0, "portal", at(1))
        .unwrap();
    store
        .record_download("in@them", 0, "portal", at(2))
        .unwrap();
    let record = store.get("in@them").unwrap().unwrap();
    assert_eq!(record.state, State::Received, "a download changes no state");
    let fetches: Vec<_> = record
        .history
        .iter()
        .filter(|h| h.event == Event::Fetch)
        .collect();
    assert_eq!(fetches.len(), 2);
    assert_eq!(fetches[0].note.as_deref(), Some("payload 0 by portal"));
    assert_eq!(fetches[1].at, at(2));

    assert_eq!(
        store
            .transition("in@them", State::Received, Event::Download, at(3))
            .unwrap(),
        TransitionOutcome::Applied(State::Downloaded)
    );
    let record = store.get("in@them").unwrap().unwrap();
    assert_eq!(record.history.last().unwrap().event, Event::Download);
    assert!(matches!(
        store.record_download("nope@them", 0, "portal", at(4)),
        Err(StoreError::NotFound { .. })
    ));
    store
        .insert_outbound(outbound("out@us", "alpha", at(0)), at(0))
        .unwrap();
    assert!(matches!(
        store.record_download("out@us", 0, "portal", at(4)),
        Err(StoreError::InvalidInput(_))
    ));
}

/// `retry_now` makes a message waiting for its retry due at once (recorded in the
/// history); `retry_waiting` does it for all of a partner's, and touches nothing else.
pub fn retry_now_makes_waiting_messages_due<S: Store>(store: S) {
    let wait = |id: &str, partner: &str| {
        let mut m = meta(id, "alpha");
        m.to_party = partner.to_owned();
        store
            .insert_outbound(
                NewOutbound {
                    meta: m,
                    not_before: at(0),
                },
                at(0),
            )
            .unwrap();
    };
    wait("w1@us", "lv");
    wait("w2@us", "lv");
    wait("w3@us", "ee");
    let claimed = store.claim_due("n1", LEASE, 10, at(1)).unwrap();
    assert_eq!(claimed.len(), 3);
    for r in &claimed {
        store
            .record_attempt(
                r.id(),
                "n1",
                AttemptOutcome::Retry {
                    at: at(3600),
                    error: "partner down".into(),
                },
                at(2),
            )
            .unwrap();
    }
    wait("fresh@us", "lv"); // submitted, not waiting
    assert!(store
        .claim_due("n1", LEASE, 10, at(3))
        .unwrap()
        .iter()
        .all(|r| r.id() == "fresh@us"));

    assert!(store.retry_now("w3@us", "admin", at(10)).unwrap());
    assert!(
        !store.retry_now("w3@us", "admin", at(11)).unwrap(),
        "already due"
    );
    let w3 = store.get("w3@us").unwrap().unwrap();
    assert_eq!(w3.state, State::WaitingForRetry);
    assert_eq!(w3.next_attempt_at, Some(at(10)));
    let entry = w3.history.last().unwrap();
    assert_eq!(entry.event, Event::RetryNow);
    assert_eq!(entry.note.as_deref(), Some("made due now by admin"));
    let got: Vec<_> = store.claim_due("n2", LEASE, 10, at(12)).unwrap();
    assert_eq!(got.iter().map(|r| r.id()).collect::<Vec<_>>(), ["w3@us"]);

    // Sending (just claimed) or unknown: not waiting.
    assert!(matches!(
        store.retry_now("w3@us", "admin", at(13)),
        Err(StoreError::StateConflict {
            actual: State::Sending,
            ..
        })
    ));
    assert!(matches!(
        store.retry_now("nope@us", "admin", at(13)),
        Err(StoreError::NotFound { .. })
    ));

    assert!(store
        .retry_waiting(Some("ee"), None, "admin", at(14))
        .unwrap()
        .is_empty());
    assert!(store
        .retry_waiting(Some("lv"), Some("beta"), "admin", at(14))
        .unwrap()
        .is_empty());
    let mut made_due = store
        .retry_waiting(Some("lv"), Some("alpha"), "admin", at(14))
        .unwrap();
    made_due.sort();
    assert_eq!(made_due, ["w1@us", "w2@us"]);
    assert!(store
        .retry_waiting(None, None, "admin", at(15))
        .unwrap()
        .is_empty());
    let mut got: Vec<_> = store
        .claim_due("n2", LEASE, 10, at(16))
        .unwrap()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["w1@us", "w2@us"]);
}

/// Test traffic is removed whole after its own retention, counted from its arrival,
/// while business messages and outbound test messages still in progress stay.
pub fn test_traffic_is_purged_on_its_own<S: Store>(store: S) {
    let test_meta = |id: &str| {
        let mut m = meta(id, "varti:test-service");
        m.service = crate::TEST_SERVICE.into();
        m.action = crate::TEST_ACTION.into();
        m
    };
    let mut ping = test_meta("ping@them");
    // A payload file (past the inline bound), which the purge must remove with the record.
    ping.payloads = vec![payload(
        &store,
        &vec![b'p'; crate::payload::INLINE_PAYLOAD_MAX + 1],
    )];
    let stored = ping.payloads[0].clone();
    assert!(!stored.stored.is_inline());
    store
        .insert_inbound(
            NewInbound {
                meta: ping,
                receipt: b"r".to_vec(),
                peer: None,
            },
            at(0),
        )
        .unwrap();
    let mut conn = test_meta("conn@them");
    conn.service = crate::CONNECTIVITY_SERVICE.into();
    conn.action = "submitMessage".into();
    assert!(conn.is_test());
    store
        .insert_inbound(
            NewInbound {
                meta: conn,
                receipt: b"r".to_vec(),
                peer: None,
            },
            at(0),
        )
        .unwrap();
    store
        .insert_outbound(
            NewOutbound {
                meta: test_meta("ping@us"),
                not_before: at(0),
            },
            at(0),
        )
        .unwrap();
    store
        .insert_inbound(inbound("business@them", "alpha", b"r"), at(0))
        .unwrap();
    store
        .insert_inbound(
            NewInbound {
                meta: test_meta("late@them"),
                receipt: b"r".to_vec(),
                peer: None,
            },
            at(100),
        )
        .unwrap();

    assert_eq!(store.purge_test(at(0)).unwrap(), 0, "nothing is older");
    assert_eq!(store.purge_test(at(50)).unwrap(), 2);
    assert!(store.get("ping@them").unwrap().is_none());
    assert!(store.get("conn@them").unwrap().is_none());
    assert!(
        read_payload(&store, &PayloadEntry { ..stored }).is_err(),
        "its payload went too"
    );
    assert!(store.get("ping@us").unwrap().is_some(), "still to be sent");
    assert!(store.get("business@them").unwrap().is_some());
    assert!(store.get("late@them").unwrap().is_some());
    assert_eq!(store.purge_test(at(50)).unwrap(), 0);
}

fn audit_entry(instance: &str, action: &str, subject: &str) -> NewAuditEntry {
    NewAuditEntry {
        instance: instance.to_owned(),
        actor: "local".to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        outcome: AuditOutcome::Ok,
        details: serde_json::json!({"sha256": {"pmodes/a.toml": "00ff"}, "n": 1}),
    }
}

/// The audit trail: entries come back numbered in append order, with what was appended;
/// `since` and the `after` cursor page through them without skipping or repeating; invalid
/// entries are refused and change nothing.
pub fn audit_trail_orders_and_pages<S: Store>(store: S) {
    assert_eq!(
        store.list_audit(&AuditFilter::default()).unwrap().entries,
        []
    );
    let mut appended = Vec::new();
    for i in 0..7 {
        let mut e = audit_entry("i1", "config.reload", &format!("s{i}"));
        if i == 3 {
            e.outcome = AuditOutcome::Refused;
            e.details = serde_json::json!({"errors": ["pmodes/x.toml:3:1: bad"]});
        }
        let stored = store.append_audit(e.clone(), at(i)).unwrap();
        assert_eq!(stored.subject, e.subject);
        assert_eq!(stored.outcome, e.outcome);
        assert_eq!(stored.details, e.details);
        assert_eq!(stored.at, at(i));
        appended.push(stored);
    }
    let seqs: Vec<u64> = appended.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "increasing: {seqs:?}");

    // Everything in one page, exactly as appended.
    let page = store.list_audit(&AuditFilter::default()).unwrap();
    assert_eq!(page.entries, appended);
    assert_eq!(page.next, None);

    // Pages of 3 by cursor.
    let mut filter = AuditFilter {
        limit: 3,
        ..AuditFilter::default()
    };
    let mut paged = Vec::new();
    loop {
        let page = store.list_audit(&filter).unwrap();
        assert!(page.entries.len() <= 3);
        paged.extend(page.entries);
        match page.next {
            Some(n) => filter.after = Some(n),
            None => break,
        }
    }
    assert_eq!(paged, appended);

    // Since a time: from the entry at that time on.
    let since = store
        .list_audit(&AuditFilter {
            since: Some(at(4)),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(since.entries, appended[4..]);
    // Since and a cursor together.
    let both = store
        .list_audit(&AuditFilter {
            since: Some(at(2)),
            after: Some(appended[4].seq),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(both.entries, appended[5..]);

    // Bad entries are refused and leave the trail as it was.
    for bad in [
        NewAuditEntry {
            action: String::new(),
            ..audit_entry("i1", "x", "")
        },
        NewAuditEntry {
            actor: "a\0b".into(),
            ..audit_entry("i1", "x", "")
        },
        NewAuditEntry {
            details: serde_json::json!({"big": "x".repeat(crate::MAX_AUDIT_DETAILS_BYTES)}),
            ..audit_entry("i1", "x", "")
        },
    ] {
        assert!(matches!(
            store.append_audit(bad, at(9)),
            Err(StoreError::InvalidInput(_))
        ));
    }
    assert_eq!(
        store.list_audit(&AuditFilter::default()).unwrap().entries,
        appended
    );
}

/// Concurrent appends (threads sharing the store, each on its own connection where the
/// store has connections) never lose an entry, never share a number, and a reader paging
/// while they append sees every entry exactly once.
pub fn concurrent_audit_appends_are_all_kept<S: Store>(store: S) {
    const WRITERS: usize = 4;
    const EACH: usize = 15;
    let barrier = Barrier::new(WRITERS + 1);
    let seen_while_writing = std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (store, barrier) = (&store, &barrier);
            s.spawn(move || {
                barrier.wait();
                for i in 0..EACH {
                    store
                        .append_audit(
                            audit_entry(&format!("w{w}"), "token.use", &format!("{w}-{i}")),
                            at(i as i64),
                        )
                        .unwrap();
                }
            });
        }
        // A reader that follows the trail by cursor while it grows.
        let (store, barrier) = (&store, &barrier);
        s.spawn(move || {
            barrier.wait();
            let mut seen = Vec::new();
            let mut after = None;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < WRITERS * EACH {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reader saw only {} entries",
                    seen.len()
                );
                let page = store
                    .list_audit(&AuditFilter {
                        after,
                        limit: 7,
                        ..AuditFilter::default()
                    })
                    .unwrap();
                if let Some(last) = page.entries.last() {
                    after = Some(last.seq);
                }
                seen.extend(page.entries.into_iter().map(|e| e.subject));
            }
            seen
        })
        .join()
        .unwrap()
    });
    let all = store
        .list_audit(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .unwrap()
        .entries;
    assert_eq!(all.len(), WRITERS * EACH);
    let seqs: HashSet<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), all.len(), "numbers are unique");
    let subjects: HashSet<&str> = all.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects.len(), all.len(), "every append kept once");
    let reader: Vec<&str> = seen_while_writing.iter().map(String::as_str).collect();
    let mut expected: Vec<&str> = all.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(
        reader, expected,
        "the paging reader saw every entry once, in order"
    );
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), WRITERS * EACH);
}

/// The console's accounts and sessions: created, replaced, read back, listed; sessions
/// touched, expired by idle or absolute age, ended one by one and with their user.
pub fn console_users_and_sessions<S: Store>(store: S) {
    use crate::{ConsoleSession, ConsoleUser};
    let user = |name: &str, role: &str| ConsoleUser {
        name: name.into(),
        role: role.into(),
        password_hash: format!("$argon2id$v=19$hash-of-{name}"),
        created_at: t0(),
        updated_at: t0(),
    };
    assert_eq!(store.console_user("ann").unwrap(), None);
    store.put_console_user(&user("ann", "viewer")).unwrap();
    store.put_console_user(&user("bob", "operator")).unwrap();
    let mut changed = user("ann", "admin");
    changed.updated_at = t0() + time::Duration::minutes(1);
    store.put_console_user(&changed).unwrap();
    assert_eq!(store.console_user("ann").unwrap(), Some(changed.clone()));
    let names: Vec<String> = store
        .list_console_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["ann", "bob"]);
    assert!(matches!(
        store.put_console_user(&user("", "viewer")),
        Err(StoreError::InvalidInput(_))
    ));

    let session = |id: &str, who: &str, created: i64, seen: i64| ConsoleSession {
        id_sha256: id.into(),
        user: who.into(),
        csrf: format!("csrf-{id}"),
        created_at: t0() + time::Duration::minutes(created),
        last_seen: t0() + time::Duration::minutes(seen),
    };
    // A session needs its user.
    assert!(matches!(
        store.put_console_session(&session("s0", "nobody", 0, 0)),
        Err(StoreError::InvalidInput(_))
    ));
    store
        .put_console_session(&session("s1", "ann", 0, 0))
        .unwrap();
    store
        .put_console_session(&session("s2", "ann", 0, 50))
        .unwrap();
    store
        .put_console_session(&session("s3", "bob", 40, 60))
        .unwrap();
    store
        .put_console_session(&session("s4", "bob", 40, 60))
        .unwrap();
    // Touching moves last_seen.
    store
        .put_console_session(&session("s1", "ann", 0, 55))
        .unwrap();
    assert_eq!(
        store.console_session("s1").unwrap(),
        Some(session("s1", "ann", 0, 55))
    );
    // Idle before minute 52 (s2), or begun before minute 10 with s1 and s2 too.
    assert_eq!(
        store
            .purge_console_sessions(t0() + time::Duration::minutes(52), t0())
            .unwrap(),
        1
    );
    assert_eq!(store.console_session("s2").unwrap(), None);
    assert_eq!(
        store
            .purge_console_sessions(t0(), t0() + time::Duration::minutes(10))
            .unwrap(),
        1
    );
    assert_eq!(store.console_session("s1").unwrap(), None);
    assert!(store.remove_console_session("s3").unwrap());
    assert!(!store.remove_console_session("s3").unwrap());
    assert!(store.console_session("s4").unwrap().is_some());
    // Removing a user ends its sessions.
    assert!(store.remove_console_user("bob").unwrap());
    assert!(!store.remove_console_user("bob").unwrap());
    assert_eq!(store.console_session("s4").unwrap(), None);
    assert_eq!(store.console_user("bob").unwrap(), None);
}

/// The webhook outbox (issue 18): a state change writes its event in the same step; the
/// announcing instance claims it; another claims it only after the lease ran out (or, never
/// claimed, after the grace); a message's events come out in order; completed events go.
pub fn outbox_events_are_written_with_the_change_and_leased<S: Store>(store: S) {
    use crate::OutboxClaim;
    let lease = Duration::from_secs(30);
    let kinds = |events: &[crate::OutboxEvent]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| (e.message_id.clone(), e.kind.clone()))
            .collect()
    };
    assert_eq!(store.outbox_depth().unwrap(), 0);
    store
        .insert_inbound(inbound("in@them", "portal", b"r"), at(0))
        .unwrap();
    // A duplicate writes nothing more.
    store
        .insert_inbound(inbound("in@them", "portal", b"r"), at(1))
        .unwrap();
    assert_eq!(
        store.outbox_depth().unwrap(),
        1,
        "one event per received message"
    );
    let claimed = match store
        .claim_outbox_event("in@them", "received", "node-a", lease, at(2))
        .unwrap()
    {
        OutboxClaim::Claimed(e) => e,
        other => panic!("the announcing instance claims the event, got {other:?}"),
    };
    assert_eq!(claimed.kind, "received");
    assert_eq!(claimed.owner, "portal");
    assert_eq!(
        store
            .claim_outbox_event("in@them", "received", "node-b", lease, at(3))
            .unwrap(),
        OutboxClaim::Busy,
        "leased to node-a"
    );
    assert!(store
        .claim_outbox_due("node-b", lease, lease, 10, at(31))
        .unwrap()
        .is_empty());
    // node-a dies; its lease runs out and node-b takes the event, same id.
    let taken = store
        .claim_outbox_due("node-b", lease, lease, 10, at(32))
        .unwrap();
    assert_eq!(taken, vec![claimed.clone()]);
    assert!(
        !store
            .extend_outbox_lease(&claimed, "node-a", at(100))
            .unwrap(),
        "the old holder lost it"
    );
    assert!(store
        .extend_outbox_lease(&claimed, "node-b", at(100))
        .unwrap());
    assert!(store
        .claim_outbox_due("node-c", lease, lease, 10, at(99))
        .unwrap()
        .is_empty());
    store
        .complete_outbox_events(std::slice::from_ref(&claimed))
        .unwrap();
    store
        .complete_outbox_events(std::slice::from_ref(&claimed))
        .unwrap();
    assert_eq!(
        store
            .claim_outbox_event("in@them", "received", "node-a", lease, at(101))
            .unwrap(),
        OutboxClaim::Absent
    );

    // Outbound: failed, resent, acknowledged: two events, in order.
    store
        .insert_outbound(outbound("out@us", "portal", at(0)), at(0))
        .unwrap();
    assert_eq!(
        store.outbox_depth().unwrap(),
        0,
        "a submission is not an event"
    );
    store.claim_due("node-a", lease, 1, at(200)).unwrap();
    store
        .record_attempt(
            "out@us",
            "node-a",
            AttemptOutcome::Failed {
                error: "EBMS:0301 MissingReceipt".into(),
            },
            at(201),
        )
        .unwrap();
    store
        .transition("out@us", State::Failed, Event::Resend, at(202))
        .unwrap();
    store.claim_due("node-a", lease, 1, at(203)).unwrap();
    store
        .record_attempt(
            "out@us",
            "node-a",
            AttemptOutcome::Acknowledged {
                receipt: b"receipt".to_vec(),
            },
            at(204),
        )
        .unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 2);
    assert_eq!(
        store
            .claim_outbox_event("out@us", "sent", "node-a", lease, at(205))
            .unwrap(),
        OutboxClaim::Busy,
        "`sent` waits for the earlier `failed`"
    );
    // Never claimed: a sweep takes them once the grace has passed, one per message.
    assert!(store
        .claim_outbox_due("node-b", lease, lease, 10, at(220))
        .unwrap()
        .is_empty());
    let first = store
        .claim_outbox_due("node-b", lease, lease, 10, at(240))
        .unwrap();
    assert_eq!(kinds(&first), [("out@us".to_owned(), "failed".to_owned())]);
    assert_eq!(first[0].error.as_deref(), Some("EBMS:0301 MissingReceipt"));
    store.complete_outbox_events(&first).unwrap();
    let second = store
        .claim_outbox_due("node-b", lease, lease, 10, at(241))
        .unwrap();
    assert_eq!(kinds(&second), [("out@us".to_owned(), "sent".to_owned())]);
    assert_ne!(second[0].event_id, first[0].event_id);
    store.complete_outbox_events(&second).unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 0);

    // A sweep finishes a batch in one step: only the events named go, whatever their
    // message; an event already gone is no error.
    for id in ["b1@them", "b2@them", "b3@them"] {
        store
            .insert_inbound(inbound(id, "portal", b"r"), at(300))
            .unwrap();
    }
    let batch = store
        .claim_outbox_due("node-b", lease, lease, 10, at(400))
        .unwrap();
    assert_eq!(batch.len(), 3);
    let done = [batch[0].clone(), batch[2].clone(), second[0].clone()];
    store.complete_outbox_events(&done).unwrap();
    store.complete_outbox_events(&[]).unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 1);
    assert!(
        !store
            .extend_outbox_lease(&batch[0], "node-b", at(500))
            .unwrap(),
        "a completed event has no lease to extend"
    );
    assert!(store
        .extend_outbox_lease(&batch[1], "node-b", at(500))
        .unwrap());
    store.complete_outbox_events(&batch).unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 0);

    // Only the events of the owners named are written, once they are named.
    store.set_outbox_owners(Some(["portal".to_owned()].into()));
    store
        .insert_inbound(inbound("c1@them", "poller", b"r"), at(600))
        .unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 0, "nobody delivers poller's");
    store
        .insert_inbound(inbound("c2@them", "portal", b"r"), at(601))
        .unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 1);
    store.set_outbox_owners(None);
    store
        .insert_inbound(inbound("c3@them", "poller", b"r"), at(602))
        .unwrap();
    assert_eq!(store.outbox_depth().unwrap(), 2, "every owner's again");
}

/// Preview records (issue 18): opaque bytes by id; a swap succeeds only over the expected
/// bytes (one of two concurrent deciders wins); removal by prefix; purge by keep-until.
pub fn preview_records_are_swapped_once_removed_by_prefix_and_purged<S: Store>(store: S) {
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let at = |s: i64| t0 + time::Duration::seconds(s);
    assert_eq!(store.preview_record("s/1").unwrap(), None);
    assert!(!store.swap_preview_record("s/1", b"", b"x", at(10)).unwrap());

    store
        .put_preview_record("s/1", b"pending", at(100))
        .unwrap();
    store
        .put_preview_record("s/1/e/0", &[0, 255, 1], at(100))
        .unwrap();
    store.put_preview_record("s/10", b"other", at(50)).unwrap();
    store.put_preview_record("l/abc", b"login", at(20)).unwrap();
    assert_eq!(
        store.preview_record("s/1").unwrap().as_deref(),
        Some(&b"pending"[..])
    );
    assert_eq!(
        store.preview_record("s/1/e/0").unwrap(),
        Some(vec![0, 255, 1])
    );

    // Two deciders read "pending"; only the first swap lands.
    std::thread::scope(|scope| {
        let wins: Vec<bool> = (0..4)
            .map(|i| {
                let store = &store;
                scope.spawn(move || {
                    store
                        .swap_preview_record(
                            "s/1",
                            b"pending",
                            format!("decided {i}").as_bytes(),
                            at(100),
                        )
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    });
    let decided = store.preview_record("s/1").unwrap().unwrap();
    assert!(decided.starts_with(b"decided "), "{decided:?}");
    // Replacing with a new value works again, over the current bytes.
    assert!(store
        .swap_preview_record("s/1", &decided, b"approved", at(200))
        .unwrap());

    // Purge removes what is kept until now or earlier, nothing else.
    assert_eq!(store.purge_preview_records(at(19)).unwrap(), 0);
    assert_eq!(store.purge_preview_records(at(20)).unwrap(), 1);
    assert_eq!(store.preview_record("l/abc").unwrap(), None);
    assert_eq!(
        store.purge_preview_records(at(100)).unwrap(),
        2,
        "s/10 and s/1/e/0"
    );
    assert_eq!(
        store.preview_record("s/1").unwrap().as_deref(),
        Some(&b"approved"[..])
    );

    // Removal by prefix: `s/1/` takes the evidence of s/1, not s/10 nor s/1 itself.
    store.put_preview_record("s/1/e/0", b"a", at(300)).unwrap();
    store.put_preview_record("s/1/e/1", b"b", at(300)).unwrap();
    store.put_preview_record("s/10", b"c", at(300)).unwrap();
    store.put_preview_record("s/1%", b"d", at(300)).unwrap();
    assert_eq!(store.remove_preview_records("s/1/").unwrap(), 2);
    assert_eq!(
        store.preview_record("s/10").unwrap().as_deref(),
        Some(&b"c"[..])
    );
    assert_eq!(
        store.preview_record("s/1%").unwrap().as_deref(),
        Some(&b"d"[..])
    );
    assert_eq!(store.remove_preview_records("s/1").unwrap(), 3);
    assert_eq!(store.preview_record("s/10").unwrap(), None);
}

/// Declares one `#[test]` per contract function for a store factory: an expression callable
/// with no arguments that returns `(store, guard)`, where `guard` (say, a temporary directory)
/// lives as long as the test.
#[macro_export]
macro_rules! store_contract_tests {
    ($factory:expr) => {
        $crate::store_contract_tests!(@each $factory;
            duplicate_returns_original_receipt,
            concurrent_duplicates_insert_once,
            message_ids_are_unique,
            claims_only_due_work,
            queue_depth_counts_outbound_in_progress,
            concurrent_claimers_never_share,
            expired_leases_are_reclaimable,
            claim_message_ignores_due_time,
            concurrent_claim_message_once,
            retries_then_failure_then_resend,
            idempotent_transitions,
            invalid_transitions_refused,
            mark_delivered_once_under_concurrency,
            purge_removes_payloads_not_metadata,
            purge_payloads_of_one_message,
            inline_and_stored_payloads,
            listing_filters_by_owner,
            signal_ids_are_noted_once,
            search_by_every_field,
            arrival_and_downloads_are_recorded,
            retry_now_makes_waiting_messages_due,
            test_traffic_is_purged_on_its_own,
            audit_trail_orders_and_pages,
            concurrent_audit_appends_are_all_kept,
            console_users_and_sessions,
            outbox_events_are_written_with_the_change_and_leased,
            preview_records_are_swapped_once_removed_by_prefix_and_purged,
        );
    };
    (@each $factory:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (store, _guard) = ($factory)();
                $crate::contract::$name(store);
            }
        )+
    };
}
