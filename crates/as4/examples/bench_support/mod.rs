//! What the benchmarks share (the AS4 crate's, and `varti`'s exchange benchmark): generated
//! payload bytes, the process's peak RSS, the machine's CPU, and the `openssl speed` runs
//! the figures are compared with.
#![allow(dead_code)]

use std::io::{self, Read};

/// Deterministic pseudo-random bytes (xorshift), `remaining` of them: incompressible, and
/// never held in memory as a whole. The same length gives the same bytes, however they
/// are read.
pub struct Generator {
    state: u64,
    remaining: u64,
}

impl Generator {
    /// `len` bytes.
    pub fn new(len: u64) -> Generator {
        Generator {
            state: 0x9E37_79B9_7F4A_7C15,
            remaining: len,
        }
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Whole 8-byte words while there is room, so that the stream does not depend on
        // the buffer sizes; the tail of the stream in the last read.
        let n = buf.len().min(self.remaining as usize) / 8 * 8;
        let n = if n == 0 {
            buf.len().min(self.remaining as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// This process's peak RSS (`VmHWM`) in KiB, 0 when unknown.
pub fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The CPU model from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The arguments of the `openssl speed` runs of the primitives (signatures, key
/// agreement, AES-128-GCM, SHA-256) the security figures are compared with.
pub const OPENSSL_SPEED_RUNS: [&[&str]; 3] = [
    &[
        "-seconds",
        "1",
        "rsa2048",
        "rsa3072",
        "ed25519",
        "ecdsap256",
        "ecdhp256",
        "ecdhx25519",
    ],
    &["-seconds", "1", "-evp", "aes-128-gcm"],
    &["-seconds", "1", "-evp", "sha256"],
];
