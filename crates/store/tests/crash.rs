//! Crash test: kill -9 a process writing to the sled store at random points, restart it, and
//! check that nothing acknowledged was lost and nothing was delivered twice.
//!
//! The child (`src/bin/store-crash-child.rs`) prints `ack ID` after `insert_inbound` returned
//! (when a receipt would leave) and `delivered ID` after `mark_delivered` returned `true`
//! (when a backend would get the message). Whatever it printed before SIGKILL is a promise
//! the store must keep.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use varti_store::{SledStore, State, Store};

const ROUNDS: usize = 5;
const CHILD: &str = env!("CARGO_BIN_EXE_store-crash-child");

/// A small xorshift generator seeded from the clock: each run kills at different points.
/// The seed is printed so a failing run can be reasoned about.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the child with `arg`; kills it after `kill_after` (if given). Returns its stdout
/// lines and whether it was killed by a signal.
fn run_child(
    dir: &std::path::Path,
    arg: &str,
    kill_after: Option<Duration>,
) -> (Vec<String>, bool) {
    let mut child = Command::new(CHILD)
        .arg(dir)
        .arg(arg)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("crash child starts");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // Read all bytes, then split: a line cut by the kill has no newline and is dropped
        // (the child had not finished promising it).
        let mut raw = Vec::new();
        BufReader::new(stdout).read_to_end(&mut raw).unwrap();
        let complete = match raw.iter().rposition(|&b| b == b'\n') {
            Some(end) => &raw[..=end],
            None => &raw[..0],
        };
        complete
            .lines()
            .map(|l| l.unwrap())
            .collect::<Vec<String>>()
    });
    if let Some(delay) = kill_after {
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the child");
    }
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    for line in &lines {
        assert!(!line.starts_with("BAD"), "child reported: {line}");
    }
    if kill_after.is_none() {
        assert!(status.success(), "drain run failed: {status:?}");
    } else {
        // Killed by our signal, not exited on its own (an error would exit with a code).
        assert_eq!(status.code(), None, "child exited by itself: {status:?}");
    }
    (lines, status.code().is_none())
}

#[test]
fn kill_9_loses_nothing_acknowledged_and_delivers_nothing_twice() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);

    let mut acked: Vec<String> = Vec::new();
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    let mut count = |lines: &[String], acked: &mut Vec<String>| {
        for line in lines {
            if let Some(id) = line.strip_prefix("ack ") {
                acked.push(id.to_owned());
            } else if let Some(id) = line.strip_prefix("delivered ") {
                *deliveries.entry(id.to_owned()).or_default() += 1;
            }
        }
    };

    for round in 0..ROUNDS {
        // Long enough to open the store and write for a while; random so that the kill
        // lands anywhere (mid-insert, mid-flush, mid-delivery, mid-payload-write).
        let delay = Duration::from_millis(300 + rng.next() % 700);
        let (lines, killed) = run_child(dir.path(), &format!("r{round}"), Some(delay));
        assert!(killed);
        count(&lines, &mut acked);
    }
    let (lines, _) = run_child(dir.path(), "drain", None);
    count(&lines, &mut acked);

    assert!(
        acked.len() >= ROUNDS,
        "the child acknowledged too little to test anything: {} messages",
        acked.len()
    );
    let twice: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");

    let store = SledStore::open(dir.path()).unwrap();
    for id in &acked {
        let record = store
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged message {id} was lost"));
        assert_eq!(
            record.receipt.as_deref(),
            Some(format!("<receipt for {id}/>").as_bytes()),
            "{id}: receipt changed"
        );
        let mut payload = Vec::new();
        store
            .payloads()
            .open(&record.meta.payloads[0].stored)
            .unwrap_or_else(|e| panic!("{id}: payload lost: {e}"))
            .read_to_end(&mut payload)
            .unwrap();
        assert_eq!(
            payload,
            format!("<payload of {id}/>").repeat(16).into_bytes()
        );
        // After the drain everything is delivered; and a delivery the child announced was
        // durable before the announcement.
        assert_eq!(record.state, State::Delivered, "{id}");
    }
    for id in deliveries.keys() {
        let record = store.get(id).unwrap().expect("a delivered message exists");
        assert_eq!(record.state, State::Delivered);
        assert_eq!(
            record
                .history
                .iter()
                .filter(|h| h.to == State::Delivered)
                .count(),
            1,
            "{id} entered Delivered once"
        );
    }
    eprintln!(
        "crash test: {} acknowledged, {} delivery announcements, {:?}",
        acked.len(),
        deliveries.len(),
        started.elapsed()
    );
}
