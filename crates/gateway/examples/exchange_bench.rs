//! End-to-end exchange benchmark: two real `varti serve` processes (sender varti-a,
//! receiver varti-b) on this machine, over TLS, durable stores, signed receipts.
//!
//! ```text
//! cargo build --release -p varti-gateway
//! cargo run --release -p varti-gateway --example exchange_bench -- [MESSAGES] [SIZE] [CONCURRENCY] [BIG_MIB]
//! ```
//!
//! Defaults: 1000 messages of 10 KiB, 32 concurrent submitters, and one 1024 MiB message.
//! Submissions go through the backend API (multipart), so the figures include the API,
//! the sender's lease and claim, sealing (gzip, sign, encrypt), TLS, the receiver's whole
//! pipeline with an fsync'd store, the signed NRR receipt and its verification. Latency is
//! the server-side time from the submission's insert to the acknowledgement
//! (`created_at` → `updated_at` of the acknowledged record). Peak RSS is read from
//! `/proc/PID/status` (VmHWM) of each server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti_gateway::pair::{self, PairLayout, PairOptions};

const BENCH_PMODES: &str = r#"
[security.bench]
profile = "as4-1.15"
sign = true
encrypt = true
token_reference = "bst"

[reception.bench]
retry_intervals = ["1s", "2s", "5s"]

[compression.bench]
enabled = true
max_decompressed_size = "2GiB"

[[process]]
name = "bench"
mep = "oneWay"
binding = "push"
initiator = { parties = ["varti-a", "varti-b"] }
responder = { parties = ["varti-a", "varti-b"] }

[[process.leg]]
name = "deliver"
service = "urn:varti:bench"
action = "Deliver"
security = "bench"
reception = "bench"
compression = "bench"
"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let size: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10 * 1024);
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(32);
    let big_mib: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1024);

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("varti"))
        .expect("the varti binary beside the examples directory (cargo build first)");
    assert!(
        binary.is_file(),
        "build the binary first: {}",
        binary.display()
    );
    let root = tempfile::tempdir().unwrap();
    let layout = PairLayout::create(
        root.path(),
        &repo,
        &PairOptions {
            extra_pmodes: vec![("bench.toml".into(), BENCH_PMODES.into())],
            extra_config:
                "[sender]\npoll_interval_ms = 50\nconcurrency = 64\n[log]\nlevel = \"warn\"\n"
                    .into(),
            ..PairOptions::default()
        },
    )
    .unwrap();
    let mut a = pair::start(&binary, &layout.a, Duration::from_secs(30)).unwrap();
    let mut b = pair::start(&binary, &layout.b, Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let idle = (
        rss_kib(a.child.id(), "VmRSS"),
        rss_kib(b.child.id(), "VmRSS"),
    );
    println!("binary {} ({})", binary.display(), std::env::consts::ARCH);
    println!("idle RSS: sender {} KiB, receiver {} KiB", idle.0, idle.1);

    // Small messages.
    let api = layout.a.backend();
    let token = layout.a.token.clone();
    let payload: Vec<u8> = (0..size)
        .map(|i| b"<evidence>0123456789</evidence>\n"[i % 32])
        .collect();
    let payload = Arc::new(payload);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, payload, token) = (next.clone(), payload.clone(), token.clone());
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
    let submitted = started.elapsed();
    let records = wait_acknowledged(api, &token, &ids, Duration::from_secs(600));
    let elapsed = started.elapsed();
    let mut latencies: Vec<f64> = records
        .iter()
        .map(|(created, acked)| (*acked - *created).as_seconds_f64() * 1000.0)
        .collect();
    latencies.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "AS4 1.15, {n} x {size} B, {concurrency} submitters: submitted in {:.2} s, all acknowledged in {:.2} s → {:.0} msg/s; latency p50 {:.0} ms, p99 {:.0} ms",
        submitted.as_secs_f64(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "peak RSS after small messages: sender {} KiB, receiver {} KiB",
        rss_kib(a.child.id(), "VmHWM"),
        rss_kib(b.child.id(), "VmHWM")
    );

    if big_mib > 0 {
        let file = root.path().join("big.bin");
        write_big(&file, big_mib << 20);
        let started = Instant::now();
        let id = submit_file(api, &token, &file);
        let rec = wait_acknowledged(api, &token, &[id], Duration::from_secs(3600));
        let secs = started.elapsed().as_secs_f64();
        let _ = rec;
        println!(
            "1 message of {big_mib} MiB: acknowledged in {secs:.1} s → {:.0} MB/s end to end; peak RSS sender {} KiB, receiver {} KiB",
            (big_mib << 20) as f64 / 1e6 / secs,
            rss_kib(a.child.id(), "VmHWM"),
            rss_kib(b.child.id(), "VmHWM")
        );
    }
    for r in [&mut a, &mut b] {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(r.child.id().to_string())
            .status();
        let _ = r.child.wait();
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or_default();
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "submit refused: {answer}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
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

fn submit_file(api: SocketAddr, token: &str, file: &PathBuf) -> String {
    let head = form_head("big", "application/octet-stream");
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let size = std::fs::metadata(file).unwrap().len() as usize;
    post(api, token, head.len() + size + tail.len(), |tcp| {
        tcp.write_all(head.as_bytes()).unwrap();
        std::io::copy(&mut std::fs::File::open(file).unwrap(), tcp).unwrap();
        tcp.write_all(tail.as_bytes()).unwrap();
    })
}

/// A file of pseudo-random-ish, partly compressible bytes.
fn write_big(path: &Path, bytes: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut x: u32 = 0x9e37_79b9;
    let mut written = 0;
    while written < bytes {
        for (i, b) in block.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = if i % 4 == 0 {
                x as u8
            } else {
                b'a' + (i % 26) as u8
            };
        }
        f.write_all(&block).unwrap();
        written += block.len() as u64;
    }
    f.flush().unwrap();
}

/// Polls the outbound listing until every id is acknowledged; returns (created, acked).
fn wait_acknowledged(
    api: SocketAddr,
    token: &str,
    ids: &[String],
    within: Duration,
) -> Vec<(OffsetDateTime, OffsetDateTime)> {
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let started = Instant::now();
    loop {
        let mut done = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path =
                "/api/v1/messages?direction=outbound&state=acknowledged&limit=1000".to_owned();
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let mut tcp = TcpStream::connect(api).unwrap();
            write!(tcp, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
            let mut answer = String::new();
            tcp.read_to_string(&mut answer).unwrap();
            let body = answer
                .split_once("\r\n\r\n")
                .map(|x| x.1)
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            for m in v["messages"].as_array().into_iter().flatten() {
                if wanted.contains(m["message_id"].as_str().unwrap_or_default()) {
                    let t = |k: &str| {
                        OffsetDateTime::parse(m[k].as_str().unwrap_or_default(), &Rfc3339).unwrap()
                    };
                    done.push((t("created_at"), t("updated_at")));
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
        assert!(
            started.elapsed() < within,
            "only {} of {} acknowledged",
            done.len(),
            wanted.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
