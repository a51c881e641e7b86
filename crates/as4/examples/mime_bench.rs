//! MIME build/parse benchmark for a large attachment (not a test).
//!
//! Generates an attachment on the fly (xorshift bytes, nothing stored in the repository),
//! builds a `multipart/related` package into a temporary file, parses it back with the
//! streaming reader (which spills the attachment to its own temporary file), checks the
//! digest, and prints throughput and peak RSS (`VmHWM`). The figures are written to the
//! section "MIME parse/build (1 GiB attachment)" of `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p varti-as4 --example mime_bench [-- SIZE_MIB]
//! ```

use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::time::Instant;

use openssl::sha::Sha256;
use varti_as4::message::mime::{MimeLimits, MimePackage, MimeWriter};

/// Deterministic pseudo-random bytes, `remaining` of them.
struct Generator {
    state: u64,
    remaining: u64,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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

fn vm_hwm_kib() -> u64 {
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

fn cpu_model() -> String {
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1024);
    let size = size_mib << 20;
    let seed = 0x9E37_79B9_7F4A_7C15u64;
    let mib = |bytes: u64, secs: f64| bytes as f64 / (1024.0 * 1024.0) / secs;

    // Expected digest, computed outside the timed sections.
    let mut expected = Sha256::new();
    let mut gen = Generator {
        state: seed,
        remaining: size,
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = gen.read(&mut buf)?;
        if n == 0 {
            break;
        }
        expected.update(&buf[..n]);
    }
    let expected = expected.finish();
    let hwm_start = vm_hwm_kib();

    // Build into a temporary file.
    let wire = tempfile::tempfile()?;
    let t = Instant::now();
    let mut w = MimeWriter::new(io::BufWriter::with_capacity(256 * 1024, wire));
    let content_type = w.content_type();
    w.write_root(b"<S12:Envelope xmlns:S12=\"http://www.w3.org/2003/05/soap-envelope\"><S12:Header/><S12:Body/></S12:Envelope>")?;
    let mut payload = Generator {
        state: seed,
        remaining: size,
    };
    w.write_attachment(
        "payload-1@varti.bench",
        "application/octet-stream",
        &[],
        &mut payload,
    )?;
    let mut wire = w.finish()?.into_inner().map_err(|e| e.into_error())?;
    wire.flush()?;
    let build_secs = t.elapsed().as_secs_f64();
    let wire_len = wire.seek(io::SeekFrom::End(0))?;
    wire.rewind()?;

    // Parse it back.
    let t = Instant::now();
    let pkg = MimePackage::parse(
        io::BufReader::with_capacity(256 * 1024, wire),
        &content_type,
        &MimeLimits::default(),
    )?;
    let parse_secs = t.elapsed().as_secs_f64();
    let a = &pkg.attachments()[0];
    assert_eq!(a.len(), size, "attachment length");
    assert_eq!(a.sha256(), expected, "attachment digest");
    assert!(a.is_spilled(), "the attachment must be in a file");
    let hwm_end = vm_hwm_kib();

    let build_rate = mib(wire_len, build_secs);
    let parse_rate = mib(wire_len, parse_secs);
    let peak_mib = hwm_end as f64 / 1024.0;
    println!("attachment: {size_mib} MiB, package on the wire: {wire_len} bytes");
    println!(
        "build: {build_secs:.2} s, {build_rate:.0} MiB/s (generator + writer into a temp file)"
    );
    println!("parse: {parse_secs:.2} s, {parse_rate:.0} MiB/s (delimiter scan + SHA-256 + spill to a temp file)");
    println!(
        "peak RSS (VmHWM): {peak_mib:.1} MiB (before build: {:.1} MiB)",
        hwm_start as f64 / 1024.0
    );
    if peak_mib >= 64.0 {
        eprintln!("WARNING: peak RSS is over the 64 MiB target");
    }

    let date = time::OffsetDateTime::now_utc().date();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let section = format!(
        "## MIME parse/build (1 GiB attachment)\n\n\
         Measured by `cargo run --release -p varti-as4 --example mime_bench` on {date}, \
         {cores} cores ({cpu}), shared with other jobs.\n\
         The attachment ({size_mib} MiB of generated bytes) is written with `MimeWriter` into \
         a temporary file, then parsed back by `MimePackage::parse`, which spills it to its \
         own temporary file and computes its SHA-256 while streaming.\n\n\
         | Figure | Value |\n|---|---|\n\
         | Package size on the wire | {wire_len} bytes |\n\
         | Build throughput | {build_rate:.0} MiB/s ({build_secs:.2} s) |\n\
         | Parse throughput | {parse_rate:.0} MiB/s ({parse_secs:.2} s) |\n\
         | Peak RSS (VmHWM, whole process) | {peak_mib:.1} MiB (target: under 64 MiB) |\n",
        cpu = cpu_model(),
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md");
    let old = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| "# Benchmarks\n\nFigures measured on the project's machines.\n".into());
    let heading = "## MIME parse/build (1 GiB attachment)";
    let new = match old.find(heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + heading.len() + i + 1);
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!(
            "{}\n{}",
            old.trim_end_matches('\n').to_string() + "\n",
            section
        ),
    };
    if size_mib == 1024 {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, new)?;
        println!("figures written to {}", path.display());
    } else {
        println!("(not a 1 GiB run: docs/benchmarks.md left unchanged)");
    }
    Ok(())
}
