//! PostgreSQL-specific behaviour: migrations, two store instances (two pools, as two Varti
//! processes would have) sharing one schema, and reconnection after the server drops the
//! connections. Each test uses its own schema; the database must be reachable (no skips).

use std::collections::HashSet;
use std::sync::Barrier;
use std::time::Duration;
use time::OffsetDateTime;
use varti_store::contract::{meta, t0};
use varti_store::postgres::testing::TestSchema;
use varti_store::postgres::{migrate_with, PgStore, SCHEMA_VERSION};
use varti_store::{
    AttemptOutcome, InsertOutcome, ListFilter, NewInbound, NewOutbound, State, Store, StoreError,
};

const LEASE: Duration = Duration::from_secs(30);

fn at(seconds: i64) -> OffsetDateTime {
    t0() + time::Duration::seconds(seconds)
}

fn admin(schema: &TestSchema) -> postgres::Client {
    postgres::Client::connect(schema.url(), postgres::NoTls).expect("test database reachable")
}

/// Every schema version this binary applies.
fn all_versions() -> Vec<i32> {
    (1..=SCHEMA_VERSION).collect()
}

#[test]
fn migrate_records_the_version_and_is_idempotent() {
    let schema = TestSchema::empty();
    let options = schema.options();
    // Not migrated yet: a store refuses to start and says what to run.
    let err = PgStore::connect_with(schema.url(), options.clone()).unwrap_err();
    assert!(err.to_string().contains("varti db migrate"), "{err}");

    let applied = migrate_with(schema.url(), &options).unwrap();
    assert_eq!(applied, all_versions());
    let mut db = admin(&schema);
    let versions: Vec<i32> = db
        .query(
            &format!(
                "SELECT version FROM {}.schema_migrations ORDER BY version",
                schema.name()
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, applied);
    let tables: i64 = db
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name IN ('messages', 'message_history', 'payloads', 'payload_chunks')",
            &[&schema.name()],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 4,
        "the migration created the store's tables in the schema"
    );

    assert!(
        migrate_with(schema.url(), &options).unwrap().is_empty(),
        "a second migrate is a no-op"
    );
    let store = PgStore::connect_with(schema.url(), options.clone()).unwrap();
    assert!(store.get("nothing").unwrap().is_none());

    // A newer binary migrated the schema: this one refuses to run or to migrate it.
    db.execute(
        &format!(
            "INSERT INTO {}.schema_migrations (version, name) VALUES ($1, 'from the future')",
            schema.name()
        ),
        &[&(SCHEMA_VERSION + 1)],
    )
    .unwrap();
    for err in [
        PgStore::connect_with(schema.url(), options.clone()).unwrap_err(),
        migrate_with(schema.url(), &options).unwrap_err(),
    ] {
        assert!(err.to_string().contains("newer"), "{err}");
    }
}

#[test]
fn concurrent_migrations_apply_once() {
    let schema = TestSchema::empty();
    let options = schema.options();
    let results: Vec<Vec<i32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| migrate_with(schema.url(), &options).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied: Vec<i32> = results.into_iter().flatten().collect();
    assert_eq!(applied, all_versions());
}

fn outbound(id: &str) -> NewOutbound {
    NewOutbound {
        meta: meta(id, "backend"),
        not_before: at(0),
    }
}

/// Two claimers per instance drain the queue at `now`; returns (holder, id) pairs.
fn drain(stores: [&PgStore; 2], now: OffsetDateTime, round: &str) -> Vec<(String, String)> {
    let barrier = Barrier::new(4);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (store, barrier) = (stores[i % 2], &barrier);
                s.spawn(move || {
                    let holder = format!("instance-{}-worker-{}-{round}", i % 2, i / 2);
                    barrier.wait();
                    let mut mine = Vec::new();
                    loop {
                        let batch = store.claim_due(&holder, LEASE, 4, now).unwrap();
                        if batch.is_empty() {
                            return mine;
                        }
                        for r in batch {
                            assert_eq!(r.lease.as_ref().unwrap().holder, holder);
                            mine.push((holder.clone(), r.meta.message_id));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn two_instances_never_claim_the_same_message_while_leased() {
    const MESSAGES: usize = 120;
    let schema = TestSchema::migrated();
    let (a, b) = (schema.store(), schema.store());
    for i in 0..MESSAGES {
        let store = if i % 2 == 0 { &a } else { &b };
        store
            .insert_outbound(outbound(&format!("out{i}@us")), at(0))
            .unwrap();
    }

    let first = drain([&a, &b], at(1), "first");
    let ids: HashSet<&String> = first.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), first.len(), "a message was claimed twice");
    assert_eq!(ids.len(), MESSAGES, "every due message was claimed");
    let holders: HashSet<&str> = first.iter().map(|(h, _)| &h[..10]).collect();
    assert_eq!(holders.len(), 2, "both instances took part: {holders:?}");

    // While the leases are valid, neither instance gets anything.
    assert!(a.claim_due("late", LEASE, 100, at(30)).unwrap().is_empty());
    assert!(b.claim_due("late", LEASE, 100, at(30)).unwrap().is_empty());

    // Every lease expires (all their holders "died"): the takeover hands each message to
    // exactly one new holder, and the old holder can no longer record a retry.
    // New holder names: a worker that re-takes its own message must still count as a
    // new holder (the old lease is gone).
    let second = drain([&b, &a], at(31), "second");
    let retaken: HashSet<&String> = second.iter().map(|(_, id)| id).collect();
    assert_eq!(
        retaken.len(),
        second.len(),
        "a message was taken over twice"
    );
    assert_eq!(retaken.len(), MESSAGES);
    let (old_holder, id) = &first[0];
    let record = a.get(id).unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (State::Sending, 2));
    let retry = AttemptOutcome::Retry {
        at: at(90),
        error: "timeout".into(),
    };
    assert!(matches!(
        b.record_attempt(id, old_holder, retry, at(32)),
        Err(StoreError::LeaseLost { .. })
    ));
}

#[test]
fn mark_delivered_across_two_instances_wins_once() {
    const MESSAGES: usize = 40;
    let schema = TestSchema::migrated();
    let (a, b) = (schema.store(), schema.store());
    for i in 0..MESSAGES {
        let msg = NewInbound {
            meta: meta(&format!("in{i}@them"), "backend"),
            receipt: b"receipt".to_vec(),
            peer: None,
        };
        assert_eq!(
            a.insert_inbound(msg, at(0)).unwrap(),
            InsertOutcome::Inserted
        );
    }
    let barrier = Barrier::new(4);
    let wins: Vec<Vec<bool>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (store, barrier) = (if t % 2 == 0 { &a } else { &b }, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (0..MESSAGES)
                        .map(|i| store.mark_delivered(&format!("in{i}@them"), at(1)).unwrap())
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..MESSAGES {
        let winners = wins.iter().filter(|w| w[i]).count();
        assert_eq!(winners, 1, "message {i}: exactly one instance delivers it");
        let r = b.get(&format!("in{i}@them")).unwrap().unwrap();
        assert_eq!(r.state, State::Delivered);
        // The arrival, then the one delivery.
        assert_eq!(r.history.len(), 2);
    }
    // A duplicate arriving at the other instance is detected by the database.
    let dup = NewInbound {
        meta: meta("in0@them", "backend"),
        receipt: b"other".to_vec(),
        peer: None,
    };
    assert_eq!(
        b.insert_inbound(dup, at(2)).unwrap(),
        InsertOutcome::Duplicate {
            original_receipt: b"receipt".to_vec(),
            state: State::Delivered
        }
    );
}

#[test]
fn operations_survive_the_server_dropping_every_connection() {
    let schema = TestSchema::migrated();
    // Tag this test's connections so that only they are terminated.
    let tag = format!("varti_{}", &schema.name()[11..27]);
    let url = if schema.url().contains("://") {
        let sep = if schema.url().contains('?') { '&' } else { '?' };
        format!("{}{sep}application_name={tag}", schema.url())
    } else {
        format!("{} application_name={tag}", schema.url())
    };
    let store = PgStore::connect_with(&url, schema.options()).unwrap();
    store.insert_outbound(outbound("o@us"), at(0)).unwrap();
    let mut db = admin(&schema);
    let kill = |db: &mut postgres::Client| -> i64 {
        db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&tag],
        )
        .unwrap()
        .len() as i64
    };
    assert!(kill(&mut db) >= 1, "the store's idle connection was found");
    // The pooled connection is dead; the claim is retried on a fresh one.
    let claimed = store.claim_due("n", LEASE, 10, at(1)).unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(kill(&mut db) >= 1);
    let done = store
        .record_attempt(
            "o@us",
            "n",
            AttemptOutcome::Acknowledged {
                receipt: b"r".to_vec(),
            },
            at(2),
        )
        .unwrap();
    assert_eq!(done.state, State::Acknowledged);
    store
        .insert_inbound(
            NewInbound {
                meta: meta("i@them", "backend"),
                receipt: b"r".to_vec(),
                peer: None,
            },
            at(3),
        )
        .unwrap();
    assert!(kill(&mut db) >= 1);
    assert!(store.mark_delivered("i@them", at(4)).unwrap());
    assert_eq!(
        store.get("i@them").unwrap().unwrap().state,
        State::Delivered
    );
}

#[test]
fn a_multi_host_string_finds_the_read_write_server() {
    let schema = TestSchema::migrated();
    // The first host has nothing listening; the store must move on to the second.
    let (host, port) = db_config(&schema);
    let url = format!(
        "host=127.0.0.1,{host} port=1,{port} user=postgres dbname={dbname} \
         target_session_attrs=read-write connect_timeout=2",
        dbname = db_name(&schema)
    );
    let store = PgStore::connect_with(&url, schema.options()).unwrap();
    store.insert_outbound(outbound("mh@us"), at(0)).unwrap();
    assert_eq!(
        schema.store().get("mh@us").unwrap().unwrap().state,
        State::Submitted
    );
}

/// The (host, port) the test database answers on.
fn db_config(schema: &TestSchema) -> (String, u16) {
    let config: postgres::Config = schema.url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

fn db_name(schema: &TestSchema) -> String {
    let config: postgres::Config = schema.url().parse().unwrap();
    config.get_dbname().unwrap_or("postgres").to_owned()
}

#[test]
fn an_unreachable_database_is_a_clear_error_after_bounded_retries() {
    let options = varti_store::postgres::PgOptions {
        retry_attempts: 2,
        retry_backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    // Port 1 on localhost: nothing listens there.
    let err = PgStore::connect_with("host=127.0.0.1 port=1 user=postgres dbname=test", options)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Database(_)), "{text}");
    assert!(text.contains("gave up after 2 attempts"), "{text}");
}

/// Every search is served by its own index (0005_search.sql): the plan of each filter
/// names the index and has no sequential scan. The table holds 20,000 analysed rows, so
/// the planner weighs real statistics (`explain_list` also discourages sequential scans,
/// as a large table would). `examples/search_bench.rs` times the same searches on a
/// million.
#[test]
fn every_search_uses_its_index() {
    let schema = TestSchema::migrated();
    let store = schema.store();
    let mut db = admin(&schema);
    db.batch_execute(&format!(
        "SET search_path = {s};
         INSERT INTO messages (message_id, direction, state, owner, from_party, to_party,
             service, action, conversation_id, pmode_id, payloads, has_payloads,
             created_at, updated_at, created_op, properties)
         SELECT 'm' || i || '@x', 'inbound', 'received', 'o' || (i % 200), 'p' || (i % 50),
             'us', 'svc' || (i % 100), 'act' || (i % 200), 'c' || (i % 4000), 'pm', '[]',
             false, to_timestamp(1900000000 - 20000 + i), now(),
             gen_random_uuid(),
             jsonb_build_array(jsonb_build_object('name', 'originalSender',
                 'value', 'urn:s' || (i % 300)))
         FROM generate_series(1, 20000) AS i;
         INSERT INTO message_properties (message_id, name, value, created_at)
         SELECT message_id, 'originalSender', properties -> 0 ->> 'value', created_at
         FROM messages;
         ANALYZE messages; ANALYZE message_properties;",
        s = schema.name()
    ))
    .unwrap();
    let base = || ListFilter {
        exclude_test: true,
        ..ListFilter::default()
    };
    let cases: Vec<(&str, ListFilter)> = vec![
        ("messages_regular", base()),
        (
            "messages_regular",
            ListFilter {
                created_from: Some(at(-10000)),
                created_until: Some(at(-9000)),
                ..base()
            },
        ),
        (
            "messages_owner",
            ListFilter {
                owner: Some("o1".into()),
                ..base()
            },
        ),
        (
            "messages_partner",
            ListFilter {
                partner: Some("p7".into()),
                created_from: Some(at(-15000)),
                ..base()
            },
        ),
        (
            "messages_conversation",
            ListFilter {
                conversation_id: Some("c17".into()),
                ..base()
            },
        ),
        (
            "messages_service",
            ListFilter {
                service: Some("svc3".into()),
                ..base()
            },
        ),
        (
            "messages_action",
            ListFilter {
                action: Some("act3".into()),
                ..base()
            },
        ),
        (
            "message_properties_search",
            ListFilter {
                properties: vec![("originalSender".into(), "urn:s42".into())],
                ..base()
            },
        ),
        (
            "messages_pkey",
            ListFilter {
                id_prefix: Some("m123".into()),
                ..base()
            },
        ),
        (
            "messages_partner",
            ListFilter {
                partner: Some("p7".into()),
                after: Some(varti_store::ListCursor {
                    created_at: at(-100),
                    message_id: "m@x".into(),
                }),
                ..base()
            },
        ),
    ];
    for (index, filter) in cases {
        let plan = store.explain_list(&filter).unwrap();
        assert!(!plan.contains("Seq Scan"), "{filter:?}:\n{plan}");
        assert!(
            plan.contains(index),
            "{filter:?} should use {index}:\n{plan}"
        );
    }
}

/// A claim picks its due messages in the order of the `messages_due` index and stops at
/// its limit, reading ids only: its cost does not grow with the backlog. (Its scan used
/// to build the due rows whole, inline payloads turned into JSON text and all.) 20,000
/// analysed due messages, without any planner setting changed.
#[test]
fn a_claim_walks_the_due_index_whatever_the_backlog() {
    let schema = TestSchema::migrated();
    let store = schema.store();
    let mut db = admin(&schema);
    db.batch_execute(&format!(
        "SET search_path = {s};
         INSERT INTO messages (message_id, direction, state, owner, from_party, to_party,
             service, action, conversation_id, pmode_id, payloads, has_payloads,
             next_attempt_at, due_at, created_at, updated_at, created_op, properties)
         SELECT 'm' || i || '@x', 'outbound', 'submitted', 'o', 'us', 'p' || (i % 50),
             'svc', 'act', 'c' || i, 'pm', '[]', false, to_timestamp(1900000000 - 20000 + i),
             to_timestamp(1900000000 - 20000 + i), to_timestamp(1900000000 - 20000 + i),
             now(), gen_random_uuid(), '[]'
         FROM generate_series(1, 20000) AS i;
         ANALYZE messages;",
        s = schema.name()
    ))
    .unwrap();
    let plan = store.explain_pick_due(at(0), 32).unwrap();
    assert!(plan.contains("messages_due"), "{plan}");
    assert!(
        !plan.contains("Sort") && !plan.contains("Seq Scan"),
        "{plan}"
    );
    // And the claim takes the oldest due first.
    let claimed = store
        .claim_due("i1", Duration::from_secs(30), 3, at(0))
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|r| r.id()).collect();
    assert_eq!(ids, ["m1@x", "m2@x", "m3@x"]);
}

/// Each connection keeps the statements the store runs often prepared. When a schema change
/// alters what one of them returns while the connection is open, PostgreSQL refuses the
/// stale statement; the operation is then run again on a fresh connection, which prepares
/// anew, and the caller sees no error.
#[test]
fn a_statement_made_stale_by_a_schema_change_is_prepared_again() {
    let schema = TestSchema::migrated();
    let store = schema.store();
    store.insert_outbound(outbound("stale@us"), at(0)).unwrap();
    // Prepares the claim's statements and the whole-row read on the pooled connection.
    let claimed = store.claim_due("i1", LEASE, 10, at(1)).unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(store.get("stale@us").unwrap().is_some());
    // A column of the whole-row read changes type (text to varchar) under the connection.
    admin(&schema)
        .batch_execute(&format!(
            "ALTER TABLE {}.messages ALTER COLUMN last_error TYPE varchar(10000)",
            schema.name()
        ))
        .unwrap();
    let record = store
        .get("stale@us")
        .unwrap()
        .expect("read after the change");
    assert_eq!(record.state, State::Sending);
    let retry = AttemptOutcome::Retry {
        at: at(90),
        error: "timeout".into(),
    };
    let record = store
        .record_attempt("stale@us", "i1", retry, at(2))
        .unwrap();
    assert_eq!(record.last_error.as_deref(), Some("timeout"));
}

/// Two instances (two pools) append to the shared audit trail at once: every entry is kept,
/// numbered once, and both read the same trail. Nobody can rewrite it, not even a manual
/// session on the database.
#[test]
fn two_instances_share_one_append_only_audit_trail() {
    use varti_store::{AuditFilter, AuditOutcome, NewAuditEntry};
    let schema = TestSchema::migrated();
    let stores = [schema.store(), schema.store()];
    const EACH: usize = 20;
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        for (i, store) in stores.iter().enumerate() {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                for n in 0..EACH {
                    store
                        .append_audit(
                            NewAuditEntry {
                                instance: format!("dc{i}"),
                                actor: "local".into(),
                                action: "config.reload".into(),
                                subject: format!("dc{i}-{n}"),
                                outcome: AuditOutcome::Ok,
                                details: serde_json::json!({}),
                            },
                            at(n as i64),
                        )
                        .unwrap();
                }
            });
        }
    });
    let filter = AuditFilter {
        limit: 1000,
        ..AuditFilter::default()
    };
    let a = stores[0].list_audit(&filter).unwrap().entries;
    let b = stores[1].list_audit(&filter).unwrap().entries;
    assert_eq!(a, b);
    assert_eq!(a.len(), 2 * EACH);
    let subjects: HashSet<_> = a.iter().map(|e| e.subject.clone()).collect();
    assert_eq!(subjects.len(), 2 * EACH);

    let mut client = admin(&schema);
    for statement in [
        format!(
            "UPDATE {}.audit_log SET actor = 'someone else'",
            schema.name()
        ),
        format!("DELETE FROM {}.audit_log", schema.name()),
        format!("TRUNCATE {}.audit_log", schema.name()),
    ] {
        let e = client.batch_execute(&statement).unwrap_err();
        assert!(
            format!("{e:?}").contains("append-only"),
            "{statement}: {e:?}"
        );
    }
    assert_eq!(stores[0].list_audit(&filter).unwrap().entries, a);
}
