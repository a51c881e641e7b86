//! The webhook dispatcher, run in-process against a real HTTP(S) server standing in for a
//! backend: retries with one delivery id, the HMAC signature, the JSON body, and
//! "received" notified only by the caller that marked the message delivered (real sled
//! store, real `AccessPoint` over the repository's PModes and keys).

mod pair_support;
mod serve_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use varti::config::Config;
use varti_access_point::access_point::{AccessPoint, MessageEvent};
use varti_access_point::ops::Metrics;
use varti_access_point::server::tls;
use varti_access_point::webhooks::{Dispatcher, Ending, Report, WebhookOptions};
use varti_store::{MessageMeta, NewInbound, SledStore, State, Store};

const SECRET: &str = "webhook-test-secret";
const TOKEN_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// One request the stand-in backend received.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// A tiny backend: answers the i-th request with `statuses[i]` (the last one thereafter)
/// and records every request.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start(statuses: Vec<u16>, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let statuses = Arc::new(statuses);
        let recorder = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, statuses, tls) = (recorder.clone(), statuses.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, statuses) = (seen.clone(), statuses.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let status = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(Seen {
                                    headers: parts.headers,
                                    body,
                                    at: Instant::now(),
                                });
                                statuses[(seen.len() - 1).min(statuses.len() - 1)]
                            };
                            let mut response = Response::new(Full::new(Bytes::from("ok")));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            // A failed handshake (untrusting client) just ends the connection.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Backend { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (panics after 10 s), then returns them.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let start = Instant::now();
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "expected {n} webhook request(s), got {}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A webhook target that accepts connections, reads what comes and never answers.
struct Hung {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Hung {
    async fn start() -> Hung {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        Hung { addr, connections }
    }

    /// Waits until `n` connections are open (panics after 10 s).
    async fn wait_for(&self, n: usize) {
        let start = Instant::now();
        while self.connections.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} of {n} connections",
                self.connections.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// varti-a over the repository's PModes and keys, with two backends: `portal` (webhook to
/// `webhook_url`) and `poller` (no webhook).
fn config(data: &Path, webhook_url: &str) -> Config {
    config_with(data, webhook_url, None)
}

/// [`config`], with a webhook for `poller` too when `poller_url` is given.
fn config_with(data: &Path, webhook_url: &str, poller_url: Option<&str>) -> Config {
    let poller_hook = poller_url
        .map(|url| format!("webhook_url = \"{url}\"\nwebhook_secret = \"{SECRET}\"\n"))
        .unwrap_or_default();
    let repo = repo().display().to_string();
    let text = format!(
        r#"data_dir = "{data}"
pmodes_dir = "{repo}/pmodes"
[tls]
cert = "{repo}/certs/varti-a/tls.cert.pem"
key = "{repo}/certs/varti-a/tls.key.pem"
client_ca = "{repo}/certs/ca.cert.pem"
[identity]
party = "varti-a"
signing_key = "{repo}/certs/varti-a/sign.key.pem"
signing_cert = "{repo}/certs/varti-a/sign.cert.pem"
encryption_key = "{repo}/certs/varti-a/enc.key.pem"
encryption_cert = "{repo}/certs/varti-a/enc.cert.pem"
trust_anchors = ["{repo}/certs/ca.cert.pem"]
[backend]
listen = "127.0.0.1:0"
[[backend.clients]]
name = "portal"
token_sha256 = "{TOKEN_SHA256}"
webhook_url = "{webhook_url}"
webhook_secret = "{SECRET}"
[[backend.clients]]
name = "poller"
token_sha256 = "{TOKEN_SHA256}"
{poller_hook}"#,
        data = data.display()
    );
    let config = Config::parse(&text).unwrap();
    config.validate().unwrap();
    config
}

/// A test fixture: a temp dir, a sled store, and access points over it.
struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path().join("store")).unwrap());
        Fixture { dir, store }
    }

    /// An access point (an "instance") over the shared store.
    fn access_point(&self, webhook_url: &str) -> Arc<AccessPoint> {
        self.access_point_with(webhook_url, None)
    }

    /// [`Fixture::access_point`] with a webhook for `poller` too.
    fn access_point_with(&self, webhook_url: &str, poller_url: Option<&str>) -> Arc<AccessPoint> {
        let config = config_with(&self.dir.path().join("data"), webhook_url, poller_url);
        Arc::new(
            AccessPoint::open(
                config.access_point_settings(),
                self.store.clone(),
                Arc::new(Metrics::new()),
                false,
            )
            .unwrap(),
        )
    }

    /// Stores an inbound message for `owner`, as the receiver does.
    fn receive(&self, message_id: &str, owner: &str) {
        self.receive_at(message_id, owner, OffsetDateTime::now_utc());
    }

    /// [`Fixture::receive`], as if at `at`.
    fn receive_at(&self, message_id: &str, owner: &str, at: OffsetDateTime) {
        let meta = MessageMeta {
            message_id: message_id.to_owned(),
            owner: owner.to_owned(),
            from_party: "varti-b".into(),
            to_party: "varti-a".into(),
            service: "urn:test:service".into(),
            action: "Deliver".into(),
            conversation_id: "c1".into(),
            ref_to_message_id: None,
            pmode_id: "test".into(),
            payloads: vec![],
            properties: vec![],
        };
        let msg = NewInbound {
            meta,
            receipt: b"<receipt/>".to_vec(),
            peer: None,
        };
        self.store.insert_inbound(msg, at).unwrap();
    }

    fn state(&self, message_id: &str) -> State {
        self.store.get(message_id).unwrap().unwrap().state
    }
}

/// Starts a dispatcher for `ap`; cancel the token to stop it.
fn start(ap: &Arc<AccessPoint>, options: WebhookOptions) -> CancellationToken {
    start_reporting(ap, options).0
}

/// Starts a dispatcher and listens to how its notifications end.
fn start_reporting(
    ap: &Arc<AccessPoint>,
    options: WebhookOptions,
) -> (CancellationToken, broadcast::Receiver<Report>) {
    let token = CancellationToken::new();
    let dispatcher = Dispatcher::new(ap.clone(), options).unwrap();
    let reports = dispatcher.reports();
    tokio::spawn(dispatcher.run(token.clone()));
    (token, reports)
}

/// The next `n` reports: once a notification is reported, nothing more happens to it, so
/// what the backend has seen by then is final (no waiting for time to pass).
async fn ended(reports: &mut broadcast::Receiver<Report>, n: usize) -> Vec<Report> {
    let mut out = Vec::new();
    while out.len() < n {
        let report = tokio::time::timeout(Duration::from_secs(20), reports.recv())
            .await
            .expect("a notification ends within 20 s")
            .expect("the dispatcher reports");
        out.push(report);
    }
    out
}

fn fast(retry_base_ms: u64) -> WebhookOptions {
    WebhookOptions {
        retry_base: Duration::from_millis(retry_base_ms),
        ..WebhookOptions::default()
    }
}

/// HMAC-SHA256 computed here, independently of the module under test.
fn expected_signature(body: &[u8]) -> String {
    let key = PKey::hmac(SECRET.as_bytes()).unwrap();
    let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
    let mac = signer.sign_oneshot_to_vec(body).unwrap();
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", seen.headers))
        .to_str()
        .unwrap()
}

fn json(seen: &Seen) -> serde_json::Value {
    serde_json::from_slice(&seen.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_is_retried_until_2xx_with_one_delivery_id_and_a_valid_signature() {
    let backend = Backend::start(vec![500, 500, 200], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/hooks/varti", backend.addr));
    let (token, mut reports) = start_reporting(&ap, fast(50));

    ap.announce(MessageEvent::Sent {
        message_id: "m-sent@test".into(),
        owner: "portal".into(),
    });
    let report = ended(&mut reports, 1).await;
    assert_eq!(report[0].ending, Ending::Delivered { attempts: 3 });
    // No fourth attempt after the 200: the notification has ended.
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);

    let delivery = header(&seen[0], "x-varti-delivery");
    uuid::Uuid::parse_str(delivery).expect("X-Varti-Delivery is a UUID");
    for s in &seen {
        assert_eq!(
            header(s, "x-varti-delivery"),
            delivery,
            "same id on each retry"
        );
        assert_eq!(header(s, "x-varti-event"), "sent");
        assert_eq!(header(s, "content-type"), "application/json");
        assert_eq!(header(s, "x-varti-signature"), expected_signature(&s.body));
        assert_eq!(s.body, seen[0].body, "a retry sends the same body");
    }
    let body = json(&seen[0]);
    let object = body.as_object().unwrap();
    assert_eq!(object["event"], "sent");
    assert_eq!(object["message_id"], "m-sent@test");
    assert_eq!(object["owner"], "portal");
    assert!(!object.contains_key("error"), "{body}");
    let at = OffsetDateTime::parse(
        object["at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((OffsetDateTime::now_utc() - at).abs() < time::Duration::minutes(1));
    assert_eq!(object.len(), 4, "{body}");

    // Backoff: 50 ms, then 100 ms.
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(50));
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(100));
    token.cancel();
}

/// The outbox sweep finishes the events of a backend without a webhook without notifying
/// anyone (more of them than one sweep takes; written before this dispatcher started, as
/// by a process whose `poller` still had a webhook), and delivers the others under their
/// outbox event's id. Once the dispatcher runs, `poller`'s events are not written at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_events_nobody_is_notified_of_and_delivers_the_rest() {
    let backend = Backend::start(vec![200], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/hook", backend.addr));
    // Written two minutes ago by an instance that never announced them: due for a sweep.
    let written = OffsetDateTime::now_utc() - time::Duration::minutes(2);
    for i in 0..300 {
        fixture.receive_at(&format!("m-poll-{i}@test"), "poller", written);
    }
    fixture.receive_at("m-portal@test", "portal", written);
    assert_eq!(fixture.store.outbox_depth().unwrap(), 301);
    let options = WebhookOptions {
        outbox_sweep: Duration::from_millis(20),
        ..fast(50)
    };
    let (token, mut reports) = start_reporting(&ap, options);
    // Every event ends: the portal's delivered, the poller's removed by the sweep (it has
    // no webhook), each reported.
    let (delivered, swept): (Vec<_>, Vec<_>) = ended(&mut reports, 301)
        .await
        .into_iter()
        .partition(|r| r.owner == "portal");
    assert_eq!(
        delivered
            .iter()
            .map(|r| (r.subject.as_str(), r.ending))
            .collect::<Vec<_>>(),
        [("m-portal@test", Ending::Delivered { attempts: 1 })]
    );
    assert_eq!(swept.len(), 300);
    assert!(
        swept.iter().all(|r| r.ending == Ending::NoWebhook),
        "{swept:?}"
    );
    assert_eq!(fixture.store.outbox_depth().unwrap(), 0, "all removed");
    fixture.receive("m-poll-later@test", "poller");
    assert_eq!(
        fixture.store.outbox_depth().unwrap(),
        0,
        "nothing would deliver it"
    );
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "only portal has a webhook");
    assert_eq!(json(&seen[0])["message_id"], "m-portal@test");
    assert_eq!(json(&seen[0])["event"], "received");
    assert_eq!(fixture.state("m-portal@test"), State::Delivered);
    assert_eq!(
        fixture.state("m-poll-0@test"),
        State::Received,
        "a poller's message waits for its backend to fetch it"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_carries_the_ebms_error() {
    let backend = Backend::start(vec![204], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/", backend.addr));
    let token = start(&ap, fast(50));
    ap.announce(MessageEvent::Failed {
        message_id: "m-failed@test".into(),
        owner: "portal".into(),
        error: "EBMS:0301 MissingReceipt: no receipt after 5 attempts".into(),
    });
    let seen = backend.wait_for(1).await;
    assert_eq!(header(&seen[0], "x-varti-event"), "failed");
    let body = json(&seen[0]);
    assert_eq!(body["event"], "failed");
    assert_eq!(body["message_id"], "m-failed@test");
    assert_eq!(
        body["error"],
        "EBMS:0301 MissingReceipt: no receipt after 5 attempts"
    );
    assert_eq!(
        header(&seen[0], "x-varti-signature"),
        expected_signature(&seen[0].body)
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_is_notified_once_and_only_by_the_caller_that_marked_it() {
    let backend = Backend::start(vec![200], None).await;
    let fixture = Fixture::new();
    let url = format!("http://{}/hook", backend.addr);
    // Two instances sharing one store, each with its own dispatcher.
    let one = fixture.access_point(&url);
    let two = fixture.access_point(&url);
    let (token_one, mut reports_one) = start_reporting(&one, fast(50));
    let (token_two, mut reports_two) = start_reporting(&two, fast(50));
    let tokens = [token_one, token_two];

    // Delivered elsewhere: another instance's mark_delivered returned true for it.
    fixture.receive("m-elsewhere@test", "portal");
    assert!(fixture
        .store
        .mark_delivered("m-elsewhere@test", OffsetDateTime::now_utc())
        .unwrap());
    fixture.receive("m-fresh@test", "portal");
    assert_eq!(fixture.state("m-fresh@test"), State::Received);

    let elsewhere = MessageEvent::Received {
        message_id: "m-elsewhere@test".into(),
        owner: "portal".into(),
    };
    let fresh = MessageEvent::Received {
        message_id: "m-fresh@test".into(),
        owner: "portal".into(),
    };
    one.announce(elsewhere.clone());
    two.announce(elsewhere);
    // The fresh message announced twice on one instance (issue #6) and once on the other.
    one.announce(fresh.clone());
    one.announce(fresh.clone());
    two.announce(fresh);

    // Every announcement has ended (3 on the first instance, 2 on the second): what the
    // backend has seen now is all it will see.
    let mut endings: Vec<_> = ended(&mut reports_one, 3).await;
    endings.extend(ended(&mut reports_two, 2).await);
    let delivered: Vec<_> = endings
        .iter()
        .filter(|r| matches!(r.ending, Ending::Delivered { .. }))
        .map(|r| r.subject.as_str())
        .collect();
    assert_eq!(delivered, ["m-fresh@test"], "{endings:?}");
    assert!(endings
        .iter()
        .filter(|r| !matches!(r.ending, Ending::Delivered { .. }))
        .all(|r| r.ending == Ending::AlreadyDelivered));
    let seen = backend.seen();
    let seen_later = backend.seen();
    assert_eq!(
        seen_later.len(),
        1,
        "bodies: {:?}",
        seen_later.iter().map(json).collect::<Vec<_>>()
    );
    let body = json(&seen[0]);
    assert_eq!(body["event"], "received");
    assert_eq!(body["message_id"], "m-fresh@test");
    assert_eq!(body["owner"], "portal");
    assert_eq!(header(&seen[0], "x-varti-event"), "received");
    assert_eq!(fixture.state("m-fresh@test"), State::Delivered);
    for t in tokens {
        t.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_webhook_is_left_to_poll() {
    let backend = Backend::start(vec![200], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/hook", backend.addr));
    let (token, mut reports) = start_reporting(&ap, fast(50));
    fixture.receive("m-polled@test", "poller");
    ap.announce(MessageEvent::Received {
        message_id: "m-polled@test".into(),
        owner: "poller".into(),
    });
    // A later event for the webhook backend: once it arrives, the first one was handled.
    ap.announce(MessageEvent::Sent {
        message_id: "m-marker@test".into(),
        owner: "portal".into(),
    });
    let seen = backend.wait_for(1).await;
    assert_eq!(json(&seen[0])["message_id"], "m-marker@test");
    assert_eq!(
        fixture.state("m-polled@test"),
        State::Received,
        "the API marks it when the backend downloads it"
    );
    // The marker's notification has ended, and events are dispatched in order: the
    // poller's event was passed over before it, so this is all the backend will see.
    let report = ended(&mut reports, 1).await;
    assert_eq!(report[0].subject, "m-marker@test");
    assert_eq!(backend.seen().len(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_the_last_attempt_and_stops_promptly() {
    let backend = Backend::start(vec![503], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/hook", backend.addr));
    let (token, mut reports) = start_reporting(
        &ap,
        WebhookOptions {
            max_attempts: 3,
            ..fast(20)
        },
    );
    ap.announce(MessageEvent::Sent {
        message_id: "m-down@test".into(),
        owner: "portal".into(),
    });
    let report = ended(&mut reports, 1).await;
    assert_eq!(report[0].ending, Ending::GaveUp { attempts: 3 });
    assert_eq!(backend.seen().len(), 3, "3 attempts, then it gives up");
    token.cancel();

    // Shutdown abandons a waiting retry instead of sleeping through it.
    let backend = Backend::start(vec![500], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/hook", backend.addr));
    let token = CancellationToken::new();
    let dispatcher = Dispatcher::new(ap.clone(), fast(60_000)).unwrap();
    let mut reports = dispatcher.reports();
    let run = tokio::spawn(dispatcher.run(token.clone()));
    ap.announce(MessageEvent::Sent {
        message_id: "m-slow@test".into(),
        owner: "portal".into(),
    });
    backend.wait_for(1).await;
    // The first attempt is on the wire; whether its 500 is already in or not, the
    // notification now ends in the 60 s wait, and the cancellation must cut that short.
    token.cancel();
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("the dispatcher stops without waiting out the 60 s retry delay")
        .unwrap();
    let report = ended(&mut reports, 1).await;
    assert_eq!(report[0].ending, Ending::Abandoned { attempts: 1 });
    assert_eq!(backend.seen().len(), 1);
}

/// A request in flight when shutdown begins gets `shutdown_wait`, not the whole request
/// timeout: against a target that never answers (10 s timeout), the dispatcher stops
/// within a second of a 200 ms wait, and the event stays in the outbox for later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_request_in_flight_after_the_shutdown_wait() {
    let hung = Hung::start().await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("http://{}/hook", hung.addr));
    fixture.receive("m-hung@test", "portal");
    let token = CancellationToken::new();
    let options = WebhookOptions {
        shutdown_wait: Duration::from_millis(200),
        ..fast(50)
    };
    assert_eq!(options.request_timeout, Duration::from_secs(10));
    let dispatcher = Dispatcher::new(ap.clone(), options).unwrap();
    let mut reports = dispatcher.reports();
    let run = tokio::spawn(dispatcher.run(token.clone()));
    ap.announce(MessageEvent::Received {
        message_id: "m-hung@test".into(),
        owner: "portal".into(),
    });
    hung.wait_for(1).await;
    let stopping = Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("the dispatcher stops without waiting out the 10 s request timeout")
        .unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_millis(200),
        "the request had its shutdown wait"
    );
    let report = ended(&mut reports, 1).await;
    assert_eq!(report[0].ending, Ending::Abandoned { attempts: 1 });
    assert_eq!(
        fixture.store.outbox_depth().unwrap(),
        1,
        "the event waits in the outbox for a later delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_verify_the_server() {
    let ca = tls::load_certs(&repo().join("certs/ca.cert.pem"), "ca").unwrap();

    // Trusted CA: delivered over TLS.
    let backend = Backend::start(vec![200], Some(pair_support::tls_acceptor())).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("https://localhost:{}/hook", backend.addr.port()));
    let token = start(
        &ap,
        WebhookOptions {
            trusted_cas: Some(ca),
            ..fast(50)
        },
    );
    ap.announce(MessageEvent::Sent {
        message_id: "m-tls@test".into(),
        owner: "portal".into(),
    });
    let seen = backend.wait_for(1).await;
    assert_eq!(json(&seen[0])["message_id"], "m-tls@test");
    assert_eq!(
        header(&seen[0], "x-varti-signature"),
        expected_signature(&seen[0].body)
    );
    token.cancel();

    // No trusted CA: the handshake fails, nothing reaches the HTTP layer.
    let backend = Backend::start(vec![200], Some(pair_support::tls_acceptor())).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point(&format!("https://localhost:{}/hook", backend.addr.port()));
    let (token, mut reports) = start_reporting(
        &ap,
        WebhookOptions {
            trusted_cas: Some(vec![]),
            max_attempts: 2,
            ..fast(20)
        },
    );
    ap.announce(MessageEvent::Sent {
        message_id: "m-untrusted@test".into(),
        owner: "portal".into(),
    });
    let report = ended(&mut reports, 1).await;
    assert_eq!(report[0].ending, Ending::GaveUp { attempts: 2 });
    assert!(backend.seen().is_empty());
    token.cancel();
}

#[test]
fn unusable_webhook_urls_are_refused_at_start() {
    let fixture = Fixture::new();
    for (url, says) in [
        (
            "ftp://backend.example/hook",
            "must start with http:// or https://",
        ),
        ("/relative/hook", "must start with http:// or https://"),
        ("http://exa mple/hook", "is not a valid URL"),
    ] {
        let ap = fixture.access_point(url);
        let err = Dispatcher::new(ap, WebhookOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("backend.clients `portal`") && text.contains(says),
            "{url}: {text}"
        );
    }
}

/// Two instances, each with its own connection pool to one real PostgreSQL schema, both see
/// `Received` for the same message: the backend hears of it once.
#[test]
fn two_instances_on_postgresql_notify_received_once() {
    use varti_store::postgres::testing::TestSchema;

    // The blocking postgres client may not run on a runtime thread: set up outside it.
    let schema = TestSchema::migrated();
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn Store>; 2] = [Arc::new(schema.store()), Arc::new(schema.store())];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = runtime.block_on(Backend::start(vec![200], None));
    let url = format!("http://{}/hook", backend.addr);
    let instances: Vec<Arc<AccessPoint>> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let config = config(&dir.path().join(format!("data{i}")), &url);
            Arc::new(
                AccessPoint::open(
                    config.access_point_settings(),
                    store.clone(),
                    Arc::new(Metrics::new()),
                    false,
                )
                .unwrap(),
            )
        })
        .collect();
    let ids = ["m-pg-1@test", "m-pg-2@test", "m-pg-3@test"];
    for id in ids {
        let fixture_meta = MessageMeta {
            message_id: id.to_owned(),
            owner: "portal".into(),
            from_party: "varti-b".into(),
            to_party: "varti-a".into(),
            service: "urn:test:service".into(),
            action: "Deliver".into(),
            conversation_id: "c1".into(),
            ref_to_message_id: None,
            pmode_id: "test".into(),
            payloads: vec![],
            properties: vec![],
        };
        stores[0]
            .insert_inbound(
                NewInbound {
                    meta: fixture_meta,
                    receipt: b"<receipt/>".to_vec(),
                    peer: None,
                },
                OffsetDateTime::now_utc(),
            )
            .unwrap();
    }

    let seen = runtime.block_on(async {
        let (tokens, mut reports): (Vec<_>, Vec<_>) = instances
            .iter()
            .map(|ap| start_reporting(ap, fast(50)))
            .unzip();
        for id in ids {
            for ap in &instances {
                ap.announce(MessageEvent::Received {
                    message_id: id.to_owned(),
                    owner: "portal".into(),
                });
            }
        }
        // Every announcement on every instance has ended: nothing more will be sent.
        for r in &mut reports {
            ended(r, ids.len()).await;
        }
        tokens.iter().for_each(CancellationToken::cancel);
        backend.seen()
    });
    drop(runtime);

    let mut notified: Vec<String> = seen
        .iter()
        .map(|s| json(s)["message_id"].as_str().unwrap().to_owned())
        .collect();
    notified.sort();
    assert_eq!(notified, ids, "each message notified exactly once");
    for id in ids {
        assert_eq!(
            stores[1].get(id).unwrap().unwrap().state,
            State::Delivered,
            "{id}"
        );
    }
}

/// One client's hung webhook target fills only that client's share of the dispatcher:
/// with 40 of `portal`'s notifications stuck on a target that never answers, `poller`'s
/// notification is delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_one_hung_client_does_not_delay_others_in_process() {
    let hung = Hung::start().await;
    let backend = Backend::start(vec![200], None).await;
    let fixture = Fixture::new();
    let ap = fixture.access_point_with(
        &format!("http://{}/hook", hung.addr),
        Some(&format!("http://{}/hook", backend.addr)),
    );
    let options = WebhookOptions::default();
    let share = options.concurrency;
    let (token, mut reports) = start_reporting(&ap, options);
    for i in 0..40 {
        ap.announce(MessageEvent::Sent {
            message_id: format!("m-hung-{i}@test"),
            owner: "portal".into(),
        });
    }
    // The portal's share of requests is in flight, each waiting out the 10 s timeout.
    hung.wait_for(share).await;
    let start = Instant::now();
    ap.announce(MessageEvent::Sent {
        message_id: "m-other@test".into(),
        owner: "poller".into(),
    });
    let seen = backend.wait_for(1).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the other client waited {:?}",
        start.elapsed()
    );
    assert!(String::from_utf8_lossy(&seen[0].body).contains("m-other@test"));
    let report = ended(&mut reports, 1).await;
    assert_eq!(
        (report[0].owner.as_str(), report[0].ending),
        ("poller", Ending::Delivered { attempts: 1 })
    );
    assert_eq!(
        hung.connections.load(Ordering::SeqCst),
        share,
        "the hung client never had more than its share in flight"
    );
    token.cancel();
}

/// Issue 21 through real processes: varti-a's `portal` has a webhook target that never
/// answers, `poller` a working one. With 40 of portal's `sent` notifications hanging,
/// poller's `sent` notification for its own message arrives within 1 s of being made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_one_hung_client_does_not_delay_others() {
    let hung = Hung::start().await;
    let backend = Backend::start(vec![200], None).await;
    let poller_token = "poller-token-1";
    let pair = pair_support::Pair::new();
    let extra = format!(
        "webhook_url = \"http://{}/hook\"\nwebhook_secret = \"{SECRET}\"\n\
         [[backend.clients]]\nname = \"poller\"\ntoken_sha256 = \"{}\"\n\
         webhook_url = \"http://{}/hook\"\nwebhook_secret = \"{SECRET}\"\n\
         [client]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 20\n\
         [sender]\npoll_interval_ms = 100\nlease_secs = 30\n",
        hung.addr,
        varti::pair::token_sha256(poller_token),
        backend.addr
    );
    pair.layout.rewrite_config(&pair.layout.a, &extra).unwrap();
    let (pair, a, _b) = tokio::task::spawn_blocking(move || {
        let a = pair.start("a");
        let b = pair.start("b");
        (pair, a, b)
    })
    .await
    .unwrap();
    let a = Arc::new(a);
    let submit = |token: String, n: usize| {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|i| {
                    a.submit_as(
                        &token,
                        serde_json::json!({"to_party": "varti-b", "service": "urn:varti:test:exchange", "action": "Deliver"}),
                        &[("doc", "application/xml", format!("<doc>{i}</doc>").as_bytes())],
                    )
                })
                .collect::<Vec<String>>()
        })
    };
    submit(a.token.clone(), 40).await.unwrap();
    // Portal's share of webhook requests is in flight, each waiting out its timeout.
    hung.wait_for(8).await;
    let ours = submit(poller_token.to_owned(), 1).await.unwrap();
    let seen = backend.wait_for(1).await;
    let arrived = OffsetDateTime::now_utc();
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["message_id"], ours[0].as_str());
    assert_eq!(body["event"], "sent");
    let made = OffsetDateTime::parse(
        body["at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        arrived - made < time::Duration::seconds(1),
        "poller's notification took {} to arrive",
        arrived - made
    );
    assert_eq!(
        hung.connections.load(Ordering::SeqCst),
        8,
        "portal kept to its share"
    );
    drop(pair);
}
