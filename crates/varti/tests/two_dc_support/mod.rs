//! The link between two data centres on one machine (issue 18): a TCP proxy that every
//! connection from one DC to the other goes through, which the test controls — a delay with
//! jitter on every chunk of data, each way, and a cut (a partition: nothing passes, new
//! connections wait, as packets to an unreachable site would) and heal.
//!
//! DC1 is 127.0.1.x, DC2 127.0.2.x (loopback only: Linux routes all of 127.0.0.0/8 to the
//! loopback interface). A proxy listens on an address of the connecting side's DC and
//! forwards to the target in the other DC, so a process "in DC2" reaching "DC1" names the
//! proxy's address.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// An address of data centre `dc` (1 or 2), host `host`: `127.0.<dc>.<host>`.
pub fn dc_ip(dc: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, dc, host))
}

/// What the test sets on the link.
#[derive(Default)]
struct LinkState {
    /// One-way delay, microseconds.
    delay_us: AtomicU64,
    /// Jitter, microseconds: each chunk's delay is `delay ± jitter` (uniform).
    jitter_us: AtomicU64,
    /// Cut: nothing passes until healed.
    cut: Mutex<bool>,
    healed: Condvar,
    /// A small random generator for the jitter (xorshift).
    rng: AtomicU64,
}

impl LinkState {
    fn wait_while_cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        while *cut {
            cut = self.healed.wait(cut).unwrap();
        }
    }

    fn one_way(&self) -> Duration {
        let delay = self.delay_us.load(Ordering::Relaxed);
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        if jitter == 0 {
            return Duration::from_micros(delay);
        }
        let mut x = self.rng.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        let offset = x % (2 * jitter + 1);
        Duration::from_micros((delay + offset).saturating_sub(jitter))
    }
}

/// One link between the DCs: any number of proxies ([`Link::proxy`]) share its settings,
/// so one call cuts or delays every connection between the two sites.
#[derive(Clone, Default)]
pub struct Link {
    state: Arc<LinkState>,
}

impl Link {
    /// A link with no delay, not cut.
    pub fn new() -> Link {
        let link = Link::default();
        link.state.rng.store(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1,
            Ordering::Relaxed,
        );
        link
    }

    /// Each chunk of data takes `delay ± jitter` one way (so a round trip twice that).
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.state
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        self.state
            .jitter_us
            .store(jitter.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cuts the link: no data passes either way, new connections wait.
    pub fn cut(&self) {
        *self.state.cut.lock().unwrap() = true;
    }

    /// Heals the link: what waited passes, in order.
    pub fn heal(&self) {
        *self.state.cut.lock().unwrap() = false;
        self.state.healed.notify_all();
    }

    /// A proxy listening on `listen` (an address of the connecting side's DC, port 0 for
    /// any) that forwards each connection to `target` across this link.
    pub fn proxy(&self, listen: SocketAddr, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind(listen)
            .unwrap_or_else(|e| panic!("the DC link proxy cannot listen on {listen}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = self.state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let state = state.clone();
                std::thread::spawn(move || {
                    // A new connection crosses the link too: it waits out a cut.
                    state.wait_while_cut();
                    std::thread::sleep(state.one_way());
                    let Ok(server) = TcpStream::connect(target) else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    let _ = client.set_nodelay(true);
                    forward(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        &state,
                    );
                    forward(server, client, &state);
                });
            }
        });
        addr
    }
}

/// Chunks on their way one way: `(when due, bytes)`, `None` at the end of the stream.
type Chunks = Arc<(Mutex<VecDeque<Option<(Instant, Vec<u8>)>>>, Condvar)>;

/// Copies `from` → `to`, each chunk released after the link's delay (in order) and held
/// while the link is cut. A reader thread stamps chunks, a writer thread releases them.
fn forward(from: TcpStream, to: TcpStream, state: &Arc<LinkState>) {
    let queue: Chunks = Arc::default();
    let (q, s) = (queue.clone(), state.clone());
    let mut from_r = from;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = Instant::now();
        loop {
            let chunk = match from_r.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(k) => {
                    // Never before the previous chunk: the stream keeps its order.
                    let due = (Instant::now() + s.one_way()).max(last_due);
                    last_due = due;
                    Some((due, buf[..k].to_vec()))
                }
            };
            let end = chunk.is_none();
            q.0.lock().unwrap().push_back(chunk);
            q.1.notify_all();
            if end {
                return;
            }
        }
    });
    let state = state.clone();
    let mut to_w = to;
    std::thread::spawn(move || loop {
        let next = {
            let mut items = queue.0.lock().unwrap();
            loop {
                if let Some(item) = items.pop_front() {
                    break item;
                }
                items = queue.1.wait(items).unwrap();
            }
        };
        let Some((due, bytes)) = next else {
            let _ = to_w.shutdown(Shutdown::Write);
            return;
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        state.wait_while_cut();
        if to_w.write_all(&bytes).is_err() {
            let _ = to_w.shutdown(Shutdown::Both);
            return;
        }
    });
}
