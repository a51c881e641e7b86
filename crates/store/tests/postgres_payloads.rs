//! Payload streaming through PostgreSQL: a 50 MB payload goes in and out while the process's
//! peak memory grows by far less than its size. In its own test binary, beside only a test
//! that moves a few hundred KiB, so nothing else moves the peak (VmHWM) it measures.

use std::io::{self, Read};
use varti_store::postgres::testing::TestSchema;
use varti_store::postgres::CHUNK_SIZE;
use varti_store::{PayloadRef, PayloadStore, StoreError};

const SIZE: u64 = 50 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift), generated on the fly: the test itself
/// never holds the payload either.
struct Generated {
    state: u64,
    left: u64,
}

impl Generated {
    fn new(seed: u64, len: u64) -> Self {
        Generated {
            state: seed | 1,
            left: len,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Odd-sized reads exercise chunk boundaries that do not line up with ours.
        let n = (buf.len().min(100_003) as u64).min(self.left) as usize;
        for byte in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *byte = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The process's peak resident set size so far, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_50_mb_payload_streams_in_and_out_in_bounded_memory() {
    let schema = TestSchema::migrated();
    let store = schema.store();
    let payloads = store.pg_payloads();
    // Warm up: connections, statement caches, allocator arenas.
    let small = payloads.put(&mut Generated::new(1, 100_000)).unwrap();
    io::copy(&mut payloads.open(&small).unwrap(), &mut io::sink()).unwrap();
    let before = peak_rss_kib();

    let stored = payloads.put(&mut Generated::new(42, SIZE)).unwrap();
    assert_eq!(stored.size, SIZE);
    let mut reader = payloads.open(&stored).unwrap();
    let mut expected = Generated::new(42, SIZE);
    let (mut got, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut got).unwrap();
        if n == 0 {
            break;
        }
        expected.read_exact(&mut want[..n]).unwrap();
        assert!(got[..n] == want[..n], "bytes differ at offset {total}");
        total += n as u64;
    }
    assert_eq!(total, SIZE);

    let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    eprintln!("peak RSS grew by {grown_mib} MiB for a 50 MiB payload");
    assert!(
        grown_mib < 16,
        "peak memory grew by {grown_mib} MiB while streaming 50 MiB: the payload was buffered"
    );

    let mut db = postgres::Client::connect(schema.url(), postgres::NoTls).unwrap();
    let chunks: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.payload_chunks WHERE payload_id = $1",
                schema.name()
            ),
            &[&stored.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(chunks as u64, SIZE.div_ceil(CHUNK_SIZE as u64));

    payloads.remove(&stored).unwrap();
    payloads.remove(&stored).unwrap();
    assert!(matches!(
        payloads.open(&stored),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn a_failed_upload_leaves_nothing_and_hostile_ids_are_refused() {
    struct BreaksAfter(Generated);
    impl Read for BreaksAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other("peer reset")),
                n => Ok(n),
            }
        }
    }
    let schema = TestSchema::migrated();
    let store = schema.store();
    let payloads = store.pg_payloads();
    let err = payloads
        .put(&mut BreaksAfter(Generated::new(
            7,
            3 * CHUNK_SIZE as u64 / 2,
        )))
        .unwrap_err();
    assert!(err.to_string().contains("peer reset"), "{err}");
    let mut db = postgres::Client::connect(schema.url(), postgres::NoTls).unwrap();
    let rows: i64 = db
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {s}.payloads) + \
                 (SELECT count(*) FROM {s}.payload_chunks)",
                s = schema.name()
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "a failed upload keeps no rows");

    // Empty payloads round-trip too.
    let empty = payloads.put(&mut io::empty()).unwrap();
    assert_eq!(empty.size, 0);
    let mut out = Vec::new();
    payloads
        .open(&empty)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert!(out.is_empty());

    for id in ["../../etc/passwd", "", "x' OR '1'='1"] {
        let r = PayloadRef::stored(id, 0, None);
        assert!(
            matches!(payloads.open(&r), Err(StoreError::InvalidInput(_))),
            "{id}"
        );
    }
}
