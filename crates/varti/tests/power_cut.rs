//! Power-cut test: the store under load loses its page cache, not just its process.
//!
//! `kill -9` (tests/crash.rs) leaves everything the process wrote in the kernel's page
//! cache, so it never tests fsync. Here the child (`src/bin/store-powercut-child.rs`) runs
//! with an LD_PRELOAD shim (`tests/power_cut/shim.c`, compiled by this test with the C
//! compiler Rust links with) that logs how to undo every change to the store's files and
//! which fsyncs made which changes durable. After SIGKILL, the log is replayed backwards
//! and every change no fsync covered is undone: the directory then holds what a disk would
//! after a power cut at that instant. (Chosen over FUSE or a loop device, which need
//! privileges CI does not have; the model it applies is described in shim.c.)
//!
//! 20 cuts at random points under load, every other one also under a stricter model in
//! which sled's `sync_file_range` log syncs do not count (see `Model`). After each: the start-up check passes, or names
//! the damage (`varti db check` exits 1) — then `varti db recover` must rebuild a store
//! that passes it. Every promise the child printed before the cut (a message stored, a
//! delivery, a submission, a partner's receipt) must hold afterwards; no message is
//! delivered twice; at the end every stored inbound message is still deliverable.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use varti_store::{SledStore, State, Store};

const CUTS: usize = 20;
const CHILD: &str = env!("CARGO_BIN_EXE_store-powercut-child");
const VARTI: &str = env!("CARGO_BIN_EXE_varti");

/// `varti db ARGS --json`: its exit code and JSON answer.
fn varti_db(args: &[&std::ffi::OsStr]) -> (i32, serde_json::Value) {
    let out = Command::new(VARTI)
        .arg("db")
        .args(args)
        .arg("--json")
        .output()
        .expect("running varti db");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "varti db {args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// `varti db check --data-dir DIR`: whether the store is damaged, and the damage found.
fn db_check(dir: &Path) -> (bool, serde_json::Value) {
    let (code, report) = varti_db(&["check".as_ref(), "--data-dir".as_ref(), dir.as_os_str()]);
    let damaged = report["damaged"]
        .as_bool()
        .expect("the check says damaged or not");
    assert_eq!(code, if damaged { 1 } else { 0 }, "{report}");
    (damaged, report)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Compiles the shim into `dir`.
fn build_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/power_cut/shim.c");
    let out = dir.join("powercut-shim.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&out)
        .arg(&source)
        .args(["-ldl", "-lpthread"])
        .status()
        .unwrap_or_else(|e| {
            panic!("the power-cut test needs a C compiler (`{cc}`, or set CC): {e}")
        });
    assert!(status.success(), "compiling {} failed", source.display());
    out
}

#[derive(Default)]
struct Promises {
    stored: Vec<String>,
    delivered: HashMap<String, usize>,
    submitted: Vec<String>,
    acknowledged: HashSet<String>,
}

impl Promises {
    fn take(&mut self, line: &str) {
        let (kind, id) = line.split_once(' ').unwrap_or((line, ""));
        let id = id.to_owned();
        match kind {
            "ack" => self.stored.push(id),
            "delivered" => *self.delivered.entry(id).or_default() += 1,
            "submitted" => self.submitted.push(id),
            "acknowledged" => {
                self.acknowledged.insert(id);
            }
            "BAD" => panic!("the child reported: {line}"),
            _ => panic!("unexpected line from the child: {line}"),
        }
    }
}

/// Runs the child under the shim until it has printed `lines` promises, then cuts the
/// power (SIGKILL, then the log is replayed). Returns the promises printed.
fn run_and_cut(
    shim: &Path,
    work: &Path,
    store: &Path,
    round: usize,
    lines: usize,
    model: Model,
) -> (Vec<String>, usize) {
    let log = work.join(format!("undo-{round}.log"));
    let aside = work.join(format!("aside-{round}"));
    fs::create_dir_all(&aside).unwrap();
    let mut child = Command::new(CHILD)
        .arg(store)
        .arg(format!("r{round}"))
        .env("LD_PRELOAD", shim)
        .env("POWERCUT_ROOT", store)
        .env("POWERCUT_LOG", &log)
        .env("POWERCUT_ASIDE", &aside)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("the power-cut child starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait for the positive signal: `lines` promises made.
    while seen.len() < lines {
        assert!(
            Instant::now() < deadline,
            "the child made only {} promises in 30 s",
            seen.len()
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the child exited: {:?}; it said {seen:?}", child.wait());
        }
        seen.push(line.trim_end().to_owned());
    }
    child.kill().expect("SIGKILL the child");
    // Lines completed before the kill are promises too.
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        None,
        "the child exited by itself: {status:?}: {seen:?}"
    );
    let complete = match rest.iter().rposition(|&b| b == b'\n') {
        Some(end) => &rest[..=end],
        None => &rest[..0],
    };
    seen.extend(complete.lines().map(|l| l.unwrap()));
    let undone = replay(&log, model);
    fs::remove_dir_all(&aside).unwrap();
    fs::remove_file(&log).unwrap();
    (seen, undone)
}

/// One entry of the shim's log.
struct Entry {
    kind: u8,
    seq: u64,
    a: u64,
    b: u64,
    c: u64,
    p1: PathBuf,
    p2: PathBuf,
    data: Vec<u8>,
}

fn read_log(path: &Path) -> Vec<Entry> {
    let bytes = fs::read(path).unwrap_or_default();
    let mut at = 0;
    let mut entries = Vec::new();
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    while at + 49 <= bytes.len() {
        let kind = bytes[at];
        let (seq, a, b, c) = (
            u64_at(&bytes, at + 1),
            u64_at(&bytes, at + 9),
            u64_at(&bytes, at + 17),
            u64_at(&bytes, at + 25),
        );
        let (l1, l2, l3) = (
            u32_at(&bytes, at + 33),
            u32_at(&bytes, at + 37),
            u64_at(&bytes, at + 41) as usize,
        );
        let start = at + 49;
        let end = start + l1 + l2 + l3;
        if end > bytes.len() {
            // The kill stopped the shim's own write of this last entry part-way: a write to
            // a file stops at a page boundary once SIGKILL is pending, and an entry carrying
            // the old bytes of a large write spans pages. Dropping it, as a header cut short
            // is dropped above, leaves a state a power cut can leave: S and W are logged
            // before their change, which then never started; C, R and U are logged after
            // theirs, which stays as it is on disk (a power cut may keep it); F, Q and D are
            // logged after their sync returned and before the child hears of it, so the
            // child had promised nothing on that sync yet.
            break;
        }
        let text = |r: std::ops::Range<usize>| {
            PathBuf::from(String::from_utf8(bytes[r].to_vec()).unwrap())
        };
        entries.push(Entry {
            kind,
            seq,
            a,
            b,
            c,
            p1: text(start..start + l1),
            p2: text(start + l1..start + l1 + l2),
            data: bytes[start + l1 + l2..end].to_vec(),
        });
        at = end;
    }
    entries
}

/// How strictly a cut treats `sync_file_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// A synced range is durable (what sled relies on for its log, and what ext4 with
    /// data=ordered gives for overwrites).
    Linux,
    /// Only fsync makes anything durable (POSIX: `sync_file_range` flushes no metadata,
    /// so a synced append may vanish with the file size). sled then loses writes it
    /// reported durable; the sidecars must make up for it.
    Strict,
}

/// Undoes every change the log does not show as durable, newest first. Returns how many
/// changes were undone.
fn replay(log: &Path, model: Model) -> usize {
    let entries = read_log(log);
    // Pending undo entries: content ones by the file's current path, name ones by directory.
    let mut content: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    let mut names: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    let mut size_of: HashMap<usize, u64> = HashMap::new();
    let parent = |p: &Path| p.parent().unwrap().to_owned();
    for (i, e) in entries.iter().enumerate() {
        match e.kind {
            b'S' => {
                size_of.insert(i, e.a);
                content.entry(e.p1.clone()).or_default().push(i);
            }
            b'W' => content.entry(e.p1.clone()).or_default().push(i),
            b'F' => {
                if let Some(list) = content.get_mut(&e.p1) {
                    list.retain(|&j| entries[j].seq >= e.c);
                }
            }
            b'Q' if model == Model::Strict => {}
            b'Q' => {
                if let Some(list) = content.get_mut(&e.p1) {
                    let (lo, hi) = (e.a, e.a + e.b);
                    list.retain(|&j| {
                        let w = &entries[j];
                        if w.seq >= e.c {
                            return true;
                        }
                        match w.kind {
                            b'W' => !(w.a >= lo && w.a + w.data.len() as u64 <= hi),
                            _ => {
                                // The synced range's end is now durable file size.
                                let s = size_of.get_mut(&j).unwrap();
                                *s = (*s).max(hi);
                                true
                            }
                        }
                    });
                }
            }
            b'C' | b'U' => names.entry(parent(&e.p1)).or_default().push(i),
            b'R' => {
                if let Some(list) = content.remove(&e.p1) {
                    content.insert(e.p2.clone(), list);
                }
                names.entry(parent(&e.p2)).or_default().push(i);
            }
            b'D' => {
                if let Some(list) = names.get_mut(&e.p1) {
                    list.retain(|&j| entries[j].seq >= e.c);
                }
            }
            other => panic!("unknown undo entry kind {other}"),
        }
    }
    let mut pending: Vec<usize> = content
        .into_values()
        .chain(names.into_values())
        .flatten()
        .collect();
    pending.sort_unstable_by(|x, y| y.cmp(x));
    let undone = pending.len();
    for i in pending {
        let e = &entries[i];
        match e.kind {
            b'S' => {
                if let Ok(f) = fs::OpenOptions::new().write(true).open(&e.p1) {
                    let size = size_of[&i];
                    if f.metadata().unwrap().len() > size {
                        f.set_len(size).unwrap();
                    }
                }
            }
            b'W' => {
                if let Ok(f) = fs::OpenOptions::new().write(true).open(&e.p1) {
                    use std::os::unix::fs::FileExt;
                    f.write_all_at(&e.data, e.a).unwrap();
                }
            }
            b'C' => {
                let _ = fs::remove_file(&e.p1);
            }
            b'R' => {
                let _ = fs::rename(&e.p2, &e.p1);
                if !e.data.is_empty() {
                    let aside = PathBuf::from(String::from_utf8(e.data.clone()).unwrap());
                    let _ = fs::rename(aside, &e.p2);
                }
            }
            b'U' => {
                if !e.data.is_empty() {
                    let aside = PathBuf::from(String::from_utf8(e.data.clone()).unwrap());
                    let _ = fs::rename(aside, &e.p1);
                }
            }
            _ => unreachable!(),
        }
    }
    undone
}

/// The harness itself: what was fsync'd survives a cut, what was not is undone.
#[test]
fn the_shim_keeps_exactly_what_was_fsynced() {
    let work = tempfile::tempdir().unwrap();
    let shim = build_shim(work.path());
    let dir = work.path().join("files");
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [
        ("old", &b"old"[..]),
        ("grown", b"abc"),
        ("replaced", b"original"),
        ("removed", b"still here"),
    ] {
        fs::write(dir.join(name), bytes).unwrap();
    }
    let log = work.path().join("undo.log");
    let aside = work.path().join("aside");
    fs::create_dir_all(&aside).unwrap();
    let mut child = Command::new(CHILD)
        .arg("--selftest")
        .arg(&dir)
        .env("LD_PRELOAD", &shim)
        .env("POWERCUT_ROOT", &dir)
        .env("POWERCUT_LOG", &log)
        .env("POWERCUT_ASIDE", &aside)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child.kill().unwrap();
    child.wait().unwrap();
    // Before the cut the page cache has every change.
    assert_eq!(fs::read(dir.join("old")).unwrap(), b"NEW");
    replay(&log, Model::Strict);
    assert_eq!(fs::read(dir.join("kept")).unwrap(), b"kept");
    assert_eq!(fs::read(dir.join("old")).unwrap(), b"old");
    assert_eq!(fs::read(dir.join("grown")).unwrap(), b"abc");
    assert!(!dir.join("unlisted").exists());
    assert!(!dir.join("tmp").exists());
    assert_eq!(fs::read(dir.join("replaced")).unwrap(), b"original");
    assert_eq!(fs::read(dir.join("removed")).unwrap(), b"still here");
}

/// Every promise holds in the store at `dir`.
fn assert_promises_kept(dir: &Path, promises: &Promises, cut: usize) {
    let store = SledStore::open(dir).unwrap();
    for id in &promises.stored {
        let record = store
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("cut {cut}: acknowledged inbound message {id} was lost"));
        assert_eq!(
            record.receipt.as_deref(),
            Some(format!("<receipt for {id}/>").as_bytes()),
            "cut {cut}: {id}"
        );
        let mut payload = Vec::new();
        store
            .payloads()
            .open(&record.meta.payloads[0].stored)
            .unwrap_or_else(|e| panic!("cut {cut}: {id}: payload lost: {e}"))
            .read_to_end(&mut payload)
            .unwrap();
        assert_eq!(
            payload,
            format!("<payload of {id}/>").repeat(40).into_bytes()
        );
    }
    for id in promises.delivered.keys() {
        let record = store.get(id).unwrap().expect("a delivered message exists");
        assert_eq!(
            record.state,
            State::Delivered,
            "cut {cut}: {id} delivery lost"
        );
    }
    for id in &promises.submitted {
        let record = store
            .get(id)
            .unwrap()
            .unwrap_or_else(|| panic!("cut {cut}: submitted message {id} was lost"));
        if promises.acknowledged.contains(id) {
            assert_eq!(
                record.state,
                State::Acknowledged,
                "cut {cut}: {id} receipt lost"
            );
        }
    }
}

#[test]
fn twenty_power_cuts_under_load_lose_nothing_acknowledged() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let shim = build_shim(work.path());
    let store_dir = work.path().join("store");
    // The store exists before the load starts (its directories and sled files were
    // created and synced long before any cut).
    drop(SledStore::open(&store_dir).unwrap());
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("power-cut test seed {seed}");
    let mut rng = Rng(seed);
    let mut promises = Promises::default();
    let mut refusals = Vec::new();
    let mut undone_total = 0;
    for cut in 0..CUTS {
        let lines = 5 + (rng.next() % 60) as usize;
        // Every other cut also takes sled's range syncs away (see `Model`).
        let model = if cut % 2 == 0 {
            Model::Linux
        } else {
            Model::Strict
        };
        let (lines, undone) = run_and_cut(&shim, work.path(), &store_dir, cut, lines, model);
        for line in lines {
            promises.take(&line);
        }
        undone_total += undone;
        let (damaged, report) = db_check(&store_dir);
        if damaged {
            // What `varti serve` would refuse; `varti db recover` must bring it back.
            let damage: Vec<String> = report["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["severity"] == "damage")
                .map(|f| f["detail"].as_str().unwrap_or_default().to_owned())
                .collect();
            let recovered = work.path().join(format!("recovered-{cut}"));
            let (code, outcome) = varti_db(&[
                "recover".as_ref(),
                "--data-dir".as_ref(),
                store_dir.as_os_str(),
                "--out".as_ref(),
                recovered.as_os_str(),
            ]);
            // Exit 1 says something was lost or unreadable; 2 that it could not run.
            assert!(
                code == 0 || code == 1,
                "cut {cut}: recovery failed: {outcome}; damage: {damage:?}"
            );
            // Payloads are durable before the records naming them, so none may be lost.
            // (A database record sled garbled may be unreadable; its sidecar, or the
            // promise checks below, decide whether anything was lost.)
            assert_eq!(
                outcome["payloads_lost"].as_array().map(Vec::len),
                Some(0),
                "cut {cut}: recovery lost payloads: {outcome}"
            );
            let (still_damaged, after) = db_check(&recovered);
            assert!(
                !still_damaged,
                "cut {cut}: the recovered store is damaged: {after}"
            );
            fs::rename(&store_dir, work.path().join(format!("damaged-{cut}"))).unwrap();
            fs::rename(&recovered, &store_dir).unwrap();
            refusals.push((cut, model, damage.len(), damage.first().cloned()));
        }
        assert_promises_kept(&store_dir, &promises, cut);
    }
    let twice: Vec<_> = promises.delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert!(
        promises.stored.len() >= CUTS,
        "too little load: {} messages",
        promises.stored.len()
    );

    // Still deliverable: every inbound message not yet delivered is delivered now, once.
    let store = SledStore::open(&store_dir).unwrap();
    for id in &promises.stored {
        let record = store.get(id).unwrap().unwrap();
        if record.state == State::Received {
            assert!(
                store.mark_delivered(id, OffsetDateTime::now_utc()).unwrap(),
                "{id}"
            );
        } else {
            assert_eq!(record.state, State::Delivered, "{id}");
        }
    }
    eprintln!(
        "power-cut test: {CUTS} cuts, {} stored, {} delivered, {} submitted, {} acknowledged; \
         {undone_total} unsynced changes undone; {} start-up refusal(s), each recovered: \
         {refusals:?}; {:?}",
        promises.stored.len(),
        promises.delivered.len(),
        promises.submitted.len(),
        promises.acknowledged.len(),
        refusals.len(),
        started.elapsed()
    );
}
