//! Search benchmark: loads N messages (default 1,000,000) into each store — the embedded
//! sled store and PostgreSQL — and times one filtered page (50 records) of every search
//! `varti messages list` offers, on the same data.
//!
//! ```sh
//! cargo run --release -p varti-store --example search_bench -- [--messages 1000000]
//!     [--dir DIR] [--runs 20]
//! ```
//!
//! The data: 200 partners, 20 services, 50 actions, a conversation per 4 messages, 10,000
//! `originalSender` values, 10 owners, 2 % test traffic, stored 30 s apart per 1,000. The
//! sled store is loaded through `SledStore::insert_inbound_batch` (1,000 per transaction and
//! flush) in a temporary directory under DIR (default: `target`, which git ignores); PostgreSQL
//! (`VARTI_TEST_DATABASE_URL`, default the local test database) gets the same rows with
//! one `INSERT … SELECT generate_series` into a throw-away schema, then `ANALYZE`. Each
//! search runs `--runs` times; the median and the worst are printed, and for sled the
//! records read per page (what `records_read_by_list` counts): a search served by its index
//! reads about what it returns, whatever the size of the store. Figures are in
//! docs/benchmarks.md. Not part of the test suite (it takes minutes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use varti_store::postgres::testing::TestSchema;
use varti_store::{
    ListFilter, MessageMeta, MessageProperty, NewInbound, SledStore, Store, TEST_ACTION,
    TEST_SERVICE,
};

struct Options {
    messages: usize,
    dir: PathBuf,
    runs: usize,
}

fn usage() -> ! {
    eprintln!("usage: search_bench [--messages 1000000] [--dir DIR] [--runs 20]");
    std::process::exit(2);
}

fn options() -> Options {
    let mut o = Options {
        messages: 1_000_000,
        dir: PathBuf::from("target"),
        runs: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--messages" => o.messages = value.parse().unwrap_or_else(|_| usage()),
            "--dir" => o.dir = PathBuf::from(value),
            "--runs" => o.runs = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    o
}

/// When message `i` is stored: 1,000 at a time, 30 s apart.
pub fn created(i: usize) -> OffsetDateTime {
    t0() + time::Duration::seconds((i / 1000) as i64 * 30)
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("valid time")
}

/// Message `i` of the data set (the PostgreSQL load computes the same fields in SQL).
pub fn message(i: usize) -> NewInbound {
    let test = i % 50 == 0;
    let meta = MessageMeta {
        message_id: format!(
            "{:08x}-{i}@bench",
            (i as u64).wrapping_mul(2654435761) as u32
        ),
        owner: format!("backend-{}", i % 10),
        from_party: format!("urn:bench:party:{}", i % 200),
        to_party: "urn:bench:us".into(),
        service: if test {
            TEST_SERVICE.into()
        } else {
            format!("urn:bench:service:{}", i % 20)
        },
        action: if test {
            TEST_ACTION.into()
        } else {
            format!("Action{}", i % 50)
        },
        conversation_id: format!("conv-{}", i / 4),
        ref_to_message_id: None,
        pmode_id: "bench/leg".into(),
        payloads: Vec::new(),
        properties: vec![MessageProperty {
            name: "originalSender".into(),
            value: format!("urn:bench:sender:{}", i % 10_000),
            type_: None,
        }],
    };
    NewInbound {
        meta,
        receipt: b"<receipt/>".to_vec(),
        peer: Some("127.0.0.1:40000".into()),
    }
}

/// The searches timed, by name.
fn searches(n: usize) -> Vec<(&'static str, ListFilter)> {
    let page = |f: ListFilter| ListFilter {
        limit: 50,
        exclude_test: true,
        ..f
    };
    let middle = created(n / 2);
    let prefix = format!("{:08x}", ((n / 3) as u64).wrapping_mul(2654435761) as u32);
    vec![
        (
            "no filter (test traffic left out)",
            page(ListFilter::default()),
        ),
        (
            "partner",
            page(ListFilter {
                partner: Some("urn:bench:party:17".into()),
                ..ListFilter::default()
            }),
        ),
        (
            "partner + since/until (one hour)",
            page(ListFilter {
                partner: Some("urn:bench:party:17".into()),
                created_from: Some(middle),
                created_until: Some(middle + time::Duration::hours(1)),
                ..ListFilter::default()
            }),
        ),
        (
            "conversation",
            page(ListFilter {
                conversation_id: Some(format!("conv-{}", n / 8)),
                ..ListFilter::default()
            }),
        ),
        (
            "service + action",
            page(ListFilter {
                service: Some("urn:bench:service:3".into()),
                action: Some("Action13".into()),
                ..ListFilter::default()
            }),
        ),
        (
            "property originalSender",
            page(ListFilter {
                properties: vec![("originalSender".into(), "urn:bench:sender:4242".into())],
                ..ListFilter::default()
            }),
        ),
        (
            "id prefix (8 hex digits)",
            page(ListFilter {
                id_prefix: Some(prefix),
                ..ListFilter::default()
            }),
        ),
        (
            "owner + partner",
            page(ListFilter {
                owner: Some("backend-7".into()),
                partner: Some("urn:bench:party:17".into()),
                ..ListFilter::default()
            }),
        ),
    ]
}

/// Median and worst time of `runs` calls of `list`, and the records of the last page.
fn time_search<S: Store>(
    store: &S,
    filter: &ListFilter,
    runs: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let page = store.list(filter).expect("search runs");
        times.push(started.elapsed());
        found = page.records.len();
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], found)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Loads `n` messages into a sled store in `dir` and into a throw-away PostgreSQL schema
/// (also used by the console's benchmark, `varti-access-point`'s `console_bench`).
pub fn load(dir: &std::path::Path, n: usize) -> (SledStore, TestSchema) {
    let sled = SledStore::open(dir).expect("sled store");
    let started = Instant::now();
    for start in (0..n).step_by(1000) {
        let batch: Vec<NewInbound> = (start..(start + 1000).min(n)).map(message).collect();
        sled.insert_inbound_batch(batch, created(start))
            .expect("batch stored");
    }
    eprintln!(
        "sled: {n} messages loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let schema = TestSchema::migrated();
    let mut db = postgres::Client::connect(schema.url(), postgres::NoTls).expect("database");
    let started = Instant::now();
    db.batch_execute(&format!(
        "SET search_path = {s};
         INSERT INTO messages (message_id, direction, state, owner, from_party, to_party,
             service, action, conversation_id, pmode_id, payloads, has_payloads,
             created_at, updated_at, created_op, properties)
         SELECT lpad(to_hex(((i::bigint * 2654435761) % 4294967296)::bigint), 8, '0')
                    || '-' || i || '@bench',
             'inbound', 'received', 'backend-' || (i % 10), 'urn:bench:party:' || (i % 200),
             'urn:bench:us',
             CASE WHEN i % 50 = 0 THEN '{ts}' ELSE 'urn:bench:service:' || (i % 20) END,
             CASE WHEN i % 50 = 0 THEN '{ta}' ELSE 'Action' || (i % 50) END,
             'conv-' || (i / 4), 'bench/leg', '[]', false,
             to_timestamp(1900000000 + (i / 1000) * 30), now(), gen_random_uuid(),
             jsonb_build_array(jsonb_build_object('name', 'originalSender',
                 'value', 'urn:bench:sender:' || (i % 10000)))
         FROM generate_series(0, {last}) AS i;
         INSERT INTO message_properties (message_id, name, value, created_at)
         SELECT message_id, 'originalSender', properties -> 0 ->> 'value', created_at
         FROM messages;
         ANALYZE messages; ANALYZE message_properties;",
        s = schema.name(),
        ts = TEST_SERVICE,
        ta = TEST_ACTION,
        last = n - 1,
    ))
    .expect("rows loaded");
    eprintln!(
        "postgres: {n} messages loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    (sled, schema)
}

fn main() {
    let o = options();
    let n = o.messages;

    let dir = tempfile::tempdir_in(&o.dir).expect("temporary directory");
    let (sled, schema) = load(dir.path(), n);
    let pg = schema.store();

    println!("| Search (page of 50) | sled median / worst ms | sled records read | PostgreSQL median / worst ms | found |");
    println!("|---|---|---|---|---|");
    for (name, filter) in searches(n) {
        let before = sled.records_read_by_list();
        let (s_med, s_max, s_found) = time_search(&sled, &filter, o.runs);
        let read = (sled.records_read_by_list() - before) / o.runs as u64;
        let (p_med, p_max, p_found) = time_search(&pg, &filter, o.runs);
        assert_eq!(s_found, p_found, "{name}: the stores disagree");
        println!(
            "| {name} | {} / {} | {read} | {} / {} | {s_found} |",
            ms(s_med),
            ms(s_max),
            ms(p_med),
            ms(p_max)
        );
    }
}
