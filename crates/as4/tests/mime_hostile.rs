//! Hostile MIME input: each case must end in a clear error (EBMS:0007 for packaging
//! faults), never a panic, with bounded memory.

use std::io::{self, Read};

use proptest::prelude::*;
use varti_as4::message::dump::read_dump;
use varti_as4::message::mime::{ContentType, MimeError, MimeLimits, MimePackage, MimeParser};
use varti_as4::ErrorCode;

const CT: &str = "multipart/related; type=\"application/soap+xml\"; boundary=\"b1\"";

fn parse(body: &[u8]) -> Result<MimePackage, MimeError> {
    MimePackage::parse(body, CT, &MimeLimits::default())
}

fn expect_0007(r: Result<MimePackage, MimeError>, needle: &str) -> MimeError {
    let e = r.expect_err("hostile input must be refused");
    assert_eq!(e.to_ebms().code, ErrorCode::MimeInconsistency, "{e}");
    assert!(
        e.to_string().contains(needle),
        "error `{e}` should mention `{needle}`"
    );
    e
}

/// Peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn well_formed_reference_parses() {
    // The baseline the hostile variants below are derived from.
    let body = b"--b1\r\nContent-Type: application/soap+xml\r\n\r\n<e/>\r\n--b1\r\nContent-ID: <a@x>\r\n\r\nDATA\r\n--b1--\r\n";
    let p = parse(body).unwrap();
    assert_eq!(p.root().content, b"<e/>");
    assert_eq!(p.attachments()[0].len(), 4);
}

#[test]
fn truncated_mime_is_refused() {
    let body = b"--b1\r\nContent-Type: application/soap+xml\r\n\r\n<e/>\r\n--b1\r\nContent-ID: <a@x>\r\n\r\nDATA";
    for cut in [body.len(), body.len() - 3, 30, 10, 3] {
        expect_0007(parse(&body[..cut]), "");
    }
    expect_0007(parse(body), "truncated");
}

#[test]
fn missing_boundary_is_refused() {
    let body = b"--b1\r\n\r\n<e/>\r\n--b1--\r\n";
    let no_param = MimePackage::parse(
        &body[..],
        "multipart/related; type=\"application/soap+xml\"",
        &MimeLimits::default(),
    );
    expect_0007(no_param, "no boundary parameter");
    // The parameter names a boundary the body never uses.
    let other = MimePackage::parse(
        &body[..],
        "multipart/related; boundary=zz",
        &MimeLimits::default(),
    );
    expect_0007(other, "no part starts with the boundary");
    expect_0007(parse(b""), "no part starts with the boundary");
}

#[test]
fn duplicate_content_ids_are_refused() {
    let body = b"--b1\r\n\r\n<e/>\r\n--b1\r\nContent-ID: <a@x>\r\n\r\n1\r\n--b1\r\nContent-ID: a@x\r\n\r\n2\r\n--b1--\r\n";
    expect_0007(parse(body), "<a@x>");
}

#[test]
fn start_naming_no_part_is_refused() {
    let body = b"--b1\r\nContent-ID: <r@x>\r\n\r\n<e/>\r\n--b1--\r\n";
    let r = MimePackage::parse(
        &body[..],
        "multipart/related; boundary=b1; start=\"<other@x>\"",
        &MimeLimits::default(),
    );
    expect_0007(r, "other@x");
}

/// A reader producing `prefix` then `filler` bytes forever, counting what was read.
struct Endless<'a> {
    prefix: &'a [u8],
    filler: u8,
    read: u64,
}

impl Read for Endless<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix = &self.prefix[n..];
            n
        } else {
            buf.fill(self.filler);
            buf.len()
        };
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn oversized_part_header_block_is_refused_early() {
    let mut src = Endless {
        prefix: b"--b1\r\nX-Long: ",
        filler: b'a',
        read: 0,
    };
    let limits = MimeLimits::default();
    let e = MimePackage::parse(&mut src, CT, &limits).unwrap_err();
    assert!(matches!(e, MimeError::LimitExceeded(_)), "{e}");
    assert!(e.to_string().contains("header block"), "{e}");
    assert_eq!(e.to_ebms().code, ErrorCode::MimeInconsistency);
    // Refused after about one limit's worth of input, not after reading everything.
    assert!(
        src.read < (limits.max_header_block as u64) * 4,
        "{}",
        src.read
    );
}

#[test]
fn endless_root_part_hits_the_root_limit() {
    let mut src = Endless {
        prefix: b"--b1\r\n\r\n",
        filler: b'x',
        read: 0,
    };
    let limits = MimeLimits {
        max_root_size: 1 << 20,
        ..MimeLimits::default()
    };
    let e = MimePackage::parse(&mut src, CT, &limits).unwrap_err();
    assert!(e.to_string().contains("root part"), "{e}");
    assert!(src.read < 3 << 20);
}

#[test]
fn two_gib_declared_content_length_is_not_allocated() {
    let before = vm_hwm_kib();
    // As a part header: over a configured part limit, refused before the body is read.
    let body = b"--b1\r\n\r\n<e/>\r\n--b1\r\nContent-ID: <a@x>\r\nContent-Length: 2147483648\r\n\r\nsmall\r\n--b1--\r\n";
    let limits = MimeLimits {
        max_part_size: 1 << 30,
        ..MimeLimits::default()
    };
    let e = MimePackage::parse(&body[..], CT, &limits).unwrap_err();
    assert!(matches!(e, MimeError::LimitExceeded(_)), "{e}");
    assert!(e.to_string().contains("2147483648"), "{e}");
    // Within the limit, the declared length must match what is carried.
    expect_0007(parse(body), "carries 5 bytes");
    // As an HTTP header of a dump with a short body.
    let dump = b"Content-Type: multipart/related; boundary=b1\r\nContent-Length: 2147483648\r\n\r\n--b1\r\n\r\n<e/>\r\n--b1--\r\n";
    let e = read_dump(&dump[..], &MimeLimits::default()).unwrap_err();
    assert!(
        e.to_string().contains("Content-Length says 2147483648"),
        "{e}"
    );
    let small = MimeLimits {
        max_total_size: 1 << 30,
        ..MimeLimits::default()
    };
    let e = read_dump(&dump[..], &small).unwrap_err();
    assert!(matches!(e, MimeError::LimitExceeded(_)), "{e}");
    let grown_mib = (vm_hwm_kib() - before) / 1024;
    assert!(grown_mib < 256, "peak RSS grew by {grown_mib} MiB");
}

#[test]
fn hundred_thousand_tiny_parts_exceed_the_part_limit() {
    let mut body = Vec::new();
    for i in 0..100_000 {
        body.extend_from_slice(format!("--b1\r\nContent-ID: <p{i}@x>\r\n\r\nx\r\n").as_bytes());
    }
    body.extend_from_slice(b"--b1--\r\n");
    let e = parse(&body).unwrap_err();
    assert!(matches!(e, MimeError::LimitExceeded(_)), "{e}");
    assert!(e.to_string().contains("more than 1000 parts"), "{e}");
    // With a limit that allows them, the same input parses.
    let limits = MimeLimits {
        max_parts: 100_000,
        ..MimeLimits::default()
    };
    let p = MimePackage::parse(&body[..], CT, &limits).unwrap();
    assert_eq!(p.attachments().len(), 99_999);
}

#[test]
fn malformed_headers_and_encodings_are_refused() {
    expect_0007(
        parse(b"--b1\r\nno colon here\r\n\r\n<e/>\r\n--b1--\r\n"),
        "has no `:`",
    );
    expect_0007(
        parse(b"--b1\r\n\r\n<e/>\r\n--b1\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@@\r\n--b1--\r\n"),
        "not base64",
    );
    expect_0007(
        parse(b"--b1\r\n\r\n<e/>\r\n--b1\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\nQQ\r\n--b1--\r\n"),
        "incomplete quantum",
    );
    let qp = parse(
        b"--b1\r\n\r\n<e/>\r\n--b1\r\nContent-Transfer-Encoding: x-custom\r\n\r\nq\r\n--b1--\r\n",
    )
    .unwrap_err();
    assert_eq!(
        qp.to_ebms().code,
        ErrorCode::FeatureNotSupportedInconsistency
    );
    expect_0007(parse(b"--b1--\r\n"), "no parts");
    expect_0007(
        MimePackage::parse(&b""[..], "text/plain", &MimeLimits::default()),
        "not multipart",
    );
    let long = format!("multipart/related; boundary={}", "x".repeat(71));
    assert!(ContentType::parse(&long).is_ok());
    expect_0007(
        MimePackage::parse(&b""[..], &long, &MimeLimits::default()),
        "1 to 70",
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes, fed in arbitrary chunks, never panic the parser.
    #[test]
    fn arbitrary_input_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        prefix in prop_oneof![Just(&b""[..]), Just(&b"--b1\r\n"[..]), Just(&b"--b1\r\n\r\n"[..])],
        chunk in 1usize..64,
    ) {
        let ct = ContentType::parse(CT).unwrap();
        let limits = MimeLimits { max_header_block: 256, max_parts: 8, spill_threshold: 64, ..MimeLimits::default() };
        let mut p = MimeParser::new(&ct, limits).unwrap();
        let mut input = prefix.to_vec();
        input.extend_from_slice(&data);
        let mut failed = false;
        for c in input.chunks(chunk) {
            if p.feed(c).is_err() { failed = true; break; }
        }
        if !failed {
            let _ = p.finish();
        }
    }
}
