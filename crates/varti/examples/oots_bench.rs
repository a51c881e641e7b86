//! OOTS end-to-end benchmark: evidence request → evidence response latency through two
//! real `varti serve` processes (varti-a the requester state with a procedure portal,
//! varti-b the provider state with a fake national register), as in
//! `crates/varti/tests/oots_flow.rs`.
//!
//! ```text
//! cargo build --release -p varti --bin varti --example oots_bench
//! target/release/examples/oots_bench                       # every row of docs/benchmarks.md
//! target/release/examples/oots_bench --requests 200 --concurrency 16
//! ```
//!
//! Options (defaults in brackets): `--requests N` [100] per row, `--concurrency N` [8] for
//! the concurrent row; `VARTI_SPECS` [../shared/specs] holds the official EDM 1.0 code
//! lists, XSD and Schematron files (read in place); `VARTI_BENCH_BINARY` benchmarks
//! another `varti` build.
//!
//! Each exchange: the portal POSTs the request data (JSON) to a's backend API; a builds the
//! EDM request, stores it and sends it over AS4 (AS4 1.15 profile of the shipped OOTS
//! PMode: RSA-3072 signature, RSA-OAEP encryption, TLS 1.3 with client certificates);
//! b receives, validates (model + code lists; for the EDM 1.0 row also the official XSD and
//! every applicable Schematron file), calls the register (HTTP, answers a 70 KB PDF),
//! builds the EDM response and sends it back over AS4 with the PDF attached; a correlates
//! it, settles the request and POSTs the portal's webhook. Latency is measured by the
//! portal: from the start of its POST to the arrival of the webhook for that request (no
//! polling); every request must end `answered`. Three warm-up exchanges per row are not
//! counted (first TLS connections, validators loaded per worker thread). CPU is each
//! server's user+system time over the row (`/proc/PID/stat`).

#[path = "../tests/register_support/mod.rs"]
mod register_support;

mod bench_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bench_support::{cpu_model, cpu_secs, varti_binary, LoadSampler};
use register_support::Register;
use serde_json::{json, Value};
use varti::pair::{self, NodeLayout, PairLayout, PairOptions, Running};

const WEBHOOK_SECRET: &str = "oots-bench-webhook";

/// Per request id: when its notification arrived and the state it named.
type Arrivals = Mutex<HashMap<String, (Instant, String)>>;

/// The portal's webhook: when each request's notification arrived.
#[derive(Clone, Default)]
struct Hook {
    arrivals: Arc<(Arrivals, Condvar)>,
}

impl Hook {
    /// Listens on a free port; returns it.
    fn start(&self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let arrivals = self.arrivals.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let arrivals = arrivals.clone();
                std::thread::spawn(move || {
                    let Some((head, body)) = register_support::read_request(&mut conn) else {
                        return;
                    };
                    let at = Instant::now();
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    let signature = head
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("x-varti-signature:")
                                .map(|v| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    assert!(
                        varti_access_point::webhooks::verify_signature(
                            WEBHOOK_SECRET.as_bytes(),
                            &body,
                            &signature
                        ),
                        "a webhook with a bad signature"
                    );
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let id = v["request_id"].as_str().unwrap_or_default().to_owned();
                    let state = v["state"].as_str().unwrap_or_default().to_owned();
                    let (map, cv) = &*arrivals;
                    map.lock().unwrap().insert(id, (at, state));
                    cv.notify_all();
                });
            }
        });
        port
    }

    /// Waits for request `id`'s notification: (arrival, state).
    fn wait(&self, id: &str, within: Duration) -> (Instant, String) {
        let (map, cv) = &*self.arrivals;
        let deadline = Instant::now() + within;
        let mut m = map.lock().unwrap();
        loop {
            if let Some(v) = m.remove(id) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no webhook for request {id} within {within:?} (see the serve.log files)"
            );
            m = cv.wait_timeout(m, left).unwrap().0;
        }
    }
}

/// One row of the benchmark.
#[derive(Debug, Clone, Copy)]
struct Row {
    edm: &'static str,
    /// The provider also runs the official XSD and Schematron files.
    full_validation: bool,
    concurrency: usize,
}

/// What one row measured.
#[derive(Debug)]
struct Measured {
    row: Row,
    requests: usize,
    per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    max_ms: f64,
    cpu_a_ms: f64,
    cpu_b_ms: f64,
    load: (f64, f64),
}

/// The two started nodes; stopped on drop.
struct Nodes {
    _root: tempfile::TempDir,
    a: (NodeLayout, Running),
    b: (NodeLayout, Running),
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for r in [&mut self.a.1, &mut self.b.1] {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(r.child.id().to_string())
                .status();
        }
        for r in [&mut self.a.1, &mut self.b.1] {
            let _ = r.child.wait();
        }
    }
}

fn start_nodes(
    binary: &Path,
    repo: &Path,
    specs: &Path,
    register: &Register,
    hook_port: u16,
    full_validation: bool,
) -> Nodes {
    let root = tempfile::tempdir().unwrap();
    let edm = specs.join("oots-edm-v1");
    let mut oots = format!(
        "[oots]\nrole = \"both\"\nrequest_timeout_secs = 120\ncodelists = {}\n",
        toml_string(&edm.join("codelists").display().to_string())
    );
    if full_validation {
        oots.push_str(&format!(
            "schemas = {}\nrules = {}\n",
            toml_string(&edm.join("xsd").display().to_string()),
            toml_string(&edm.join("sch").display().to_string())
        ));
    }
    // The pair's configuration ends with the `portal` backend client's table: the first
    // lines here are its webhook.
    let extra = format!(
        "webhook_url = \"http://127.0.0.1:{hook_port}/varti\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n\
         [log]\nlevel = \"warn\"\n{oots}\
         [[oots.connectors]]\nevidence_type = \"{EVIDENCE_TYPE}\"\nurl = {}\ntimeout_secs = 30\n",
        toml_string(&register.url("/ok"))
    );
    let layout = PairLayout::create(
        root.path(),
        repo,
        &PairOptions {
            extra_config: extra,
            ..PairOptions::default()
        },
    )
    .unwrap();
    let b = pair::start(binary, &layout.b, Duration::from_secs(60)).unwrap();
    let a = pair::start(binary, &layout.a, Duration::from_secs(60)).unwrap();
    Nodes {
        _root: root,
        a: (layout.a.clone(), a),
        b: (layout.b.clone(), b),
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The evidence type the register serves (a DSD identifier: a UUID, as EDM 1.0 demands).
const EVIDENCE_TYPE: &str = "0a6c1d9e-4b8f-4e27-9d35-7c2f8e1b6a40";

/// The portal's request data (as in the oots_flow test, with the identifier forms the EDM
/// 1.0 Schematron rules demand: a DSD UUID, Semantic Repository URLs on
/// `sr.oots.tech.europa.eu`, an eIDAS identifier with nine characters after the countries).
fn request_body(edm: &str) -> Value {
    let sr = if edm == "oots-edm:v1.0" {
        "https://sr.oots.tech.europa.eu"
    } else {
        "https://sr.oots.tech.ec.europa.eu"
    };
    json!({
        "provider_party": "varti-b",
        "edm_version": edm,
        "procedure": "T1",
        "requirements": [{"identifier": format!("{sr}/requirements/315cfd75-6605-49c4-b0fe-799833b41099"), "name": "Proof of birth"}],
        "evidence_type": {
            "identifier": EVIDENCE_TYPE,
            "classification": format!("{sr}/evidencetypeclassifications/LV/9a1e7f3c-0d6b-4e59-b8f5-0d8f6c1e2a33"),
            "title": "Certificate of Birth",
            "format": "application/pdf"
        },
        "requester": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "value": "DK22233223"}, "name": "Danish portal", "country": "DK"},
        "provider": {"identifier": {"scheme": "urn:cef.eu:names:identifier:EAS:9939", "value": "LV90000011588"}, "name": "Latvian register", "country": "LV"},
        "natural_person": {"identifier": "DK/LV/0101901234", "family_name": "Jensen", "given_name": "Ida", "date_of_birth": "1990-01-01", "level_of_assurance": "High"}
    })
}

/// One backend API call: (status, body).
fn api(addr: SocketAddr, token: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    tcp.write_all(body).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One exchange as the portal sees it: the request's id and its latency.
fn exchange(node: &NodeLayout, hook: &Hook, body: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let (status, answer) = api(
        node.backend(),
        &node.token,
        "POST",
        "/api/v1/oots/requests",
        body,
    );
    assert_eq!(status, 202, "POST /api/v1/oots/requests: {answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let (at, state) = hook.wait(&id, Duration::from_secs(300));
    if state != "answered" {
        let (_, record) = api(
            node.backend(),
            &node.token,
            "GET",
            &format!("/api/v1/oots/requests/{id}"),
            b"",
        );
        panic!("request {id} ended {state}, not answered: {record}");
    }
    (id, at - started)
}

fn run(
    binary: &Path,
    repo: &Path,
    specs: &Path,
    row: Row,
    requests: usize,
    load: &LoadSampler,
) -> Measured {
    let register = Register::start();
    let hook = Hook::default();
    let port = hook.start();
    let nodes = start_nodes(binary, repo, specs, &register, port, row.full_validation);
    let body = request_body(row.edm).to_string().into_bytes();
    let a = &nodes.a.0;
    for _ in 0..3 {
        exchange(a, &hook, &body);
    }
    let cpu_before = (
        cpu_secs(nodes.a.1.child.id()),
        cpu_secs(nodes.b.1.child.id()),
    );
    let mark = load.mark();
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(requests));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..row.concurrency {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let (_, latency) = exchange(a, &hook, &body);
                    latencies
                        .lock()
                        .unwrap()
                        .push(latency.as_secs_f64() * 1000.0);
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (
        cpu_secs(nodes.a.1.child.id()) - cpu_before.0,
        cpu_secs(nodes.b.1.child.id()) - cpu_before.1,
    );
    let mut l = latencies.into_inner().unwrap();
    assert_eq!(l.len(), requests);
    assert_eq!(
        register.calls("/ok").len(),
        requests + 3,
        "the register was not called once per request"
    );
    l.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize];
    let m = Measured {
        row,
        requests,
        per_s: requests as f64 / elapsed,
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
        max_ms: l[l.len() - 1],
        cpu_a_ms: cpu.0 * 1000.0 / requests as f64,
        cpu_b_ms: cpu.1 * 1000.0 / requests as f64,
        load: load.since(mark),
    };
    println!("{m:?}");
    m
}

fn main() {
    let mut requests = 100usize;
    let mut concurrency = 8usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} wants a number"))
        };
        match a.as_str() {
            "--requests" => requests = number("--requests").max(1),
            "--concurrency" => concurrency = number("--concurrency").max(1),
            other => panic!(
                "unknown option '{other}' (see the top of crates/varti/examples/oots_bench.rs)"
            ),
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let specs = std::env::var_os("VARTI_SPECS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("../shared/specs"));
    assert!(
        specs.join("oots-edm-v1/sch").is_dir(),
        "the OOTS specs are not at {}: set VARTI_SPECS to the directory holding oots-edm-v1/",
        specs.display()
    );
    let binary = varti_binary();
    println!(
        "binary {}, {} cores, {}",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let load = LoadSampler::start();
    let rows = [
        Row {
            edm: "oots-edm:v2.0",
            full_validation: false,
            concurrency: 1,
        },
        Row {
            edm: "oots-edm:v1.0",
            full_validation: true,
            concurrency: 1,
        },
        Row {
            edm: "oots-edm:v2.0",
            full_validation: false,
            concurrency,
        },
    ];
    let results: Vec<Measured> = rows
        .iter()
        .map(|row| run(&binary, &repo, &specs, *row, requests, &load))
        .collect();

    println!("\n---- markdown ----\n");
    println!("| EDM | provider validates | portals in parallel | exchanges/s | p50 / p95 / max ms | CPU ms per exchange a / b | load |");
    println!("|---|---|---|---|---|---|---|");
    for m in &results {
        println!(
            "| {} | {} | {} | {:.1} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} | {:.1}-{:.1} |",
            m.row.edm.trim_start_matches("oots-edm:"),
            if m.row.full_validation {
                "model + code lists + XSD + Schematron"
            } else {
                "model + code lists"
            },
            m.row.concurrency,
            m.per_s,
            m.p50_ms,
            m.p95_ms,
            m.max_ms,
            m.cpu_a_ms,
            m.cpu_b_ms,
            m.load.0,
            m.load.1,
        );
    }
    println!(
        "\n{} exchanges per row after 3 warm-up exchanges; load is the 1-minute load average \
         during the row (overall {:.1}-{:.1}).",
        results[0].requests,
        load.overall().0,
        load.overall().1
    );
}
