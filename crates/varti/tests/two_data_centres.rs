//! Two data centres for real (issue 18): the state a pair shares lives in the store, not in
//! one instance's memory, so losing an instance loses nothing it had accepted.
//!
//! * `two_data_centres_webhook_crash` — varti-b's two instances share one PostgreSQL
//!   schema; the instance that received a message is killed (`kill -9`) while its webhook
//!   request is in flight (the backend holds the request unanswered); the other instance
//!   takes the event over from the store's outbox once the lease ran out and delivers it
//!   with the same event id (`X-Varti-Delivery`) and a valid signature.
//! * `two_data_centres_latency` — varti-a in DC1 pushes to varti-b in DC2 through the DC
//!   link, first with no delay, then with 20 ms ± 5 ms each way: every message is
//!   acknowledged and received exactly once; throughput and p50/p99 (submission to
//!   acknowledgement) of both runs are printed for `docs/benchmarks.md`.
//! * `two_data_centres_partition` — varti-b's DC2 instance reaches PostgreSQL (in DC1) and
//!   is reached by the balancer through the DC link; the link is cut for 30 s under load,
//!   then healed: DC2's instance is not ready during the cut, every message ends
//!   acknowledged and received once, each `received` webhook delivered under one event id.
//! * `two_data_centres_dc_loss` — a PostgreSQL primary in DC1 and a synchronous standby in
//!   DC2 (replication through the DC link); each side has an instance in each DC (DC2's
//!   reach the primary through the link). Under load DC1 is lost: its two instances
//!   killed (`kill -9`) and the primary stopped hard; the standby is promoted as the
//!   runbook says. DC2 carries on: every message ends acknowledged and taken once by the
//!   receiving backend, and nothing acknowledged before the loss is lost.
//! * `two_data_centres_preview_failover` — varti-b (the OOTS evidence provider) has an
//!   instance in each DC on one PostgreSQL, its MSH and its preview space each behind a
//!   front door spreading connections over the live instances. A preview opened through
//!   DC1's instance (the first request), whose instance is then killed, is approved through
//!   DC2's in headless Chromium (test identity provider): DC2's instance takes the second
//!   request, finds the held evidence in the shared store, and the requester gets the PDF.
//! * `two_data_centres_readiness` — varti-b in DC2 reaches its PostgreSQL in DC1 through
//!   the DC link: when the link is cut, the store takes no writes from it and `/ready`
//!   answers 503 (the load balancer drains it); healed, it is ready again by itself.
//!
//! Each instance listens on its data centre's addresses (DC1 127.0.1.x, DC2 127.0.2.x);
//! every connection from one DC to the other crosses the link proxy (`two_dc_support`).
//! The front doors (the partners' balancer, the preview links) listen on 127.0.0.1,
//! because the test PKI's TLS certificates name `localhost` and 127.0.0.1 only; they stand
//! in DC1.

mod chaos_support;
mod chromium_support;
mod oots_support;
mod pair_support;
mod pg_cluster_support;
mod register_support;
mod serve_support;
mod two_dc_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chaos_support::{
    chaos_pair, message_count, postgres_store_config, submit_all, Instance, Side, FAST_SENDER,
};
use pair_support::Pair;
use varti_store::postgres::testing::TestSchema;
use varti_store::Store;

/// The webhook secret of varti-b's `portal`.
const SECRET: &str = "two-dc-webhook-secret";

/// One webhook request as the backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook backend (plain HTTP on loopback): records every request; while `hold` is
/// set it leaves requests unanswered (the connection open, as a slow backend would), else
/// it answers 204.
struct WebhookBackend {
    addr: SocketAddr,
    seen: Arc<(Mutex<Vec<Seen>>, Condvar)>,
    hold: Arc<AtomicBool>,
}

impl WebhookBackend {
    fn start(hold: bool) -> WebhookBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<(Mutex<Vec<Seen>>, Condvar)> = Arc::default();
        let hold = Arc::new(AtomicBool::new(hold));
        let (s, h) = (seen.clone(), hold.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, h) = (s.clone(), h.clone());
                std::thread::spawn(move || serve_connection(conn, &s, &h));
            }
        });
        WebhookBackend { addr, seen, hold }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Waits until `n` requests arrived (a positive signal, with a deadline).
    fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let (lock, ready) = &*self.seen;
        let deadline = Instant::now() + within;
        let mut seen = lock.lock().unwrap();
        while seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the webhook backend saw {} request(s) within {within:?}, expected {n}: {seen:?}",
                seen.len()
            );
            seen = ready.wait_timeout(seen, left).unwrap().0;
        }
        seen.clone()
    }
}

fn serve_connection(conn: TcpStream, seen: &(Mutex<Vec<Seen>>, Condvar), hold: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut headers = HashMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let held = hold.load(Ordering::SeqCst);
        {
            let (lock, ready) = seen;
            lock.lock().unwrap().push(Seen { headers, body });
            ready.notify_all();
        }
        if held {
            // Never answered: the connection stays open until the sender goes away.
            let mut sink = [0u8; 1024];
            while matches!(reader.read(&mut sink), Ok(k) if k > 0) {}
            return;
        }
        if conn
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// varti-b's `portal` webhook lines (they follow the `[[backend.clients]]` entry), a short
/// outbox lease, the fast sender and the shared PostgreSQL schema.
fn receiver_config(webhook_url: &str, schema: &TestSchema, lease_secs: u64) -> String {
    receiver_config_via(webhook_url, schema.url(), schema, lease_secs)
}

/// [`receiver_config`] reaching PostgreSQL at `url` (through the DC link).
fn receiver_config_via(
    webhook_url: &str,
    url: &str,
    schema: &TestSchema,
    lease_secs: u64,
) -> String {
    format!(
        "webhook_url = \"{webhook_url}\"\nwebhook_secret = \"{SECRET}\"\n\
         [webhooks]\nlease_secs = {lease_secs}\n{FAST_SENDER}{}",
        postgres_store_config(url, schema.name())
    )
}

/// The test database's PostgreSQL (in DC1), reached from DC2 through `link`: the URL.
fn postgres_via(link: &two_dc_support::Link) -> String {
    let pg: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let via = link.proxy(SocketAddr::new(two_dc_support::dc_ip(2, 1), 0), pg);
    format!(
        "host={} port={} user=postgres dbname=test connect_timeout=2",
        via.ip(),
        via.port()
    )
}

/// Waits until `check` holds (a positive signal), polling, with a deadline.
fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_data_centres_webhook_crash() {
    let started = Instant::now();
    let schema = TestSchema::migrated();
    let backend = WebhookBackend::start(true);
    let pair = Pair::new();
    let config = receiver_config(&backend.url(), &schema, 2);
    pair.layout.rewrite_config(&pair.layout.b, &config).unwrap();
    let b2 = pair
        .layout
        .add_instance(&pair.layout.b, "b2", &config)
        .unwrap();
    let a = pair.start("a");
    // varti-a's PModes point at b: b receives, b2 shares its store and waits.
    let mut b = Instance::start(pair.layout.b.clone());
    let mut b2 = Instance::start(b2);

    let id = a.submit(
        serde_json::json!({"to_party": "varti-b", "service": "urn:varti:test:exchange", "action": "Deliver"}),
        &[("doc", "application/xml", b"<doc>webhook crash</doc>")],
    );
    // b's webhook request is in flight, unanswered: now b dies.
    let first = backend.wait_for(1, Duration::from_secs(60));
    assert_eq!(first[0].json()["message_id"], id.as_str());
    assert_eq!(first[0].json()["event"], "received");
    let event_id = first[0].header("x-varti-delivery").to_owned();
    assert!(!event_id.is_empty());
    b.kill9();
    backend.hold.store(false, Ordering::SeqCst);

    // b2 takes the event over from the outbox once b's lease ran out.
    let seen = backend.wait_for(2, Duration::from_secs(30));
    let again = &seen[1];
    assert_eq!(again.json()["message_id"], id.as_str());
    assert_eq!(again.json()["event"], "received");
    assert_eq!(
        again.header("x-varti-delivery"),
        event_id,
        "the same event id, so the backend can drop the repeat"
    );
    assert!(varti_access_point::webhooks::verify_signature(
        SECRET.as_bytes(),
        &again.body,
        again.header("x-varti-signature")
    ));
    // Delivered: the event left the outbox, and the message is delivered.
    let store = schema.store();
    wait_until("the outbox empties", Duration::from_secs(10), || {
        store.outbox_depth().unwrap() == 0
    });
    assert_eq!(
        store.get(&id).unwrap().unwrap().state,
        varti_store::State::Delivered
    );
    b2.terminate();
    drop(a);
    eprintln!(
        "two_data_centres_webhook_crash: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `GET /ready` on an instance's ops listener: its status.
fn ready_status(instance: &Instance) -> u16 {
    let addr = instance.layout.ops();
    serve_support::plain_get(addr, "/ready").status
}

/// `GET /ready` on an instance's MSH listener (what the load balancer checks), over TLS as
/// varti-a (its client certificate): the status.
fn msh_ready_status(instance: &Instance) -> u16 {
    let certs = pair_support::repo().join("certs");
    let mut tls = serve_support::openssl_connect(
        instance.msh(),
        openssl::ssl::SslVersion::TLS1_3,
        &certs.join("ca.cert.pem"),
        Some((
            &certs.join("varti-a/tls.cert.pem"),
            &certs.join("varti-a/tls.key.pem"),
        )),
    )
    .unwrap();
    serve_support::http_request(&mut tls, "GET", "/ready", "", b"")
        .unwrap()
        .status
}

#[test]
fn two_data_centres_readiness() {
    let started = Instant::now();
    let schema = TestSchema::migrated();
    // PostgreSQL is in DC1; varti-b in DC2 reaches it through the link.
    let link = two_dc_support::Link::new();
    let url = postgres_via(&link);
    let mut pair = Pair::new();
    let config = format!(
        "{FAST_SENDER}{}",
        postgres_store_config(&url, schema.name())
    );
    pair.layout.b.host = two_dc_support::dc_ip(2, 1);
    pair.layout.rewrite_config(&pair.layout.b, &config).unwrap();
    let mut b = Instance::start(pair.layout.b.clone());
    wait_until("b is ready", Duration::from_secs(20), || {
        ready_status(&b) == 200
    });
    assert_eq!(msh_ready_status(&b), 200);

    link.cut();
    let cut_at = Instant::now();
    wait_until(
        "b reports not-ready while the link to its store is cut",
        Duration::from_secs(20),
        || ready_status(&b) == 503,
    );
    let drained_after = cut_at.elapsed();
    let ready = serve_support::plain_get(b.layout.ops(), "/ready");
    assert!(ready.body.contains("store"), "{}", ready.body);
    assert_eq!(
        msh_ready_status(&b),
        503,
        "the load balancer's check drains it too"
    );

    link.heal();
    wait_until(
        "b is ready again by itself once the link is healed",
        Duration::from_secs(30),
        || ready_status(&b) == 200,
    );
    assert_eq!(msh_ready_status(&b), 200);
    b.terminate();
    eprintln!(
        "two_data_centres_readiness: not ready {:.1}s after the cut; {:.1}s in all",
        drained_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// One run of the latency test: its wall time and the submission-to-acknowledgement
/// latencies (ms, sorted) of its messages.
struct Run {
    wall: Duration,
    latencies_ms: Vec<f64>,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ms[i]
    }

    fn report(&self, label: &str, n: usize) -> String {
        format!(
            "{label}: {n} messages in {:.1}s = {:.1} msg/s, p50 {:.0} ms, p99 {:.0} ms",
            self.wall.as_secs_f64(),
            n as f64 / self.wall.as_secs_f64(),
            self.percentile(0.5),
            self.percentile(0.99)
        )
    }
}

/// Pushes messages `from..from + n` of `run` from `sending` and waits until all are
/// acknowledged (a positive signal, with a deadline).
fn push_batch(sending: &Side, run: &str, from: usize, n: usize) -> Run {
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let threads = 4;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let done = &done;
            scope.spawn(move || {
                submit_all(
                    sending,
                    run,
                    (from..from + n).filter(|s| s % threads == t),
                    done,
                )
            });
        }
    });
    let ids: std::collections::HashSet<String> = (from..from + n)
        .map(|s| chaos_support::message_id(run, s))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let all = sending.all("outbound");
        let ours: Vec<&serde_json::Value> = all
            .iter()
            .filter(|m| ids.contains(m["message_id"].as_str().unwrap()))
            .collect();
        let failed: Vec<_> = ours.iter().filter(|m| m["state"] == "failed").collect();
        assert!(failed.is_empty(), "messages failed: {failed:?}");
        if ours.len() == n && ours.iter().all(|m| m["state"] == "acknowledged") {
            let wall = started.elapsed();
            let parse = |v: &serde_json::Value| {
                time::OffsetDateTime::parse(
                    v.as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap()
            };
            let mut latencies_ms: Vec<f64> = ours
                .iter()
                .map(|m| (parse(&m["updated_at"]) - parse(&m["created_at"])).as_seconds_f64() * 1e3)
                .collect();
            latencies_ms.sort_by(f64::total_cmp);
            return Run { wall, latencies_ms };
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} acknowledged within 600 s",
            ours.iter().filter(|m| m["state"] == "acknowledged").count()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn two_data_centres_latency() {
    let n = message_count("VARTI_TWO_DC_N", 2000);
    let run = format!("l{}", std::process::id());
    // varti-b is in DC2; varti-a in DC1 reaches it through the DC link only.
    let link = two_dc_support::Link::new();
    let link_port = varti::pair::free_port().unwrap();
    let mut pair = chaos_pair(link_port);
    pair.layout.a.host = two_dc_support::dc_ip(1, 1);
    pair.layout.b.host = two_dc_support::dc_ip(2, 1);
    for node in [&pair.layout.a, &pair.layout.b] {
        pair.layout.rewrite_config(node, FAST_SENDER).unwrap();
    }
    let mut a = Instance::start(pair.layout.a.clone());
    let mut b = Instance::start(pair.layout.b.clone());
    link.proxy(SocketAddr::from(([127, 0, 0, 1], link_port)), b.msh());
    let sending = Side::of(&[&a]);
    let receiving = Side::of(&[&b]);

    let near = push_batch(&sending, &run, 0, n);
    link.set_delay(Duration::from_millis(20), Duration::from_millis(5));
    let far = push_batch(&sending, &run, n, n);

    // Nothing lost or doubled: varti-b holds each message once (a repeat would have been
    // answered from the original as a duplicate, never stored twice).
    let inbound = receiving.all("inbound");
    let mut ids: Vec<&str> = inbound
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<String> = (0..2 * n)
        .map(|s| chaos_support::message_id(&run, s))
        .collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "varti-b received each message exactly once");
    let far_p50 = far.percentile(0.5);
    assert!(
        far_p50 >= 40.0,
        "with 20 ms each way a message cannot be acknowledged in {far_p50:.0} ms: is the link in the path?"
    );
    eprintln!("two_data_centres_latency:");
    eprintln!("  {}", near.report("no delay     ", n));
    eprintln!("  {}", far.report("20 ms ± 5 ms ", n));
    a.terminate();
    b.terminate();
}

#[test]
fn two_data_centres_partition() {
    let started = Instant::now();
    let n = message_count("VARTI_TWO_DC_PARTITION_N", 300);
    let run = format!("p{}", std::process::id());
    let schema = TestSchema::migrated();
    let backend = WebhookBackend::start(false);
    let link = two_dc_support::Link::new();
    // varti-b: b in DC1 next to PostgreSQL, b2 in DC2 reaching it through the link; the
    // balancer (in DC1) reaches b2 through the link too.
    let balancer = Arc::new(chaos_support::Balancer::bind(2));
    let mut pair = chaos_pair(balancer.port);
    let near = receiver_config(&backend.url(), &schema, 2);
    let far = receiver_config_via(&backend.url(), &postgres_via(&link), &schema, 2);
    pair.layout.b.host = two_dc_support::dc_ip(1, 1);
    pair.layout.rewrite_config(&pair.layout.b, &near).unwrap();
    let b2 = pair
        .layout
        .add_instance_at(&pair.layout.b, "b2", two_dc_support::dc_ip(2, 1), &far)
        .unwrap();
    pair.layout
        .rewrite_config(&pair.layout.a, FAST_SENDER)
        .unwrap();
    let mut a = Instance::start(pair.layout.a.clone());
    let mut b = Instance::start(pair.layout.b.clone());
    let mut b2 = Instance::start(b2);
    let b2_via_link = link.proxy(SocketAddr::new(two_dc_support::dc_ip(1, 1), 0), b2.msh());
    balancer.set_targets(vec![b.msh(), b2_via_link]);
    let sending = Side::of(&[&a]);
    let receiving = Side::of(&[&b]);

    // Load: the messages are submitted while the link is cut for 30 s and healed.
    let ids: Vec<String> = (0..n).map(|s| chaos_support::message_id(&run, s)).collect();
    let cut_seen_not_ready = std::thread::scope(|scope| {
        let submitter = scope.spawn(|| {
            let done = std::sync::atomic::AtomicUsize::new(0);
            for s in 0..n {
                submit_all(&sending, &run, s..s + 1, &done);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Some traffic before the cut.
        wait_until(
            "a third acknowledged before the cut",
            Duration::from_secs(120),
            || sending.counts(0).get("acknowledged").copied().unwrap_or(0) >= (n / 3) as u64,
        );
        link.cut();
        let cut_at = Instant::now();
        let mut not_ready = false;
        while cut_at.elapsed() < Duration::from_secs(30) {
            not_ready |= ready_status(&b2) == 503;
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(ready_status(&b), 200, "DC1's instance stays ready");
        link.heal();
        submitter.join().unwrap();
        not_ready
    });
    assert!(
        cut_seen_not_ready,
        "the cut DC's instance reported not-ready during the cut"
    );

    // Every accepted message acknowledged afterwards, each stored once by varti-b.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let acknowledged = sending
            .all("outbound")
            .iter()
            .filter(|m| m["state"] == "acknowledged")
            .count();
        if acknowledged == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{acknowledged} of {n} acknowledged within 180 s of the heal"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut received: Vec<String> = receiving
        .all("inbound")
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    received.sort_unstable();
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(received, expected, "each message received exactly once");

    // Webhooks: each message's `received` event delivered at least once, every delivery
    // of it under one event id (the backend de-duplicates by it).
    let store = schema.store();
    wait_until("the outbox empties", Duration::from_secs(60), || {
        store.outbox_depth().unwrap() == 0
    });
    let seen = backend.wait_for(n, Duration::from_secs(10));
    let mut events: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for s in &seen {
        assert!(varti_access_point::webhooks::verify_signature(
            SECRET.as_bytes(),
            &s.body,
            s.header("x-varti-signature")
        ));
        let body = s.json();
        assert_eq!(body["event"], "received");
        events
            .entry(body["message_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(s.header("x-varti-delivery").to_owned());
    }
    for id in &ids {
        let ev = events.get(id).map_or(0, |e| e.len());
        assert_eq!(ev, 1, "{id}: delivered under {ev} event id(s)");
    }
    eprintln!(
        "two_data_centres_partition: {} webhook requests for {n} messages; {:.1}s",
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    for instance in [&mut a, &mut b, &mut b2] {
        instance.terminate();
    }
}

#[test]
fn two_data_centres_dc_loss() {
    let started = Instant::now();
    let n = message_count("VARTI_TWO_DC_LOSS_N", 300);
    let link = two_dc_support::Link::new();
    // Replication crosses the link: the standby in DC2 streams through a proxy.
    let mut cluster = pg_cluster_support::Cluster::start_with_replication_via(|primary| {
        link.proxy(SocketAddr::new(two_dc_support::dc_ip(2, 2), 0), primary)
    });
    cluster.migrated_schema("varti_a");
    cluster.migrated_schema("varti_b");
    // DC1's instances: the primary, then the standby (across the link). DC2's: the primary
    // across the link, then their own standby. The one accepting writes wins.
    let to_standby = link.proxy(
        SocketAddr::new(two_dc_support::dc_ip(1, 2), 0),
        SocketAddr::from(([127, 0, 0, 1], cluster.standby_port)),
    );
    let to_primary = link.proxy(
        SocketAddr::new(two_dc_support::dc_ip(2, 2), 0),
        SocketAddr::from(([127, 0, 0, 1], cluster.primary_port)),
    );
    let url = |first: SocketAddr, second: SocketAddr| {
        format!(
            "host={},{} port={},{} user=postgres dbname=postgres \
             target_session_attrs=read-write connect_timeout=2",
            first.ip(),
            second.ip(),
            first.port(),
            second.port()
        )
    };
    let primary = SocketAddr::from(([127, 0, 0, 1], cluster.primary_port));
    let standby = SocketAddr::from(([127, 0, 0, 1], cluster.standby_port));
    let dc1_url = url(primary, to_standby);
    let dc2_url = url(to_primary, standby);

    let run = format!("d{}", std::process::id());
    let balancer = Arc::new(chaos_support::Balancer::bind(2));
    let mut pair = chaos_pair(balancer.port);
    let config =
        |url: &str, schema: &str| format!("{FAST_SENDER}{}", postgres_store_config(url, schema));
    pair.layout.a.host = two_dc_support::dc_ip(1, 1);
    pair.layout.b.host = two_dc_support::dc_ip(1, 1);
    let layout = &pair.layout;
    layout
        .rewrite_config(&layout.a, &config(&dc1_url, "varti_a"))
        .unwrap();
    layout
        .rewrite_config(&layout.b, &config(&dc1_url, "varti_b"))
        .unwrap();
    let dc2 = two_dc_support::dc_ip(2, 1);
    let a2 = layout
        .add_instance_at(&layout.a, "a2", dc2, &config(&dc2_url, "varti_a"))
        .unwrap();
    let b2 = layout
        .add_instance_at(&layout.b, "b2", dc2, &config(&dc2_url, "varti_b"))
        .unwrap();
    let mut a1 = Instance::start(layout.a.clone());
    let mut b1 = Instance::start(layout.b.clone());
    let a2 = Instance::start(a2);
    let b2 = Instance::start(b2);
    // The partners' balancer reaches DC2's receiver through the link.
    let b2_via_link = link.proxy(SocketAddr::new(two_dc_support::dc_ip(1, 3), 0), b2.msh());
    balancer.set_targets(vec![b1.msh(), b2_via_link]);
    link.set_delay(Duration::from_millis(2), Duration::from_millis(1));
    let sending = Side::of(&[&a2]);

    // The flow goes through DC2's instances (submission, collection); DC1's take part
    // (a1 sends what it claims, b1 receives half the pushes) until DC1 is lost.
    let mut acknowledged_before: std::collections::HashSet<String> = Default::default();
    let mut lost_at = None;
    let mut interlude = |_submitted: usize, acknowledged: usize| -> bool {
        if acknowledged < n / 3 {
            return false;
        }
        acknowledged_before = sending
            .all("outbound")
            .iter()
            .filter(|m| m["state"] == "acknowledged")
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect();
        eprintln!(
            "dc_loss: {} acknowledged; DC1 is lost (its instances killed, the primary stopped)",
            acknowledged_before.len()
        );
        a1.kill9();
        b1.kill9();
        cluster.kill_primary();
        // The runbook: DC1 is gone for good; promote the standby in DC2.
        cluster.promote_standby();
        lost_at = Some(Instant::now());
        true
    };
    let outcome = chaos_support::Scenario {
        run: run.clone(),
        n,
        senders: vec![a2],
        receivers: vec![b2],
        kill_senders: false,
        kill_receivers: false,
        balancer,
        within: Duration::from_secs(240),
    }
    .run(&mut interlude);
    let lost_at = lost_at.expect("DC1 was lost during the run");
    assert!(
        !acknowledged_before.is_empty() && acknowledged_before.len() < n,
        "the loss must fall in the middle of the flow ({} of {n} acknowledged before it)",
        acknowledged_before.len()
    );
    let after: std::collections::HashSet<String> = sending
        .all("outbound")
        .iter()
        .filter(|m| m["state"] == "acknowledged")
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged_before.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the loss, gone after: {lost:?}"
    );
    eprintln!(
        "two_data_centres_dc_loss: settled {:.1}s after the loss; {:.1}s in all",
        lost_at.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for mut instance in outcome.senders.into_iter().chain(outcome.receivers) {
        instance.terminate();
    }
    drop(cluster);
}

/// Polls the requester's record of OOTS request `id` until it leaves `state` (a positive
/// signal, with a deadline): the record then.
fn oots_request_leaves(
    a: &pair_support::Node,
    id: &str,
    state: &str,
    logs: &[&Instance],
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = oots_support::get_request(a, id);
        if v["state"] != state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} still {state} after 90 s: {v:#}\n--- a:\n{}\n{}",
            chaos_support::tail(&a.served.log_text(), 60),
            logs.iter()
                .map(|i| format!("--- {}:\n{}", i.name(), i.logs()))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log of an instance's current process contains `text`.
fn logged(instance: &Instance, text: &str) -> bool {
    std::fs::read_to_string(instance.layout.dir.join("serve.log"))
        .unwrap_or_default()
        .contains(text)
}

#[test]
fn two_data_centres_preview_failover() {
    let started = Instant::now();
    let register = register_support::Register::start();
    let schema = TestSchema::migrated();
    let link = two_dc_support::Link::new();
    // varti-b (the evidence provider) has an instance in each DC on one PostgreSQL (in DC1;
    // DC2's instance reaches it through the link). Two front doors in DC1 spread
    // connections over the live instances, DC2's through the link: one for the MSH (what
    // varti-a's PModes name), one for the preview space (what the preview links name).
    let msh_front = Arc::new(chaos_support::Balancer::bind(2));
    let preview_front = Arc::new(chaos_support::Balancer::bind(2));
    let root = tempfile::tempdir().unwrap();
    let gateway = oots_support::gateway_lines(&register);
    let options = varti::pair::PairOptions {
        extra_pmodes: Vec::new(),
        b_endpoint_port: Some(msh_front.port),
        extra_config: gateway.clone(),
    };
    let mut layout =
        varti::pair::PairLayout::create(root.path(), &pair_support::repo(), &options).unwrap();
    let preview_at =
        |dc: u8| SocketAddr::new(two_dc_support::dc_ip(dc, 1), pair_support::free_port());
    let (preview1, preview2) = (preview_at(1), preview_at(2));
    layout.b.host = two_dc_support::dc_ip(1, 1);
    let b1_config = format!(
        "{gateway}{}{}",
        oots_support::preview_lines(&register, preview1, preview_front.port),
        postgres_store_config(schema.url(), schema.name())
    );
    layout.rewrite_config(&layout.b, &b1_config).unwrap();
    let b2_config = format!(
        "{gateway}{}{}",
        oots_support::preview_lines(&register, preview2, preview_front.port),
        postgres_store_config(&postgres_via(&link), schema.name())
    );
    let b2_layout = layout
        .add_instance_at(&layout.b, "b2", two_dc_support::dc_ip(2, 1), &b2_config)
        .unwrap();
    let a = pair_support::Node {
        served: serve_support::spawn_serve_in(&layout.a.dir, &["--config", "varti.toml"]),
        backend: layout.a.backend(),
        token: layout.a.token.clone(),
        dir: layout.a.dir.clone(),
    };
    let mut b1 = Instance::start(layout.b.clone());
    let mut b2 = Instance::start(b2_layout);
    let b2_msh = link.proxy(SocketAddr::new(two_dc_support::dc_ip(1, 2), 0), b2.msh());
    let b2_preview = link.proxy(SocketAddr::new(two_dc_support::dc_ip(1, 3), 0), preview2);
    msh_front.set_targets(vec![b1.msh(), b2_msh]);
    preview_front.set_targets(vec![preview1, b2_preview]);

    // The first request opens the preview through DC1: the front door's first connection
    // goes to b1, and DC2's instance is not reached at all.
    let mut body = oots_support::request_body("EV-PREVIEW", "DK/LV/010190-1234");
    body["preview"] = serde_json::json!(true);
    body["edm_version"] = serde_json::json!("oots-edm:v2.0");
    let created = oots_support::post_request(&a, &body);
    let id = created["id"].as_str().unwrap().to_owned();
    let first = oots_request_leaves(&a, &id, "sent", &[&b1, &b2]);
    assert_eq!(
        first["state"],
        "preview_required",
        "{first:#}\n--- b1:\n{}\n--- b2:\n{}",
        b1.logs(),
        b2.logs()
    );
    let location = first["preview_location"].as_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!(
            "https://localhost:{}/preview/",
            preview_front.port
        )),
        "{location}"
    );
    assert_eq!(
        msh_front.counts()[1],
        0,
        "the first request must have reached DC1's instance only"
    );
    assert!(logged(&b1, "evidence held for the user's preview"));
    assert_eq!(register.calls("/ok").len(), 1);

    // DC1's instance dies. The portal returns from the preview: varti-a sends the second
    // request, which only DC2's instance can take now; it finds the held evidence in the
    // shared store and waits for the citizen's decision.
    b1.kill9();
    let r = a.api(
        "POST",
        &format!("/api/v1/oots/requests/{id}/preview-return"),
        Some("application/json"),
        b"{}",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_until(
        "DC2's instance takes the second request and waits for the decision",
        Duration::from_secs(60),
        || {
            logged(
                &b2,
                "second request received; waiting for the user's decision",
            )
        },
    );

    // The citizen follows the link (the preview front door now reaches DC2 only), logs in
    // at the test identity provider and approves.
    let driver = chromium_support::start_driver();
    let tls_cert = pair_support::repo().join("certs/varti-b/tls.cert.pem");
    let browser = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    browser.block_on(async {
        let c = chromium_support::browser_trusting(&driver, Some(&tls_cert)).await;
        chromium_support::log_in(&c, &location, "Ida").await;
        chromium_support::wait_for(&c, "#approve")
            .await
            .click()
            .await
            .unwrap();
        chromium_support::wait_for(&c, "#message").await;
        c.close().await.unwrap();
    });
    assert_eq!(preview_front.counts()[0], 0, "DC1's preview space is gone");
    assert!(preview_front.counts()[1] > 0);

    // The evidence reaches the requester: the register's PDF, fetched once.
    let v = oots_request_leaves(&a, &id, "sent", &[&b2]);
    assert_eq!(v["state"], "answered", "{v:#}");
    let evidences = v["evidences"].as_array().unwrap();
    assert_eq!(evidences.len(), 1, "{v:#}");
    let file = a.api("GET", evidences[0]["href"].as_str().unwrap(), None, b"");
    assert_eq!(file.status, 200, "{}", file.body);
    assert!(
        file.bytes == register_support::pdf(),
        "the evidence differs from the register's file"
    );
    assert_eq!(
        register.calls("/ok").len(),
        1,
        "the register was asked once"
    );
    assert!(msh_front.counts()[1] > 0, "the second request went to DC2");
    b2.terminate();
    drop(a);
    eprintln!(
        "two_data_centres_preview_failover: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
