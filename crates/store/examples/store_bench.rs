//! Store benchmark: N threads store inbound messages as the receiver does (a small payload
//! file, then the record with `insert_inbound`), each call durable on return. It runs
//! every thread count twice: "before", every call flushing sled on its own
//! (`SledStore::open_without_group_commit`), and "after", concurrent calls sharing flushes
//! (group commit, `SledStore::open`), and prints messages per second and latencies.
//!
//! ```sh
//! cargo run --release -p varti-store --example store_bench -- [--threads 1,16,64]
//!     [--seconds 5] [--payload 256,0] [--dir DIR]
//! ```
//!
//! One table per payload size; size 0 stores records only (no payload file and its two
//! fsyncs, file and directory): sled alone.
//!
//! The stores are created in a temporary directory under DIR (default: the working
//! directory; not /tmp, which may be a RAM disk where fsync costs nothing) and removed
//! afterwards. Figures are in docs/benchmarks.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use varti_store::{InsertOutcome, MessageMeta, NewInbound, PayloadEntry, SledStore, Store};

struct Options {
    threads: Vec<usize>,
    seconds: f64,
    /// Payload bytes per message, one table each; 0: records only (no payload file), to
    /// see sled alone.
    payloads: Vec<usize>,
    dir: PathBuf,
}

fn usage() -> ! {
    eprintln!("usage: store_bench [--threads 1,16,64] [--seconds 5] [--payload 256,0] [--dir DIR]");
    std::process::exit(2);
}

fn options() -> Options {
    let mut o = Options {
        threads: vec![1, 16, 64],
        seconds: 5.0,
        payloads: vec![256, 0],
        dir: PathBuf::from("."),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--threads" => {
                o.threads = value
                    .split(',')
                    .map(|n| n.trim().parse().unwrap_or_else(|_| usage()))
                    .collect();
                if o.threads.contains(&0) {
                    usage();
                }
            }
            "--seconds" => o.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--payload" => {
                o.payloads = value
                    .split(',')
                    .map(|n| n.trim().parse().unwrap_or_else(|_| usage()))
                    .collect();
            }
            "--dir" => o.dir = PathBuf::from(value),
            _ => usage(),
        }
    }
    o
}

#[derive(Clone, Copy)]
enum Mode {
    Before,
    After,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Before => "before (a flush per call)",
            Mode::After => "after (group commit)",
        }
    }
}

struct Figures {
    messages: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn message(store: &SledStore, id: String, payload: &[u8]) -> NewInbound {
    let payloads = if payload.is_empty() {
        Vec::new()
    } else {
        let stored = store
            .payloads()
            .put(&mut &payload[..])
            .expect("payload stored");
        vec![PayloadEntry {
            content_id: "cid:p@varti.test".into(),
            mime_type: "application/xml".into(),
            stored,
            properties: Vec::new(),
        }]
    };
    NewInbound {
        meta: MessageMeta {
            message_id: id.clone(),
            owner: "backend".into(),
            from_party: "red".into(),
            to_party: "blue".into(),
            service: "urn:example:service".into(),
            action: "Deliver".into(),
            conversation_id: id,
            ref_to_message_id: None,
            pmode_id: "bench".into(),
            payloads,
            properties: Vec::new(),
        },
        receipt: b"<receipt/>".to_vec(),
        peer: None,
    }
}

fn run(mode: Mode, threads: usize, payload: usize, o: &Options) -> Figures {
    let dir = tempfile::Builder::new()
        .prefix(".store-bench-")
        .tempdir_in(&o.dir)
        .expect("temporary directory for the store");
    let store = match mode {
        Mode::Before => SledStore::open_without_group_commit(dir.path()),
        Mode::After => SledStore::open(dir.path()),
    }
    .expect("store opens");
    let payload = vec![b'x'; payload];
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.seconds);
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (store, payload) = (&store, &payload);
                s.spawn(move || {
                    let mut own = Vec::new();
                    for i in 0.. {
                        let begun = Instant::now();
                        if begun >= deadline {
                            break;
                        }
                        let msg = message(store, format!("bench-{t}-{i}@varti.test"), payload);
                        let outcome = store
                            .insert_inbound(msg, OffsetDateTime::now_utc())
                            .expect("insert_inbound");
                        assert!(matches!(outcome, InsertOutcome::Inserted));
                        own.push(begun.elapsed());
                    }
                    own
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        messages: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn main() {
    let o = options();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "store_bench: {cpus} CPU(s); {} s per run; stores under {}",
        o.seconds,
        o.dir.display()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for &size in &o.payloads {
        match size {
            0 => println!("\nrecords only (no payload file)"),
            n => println!("\n{n}-byte payload file per message"),
        }
        println!(
            "{:<27} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "mode", "threads", "msg/s", "p50 ms", "p99 ms", "messages"
        );
        for &threads in &o.threads {
            let mut rates = Vec::new();
            for mode in [Mode::Before, Mode::After] {
                let f = run(mode, threads, size, &o);
                println!(
                    "{:<27} {:>7} {:>9.1} {:>9.2} {:>9.2} {:>9}",
                    mode.label(),
                    threads,
                    f.per_second,
                    ms(f.p50),
                    ms(f.p99),
                    f.messages
                );
                rates.push(f.per_second);
            }
            println!(
                "{:<27} {:>7} {:>8.1}x",
                "  speed-up",
                threads,
                rates[1] / rates[0]
            );
        }
    }
}
