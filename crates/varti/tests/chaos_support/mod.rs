//! Fault injection for the active-active tests (`chaos.rs`, `failover.rs`): real `varti
//! serve` processes (the built binary) killed with SIGKILL and restarted, a TCP balancer in
//! front of the receiving instances (the HAProxy of `deploy/pair`, in miniature), a backend
//! that submits through one side's backend API and collects through the other's, and the
//! end-of-run checks: every message acknowledged, taken by the receiving backend exactly
//! once, nothing left sending or waiting for a retry.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use varti::pair::{self, NodeLayout, PairLayout, Running};

pub use super::pair_support::{urlencode, Pair};
use super::serve_support::{http_request, HttpResponse};

/// The PMode of the runs: one-way push from varti-a to varti-b, signed and encrypted, with
/// a retry every second for three minutes (a retry schedule is never what ends a run: the
/// retries keep coming while instances die and return; a message failing for good fails
/// the run).
pub fn chaos_pmodes() -> String {
    // `retry = { attempts = … }` caps at 64 attempts; an explicit list does not.
    let retries = ["\"1s\""; 180].join(", ");
    let reception = format!("retry_intervals = [{retries}]\nduplicate_detection = true\n");
    let chaos = pair::process_toml(
        "chaos",
        "push",
        [&["varti-a"], &["varti-b"]],
        &[["deliver", "urn:varti:test:chaos", "Deliver"]],
        "",
    );
    pair::settings_toml("default", "as4-1.15", &reception, None) + &chaos
}

/// The pair of a run: [`chaos_pmodes`], varti-b's endpoint the balancer's
/// `balancer_port`, [`FAST_SENDER`] for both.
pub fn chaos_pair(balancer_port: u16) -> Pair {
    Pair::create(
        ("chaos.toml", chaos_pmodes()),
        Some(balancer_port),
        FAST_SENDER,
    )
}

/// Two instances per side, started: varti-a and a2 on `stores[0]`, varti-b and b2 on
/// `stores[1]` (`[store]` tables), all with [`FAST_SENDER`]. The senders, the receivers.
pub fn start_pairs(layout: &PairLayout, stores: [&str; 2]) -> (Vec<Instance>, Vec<Instance>) {
    let [config_a, config_b] = stores.map(|store| format!("{FAST_SENDER}{store}"));
    layout.rewrite_config(&layout.a, &config_a).unwrap();
    layout.rewrite_config(&layout.b, &config_b).unwrap();
    let a2 = layout.add_instance(&layout.a, "a2", &config_a).unwrap();
    let b2 = layout.add_instance(&layout.b, "b2", &config_b).unwrap();
    (
        vec![Instance::start(layout.a.clone()), Instance::start(a2)],
        vec![Instance::start(layout.b.clone()), Instance::start(b2)],
    )
}

/// Short timeouts and leases, so a killed sender's messages are taken over within seconds.
/// `lease_secs` must exceed `request_timeout_secs` (the configuration refuses otherwise).
pub const FAST_SENDER: &str = "[client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 5\n\
    [sender]\npoll_interval_ms = 100\nlease_secs = 7\nconcurrency = 16\n";

/// The `[store]` table for a PostgreSQL store on `schema` of the database at `url` (a libpq
/// `key=value` string or a `postgresql://` URL, several hosts allowed).
pub fn postgres_store_config(url: &str, schema: &str) -> String {
    let url = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{schema}")
    } else {
        format!("{url} options='-c search_path={schema}'")
    };
    format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n")
}

/// A small deterministic random generator (xorshift), seeded per run and printed, so a
/// failing schedule of kills can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds from `VARTI_CHAOS_SEED` or the clock.
    pub fn from_env() -> Rng {
        let seed = std::env::var("VARTI_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("chaos: seed {seed} (VARTI_CHAOS_SEED={seed} repeats this schedule)");
        Rng(seed)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration in `[from, to)`.
    pub fn between(&mut self, from: Duration, to: Duration) -> Duration {
        let span = (to - from).as_millis().max(1) as u64;
        from + Duration::from_millis(self.next() % span)
    }
}

/// How many messages a run pushes: the environment variable `var`, else `default`.
pub fn message_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{var}=`{s}` is not a number of messages"))
        })
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// The balancer.

/// A TCP balancer: each connection goes to the next target in turn; a target that refuses
/// the connection (killed, restarting) is skipped. TLS passes through untouched, as with
/// the `mode tcp` HAProxy of `deploy/pair/haproxy.cfg`.
pub struct Balancer {
    /// Where the balancer listens (the receivers' endpoint in the sender's PModes).
    pub port: u16,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections forwarded, per target index.
    pub forwarded: Arc<Vec<AtomicUsize>>,
}

impl Balancer {
    /// Listens on a free port; forwards to nothing until [`Balancer::set_targets`].
    pub fn bind(max_targets: usize) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let targets: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let forwarded: Arc<Vec<AtomicUsize>> =
            Arc::new((0..max_targets).map(|_| AtomicUsize::new(0)).collect());
        let (t, f) = (targets.clone(), forwarded.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let targets = t.lock().unwrap().clone();
                let mut server = None;
                for k in 0..targets.len() {
                    let i = (next + k) % targets.len();
                    if let Ok(s) =
                        TcpStream::connect_timeout(&targets[i], Duration::from_millis(500))
                    {
                        f[i].fetch_add(1, Ordering::Relaxed);
                        server = Some(s);
                        next = i + 1;
                        break;
                    }
                }
                // No target up: the client sees its connection closed and retries later.
                let Some(server) = server else { continue };
                pipe(client, server);
            }
        });
        Balancer {
            port,
            targets,
            forwarded,
        }
    }

    /// The addresses connections are spread over.
    pub fn set_targets(&self, targets: Vec<SocketAddr>) {
        assert!(targets.len() <= self.forwarded.len());
        *self.targets.lock().unwrap() = targets;
    }

    /// Connections forwarded so far, per target.
    pub fn counts(&self) -> Vec<usize> {
        let n = self.targets.lock().unwrap().len();
        self.forwarded[..n]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Copies both ways until either side ends; a side that dies (reset) ends the other too.
fn pipe(client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy_then_close(client, s2));
    std::thread::spawn(move || copy_then_close(server, c2));
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(k) => {
                if to.write_all(&buf[..k]).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------
// Instances.

/// One `varti serve` process of a side, which the killer stops with SIGKILL and restarts.
pub struct Instance {
    /// Its layout (directory, ports, token).
    pub layout: NodeLayout,
    running: Option<Running>,
    /// SIGKILLs so far.
    pub kills: usize,
}

/// How long an instance may take to start (it connects to the store and reads PModes).
const START_WITHIN: Duration = Duration::from_secs(60);

impl Instance {
    /// Starts `layout`'s node.
    pub fn start(layout: NodeLayout) -> Instance {
        let mut instance = Instance {
            layout,
            running: None,
            kills: 0,
        };
        instance.restart();
        instance
    }

    fn binary() -> &'static Path {
        Path::new(env!("CARGO_BIN_EXE_varti"))
    }

    /// Starts the process again (keeping the logs of earlier runs in `serve-all.log`).
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "{} is still running", self.name());
        self.keep_log();
        let running = pair::start(Self::binary(), &self.layout, START_WITHIN)
            .unwrap_or_else(|e| panic!("{} does not start again: {e}", self.name()));
        self.running = Some(running);
    }

    /// Appends the current `serve.log` to `serve-all.log` (each start truncates it).
    fn keep_log(&self) {
        let log = self.layout.dir.join("serve.log");
        if let Ok(text) = std::fs::read(&log) {
            let mut all = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.layout.dir.join("serve-all.log"))
                .unwrap();
            all.write_all(&text).unwrap();
            writeln!(all, "---- (process ended) ----").unwrap();
        }
    }

    /// `kill -9`: the process gets no chance to finish anything.
    pub fn kill9(&mut self) {
        let mut running = self.running.take().expect("killing a running instance");
        running.child.kill().unwrap();
        running.child.wait().unwrap();
        self.kills += 1;
    }

    /// SIGTERM and wait for a clean exit (0).
    pub fn terminate(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let pid = running.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = running.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not stop within 30 s of SIGTERM:\n{}",
                self.name(),
                tail(&running.log_text(), 150)
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name(),
            tail(&running.log_text(), 150)
        );
        self.keep_log();
    }

    /// Whether its process is up (as far as the test knows).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Its directory name (`a`, `a2`, `b`, `b2`).
    pub fn name(&self) -> &'static str {
        self.layout.name
    }

    /// Its MSH address.
    pub fn msh(&self) -> SocketAddr {
        self.layout.msh()
    }

    /// The last lines of all its logs (for failure messages).
    pub fn logs(&self) -> String {
        self.keep_log_copy()
    }

    fn keep_log_copy(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.layout.dir.join("serve-all.log")).unwrap_or_default();
        text.push_str(
            &std::fs::read_to_string(self.layout.dir.join("serve.log")).unwrap_or_default(),
        );
        tail(&text, 60)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// The backend API, as a backend system uses it: any instance of a side will do.

/// The backend API addresses of a side's instances and its token.
#[derive(Clone)]
pub struct Side {
    /// Backend API addresses, one per instance.
    pub apis: Vec<SocketAddr>,
    /// The backend client's API token.
    pub token: String,
}

impl Side {
    /// The side made of these instances.
    pub fn of(instances: &[&Instance]) -> Side {
        Side {
            apis: instances.iter().map(|i| i.layout.backend()).collect(),
            token: instances[0].layout.token.clone(),
        }
    }

    /// One request to instance `i`. Connection errors (the instance is down) are errors.
    pub fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        let mut tcp = TcpStream::connect_timeout(&self.apis[i], Duration::from_secs(2))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut headers = format!("Authorization: Bearer {}\r\n", self.token);
        if let Some(ct) = content_type {
            headers.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        http_request(&mut tcp, method, path, &headers, body)
    }

    /// A GET answered 200 by whichever instance is up first (starting at `first`), as JSON.
    pub fn get_json(&self, first: usize, path: &str, within: Duration) -> serde_json::Value {
        let start = Instant::now();
        let mut i = first;
        loop {
            match self.call(i % self.apis.len(), "GET", path, None, b"") {
                Ok(r) if r.status == 200 => return serde_json::from_str(&r.body).unwrap(),
                Ok(r) if r.status < 500 => panic!("GET {path}: {} {}", r.status, r.body),
                _ => {}
            }
            assert!(
                start.elapsed() < within,
                "no instance answered GET {path} within {within:?}"
            );
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Message counts by state (`GET /status`).
    pub fn counts(&self, first: usize) -> BTreeMap<String, u64> {
        let v = self.get_json(first, "/api/v1/status", Duration::from_secs(60));
        serde_json::from_value(v["counts"].clone()).unwrap()
    }

    /// Every message of a direction (all pages).
    pub fn all(&self, direction: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/messages?direction={direction}&limit=1000");
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", urlencode(a)));
            }
            let v = self.get_json(0, &path, Duration::from_secs(60));
            out.extend(v["messages"].as_array().cloned().unwrap_or_default());
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
    }
}

/// The MessageId of message `seq` of run `run`.
pub fn message_id(run: &str, seq: usize) -> String {
    format!("chaos-{run}-{seq}@varti-a.test")
}

/// The payload of message `seq`: its number, so the receiving backend can check that what
/// it downloads belongs to the message it is under.
pub fn payload_of(run: &str, seq: usize) -> Vec<u8> {
    format!("chaos run {run}, message {seq}\n")
        .repeat(40)
        .into_bytes()
}

fn seq_of(run: &str, id: &str) -> Option<usize> {
    id.strip_prefix(&format!("chaos-{run}-"))?
        .strip_suffix("@varti-a.test")?
        .parse()
        .ok()
}

/// Submits `seqs` through the sending side, spreading them over its instances. A submission
/// whose answer is lost (the instance was killed) is repeated on the next instance with the
/// same MessageId: 201 or 409 (it is already there) both mean the message is in the store.
pub fn submit_all(side: &Side, run: &str, seqs: impl Iterator<Item = usize>, done: &AtomicUsize) {
    let boundary = "varti-chaos-boundary-3b1d";
    for seq in seqs {
        let id = message_id(run, seq);
        let meta = serde_json::json!({
            "to_party": "varti-b",
            "service": "urn:varti:test:chaos",
            "action": "Deliver",
            "message_id": id,
            "payloads": [{"part": "body", "mime_type": "text/plain"}],
        });
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"body\"; filename=\"body.txt\"\r\n\
             Content-Type: text/plain\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&payload_of(run, seq));
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let start = Instant::now();
        let mut i = seq;
        loop {
            match side.call(
                i % side.apis.len(),
                "POST",
                "/api/v1/messages",
                Some(&content_type),
                &body,
            ) {
                Ok(r) if r.status == 201 || r.status == 409 => break,
                Ok(r) if r.status < 500 => panic!("submit {id} refused: {} {}", r.status, r.body),
                _ => {}
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no sending instance took {id} within 120 s"
            );
            i += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The receiving backend: polls the receiving side for new inbound messages, downloads each
/// one's payload (checking it is the one submitted under that MessageId) and acknowledges it.
/// A message counts as *taken* when download and acknowledgement both succeeded; the run's
/// verdict is that each message was taken exactly once.
pub struct Collector {
    /// Completed takes per MessageId.
    pub taken: Mutex<HashMap<String, usize>>,
    /// Problems seen (a wrong payload, an unknown message), reported at the end.
    pub problems: Mutex<Vec<String>>,
    /// Set to stop the collecting threads.
    pub stop: AtomicBool,
}

impl Collector {
    /// A collector with nothing taken.
    pub fn new() -> Arc<Collector> {
        Arc::new(Collector {
            taken: Mutex::default(),
            problems: Mutex::default(),
            stop: AtomicBool::new(false),
        })
    }

    /// How many distinct messages were taken.
    pub fn distinct(&self) -> usize {
        self.taken.lock().unwrap().len()
    }

    /// Runs one collecting thread; thread `part` of `parts` takes the messages whose number
    /// is `part` modulo `parts` (a backend partitions its work; it never runs two takes of
    /// one message at once).
    pub fn run(self: &Arc<Self>, side: Side, run: String, part: usize, parts: usize) {
        let mut i = part;
        while !self.stop.load(Ordering::Relaxed) {
            i += 1;
            let api = i % side.apis.len();
            // `delivered` too: a take cut short after the download (the instance died before
            // the acknowledgement) is finished on the next round.
            let listing = side.call(
                api,
                "GET",
                "/api/v1/messages?direction=inbound&state=received,delivered&limit=200",
                None,
                b"",
            );
            let messages = match listing {
                Ok(r) if r.status == 200 => {
                    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                    v["messages"].as_array().cloned().unwrap_or_default()
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let mine: Vec<String> = messages
                .iter()
                .filter_map(|m| m["message_id"].as_str().map(str::to_owned))
                .filter(|id| seq_of(&run, id).is_none_or(|s| s % parts == part))
                .collect();
            if mine.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            for id in mine {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                self.take(&side, api, &run, &id);
            }
        }
    }

    fn take(&self, side: &Side, api: usize, run: &str, id: &str) {
        let Some(seq) = seq_of(run, id) else {
            self.problems
                .lock()
                .unwrap()
                .push(format!("an inbound message nobody submitted: {id}"));
            return;
        };
        let enc = urlencode(id);
        // A download cut short by a killed instance (fewer bytes than its Content-Length) is
        // what any HTTP client reports as an error: ask again, of any instance.
        let start = Instant::now();
        let mut i = api;
        let download = loop {
            match side.call(
                i % side.apis.len(),
                "GET",
                &format!("/api/v1/messages/{enc}/payloads/0"),
                None,
                b"",
            ) {
                Ok(r) if r.status == 200 && !truncated(&r) => break r,
                Ok(r) if r.status != 200 && r.status < 500 => return,
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.problems.lock().unwrap().push(format!(
                    "{id}: no instance served the payload whole within 60 s"
                ));
                return;
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        };
        if download.bytes != payload_of(run, seq) {
            self.problems.lock().unwrap().push(format!(
                "{id}: the payload downloaded is not the one submitted ({} bytes; {})",
                download.bytes.len(),
                download.head.replace("\r\n", " | ")
            ));
            return;
        }
        // The backend has the message now. Acknowledging is idempotent, so an answer lost
        // with a killed instance is simply asked for again, of any instance.
        let start = Instant::now();
        let mut i = api;
        loop {
            match side.call(
                i % side.apis.len(),
                "POST",
                &format!("/api/v1/messages/{enc}/ack"),
                None,
                b"",
            ) {
                Ok(r) if r.status == 200 => break,
                Ok(r) if r.status < 500 => {
                    self.problems.lock().unwrap().push(format!(
                        "{id}: acknowledgement refused: {} {}",
                        r.status, r.body
                    ));
                    return;
                }
                _ => {}
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.problems.lock().unwrap().push(format!(
                    "{id}: no instance took the acknowledgement within 60 s"
                ));
                return;
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        *self.taken.lock().unwrap().entry(id.to_owned()).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------------------
// The killer.

/// Kills one instance of a group with SIGKILL every few seconds and starts it again, taking
/// the groups (sides) in turn and the instances of a group in turn.
pub struct Killer {
    /// The groups, shared with the test (which stops them at the end).
    pub groups: Arc<Mutex<Vec<Vec<Instance>>>>,
    /// Set to stop killing.
    pub stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

impl Killer {
    /// Starts killing: a pause of `pause` (random within the range), a kill -9, a short
    /// random downtime, a restart.
    pub fn start(groups: Vec<Vec<Instance>>, pause: (Duration, Duration), mut rng: Rng) -> Killer {
        let groups = Arc::new(Mutex::new(groups));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (groups.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut kills = 0usize;
            let mut round = 0usize;
            loop {
                let wait = rng.between(pause.0, pause.1);
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if s.load(Ordering::Relaxed) {
                        return kills;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let mut groups = g.lock().unwrap();
                let group_count = groups.len();
                if group_count == 0 {
                    // Nothing to kill in this run (the fault is elsewhere).
                    continue;
                }
                let group = &mut groups[round % group_count];
                let size = group.len();
                let victim = &mut group[(round / group_count) % size];
                round += 1;
                victim.kill9();
                kills += 1;
                eprintln!("chaos: kill -9 {} (kill {kills})", victim.name());
                std::thread::sleep(rng.between(Duration::from_millis(100), Duration::from_secs(1)));
                victim.restart();
            }
        });
        Killer {
            groups,
            stop,
            handle: Some(handle),
        }
    }

    /// Stops killing (every instance is running again) and returns how many kills there were.
    pub fn finish(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("the killer thread panicked"))
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------
// A whole run.

/// What a run needs: the sending and receiving sides' instances (already started), the
/// balancer in front of the receivers, and how many messages to push.
pub struct Scenario {
    /// Name of the run (in MessageIds).
    pub run: String,
    /// Messages to push.
    pub n: usize,
    /// Sending instances (varti-a).
    pub senders: Vec<Instance>,
    /// Receiving instances (varti-b).
    pub receivers: Vec<Instance>,
    /// Which sides the killer works on: senders, receivers.
    pub kill_senders: bool,
    /// Kill receiving instances.
    pub kill_receivers: bool,
    /// The balancer (its counts are printed and checked).
    pub balancer: Arc<Balancer>,
    /// Limit on the whole flow (submission to the last acknowledgement and take).
    pub within: Duration,
}

/// What a run saw, for the test's own extra checks.
pub struct Outcome {
    /// The instances, all running again.
    pub senders: Vec<Instance>,
    /// The receiving instances.
    pub receivers: Vec<Instance>,
    /// SIGKILLs delivered.
    pub kills: usize,
}

/// A hook the test runs while the flow is going (e.g. a database failover), given the
/// number of messages submitted so far; called about every second until it returns true.
pub type Interlude<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

impl Scenario {
    /// Pushes the messages while the killer works, waits until everything settled, and
    /// checks the outcome. `interlude` runs on the main thread during the flow with
    /// (submitted, acknowledged).
    pub fn run(self, interlude: Interlude<'_>) -> Outcome {
        let started = Instant::now();
        let Scenario {
            run,
            n,
            senders,
            receivers,
            kill_senders,
            kill_receivers,
            balancer,
            within,
        } = self;
        let sending = Side::of(&senders.iter().collect::<Vec<_>>());
        let receiving = Side::of(&receivers.iter().collect::<Vec<_>>());
        let (n_send, n_recv) = (senders.len(), receivers.len());

        // Who is killed: each chosen side is a group.
        let mut groups = Vec::new();
        let mut kept_senders = Vec::new();
        let mut kept_receivers = Vec::new();
        if kill_receivers {
            groups.push(receivers);
        } else {
            kept_receivers = receivers;
        }
        if kill_senders {
            groups.push(senders);
        } else {
            kept_senders = senders;
        }
        let mut killer = Killer::start(
            groups,
            (Duration::from_millis(1500), Duration::from_millis(4000)),
            Rng::from_env(),
        );

        let submitted = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..2)
            .map(|k| {
                let (side, run, done) = (sending.clone(), run.clone(), submitted.clone());
                std::thread::spawn(move || {
                    submit_all(&side, &run, (k..n).step_by(2), &done);
                })
            })
            .collect();
        let collector = Collector::new();
        let collectors: Vec<_> = (0..2)
            .map(|k| {
                let (c, side, run) = (collector.clone(), receiving.clone(), run.clone());
                std::thread::spawn(move || c.run(side, run, k, 2))
            })
            .collect();

        let mut interlude_done = false;
        let mut last_print = Instant::now() - Duration::from_secs(10);
        let mut kills = 0;
        let mut killing = true;
        loop {
            let sent = submitted.load(Ordering::Relaxed);
            let counts = sending.counts(sent);
            let acknowledged = *counts.get("acknowledged").unwrap_or(&0) as usize;
            let failed = *counts.get("failed").unwrap_or(&0);
            if failed > 0 {
                let list = sending.get_json(
                    sent,
                    "/api/v1/messages?state=failed",
                    Duration::from_secs(30),
                );
                panic!("an outbound message failed for good during the run: {counts:?}\n{list:#}");
            }
            if !interlude_done {
                interlude_done = interlude(sent, acknowledged);
            }
            let taken = collector.distinct();
            if last_print.elapsed() >= Duration::from_secs(3) {
                last_print = Instant::now();
                eprintln!(
                    "chaos: {:>5.1}s submitted {sent}/{n} acknowledged {acknowledged} \
                     sending {} waiting {} taken {taken} balancer {:?}",
                    started.elapsed().as_secs_f64(),
                    counts.get("sending").unwrap_or(&0),
                    counts.get("waiting_for_retry").unwrap_or(&0),
                    balancer.counts(),
                );
            }
            // The faults go on while messages flow; the last stretch settles without them.
            if killing && acknowledged >= n * 9 / 10 {
                kills = killer.finish();
                killing = false;
                eprintln!("chaos: killing stopped after {kills} kills");
            }
            if acknowledged == n && taken == n && interlude_done {
                break;
            }
            if started.elapsed() > within {
                if killing {
                    kills = killer.finish();
                }
                collector.stop.store(true, Ordering::Relaxed);
                // Where the messages the backend does not have are on the receiving side.
                let taken_ids = collector.taken.lock().unwrap().clone();
                let missing: Vec<String> = (0..n)
                    .map(|s| message_id(&run, s))
                    .filter(|id| !taken_ids.contains_key(id))
                    .take(20)
                    .map(|id| {
                        let state = receiving
                            .call(
                                0,
                                "GET",
                                &format!("/api/v1/messages/{}", urlencode(&id)),
                                None,
                                b"",
                            )
                            .map(|r| match r.status {
                                200 => serde_json::from_str::<serde_json::Value>(&r.body)
                                    .map(|v| format!("{} {}", v["state"], v["history"]))
                                    .unwrap_or_default(),
                                s => format!("HTTP {s}"),
                            })
                            .unwrap_or_else(|e| e.to_string());
                        format!("{id}: {state}")
                    })
                    .collect();
                let problems = collector.problems.lock().unwrap().clone();
                let groups = killer.groups.lock().unwrap();
                let logs: Vec<String> = groups
                    .iter()
                    .flatten()
                    .chain(kept_senders.iter())
                    .chain(kept_receivers.iter())
                    .map(|i| format!("== {} ==\n{}", i.name(), i.logs()))
                    .collect();
                panic!(
                    "the run did not settle within {within:?}: {acknowledged}/{n} acknowledged, \
                     {taken}/{n} taken, counts {counts:?}, {kills} kills\nnot taken (receiving \
                     side's view): {missing:#?}\nbackend problems: {problems:#?}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        collector.stop.store(true, Ordering::Relaxed);
        for s in submitters {
            s.join().expect("a submitter panicked");
        }
        for c in collectors {
            c.join().expect("a collector panicked");
        }
        eprintln!(
            "chaos: settled after {:.1}s ({kills} kills); checking",
            started.elapsed().as_secs_f64()
        );

        // Give the instances back to the test.
        let mut groups = std::mem::take(&mut *killer.groups.lock().unwrap()).into_iter();
        let receivers = if kill_receivers {
            groups.next().unwrap()
        } else {
            kept_receivers
        };
        let senders = if kill_senders {
            groups.next().unwrap()
        } else {
            kept_senders
        };
        assert_eq!((senders.len(), receivers.len()), (n_send, n_recv));

        check(&run, n, &sending, &receiving, &collector);
        if n_recv > 1 {
            let spread = balancer.counts();
            assert!(
                spread.iter().all(|&c| c > 0),
                "the balancer never reached every receiver: {spread:?}"
            );
        }
        Outcome {
            senders,
            receivers,
            kills,
        }
    }
}

/// The end-of-run verdict.
pub fn check(run: &str, n: usize, sending: &Side, receiving: &Side, collector: &Collector) {
    let expected: HashSet<String> = (0..n).map(|s| message_id(run, s)).collect();

    // Sending side: everything acknowledged, nothing sending or waiting for a retry.
    let outbound = sending.all("outbound");
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for m in &outbound {
        *by_state
            .entry(m["state"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        by_state,
        BTreeMap::from([("acknowledged".to_owned(), n)]),
        "outbound messages by state (every one must be acknowledged; none sending, waiting \
         for a retry or failed)"
    );
    let out_ids: HashSet<String> = outbound
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        out_ids, expected,
        "the outbound messages are the submitted ones"
    );

    // Receiving side: exactly the submitted messages, each once, each taken by the backend.
    let inbound = receiving.all("inbound");
    let mut in_ids = HashSet::new();
    for m in &inbound {
        let id = m["message_id"].as_str().unwrap().to_owned();
        assert!(
            in_ids.insert(id.clone()),
            "{id} listed twice on the receiving side"
        );
        assert_eq!(m["state"], "downloaded", "{m}");
    }
    assert_eq!(in_ids.len(), n, "inbound messages on the receiving side");
    assert_eq!(
        in_ids, expected,
        "the inbound messages are the submitted ones"
    );

    let problems = collector.problems.lock().unwrap();
    assert!(problems.is_empty(), "the backend saw: {problems:#?}");
    let taken = collector.taken.lock().unwrap();
    let twice: Vec<_> = taken.iter().filter(|(_, c)| **c != 1).collect();
    assert!(
        twice.is_empty(),
        "messages the backend took more than once: {twice:?}"
    );
    assert_eq!(taken.len(), n, "messages the backend took");

    // The store's own account: one `download` transition (the backend's acknowledgement,
    // received → downloaded) per message; downloads of payloads are `fetch` entries.
    let mut redelivered = Vec::new();
    for (k, id) in in_ids.iter().enumerate() {
        let v = receiving.get_json(
            k,
            &format!("/api/v1/messages/{}", urlencode(id)),
            Duration::from_secs(60),
        );
        let acks = v["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["event"] == "download")
            .count();
        if acks != 1 {
            redelivered.push((id.clone(), acks));
        }
    }
    assert!(
        redelivered.is_empty(),
        "messages without exactly one `download` (acknowledgement) in their history: {redelivered:?}"
    );
    eprintln!("chaos: {n} acknowledged, {n} delivered once each, nothing left hanging");
}

/// Whether a response has fewer body bytes than its Content-Length says (the server died
/// while sending it).
fn truncated(r: &HttpResponse) -> bool {
    r.head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .is_some_and(|len| r.bytes.len() < len)
}
