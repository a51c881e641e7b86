//! What the gateway benchmarks share: the `varti` binary under test, the machine's CPU,
//! the load average and a process's resource use from `/proc`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `varti` binary to benchmark: `VARTI_BENCH_BINARY` (to compare another build, e.g. a
/// copy from before a change), else the one beside the examples directory.
pub fn varti_binary() -> PathBuf {
    let binary = match std::env::var_os("VARTI_BENCH_BINARY") {
        // Absolute: the servers run in their own directories.
        Some(b) => std::fs::canonicalize(&b)
            .unwrap_or_else(|e| panic!("VARTI_BENCH_BINARY {}: {e}", Path::new(&b).display())),
        None => std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("varti"))
            .expect("the varti binary beside the examples directory (cargo build first)"),
    };
    assert!(
        binary.is_file(),
        "build the binary first (cargo build --release -p varti --bin varti): {}",
        binary.display()
    );
    binary
}

/// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`), 0 when unknown.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Bytes a process caused to be written to storage so far (`write_bytes` of
/// `/proc/PID/io`: the pages it dirtied, whoever writes them back).
pub fn disk_write_bytes(pid: u32) -> u64 {
    proc_io(pid, "write_bytes")
}

/// Bytes of [`disk_write_bytes`] that never reached the disk: pages of files the process
/// truncated or removed before they were written back (`cancelled_write_bytes`).
pub fn cancelled_write_bytes(pid: u32) -> u64 {
    proc_io(pid, "cancelled_write_bytes")
}

/// One counter of `/proc/PID/io` (0 when unreadable).
fn proc_io(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The CPU model from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_owned())
        .unwrap_or_default()
}

/// Samples the 1-minute load average every second in a thread.
pub struct LoadSampler {
    samples: Arc<Mutex<Vec<f64>>>,
    _stop: StopOnDrop,
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl LoadSampler {
    /// Starts sampling.
    pub fn start() -> LoadSampler {
        let samples = Arc::new(Mutex::new(vec![loadavg()]));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                s.lock().unwrap().push(loadavg());
            }
        });
        LoadSampler {
            samples,
            _stop: StopOnDrop(stop),
        }
    }

    /// A mark to measure a range [`LoadSampler::since`].
    pub fn mark(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// (lowest, highest) load since `mark`.
    pub fn since(&self, mark: usize) -> (f64, f64) {
        let s = self.samples.lock().unwrap();
        let mut v = s[mark.min(s.len() - 1)..].to_vec();
        v.push(loadavg());
        range(&v)
    }

    /// (lowest, highest) load since the start.
    pub fn overall(&self) -> (f64, f64) {
        range(&self.samples.lock().unwrap())
    }
}

/// (lowest, highest) of `v`.
pub fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}

/// The 1-minute load average now.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
