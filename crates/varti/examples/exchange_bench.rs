//! End-to-end exchange benchmark: real `varti serve` processes (sender varti-a, receiver
//! varti-b) on this machine, over TLS, durable stores, signed receipts.
//!
//! ```text
//! cargo build --release -p varti --bin varti --example exchange_bench
//! target/release/examples/exchange_bench --all          # every figure of docs/benchmarks.md
//! target/release/examples/exchange_bench --profile 2.0-eddsa --messages 2000
//! target/release/examples/exchange_bench --store postgres --instances 2 --profile 1.15
//! ```
//!
//! Options (defaults in brackets):
//! - `--profile 1.15|1.15-rsa2048|2.0-eddsa|2.0-ecdsa` (repeatable) [1.15]: the PMode
//!   security profile and the test PKI keys both access points use (RSA-3072; AS4 1.15 with
//!   the RSA-2048 `sign-rsa2048`/`enc-rsa2048` keys; Ed25519 + X25519; P-256).
//! - `--store sled|postgres` (repeatable) [sled]: `postgres` uses the PostgreSQL at
//!   `VARTI_TEST_DATABASE_URL` (default 127.0.0.1:5432, db `test`), one throw-away schema
//!   per side, dropped at the end.
//! - `--instances N` [1; 2 with `--all` on PostgreSQL]: instances per side sharing that
//!   side's store. Sending instance i pushes to receiving instance i (each pair of nodes has
//!   its own PMode directory), but any sending instance may claim any submitted message.
//! - `--messages N` [1000; 0 skips the small-message runs], `--size BYTES` [10240], `--concurrency N` [32] (submitting
//!   threads, spread over the sending instances' backend APIs).
//! - `--rate N|half` [none; `half` with `--all`], `--duration S` [20]: an open-loop run on the
//!   same nodes: submissions due at N per second for S seconds, each made when due whatever
//!   the earlier ones are doing (up to `--concurrency` submitting threads), reporting p50 /
//!   p99 / max of submit → receipt. That latency runs from the instant the submission was
//!   due (its submit call starts then unless every submitting thread is busy; how many
//!   started more than 5 ms late is printed) to the sender's acknowledgement time (the
//!   acknowledged record's `updated_at`: when the partner's signed receipt was verified and
//!   matched, just before the outcome is stored). It includes the submit call, the wait for
//!   a sender slot, sealing, the push, the receiver's pipeline and the receipt. A number N
//!   runs only the open loop; `half` first runs the closed loop above (`--messages`) to
//!   measure the capacity, then the open loop at half of it.
//! - `--big-mib N` [0; 1024 with `--all`]: one message of N MiB on a fresh sled pair.
//! - `--big-kind xml|random|pdf|mixed` (repeatable) [xml and random]: the big message's
//!   payload, one fresh pair and one line (throughput, peak RSS, CPU) per kind: `xml`
//!   compressible XML records (`application/xml`, about 4:1 at gzip level 1); `random`
//!   incompressible bytes (`application/octet-stream`: compressed by the leg, stored in
//!   gzip); `pdf` the same bytes declared `application/pdf` (a type the leg leaves
//!   uncompressed); `mixed` one random byte in four, the rest letters (the payload of the
//!   runs before 2026-12-06).
//! - `--openssl`: `openssl speed` of the primitives (as in the security section).
//! - `--passes`: no servers; the single-core rate of each pass AS4 2.0 makes over a large
//!   payload's bytes, with this build's code, on 32 MiB of each `--big-kind` (default
//!   `xml`): gzip level 1 and gunzip (`varti_as4::compress`), SHA-256 and AES-128-GCM
//!   (OpenSSL). Then the least CPU per payload byte the protocol needs end to end (gzip,
//!   gunzip, the signature's digest and its check, encryption and decryption of the part,
//!   TLS both ways; those four over the compressed bytes), and the throughput that cost
//!   bounds when both servers share this machine's cores. A floor: it leaves out the
//!   MIME, HTTP, disk and store work an exchange also does. Last, the disk's rate for a
//!   large file written and synced beside the stores; the large-message lines print what
//!   each server wrote, so the two give the disk's bound.
//! - `--token`: the sender's (varti-a's) signing key, TLS key and, where SoftHSM2 has the
//!   key type, decryption key in a SoftHSM2 token (PKCS#11; keys imported non-extractable,
//!   as in `tests/hsm.rs`; needs Debian's softhsm2). Rows are marked `[token keys]`.
//! - `VARTI_BENCH_BINARY=PATH` (environment): benchmark that `varti` binary instead of the
//!   one beside the examples directory (to compare builds before and after a change).
//!   It may be a script that runs the binary under a tool, e.g. `exec valgrind
//!   --tool=dhat --dhat-out-file=/tmp/dhat.%p.json /path/to/varti "$@"` (the allocations
//!   per message in `docs/benchmarks.md`), with:
//! - `VARTI_BENCH_WAIT_SECS=N` (environment) [60]: how long to wait for a server to be
//!   ready and for the messages of a run to be acknowledged (a server under valgrind
//!   needs minutes).
//! - `--all`: all of the above: the four profiles on sled, 1.15 and 2.0-eddsa on
//!   PostgreSQL with two instances per side, each followed by its open loop at half its
//!   capacity, 1 GiB, openssl speed.
//!
//! Submissions go through the backend API (multipart), so the figures include the API,
//! the sender's lease and claim, sealing (gzip, sign, encrypt), TLS, the receiver's whole
//! pipeline with a durable store, the signed NRR receipt and its verification. Latency is
//! the server-side time from the submission's insert to the acknowledgement (`created_at`
//! → `updated_at` of the acknowledged record); throughput is the messages over the span
//! from the first insert to the last acknowledgement (store timestamps, so the polling
//! below does not blur it). Peak RSS is VmHWM of each server (`/proc/PID/status`), CPU is
//! its user+system time over the run (`/proc/PID/stat`), load is the 1-minute load average
//! sampled during the run. Each closed-loop and open-loop run prints
//! `CPU per message: sender X ms, receiver Y ms`; a closed-loop run also the bytes each
//! server wrote to storage per message (`write_bytes` of `/proc/PID/io`). At the end the
//! markdown rows of `docs/benchmarks.md` are printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::{
    cancelled_write_bytes, cpu_model, cpu_secs, disk_write_bytes, proc_kib, LoadSampler,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti::pair::{self, NodeLayout, PairLayout, PairOptions, Running};

// The AS4 benchmarks' `openssl speed` runs, for the same comparison figures.
#[path = "../../as4/examples/bench_support/mod.rs"]
mod as4_bench;
mod bench_support;
// The HSM tests' SoftHSM2 token (created once, keys imported non-extractable).
#[path = "../tests/hsm_support/mod.rs"]
mod hsm_support;

/// `--token`: varti-a's keys in a SoftHSM2 token.
static TOKEN_KEYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn label(p: &Profile) -> String {
    if TOKEN_KEYS.load(Ordering::Relaxed) {
        format!("{} [token keys]", p.label)
    } else {
        p.label.to_owned()
    }
}

/// Points varti-a's signing, decryption (where SoftHSM2 has the key type) and TLS keys in
/// its configuration at the token.
fn token_keys(file: &Path, profile: Profile) {
    let t = hsm_support::token();
    let mut text = std::fs::read_to_string(file).unwrap();
    let (sign, enc) = profile.keys;
    let mut keys = vec![sign, "tls"];
    if enc != "enc-x25519" {
        keys.push(enc);
    }
    for stem in keys {
        text = text.replace(
            &format!("\"../certs/varti-a/{stem}.key.pem\""),
            &format!("\"{}\"", t.uri(&format!("varti-a/{stem}"))),
        );
    }
    text += &format!("\n[pkcs11]\nmodule = \"{}\"\n", hsm_support::MODULE);
    std::fs::write(file, text).unwrap();
}

/// The bench agreement under the run's security profile.
fn bench_pmodes(profile: &str) -> String {
    let reception = "retry_intervals = [\"1s\", \"2s\", \"5s\"]\n";
    let compression = "max_decompressed_size = \"2GiB\"\n";
    let settings = pair::settings_toml("bench", profile, reception, Some(compression));
    let process = pair::process_toml(
        "bench",
        "push",
        [pair::BOTH; 2],
        &[["deliver", "urn:varti:bench", "Deliver"]],
        "security = \"bench\"\nreception = \"bench\"\ncompression = \"bench\"\n",
    );
    settings + &process
}

/// Sender settings of every node: many messages in flight, a short idle poll (other
/// instances' submissions are only seen by polling), quiet logs.
const SENDER_CONFIG: &str =
    "[sender]\npoll_interval_ms = 50\nconcurrency = 64\n[log]\nlevel = \"warn\"\n";

/// One security profile: its PMode name, a label, and the test PKI files of its keys.
#[derive(Debug, Clone, Copy)]
struct Profile {
    pmode: &'static str,
    label: &'static str,
    /// (signing, encryption) file stems under certs/varti-x/.
    keys: (&'static str, &'static str),
}

const PROFILES: &[(&str, Profile)] = &[
    (
        "1.15",
        Profile {
            pmode: "as4-1.15",
            label: "AS4 1.15, RSA-3072 + RSA-OAEP",
            keys: ("sign", "enc"),
        },
    ),
    (
        "1.15-rsa2048",
        Profile {
            pmode: "as4-1.15",
            label: "AS4 1.15, RSA-2048 + RSA-OAEP",
            keys: ("sign-rsa2048", "enc-rsa2048"),
        },
    ),
    (
        "2.0-eddsa",
        Profile {
            pmode: "as4-2.0-eddsa",
            label: "AS4 2.0, Ed25519 + X25519",
            keys: ("sign-ed25519", "enc-x25519"),
        },
    ),
    (
        "2.0-ecdsa",
        Profile {
            pmode: "as4-2.0-ecdsa",
            label: "AS4 2.0, ECDSA P-256 + ECDH-ES",
            keys: ("sign-p256", "enc-p256"),
        },
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sled,
    Postgres,
}

/// `--rate`: the open loop's submission rate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    /// N messages per second, without a closed-loop run.
    PerSecond(f64),
    /// Half of the capacity the closed-loop run just measured.
    HalfCapacity,
}

#[derive(Debug)]
struct Args {
    profiles: Vec<Profile>,
    stores: Vec<StoreKind>,
    instances: Option<usize>,
    messages: usize,
    size: usize,
    concurrency: usize,
    big_mib: u64,
    big_kinds: Vec<BigKind>,
    openssl: bool,
    passes: bool,
    all: bool,
    rate: Option<Rate>,
    /// Seconds of the open loop.
    duration: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        profiles: vec![],
        stores: vec![],
        instances: None,
        messages: 1000,
        size: 10 * 1024,
        concurrency: 32,
        big_mib: 0,
        big_kinds: vec![],
        openssl: false,
        passes: false,
        all: false,
        rate: None,
        duration: 20.0,
    };
    let mut it = std::env::args().skip(1);
    let usage = "see the top of crates/varti/examples/exchange_bench.rs for the options";
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| panic!("{name} needs a value ({usage})"))
        };
        let number = |name: &str, v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number, not '{v}'"))
        };
        match arg.as_str() {
            "--profile" => {
                let v = value("--profile");
                let p = PROFILES.iter().find(|(n, _)| *n == v).unwrap_or_else(|| {
                    panic!("unknown profile '{v}': use 1.15, 1.15-rsa2048, 2.0-eddsa or 2.0-ecdsa")
                });
                a.profiles.push(p.1);
            }
            "--store" => a.stores.push(match value("--store").as_str() {
                "sled" => StoreKind::Sled,
                "postgres" => StoreKind::Postgres,
                v => panic!("unknown store '{v}': use sled or postgres"),
            }),
            "--instances" => {
                a.instances = Some(number("--instances", value("--instances")).max(1) as usize)
            }
            "--messages" => a.messages = number("--messages", value("--messages")) as usize,
            "--size" => a.size = number("--size", value("--size")) as usize,
            "--concurrency" => {
                a.concurrency = number("--concurrency", value("--concurrency")).max(1) as usize
            }
            "--rate" => {
                a.rate = Some(match value("--rate").as_str() {
                    "half" => Rate::HalfCapacity,
                    v => {
                        Rate::PerSecond(v.parse::<f64>().ok().filter(|r| *r > 0.0).unwrap_or_else(
                            || panic!("--rate wants messages per second or 'half', not '{v}'"),
                        ))
                    }
                })
            }
            "--duration" => a.duration = number("--duration", value("--duration")).max(1) as f64,
            "--big-mib" => a.big_mib = number("--big-mib", value("--big-mib")),
            "--big-kind" => a.big_kinds.push(BigKind::parse(&value("--big-kind"))),
            "--openssl" => a.openssl = true,
            "--passes" => a.passes = true,
            "--token" => TOKEN_KEYS.store(true, Ordering::Relaxed),
            "--all" => a.all = true,
            other => panic!("unknown option '{other}' ({usage})"),
        }
    }
    if a.all && a.rate.is_none() {
        a.rate = Some(Rate::HalfCapacity);
    }
    a
}

/// One small-message run.
#[derive(Debug, Clone)]
struct Run {
    profile: Profile,
    store: StoreKind,
    instances: usize,
}

/// What one small-message run measured.
#[derive(Debug)]
struct SmallResult {
    run: Run,
    messages: usize,
    size: usize,
    concurrency: usize,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Peak RSS KiB per sending and receiving instance.
    peak_sender: Vec<u64>,
    peak_receiver: Vec<u64>,
    /// CPU ms per message, all sending / all receiving instances.
    cpu_sender_ms: f64,
    cpu_receiver_ms: f64,
    /// Bytes written to storage per message (KB), all sending / all receiving instances.
    writes_sender_kb: f64,
    writes_receiver_kb: f64,
    load: (f64, f64),
}

/// What one open-loop run measured.
#[derive(Debug)]
struct OpenResult {
    run: Run,
    /// Offered rate, msg/s.
    rate: f64,
    seconds: f64,
    messages: usize,
    size: usize,
    /// Submit → receipt, ms.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Messages over the span from the first due submission to the last acknowledgement.
    achieved: f64,
    /// Submit calls that started more than 5 ms after they were due.
    late: usize,
    cpu_sender_ms: f64,
    cpu_receiver_ms: f64,
    load: (f64, f64),
}

/// How long to wait for a server to start and for a run's messages to be acknowledged:
/// `VARTI_BENCH_WAIT_SECS`, 60 s unless set.
fn wait_limit() -> Duration {
    let secs = std::env::var("VARTI_BENCH_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

fn main() {
    let args = parse_args();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // `--passes` alone starts no server, so it needs no varti binary.
    let binary = (!args.passes || args.all).then(bench_support::varti_binary);
    println!(
        "binary {} ({}), {} cores, {}",
        binary
            .as_ref()
            .map_or("none (no servers)".into(), |b| b.display().to_string()),
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let load = LoadSampler::start();

    // No servers: measured first, so that no server run disturbs it.
    let passes = args.passes.then(|| {
        let kinds = if args.big_kinds.is_empty() {
            vec![BigKind::Xml]
        } else {
            args.big_kinds.clone()
        };
        kinds
            .iter()
            .map(|kind| payload_passes(*kind))
            .chain([disk_rate()])
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    if let (Some(p), false) = (&passes, args.all) {
        println!("{p}");
        return;
    }
    let binary = binary.expect("found above when servers run");

    let mut runs = Vec::new();
    if args.all {
        for p in ["1.15", "1.15-rsa2048", "2.0-eddsa", "2.0-ecdsa"] {
            runs.push(Run {
                profile: profile(p),
                store: StoreKind::Sled,
                instances: 1,
            });
        }
        for p in ["1.15", "2.0-eddsa"] {
            runs.push(Run {
                profile: profile(p),
                store: StoreKind::Postgres,
                instances: args.instances.unwrap_or(2),
            });
        }
    } else {
        let profiles = if args.profiles.is_empty() {
            vec![profile("1.15")]
        } else {
            args.profiles.clone()
        };
        let stores = if args.stores.is_empty() {
            vec![StoreKind::Sled]
        } else {
            args.stores.clone()
        };
        for store in &stores {
            for p in &profiles {
                runs.push(Run {
                    profile: *p,
                    store: *store,
                    instances: args.instances.unwrap_or(1),
                });
            }
        }
    }

    if args.messages == 0 {
        runs.clear();
    }
    let mut idle = None;
    let mut results = Vec::new();
    let mut open_results = Vec::new();
    for run in runs {
        let nodes = start_nodes(&binary, &repo, &run);
        if idle.is_none() && run.store == StoreKind::Sled {
            std::thread::sleep(Duration::from_millis(500));
            idle = Some((
                proc_kib(nodes.senders[0].1.child.id(), "VmRSS"),
                proc_kib(nodes.receivers[0].1.child.id(), "VmRSS"),
            ));
        }
        let rate = match args.rate {
            Some(Rate::PerSecond(rate)) => Some(rate),
            None | Some(Rate::HalfCapacity) => {
                let r = small_run(&nodes, &run, &args, &load);
                print_small(&r);
                let half = r.msgs_per_s / 2.0;
                results.push(r);
                (args.rate == Some(Rate::HalfCapacity)).then_some(half)
            }
        };
        if let Some(rate) = rate {
            let o = open_loop(&nodes, &run, rate, &args, &load);
            println!(
                "{} on {} ({}+{} instances), open loop at {:.0} msg/s for {:.0} s, {} x {} B: submit -> receipt p50 {:.1} ms, \
                 p99 {:.1} ms, max {:.1} ms (target p99 < 50 ms); achieved {:.0} msg/s; {} submit call(s) started > 5 ms late; \
                 CPU per message: sender {:.2} ms, receiver {:.2} ms; load {:.1}-{:.1}",
                label(&o.run.profile),
                store_name(&o.run),
                o.run.instances,
                o.run.instances,
                o.rate,
                o.seconds,
                o.messages,
                o.size,
                o.p50_ms,
                o.p99_ms,
                o.max_ms,
                o.achieved,
                o.late,
                o.cpu_sender_ms,
                o.cpu_receiver_ms,
                o.load.0,
                o.load.1,
            );
            open_results.push(o);
        }
    }
    let big_mib = if args.all && args.big_mib == 0 {
        1024
    } else {
        args.big_mib
    };
    let big_kinds = if args.big_kinds.is_empty() {
        vec![BigKind::Xml, BigKind::Random]
    } else {
        args.big_kinds.clone()
    };
    let big = (big_mib > 0).then(|| {
        big_kinds
            .iter()
            .map(|kind| big_run(&binary, &repo, big_mib, *kind, &load))
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    let speed = (args.openssl || args.all).then(openssl_speed);

    // The rows of docs/benchmarks.md.
    println!("\n---- markdown ----\n");
    println!(
        "Load average (1 min) during the runs: {:.1} to {:.1}.\n",
        load.overall().0,
        load.overall().1
    );
    if let Some((a, b)) = idle {
        println!(
            "Idle RSS of a started `varti serve` (VmRSS 0.5 s after ready, sled store): sender {}, receiver {} (target < 30 MiB).\n",
            mib(a),
            mib(b)
        );
    }
    if !results.is_empty() {
        println!("| Profile | Store (instances per side) | msg/s | p50 / p99 ms | peak RSS sender / receiver | CPU ms/msg sender / receiver | load |");
        println!("|---|---|---|---|---|---|---|");
        for r in &results {
            println!(
                "| {} | {} ({}) | {:.0} | {:.0} / {:.0} | {} / {} | {:.2} / {:.2} | {:.1}-{:.1} |",
                label(&r.run.profile),
                store_name(&r.run),
                r.run.instances,
                r.msgs_per_s,
                r.p50_ms,
                r.p99_ms,
                mibs(&r.peak_sender),
                mibs(&r.peak_receiver),
                r.cpu_sender_ms,
                r.cpu_receiver_ms,
                r.load.0,
                r.load.1,
            );
        }
        let r = &results[0];
        println!(
            "\n{} messages of {} bytes per row, {} submitting threads.",
            r.messages, r.size, r.concurrency
        );
    }
    if !open_results.is_empty() {
        println!(
            "\nOpen loop{}: submit -> receipt, from the instant each submission was due to the sender's acknowledgement.\n",
            if args.rate == Some(Rate::HalfCapacity) {
                " at half the capacity measured above"
            } else {
                ""
            }
        );
        println!("| Profile | Store (instances per side) | offered msg/s | seconds | p50 / p99 / max ms | CPU ms/msg sender / receiver | load |");
        println!("|---|---|---|---|---|---|---|");
        for o in &open_results {
            println!(
                "| {} | {} ({}) | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {:.2} / {:.2} | {:.1}-{:.1} |",
                label(&o.run.profile),
                store_name(&o.run),
                o.run.instances,
                o.rate,
                o.seconds,
                o.p50_ms,
                o.p99_ms,
                o.max_ms,
                o.cpu_sender_ms,
                o.cpu_receiver_ms,
                o.load.0,
                o.load.1,
            );
        }
    }
    if let Some(b) = &big {
        println!("\n{b}");
    }
    if let Some(p) = &passes {
        println!("\n{p}");
    }
    if let Some(s) = &speed {
        println!("\n```text\n{s}```");
    }
}

/// Bytes per second of `pass` over `bytes` input bytes: runs it until a second has passed
/// (at least twice) and keeps the fastest run, the one least disturbed by the machine.
fn rate(bytes: usize, mut pass: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = f64::MAX;
    let mut runs = 0;
    while runs < 2 || start.elapsed() < Duration::from_secs(1) {
        let t = Instant::now();
        pass();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    bytes as f64 / best
}

/// `--passes`: the single-core rate of each pass over a large payload and the throughput
/// the least CPU per byte of an exchange bounds (see the options at the top).
fn payload_passes(kind: BigKind) -> String {
    use openssl::symm::{Cipher, Crypter, Mode};
    const SIZE: usize = 32 << 20;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("payload");
    write_big(&path, SIZE as u64, kind);
    let payload = std::fs::read(&path).expect("the generated payload");
    let mut compressed = Vec::with_capacity(SIZE);
    // 32 MiB is varti_as4::compress::SERIAL_PIECES pieces: all compressed on this thread.
    let gzip = rate(SIZE, || {
        compressed.clear();
        varti_as4::compress::gzip(&payload[..], &mut compressed).expect("gzip");
    });
    let mut out = Vec::with_capacity(SIZE);
    // Counted in payload bytes (what comes out), like the other payload-sized passes.
    let gunzip = rate(SIZE, || {
        out.clear();
        varti_as4::compress::gunzip(&compressed[..], &mut out, SIZE as u64 + 1).expect("gunzip");
    });
    assert!(out == payload, "gunzip gave back other bytes");
    let sha256 = rate(SIZE, || {
        std::hint::black_box(openssl::sha::sha256(&payload));
    });
    let (key, iv) = ([7u8; 16], [9u8; 12]);
    // Into a buffer made once, as the streaming encryption writes into its own.
    let mut sealed = vec![0u8; SIZE + 16];
    let aes_gcm = rate(SIZE, || {
        let mut c = Crypter::new(Cipher::aes_128_gcm(), Mode::Encrypt, &key, Some(&iv))
            .expect("AES-128-GCM");
        let n = c.update(&payload, &mut sealed).expect("AES-128-GCM");
        c.finalize(&mut sealed[n..]).expect("AES-128-GCM");
    });
    let wire = compressed.len() as f64 / SIZE as f64;
    let ns = |bytes_per_s: f64| 1e9 / bytes_per_s;
    let compress_ns = ns(gzip) + ns(gunzip);
    let wire_ns = wire * (2.0 * ns(sha256) + 4.0 * ns(aes_gcm));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceiling = cores as f64 / (compress_ns + wire_ns) * 1e9;
    let mbs = |r: f64| r / 1e6;
    format!(
        "Passes over 32 MiB of {}, on one core: gzip level 1 {:.0} MB/s (to {:.1} % of the size), \
         gunzip {:.0} MB/s (of output), SHA-256 {:.0} MB/s, AES-128-GCM {:.0} MB/s.\n\
         Least CPU per payload byte of an AS4 2.0 exchange: gzip + gunzip {:.2} ns, and over the \
         {:.1} % left after compression two SHA-256 passes (the signature's digest and its \
         check) and four AES-GCM passes (the part encrypted and decrypted, TLS both ways) \
         {:.2} ns: {:.2} ns in all, so at most {:.0} MB/s end to end with both servers on \
         these {cores} cores, before any MIME, HTTP, disk or store work.",
        kind.describe().0,
        mbs(gzip),
        100.0 * wire,
        mbs(gunzip),
        mbs(sha256),
        mbs(aes_gcm),
        compress_ns,
        100.0 * wire,
        wire_ns,
        compress_ns + wire_ns,
        mbs(ceiling),
    )
}

/// `--passes`: how fast this machine's disk takes a large file, written as the stores
/// write a payload (1 MiB writes to a new file, then `fsync`), beside the bench's stores.
fn disk_rate() -> String {
    const SIZE: u64 = 1 << 30;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("disk-rate");
    // Bytes no file system could compress or skip.
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let mut f = std::fs::File::create(&path).expect("a file to write");
    for _ in 0..SIZE / block.len() as u64 {
        f.write_all(&block).expect("written");
    }
    f.sync_all().expect("synced");
    let secs = started.elapsed().as_secs_f64();
    format!(
        "Disk: 1 GiB written to a new file in 1 MiB writes and synced in {secs:.1} s: {:.0} MB/s. \
         An exchange is bound by it at this rate over the bytes both servers write per payload \
         byte (the `disk writes` of the large-message lines).",
        SIZE as f64 / 1e6 / secs
    )
}

fn print_small(r: &SmallResult) {
    println!(
            "{} on {} ({}+{} instances), {} x {} B, {} submitters: {:.0} msg/s; latency p50 {:.0} ms, p99 {:.0} ms; \
             peak RSS sender {:?} KiB, receiver {:?} KiB; CPU per message: sender {:.2} ms, receiver {:.2} ms; load {:.1}-{:.1}; \
             disk writes per message: sender {:.0} KB, receiver {:.0} KB",
            label(&r.run.profile),
            store_name(&r.run),
            r.run.instances,
            r.run.instances,
            r.messages,
            r.size,
            r.concurrency,
            r.msgs_per_s,
            r.p50_ms,
            r.p99_ms,
            r.peak_sender,
            r.peak_receiver,
            r.cpu_sender_ms,
            r.cpu_receiver_ms,
            r.load.0,
            r.load.1,
            r.writes_sender_kb,
            r.writes_receiver_kb,
        );
}

fn profile(name: &str) -> Profile {
    PROFILES.iter().find(|(n, _)| *n == name).unwrap().1
}

fn store_name(run: &Run) -> &'static str {
    match run.store {
        StoreKind::Sled => "sled",
        StoreKind::Postgres => "PostgreSQL",
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mibs(kib: &[u64]) -> String {
    kib.iter()
        .map(|k| format!("{:.1}", *k as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(" + ")
        + " MiB"
}

/// The sending and receiving nodes of one run, started; stopped on drop.
struct Nodes {
    _root: tempfile::TempDir,
    senders: Vec<(NodeLayout, Running)>,
    receivers: Vec<(NodeLayout, Running)>,
    /// Dropped after the processes stopped.
    _schemas: Vec<varti_store::postgres::testing::TestSchema>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, r) in self.senders.iter_mut().chain(self.receivers.iter_mut()) {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(r.child.id().to_string())
                .status();
        }
        for (_, r) in self.senders.iter_mut().chain(self.receivers.iter_mut()) {
            let _ = r.child.wait();
        }
    }
}

/// Lays out `instances` pairs (sending node i pushes to receiving node i: each pair has its
/// own PMode directory) with the profile's keys and store, and starts them.
fn start_nodes(binary: &Path, repo: &Path, run: &Run) -> Nodes {
    let root = tempfile::tempdir().unwrap();
    let bench = bench_pmodes(run.profile.pmode);
    let mut schemas = Vec::new();
    let store_config: Vec<String> = match run.store {
        StoreKind::Sled => vec![String::new(), String::new()],
        StoreKind::Postgres => (0..2)
            .map(|_| {
                let schema = varti_store::postgres::testing::TestSchema::migrated();
                let url = format!(
                    "{} options='-c search_path={}'",
                    schema.url(),
                    schema.name()
                );
                schemas.push(schema);
                format!(
                    "[store]\nkind = \"postgres\"\nurl = {}\n",
                    toml_string(&url)
                )
            })
            .collect(),
    };
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..run.instances {
        let dir = root.path().join(format!("pair{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = PairLayout::create(
            &dir,
            repo,
            &PairOptions {
                extra_pmodes: vec![("bench.toml".into(), bench.clone())],
                extra_config: SENDER_CONFIG.into(),
                ..PairOptions::default()
            },
        )
        .unwrap();
        // Only the parties and the bench agreement: the shipped agreements (OOTS, the test
        // service) are 1.15 agreements and do not belong to a 2.0 run.
        for entry in std::fs::read_dir(layout.root.join("pmodes")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !["varti-a.toml", "varti-b.toml", "bench.toml"].contains(&name.as_str()) {
                std::fs::remove_file(&path).unwrap();
            }
        }
        for party in ["varti-a.toml", "varti-b.toml"] {
            use_keys(&layout.root.join("pmodes").join(party), run.profile);
        }
        for (node, store) in [(&layout.a, &store_config[0]), (&layout.b, &store_config[1])] {
            layout
                .rewrite_config(node, &format!("{SENDER_CONFIG}{store}"))
                .unwrap();
            use_keys(&node.dir.join("varti.toml"), run.profile);
            if TOKEN_KEYS.load(Ordering::Relaxed) && node.party == "varti-a" {
                token_keys(&node.dir.join("varti.toml"), run.profile);
            }
        }
        // Receivers first: a sender with work queued would otherwise retry into nothing.
        let b = pair::start(binary, &layout.b, wait_limit()).unwrap();
        receivers.push((layout.b.clone(), b));
        let a = pair::start(binary, &layout.a, wait_limit()).unwrap();
        senders.push((layout.a.clone(), a));
    }
    Nodes {
        _root: root,
        senders,
        receivers,
        _schemas: schemas,
    }
}

/// Points the message signing and encryption key and certificate paths of a configuration
/// or party file at the profile's keys (TLS keys stay the RSA ones).
fn use_keys(file: &Path, profile: Profile) {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text
        .replace("/sign.", &format!("/{}.", profile.keys.0))
        .replace("/enc.", &format!("/{}.", profile.keys.1));
    std::fs::write(file, text).unwrap();
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The closed loop: `--concurrency` threads submit `--messages` messages as fast as the
/// nodes take them.
fn small_run(nodes: &Nodes, run: &Run, args: &Args, load: &LoadSampler) -> SmallResult {
    let settled_before = outbound_settled(nodes);
    let cpu_before: Vec<f64> = all_pids(nodes).iter().map(|p| cpu_secs(*p)).collect();
    let writes_before: Vec<u64> = all_pids(nodes)
        .iter()
        .map(|p| disk_write_bytes(*p))
        .collect();
    let apis = sender_apis(nodes);
    let (n, concurrency) = (args.messages, args.concurrency);
    let payload = small_payload(args.size);
    let mark = load.mark();
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..concurrency)
        .map(|t| {
            let (next, payload) = (next.clone(), payload.clone());
            let (api, token) = apis[t % apis.len()].clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    ids.push(submit(api, &token, &payload, "application/xml"));
                }
                ids
            })
        })
        .collect();
    let ids: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    wait_settled(nodes, settled_before + n as u64, Duration::from_secs(1800));
    let load_range = load.since(mark);
    let cpu = cpu_since(nodes, &cpu_before);
    let writes: Vec<f64> = all_pids(nodes)
        .iter()
        .zip(&writes_before)
        .map(|(p, b)| disk_write_bytes(*p).saturating_sub(*b) as f64 / 1000.0 / n as f64)
        .collect();
    // Any sending instance lists every outbound message of the shared store.
    let records = wait_acknowledged(apis[0].0, &apis[0].1, &ids, wait_limit());
    let k = nodes.senders.len();
    let first = records.iter().map(|r| r.0).min().unwrap();
    let last = records.iter().map(|r| r.1).max().unwrap();
    let mut latencies: Vec<f64> = records
        .iter()
        .map(|(created, acked)| (*acked - *created).as_seconds_f64() * 1000.0)
        .collect();
    latencies.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    SmallResult {
        run: run.clone(),
        messages: n,
        size: args.size,
        concurrency,
        msgs_per_s: n as f64 / (last - first).as_seconds_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        peak_sender: nodes
            .senders
            .iter()
            .map(|(_, r)| proc_kib(r.child.id(), "VmHWM"))
            .collect(),
        peak_receiver: nodes
            .receivers
            .iter()
            .map(|(_, r)| proc_kib(r.child.id(), "VmHWM"))
            .collect(),
        cpu_sender_ms: cpu[..k].iter().sum::<f64>() * 1000.0 / n as f64,
        cpu_receiver_ms: cpu[k..].iter().sum::<f64>() * 1000.0 / n as f64,
        writes_sender_kb: writes[..k].iter().sum(),
        writes_receiver_kb: writes[k..].iter().sum(),
        load: load_range,
    }
}

/// The open loop: submissions due at `rate` per second for `--duration` seconds, each
/// made when it is due (by whichever of `--concurrency` threads is free), whatever the
/// earlier ones are doing; latency from the due instant to the acknowledgement.
fn open_loop(nodes: &Nodes, run: &Run, rate: f64, args: &Args, load: &LoadSampler) -> OpenResult {
    let n = ((rate * args.duration).round() as usize).max(1);
    let apis = sender_apis(nodes);
    let payload = small_payload(args.size);
    let settled_before = outbound_settled(nodes);
    let cpu_before: Vec<f64> = all_pids(nodes).iter().map(|p| cpu_secs(*p)).collect();
    let mark = load.mark();
    // The schedule on both clocks: the monotonic one to wait, the wall clock to compare
    // with the store's acknowledgement timestamps.
    let lead_in = Duration::from_millis(200);
    let (start, start_wall) = (
        Instant::now() + lead_in,
        OffsetDateTime::now_utc() + lead_in,
    );
    let due = move |i: usize| Duration::from_secs_f64(i as f64 / rate);
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let (next, payload) = (next.clone(), payload.clone());
            let (api, token) = apis[t % apis.len()].clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let at = start + due(i);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let late = at.elapsed() > Duration::from_millis(5);
                    sent.push((i, submit(api, &token, &payload, "application/xml"), late));
                }
                sent
            })
        })
        .collect();
    let sent: Vec<(usize, String, bool)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ids: Vec<String> = sent.iter().map(|(_, id, _)| id.clone()).collect();
    wait_settled(nodes, settled_before + n as u64, Duration::from_secs(1800));
    let load_range = load.since(mark);
    let cpu = cpu_since(nodes, &cpu_before);
    let acked = wait_acknowledged_by_id(apis[0].0, &apis[0].1, &ids, wait_limit());
    let k = nodes.senders.len();
    let mut latencies: Vec<f64> = sent
        .iter()
        .map(|(i, id, _)| (acked[id].1 - (start_wall + due(*i))).as_seconds_f64() * 1000.0)
        .collect();
    latencies.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let last = acked.values().map(|r| r.1).max().unwrap();
    OpenResult {
        run: run.clone(),
        rate,
        seconds: args.duration,
        messages: n,
        size: args.size,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        achieved: n as f64 / (last - start_wall).as_seconds_f64(),
        late: sent.iter().filter(|s| s.2).count(),
        cpu_sender_ms: cpu[..k].iter().sum::<f64>() * 1000.0 / n as f64,
        cpu_receiver_ms: cpu[k..].iter().sum::<f64>() * 1000.0 / n as f64,
        load: load_range,
    }
}

/// The backend API address and token of each sending instance.
fn sender_apis(nodes: &Nodes) -> Vec<(SocketAddr, String)> {
    nodes
        .senders
        .iter()
        .map(|(n, _)| (n.backend(), n.token.clone()))
        .collect()
}

/// The small messages' XML payload of `size` bytes.
fn small_payload(size: usize) -> Arc<Vec<u8>> {
    Arc::new(
        (0..size)
            .map(|i| b"<evidence>0123456789</evidence>\n"[i % 32])
            .collect(),
    )
}

/// CPU seconds each process used since `before` (senders first, as `all_pids`).
fn cpu_since(nodes: &Nodes, before: &[f64]) -> Vec<f64> {
    all_pids(nodes)
        .iter()
        .zip(before)
        .map(|(p, b)| cpu_secs(*p) - b)
        .collect()
}

fn all_pids(nodes: &Nodes) -> Vec<u32> {
    nodes
        .senders
        .iter()
        .chain(&nodes.receivers)
        .map(|(_, r)| r.child.id())
        .collect()
}

/// The payload of the big message (`--big-kind`).
#[derive(Debug, Clone, Copy)]
enum BigKind {
    Xml,
    Random,
    Pdf,
    Mixed,
}

impl BigKind {
    fn parse(v: &str) -> BigKind {
        match v {
            "xml" => BigKind::Xml,
            "random" => BigKind::Random,
            "pdf" => BigKind::Pdf,
            "mixed" => BigKind::Mixed,
            v => panic!("unknown big kind '{v}': use xml, random, pdf or mixed"),
        }
    }

    /// (name, declared media type).
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            BigKind::Xml => ("XML, compressible", "application/xml"),
            BigKind::Random => ("random bytes, incompressible", "application/octet-stream"),
            BigKind::Pdf => (
                "random bytes as application/pdf, sent uncompressed",
                "application/pdf",
            ),
            BigKind::Mixed => ("one random byte in four", "application/octet-stream"),
        }
    }
}

/// One message of `mib` MiB on a fresh sled pair (AS4 2.0 EdDSA: the payload work is the
/// same in every profile); returns the markdown line.
fn big_run(
    binary: &Path,
    repo: &Path,
    mib_count: u64,
    kind: BigKind,
    load: &LoadSampler,
) -> String {
    let run = Run {
        profile: profile("2.0-eddsa"),
        store: StoreKind::Sled,
        instances: 1,
    };
    let nodes = start_nodes(binary, repo, &run);
    let (node, _) = &nodes.senders[0];
    let file = nodes._root.path().join("big.bin");
    write_big(&file, mib_count << 20, kind);
    let (kind_name, mime) = kind.describe();
    let pids = all_pids(&nodes);
    let cpu_before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect();
    // Pages of a spool file removed before writeback never reach the disk: not counted.
    let net_writes = |p: u32| disk_write_bytes(p) as i64 - cancelled_write_bytes(p) as i64;
    let writes_before: Vec<i64> = pids.iter().map(|p| net_writes(*p)).collect();
    let mark = load.mark();
    let started = OffsetDateTime::now_utc();
    let id = submit_file(node.backend(), &node.token, &file, mime);
    let uploaded = OffsetDateTime::now_utc();
    let rec = wait_acknowledged(
        node.backend(),
        &node.token,
        &[id],
        Duration::from_secs(3600),
    );
    let acked = rec[0].1;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, before)| cpu_secs(*p) - before)
        .collect();
    // What each server gave the storage to write: the disk's share of the bound.
    let written_mb: Vec<f64> = pids
        .iter()
        .zip(&writes_before)
        .map(|(p, before)| (net_writes(*p) - before).max(0) as f64 / 1e6)
        .collect();
    let secs = (acked - started).as_seconds_f64();
    let bytes = (mib_count << 20) as f64;
    let line = format!(
        "1 message of {mib_count} MiB ({kind_name}; {}, sled): acknowledged {secs:.1} s after the upload began \
         (upload into the sender {:.1} s) → {:.0} MB/s end to end (target ≥ 300 MB/s); peak RSS sender {}, receiver {} \
         (target < 100 MiB); CPU sender {:.1} s, receiver {:.1} s; disk writes sender {:.0} MB, receiver {:.0} MB; \
         load {:.1}-{:.1}.",
        run.profile.label,
        (uploaded - started).as_seconds_f64(),
        bytes / 1e6 / secs,
        mib(proc_kib(nodes.senders[0].1.child.id(), "VmHWM")),
        mib(proc_kib(nodes.receivers[0].1.child.id(), "VmHWM")),
        cpu[0],
        cpu[1],
        written_mb[0],
        written_mb[1],
        load.since(mark).0,
        load.since(mark).1,
    );
    println!("{line}");
    line
}

/// `openssl speed` of the primitives, in the security section's command style.
fn openssl_speed() -> String {
    let mut out = String::new();
    for args in as4_bench::OPENSSL_SPEED_RUNS {
        let o = std::process::Command::new("openssl")
            .arg("speed")
            .args(args)
            .output()
            .expect("the openssl command line tool");
        let text = String::from_utf8_lossy(&o.stdout);
        // Keep the result tables (headers and rows), not OpenSSL's version banner.
        for l in text.lines() {
            let t = l.trim_start();
            if t.starts_with("options") {
                continue;
            }
            if t.starts_with("sign")
                || t.starts_with("op")
                || t.starts_with("type")
                || t.starts_with("rsa")
                || t.contains(" bits ")
                || t.starts_with("AES")
                || t.starts_with("sha256")
            {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

const BOUNDARY: &str = "varti-bench-boundary-5d1c";

fn form_head(name: &str, mime: &str) -> String {
    let meta = serde_json::json!({
        "to_party": "varti-b", "service": "urn:varti:bench", "action": "Deliver",
        "payloads": [{"part": name, "mime_type": mime}],
    });
    format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{meta}\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n"
    )
}

/// Reads an HTTP answer to its end (the server closes): the whole answer, and its body.
fn read_answer(mut tcp: TcpStream) -> (String, String) {
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (answer, body)
}

fn post(
    api: SocketAddr,
    token: &str,
    len: usize,
    write_body: impl FnOnce(&mut TcpStream),
) -> String {
    let mut tcp = TcpStream::connect(api).unwrap();
    write!(
        tcp,
        "POST /api/v1/messages HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    write_body(&mut tcp);
    let (answer, body) = read_answer(tcp);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "submit refused: {answer}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["message_id"].as_str().unwrap().to_owned()
}

fn submit(api: SocketAddr, token: &str, payload: &[u8], mime: &str) -> String {
    let head = form_head("doc", mime);
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let len = head.len() + payload.len() + tail.len();
    post(api, token, len, |tcp| {
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(payload).unwrap();
        tcp.write_all(tail.as_bytes()).unwrap();
    })
}

fn submit_file(api: SocketAddr, token: &str, file: &PathBuf, mime: &str) -> String {
    let head = form_head("big", mime);
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let size = std::fs::metadata(file).unwrap().len() as usize;
    post(api, token, head.len() + size + tail.len(), |tcp| {
        tcp.write_all(head.as_bytes()).unwrap();
        std::io::copy(&mut std::fs::File::open(file).unwrap(), tcp).unwrap();
        tcp.write_all(tail.as_bytes()).unwrap();
    })
}

/// A file of `bytes` bytes of the `kind` (`--big-kind`).
fn write_big(path: &Path, bytes: u64, kind: BigKind) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut x: u32 = 0x9e37_79b9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut written = 0;
    let mut record = 0u64;
    let mut xml = String::new();
    while written < bytes {
        match kind {
            BigKind::Mixed => {
                for (i, b) in block.iter_mut().enumerate() {
                    let r = next();
                    *b = if i % 4 == 0 {
                        r as u8
                    } else {
                        b'a' + (i % 26) as u8
                    };
                }
            }
            BigKind::Random | BigKind::Pdf => {
                for b in block.iter_mut() {
                    *b = next() as u8;
                }
                if written == 0 && matches!(kind, BigKind::Pdf) {
                    block[..9].copy_from_slice(b"%PDF-1.7\n");
                }
            }
            BigKind::Xml => {
                // Records of a register extract: tags repeat, values vary.
                if written == 0 {
                    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<records>\n");
                }
                while xml.len() < block.len() {
                    let r = next();
                    record += 1;
                    xml.push_str(&format!(
                        "  <record id=\"{record}\"><name>Person {}</name><born>19{:02}-{:02}-{:02}</born>\
                         <amount currency=\"EUR\">{}.{:02}</amount><ref>{r:08x}</ref></record>\n",
                        r % 100_000,
                        r % 100,
                        r % 12 + 1,
                        r % 28 + 1,
                        r % 1_000_000,
                        r % 100
                    ));
                }
                let n = block.len();
                block.copy_from_slice(&xml.as_bytes()[..n]);
                xml.drain(..n);
            }
        }
        let n = block.len().min((bytes - written) as usize);
        f.write_all(&block[..n]).unwrap();
        written += n as u64;
    }
    f.flush().unwrap();
}

/// Outbound user messages the sending instances have settled since they started
/// (acknowledged or failed), from their `varti_messages_total` counters: cheap to read,
/// unlike a listing of the messages, which costs the sender CPU per record listed.
fn outbound_settled(nodes: &Nodes) -> u64 {
    nodes
        .senders
        .iter()
        .map(|(layout, _)| {
            let mut tcp = TcpStream::connect(layout.ops()).unwrap();
            write!(
                tcp,
                "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let (_, body) = read_answer(tcp);
            body.lines()
                .filter(|l| {
                    l.starts_with("varti_messages_total{")
                        && l.contains("direction=\"outbound\"")
                        && (l.contains("outcome=\"success\"") || l.contains("outcome=\"failed\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .sum()
}

/// Waits (polling the counters every 50 ms) until the sending instances have settled
/// `target` outbound messages in all: the end of a run, without listing the messages
/// while it goes (the listing afterwards checks that each of them was acknowledged).
fn wait_settled(nodes: &Nodes, target: u64, within: Duration) {
    let started = Instant::now();
    let (mut progress, mut progressed) = (0, Instant::now());
    loop {
        let settled = outbound_settled(nodes);
        if settled >= target {
            return;
        }
        if settled > progress {
            (progress, progressed) = (settled, Instant::now());
        }
        assert!(
            started.elapsed() < within && progressed.elapsed() < Duration::from_secs(180),
            "only {settled} of {target} outbound messages settled (none for 3 minutes, or not all within {within:?}; \
             see the serve.log files; rerun with a longer wait or fewer messages)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the outbound listing (once a second: the listing costs the servers CPU) until
/// every id is acknowledged; returns (created, acked) per message.
fn wait_acknowledged(
    api: SocketAddr,
    token: &str,
    ids: &[String],
    within: Duration,
) -> Vec<(OffsetDateTime, OffsetDateTime)> {
    wait_acknowledged_by_id(api, token, ids, within)
        .into_values()
        .collect()
}

/// As `wait_acknowledged`, by message id.
fn wait_acknowledged_by_id(
    api: SocketAddr,
    token: &str,
    ids: &[String],
    within: Duration,
) -> std::collections::HashMap<String, (OffsetDateTime, OffsetDateTime)> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (mut progress, mut progressed) = (0, Instant::now());
    loop {
        let mut done = std::collections::HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut path =
                "/api/v1/messages?direction=outbound&state=acknowledged&limit=1000".to_owned();
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let mut tcp = TcpStream::connect(api).unwrap();
            write!(tcp, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
            let (_, body) = read_answer(tcp);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for m in v["messages"].as_array().into_iter().flatten() {
                let id = m["message_id"].as_str().unwrap_or_default();
                if wanted.contains(id) {
                    let t = |k: &str| {
                        OffsetDateTime::parse(m[k].as_str().unwrap_or_default(), &Rfc3339).unwrap()
                    };
                    done.insert(id.to_owned(), (t("created_at"), t("updated_at")));
                }
            }
            after = v["next"].as_str().map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        if done.len() == wanted.len() {
            return done;
        }
        if done.len() > progress {
            (progress, progressed) = (done.len(), Instant::now());
        }
        assert!(
            started.elapsed() < within && progressed.elapsed() < Duration::from_secs(180),
            "only {} of {} acknowledged (none for 3 minutes, or not all within {within:?}; failed or stuck messages: see the \
             serve.log files; rerun with a longer wait or fewer messages)",
            done.len(),
            wanted.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
