//! What the embedded store writes to disk for one outbound message's life: stored
//! (`insert_outbound`, with one inline payload), claimed (`claim_due`) and acknowledged
//! (`record_attempt` with a signed receipt's worth of bytes), as the sender does it: stored
//! and acknowledged from `--threads` threads, claimed in batches of 64. Prints the bytes the process caused to be written to storage per
//! message in each phase (`write_bytes` of `/proc/self/io`: sled's log, the sidecars, and
//! their writeback) and the CPU per message.
//!
//! ```sh
//! cargo run --release -p varti-store --example write_bench -- [--messages 4000]
//!     [--payload 10240] [--receipt 5700] [--threads 16] [--dir DIR]
//! ```
//!
//! The store is created in a temporary directory under DIR (default: the working
//! directory; not /tmp, which may be a RAM disk) and removed afterwards. Figures are in
//! docs/benchmarks.md (issue 12, eleventh round).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use varti_store::{
    AttemptOutcome, MessageMeta, MessageProperty, NewOutbound, PayloadEntry, SledStore, Store,
};

struct Options {
    messages: usize,
    payload: usize,
    receipt: usize,
    threads: usize,
    dir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: write_bench [--messages 4000] [--payload 10240] [--receipt 5700] [--threads 16] [--dir DIR]"
    );
    std::process::exit(2);
}

fn options() -> Options {
    let mut o = Options {
        messages: 4000,
        payload: 10240,
        receipt: 5700,
        threads: 16,
        dir: PathBuf::from("."),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        let number = || value.parse::<usize>().unwrap_or_else(|_| usage());
        match arg.as_str() {
            "--messages" => o.messages = number().max(1),
            "--payload" => o.payload = number(),
            "--receipt" => o.receipt = number(),
            "--threads" => o.threads = number().max(1),
            "--dir" => o.dir = PathBuf::from(&value),
            _ => usage(),
        }
    }
    o
}

/// Bytes this process caused to be written to storage so far.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of this process (all its threads, sled's included).
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn meta(store: &SledStore, id: &str, payload: &[u8]) -> MessageMeta {
    let mut payloads = Vec::new();
    if !payload.is_empty() {
        payloads.push(PayloadEntry {
            content_id: "cid:part1@bench".into(),
            mime_type: "application/xml".into(),
            stored: store
                .payloads()
                .put(&mut &payload[..])
                .expect("payload stored"),
            properties: Vec::new(),
        });
    }
    MessageMeta {
        message_id: id.to_owned(),
        owner: "bench".into(),
        from_party: "urn:bench:us".into(),
        to_party: "urn:bench:them".into(),
        service: "urn:bench:service".into(),
        action: "Deliver".into(),
        conversation_id: format!("conv-{id}"),
        ref_to_message_id: None,
        pmode_id: "bench/leg1".into(),
        payloads,
        properties: vec![MessageProperty {
            name: "originalSender".into(),
            value: "urn:bench:sender".into(),
            type_: None,
        }],
    }
}

/// Runs `work(store, i)` for every message index, spread over the threads.
fn phase(o: &Options, store: &Arc<SledStore>, work: impl Fn(&SledStore, usize) + Sync) {
    std::thread::scope(|s| {
        for t in 0..o.threads {
            let (store, work) = (store.clone(), &work);
            s.spawn(move || {
                for i in (t..o.messages).step_by(o.threads) {
                    work(&store, i);
                }
            });
        }
    });
}

fn main() {
    let o = options();
    let dir = tempfile::tempdir_in(&o.dir).expect("temporary directory");
    let store = Arc::new(SledStore::open(dir.path()).expect("store opened"));
    let now = OffsetDateTime::now_utc();
    let payload: Vec<u8> = (0..o.payload).map(|i| b"<evidence/>\n"[i % 12]).collect();
    let ids: Vec<String> = (0..o.messages)
        .map(|_| format!("{}@bench", uuid::Uuid::new_v4()))
        .collect();
    let (started, cpu_start) = (Instant::now(), cpu());
    let mut marks = vec![written()];

    phase(&o, &store, |store, i| {
        let msg = NewOutbound {
            meta: meta(store, &ids[i], &payload),
            not_before: now,
        };
        store.insert_outbound(msg, now).expect("stored");
    });
    marks.push(written());

    let lease = Duration::from_secs(600);
    while !store
        .claim_due("bench", lease, 64, now)
        .expect("claimed")
        .is_empty()
    {}
    marks.push(written());

    let receipt = vec![b'r'; o.receipt];
    phase(&o, &store, |store, i| {
        let outcome = AttemptOutcome::Acknowledged {
            receipt: receipt.clone(),
        };
        store
            .record_attempt(&ids[i], "bench", outcome, now)
            .expect("acknowledged");
    });
    marks.push(written());

    let n = o.messages as f64;
    let kb = |k: usize| (marks[k + 1] - marks[k]) as f64 / 1000.0 / n;
    println!(
        "{} messages, payload {} B, receipt {} B, {} threads: disk writes per message: stored {:.1} KB, \
         claimed {:.1} KB, acknowledged {:.1} KB, in all {:.1} KB; CPU per message {:.3} ms; {:.0} msg/s",
        o.messages,
        o.payload,
        o.receipt,
        o.threads,
        kb(0),
        kb(1),
        kb(2),
        (marks[3] - marks[0]) as f64 / 1000.0 / n,
        (cpu() - cpu_start) * 1000.0 / n,
        n / started.elapsed().as_secs_f64(),
    );
}
