//! WS-Security benchmark: sign+encrypt and decrypt+verify per second (not a test).
//!
//! For each profile (AS4 1.15 with RSA-2048 and RSA-3072 keys and RSA-OAEP key transport,
//! AS4 2.0 Ed25519 + X25519, AS4 2.0 ECDSA P-256 + ECDH-ES) it measures how many messages
//! per second `outbound::send` seals (signed, encrypted, not compressed) into a file, and
//! how many `MimePackage::parse` + `inbound::receive` open from that file (decrypted and
//! verified, payload delivered to a spool file), for a 10 KiB and a 10 MiB payload. Each
//! figure is bounded in iterations and time so the whole run stays under three minutes on
//! two cores. A child run of this binary (`--one-gib`) then sends and receives one 1 GiB
//! attachment, generated on the fly, through temporary files, and reports its peak RSS
//! (`VmHWM`). Last, `openssl speed` of the same primitives is run for comparison.
//!
//! It also times the protocol's whole work for one small exchange, in memory on one
//! thread, as `exchange_bench` makes the servers do it: the sender seals (compressed,
//! signed, encrypted), the receiver opens and verifies it and signs a non-repudiation
//! receipt, the sender verifies the receipt and checks its references. No store, no HTTP,
//! no TLS: the sum is the CPU the AS4 layer alone costs per message, the floor under
//! `exchange_bench`'s `CPU per message` line.
//!
//! The output ends with a markdown section for `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p varti-as4 --example security_bench
//! cargo run --release -p varti-as4 --example security_bench -- --one-gib [SIZE_MIB]
//! cargo run --release -p varti-as4 --example security_bench -- --exchange [N [LABEL-PART]]
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration as StdDuration, Instant};

use bench_support::{cpu_model, vm_hwm_kib, Generator, OPENSSL_SPEED_RUNS};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use support::Keys;
use time::OffsetDateTime;
use varti_as4::inbound::{receive, ReceivePolicy};
use varti_as4::message::mime::{MimeLimits, MimePackage};
use varti_as4::message::model::*;
use varti_as4::outbound::{
    build_receipt, check_receipt, send, OutgoingPayload, SendPolicy, SentMessage,
};
use varti_as4::security::profile::{Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
use varti_as4::security::sign::SigningIdentity;
use varti_as4::security::token::TokenReference;

mod bench_support;
// The certificates and the user message of the pipeline tests.
#[path = "../tests/support/mod.rs"]
mod support;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One benchmarked configuration: a signature profile and the key type it is used with.
struct Case {
    label: &'static str,
    profile: &'static Profile,
    rsa_bits: u32,
}

const CASES: [Case; 4] = [
    Case {
        label: "AS4 1.15, RSA-2048, rsa-oaep",
        profile: &AS4_1_15,
        rsa_bits: 2048,
    },
    Case {
        label: "AS4 1.15, RSA-3072, rsa-oaep",
        profile: &AS4_1_15,
        rsa_bits: 3072,
    },
    Case {
        label: "AS4 2.0, Ed25519 + X25519",
        profile: &AS4_2_0_EDDSA,
        rsa_bits: 0,
    },
    Case {
        label: "AS4 2.0, ECDSA P-256 + ECDH-ES",
        profile: &AS4_2_0_ECDSA,
        rsa_bits: 0,
    },
];

/// The profile used for the 1 GiB peak-RSS run (payload cost is the same in every
/// profile: SHA-256 and AES-128-GCM over the attachment).
const ONE_GIB_CASE: usize = 2;

/// The parties' keys of `case`: the tests' keys of the profile, or for RSA cases one key
/// of `rsa_bits` for signing and encryption.
fn keys(case: &Case, cn: &str) -> Result<Keys> {
    if case.rsa_bits == 0 {
        return Ok(support::keys(case.profile, cn));
    }
    let key = PKey::from_rsa(Rsa::generate(case.rsa_bits)?)?;
    let cert = support::cert(&key, cn, None, -1, 365);
    Ok(Keys {
        sign_key: key.clone(),
        sign_cert: cert.clone(),
        enc_key: key,
        enc_cert: cert,
    })
}

/// The tests' user message, under the benchmark's ids and service.
fn user_message() -> UserMessage {
    let mut um = support::user_message();
    um.message_info = MessageInfo::new(format!("{}@varti.bench", uuid::Uuid::new_v4()));
    um.collaboration_info.service.value = "urn:varti:bench".into();
    um.collaboration_info.conversation_id = "bench".into();
    um
}

/// Two parties' keys and the receiver's policy for one case.
struct Setup<'a> {
    case: &'a Case,
    alice: Keys,
    bob: Keys,
    policy: ReceivePolicy,
    /// The sender's policy for the receiver's receipts (signed by bob, not encrypted).
    receipt_policy: ReceivePolicy,
}

fn setup<'a>(case: &'a Case, spool: &Path) -> Result<Setup<'a>> {
    let alice = keys(case, "alice")?;
    let bob = keys(case, "bob")?;
    let mut policy = ReceivePolicy::strict(case.profile);
    policy.decryption = Some((bob.enc_key.clone().into(), bob.enc_cert.clone()));
    policy.partner_certificates = vec![alice.sign_cert.clone()];
    policy.trust_anchors = vec![alice.sign_cert.clone()];
    policy.spool_dir = Some(spool.to_path_buf());
    let mut receipt_policy = ReceivePolicy::strict(case.profile);
    receipt_policy.require_encryption = false;
    receipt_policy.partner_certificates = vec![bob.sign_cert.clone()];
    receipt_policy.trust_anchors = vec![bob.sign_cert.clone()];
    Ok(Setup {
        case,
        alice,
        bob,
        policy,
        receipt_policy,
    })
}

/// Seals one message from alice to bob with a `size`-byte generated payload, gzipped when
/// `compress`, into `out`.
fn seal(s: &Setup<'_>, size: u64, compress: bool, out: &mut dyn Write) -> Result<SentMessage> {
    let mut content = Generator::new(size);
    let payloads = vec![OutgoingPayload {
        content_id: "payload-1@varti.bench".into(),
        mime_type: "application/octet-stream".into(),
        properties: vec![],
        content: &mut content,
        content_is_gzip: false,
        reopen: None,
        sha256: None,
    }];
    let policy = SendPolicy::new(
        s.case.profile,
        TokenReference::BinarySecurityToken,
        &s.alice.sign_key,
        &s.alice.sign_cert,
        Some(&s.bob.enc_cert),
        compress,
    );
    Ok(send(&user_message(), payloads, &policy, out).map_err(|e| e.to_string())?)
}

/// Seals one message with a `size`-byte generated payload, not compressed, into `path`;
/// returns its Content-Type.
fn seal_to(s: &Setup<'_>, size: u64, path: &Path) -> Result<String> {
    let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
    let sent = seal(s, size, false, &mut out)?;
    out.flush()?;
    Ok(sent.content_type)
}

/// Parses, decrypts and verifies the message in `path`; checks the delivered length.
fn open_from(s: &Setup<'_>, path: &Path, content_type: &str, size: u64) -> Result<()> {
    let input = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let pkg = MimePackage::parse(input, content_type, &MimeLimits::default())
        .map_err(|e| e.to_string())?;
    let received = receive(&pkg, &s.policy).map_err(|e| e.to_string())?;
    if received.signature.is_none() || received.encryption.is_none() {
        return Err("the message was not both signed and encrypted".into());
    }
    let delivered = received.payloads.first().map_or(0, |p| p.len);
    if delivered != size {
        return Err(format!("delivered {delivered} bytes, expected {size}").into());
    }
    Ok(())
}

/// The CPU time of one small exchange's protocol work, stage by stage, in milliseconds.
#[derive(Default)]
struct ExchangeWork {
    seal: f64,
    open: f64,
    receipt: f64,
    check: f64,
}

impl ExchangeWork {
    fn total(&self) -> f64 {
        self.seal + self.open + self.receipt + self.check
    }
}

/// Times [`exchange_once`] `n` times (after a warm-up) and returns each stage's mean.
fn exchange_work(s: &Setup<'_>, size: u64, n: u32) -> Result<ExchangeWork> {
    exchange_once(s, size)?;
    let mut sum = ExchangeWork::default();
    for _ in 0..n {
        let one = exchange_once(s, size)?;
        sum.seal += one.seal;
        sum.open += one.open;
        sum.receipt += one.receipt;
        sum.check += one.check;
    }
    let n = f64::from(n);
    Ok(ExchangeWork {
        seal: sum.seal / n,
        open: sum.open / n,
        receipt: sum.receipt / n,
        check: sum.check / n,
    })
}

/// One small exchange in memory, as the two servers of `exchange_bench` do it (their legs
/// compress, sign, encrypt and ask for signed non-repudiation receipts), each stage timed
/// in thread CPU time.
fn exchange_once(s: &Setup<'_>, size: u64) -> Result<ExchangeWork> {
    let mut work = ExchangeWork::default();
    // The sender seals the message.
    let t = ThreadCpu::start();
    let mut wire = Vec::with_capacity(size as usize + 16 * 1024);
    let sent = seal(s, size, true, &mut wire)?;
    work.seal = t.ms();
    // The receiver opens, decrypts, verifies and inflates it.
    let t = ThreadCpu::start();
    let pkg = MimePackage::parse(&wire[..], &sent.content_type, &MimeLimits::default())
        .map_err(|e| e.to_string())?;
    let received = receive(&pkg, &s.policy).map_err(|e| e.to_string())?;
    if received.payloads.first().map_or(0, |p| p.len) != size {
        return Err("the exchange delivered the wrong payload size".into());
    }
    work.open = t.ms();
    // The receiver signs its non-repudiation receipt.
    let t = ThreadCpu::start();
    let bob = SigningIdentity {
        profile: s.case.profile,
        key: &s.bob.sign_key,
        certificate: &s.bob.sign_cert,
        token_reference: TokenReference::BinarySecurityToken,
    };
    let receipt = build_receipt(&received, Some(&bob)).map_err(|e| e.to_string())?;
    work.receipt = t.ms();
    // The sender reads the receipt, verifies its signature and checks its references.
    let t = ThreadCpu::start();
    let package = MimePackage::read_http_body(
        receipt.as_bytes(),
        "application/soap+xml; charset=UTF-8",
        &MimeLimits::default(),
    )
    .map_err(|e| e.to_string())?;
    let signal = receive(&package, &s.receipt_policy).map_err(|e| e.to_string())?;
    check_receipt(&signal, &sent.message_id, &sent.references).map_err(|e| e.to_string())?;
    work.check = t.ms();
    Ok(work)
}

/// The calling thread's CPU time since [`ThreadCpu::start`].
struct ThreadCpu(StdDuration);

impl ThreadCpu {
    fn now() -> StdDuration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        StdDuration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    fn start() -> ThreadCpu {
        ThreadCpu(Self::now())
    }
    fn ms(&self) -> f64 {
        (Self::now() - self.0).as_secs_f64() * 1000.0
    }
}

/// Runs `op` until `budget` has passed or `max` iterations are done (at least one);
/// returns operations per second.
fn rate(budget: StdDuration, max: u32, mut op: impl FnMut() -> Result<()>) -> Result<(f64, u32)> {
    let start = Instant::now();
    let mut n = 0;
    while n == 0 || (n < max && start.elapsed() < budget) {
        op()?;
        n += 1;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

/// Child mode: one large message through send and receive, then the peak RSS. Prints one
/// `ONE_GIB key=value ...` line for the parent.
fn one_gib(size_mib: u64) -> Result<()> {
    let size = size_mib << 20;
    let dir = tempfile::tempdir()?;
    let case = &CASES[ONE_GIB_CASE];
    let s = setup(case, dir.path())?;
    let wire = dir.path().join("message.mime");
    let t = Instant::now();
    let content_type = seal_to(&s, size, &wire)?;
    let send_secs = t.elapsed().as_secs_f64();
    let hwm_send = vm_hwm_kib();
    let wire_len = std::fs::metadata(&wire)?.len();
    let t = Instant::now();
    open_from(&s, &wire, &content_type, size)?;
    let receive_secs = t.elapsed().as_secs_f64();
    let hwm = vm_hwm_kib();
    println!(
        "ONE_GIB size_mib={size_mib} wire={wire_len} send_secs={send_secs:.2} \
         receive_secs={receive_secs:.2} hwm_after_send_kib={hwm_send} hwm_kib={hwm}"
    );
    Ok(())
}

/// Runs `openssl speed` with `args` and keeps the header and result lines.
fn openssl_speed(args: &[&str]) -> Vec<String> {
    match Command::new("openssl").arg("speed").args(args).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !t.is_empty()
                    && !t.starts_with("Doing")
                    && !t.starts_with("version")
                    && !t.starts_with("built on")
                    && !t.starts_with("options")
                    && !t.starts_with("compiler")
                    && !t.starts_with("CPUINFO")
                    && !t.starts_with("The '")
            })
            .map(str::to_string)
            .collect(),
        Err(e) => vec![format!("(openssl speed could not run: {e})")],
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one-gib") {
        let size_mib = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1024);
        return one_gib(size_mib);
    }

    let dir = tempfile::tempdir()?;
    if args.first().map(String::as_str) == Some("--exchange") {
        // The exchange rows alone, `N` exchanges per profile: what to run under a profiler.
        let n = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(2000);
        let only = args.get(2).map(String::as_str).unwrap_or("");
        for case in CASES.iter().filter(|c| c.label.contains(only)) {
            let s = setup(case, dir.path())?;
            let w = exchange_work(&s, 10 << 10, n)?;
            println!("{}: total {:.3} ms", case.label, w.total());
        }
        return Ok(());
    }
    let sizes: [(&str, u64, StdDuration, u32); 2] = [
        ("10 KiB", 10 << 10, StdDuration::from_millis(1500), 400),
        ("10 MiB", 10 << 20, StdDuration::from_millis(2500), 20),
    ];
    let mut rows = Vec::new();
    for case in &CASES {
        let s = setup(case, dir.path())?;
        for (size_label, size, budget, max) in sizes {
            let wire = dir.path().join("message.mime");
            let mut content_type = String::new();
            let (send_rate, send_n) = rate(budget, max, || {
                content_type = seal_to(&s, size, &wire)?;
                Ok(())
            })?;
            let (recv_rate, recv_n) =
                rate(budget, max, || open_from(&s, &wire, &content_type, size))?;
            let mib = size as f64 / (1024.0 * 1024.0);
            let row = format!(
                "| {} | {size_label} | {send_rate:.1} ({:.1} MiB/s, n={send_n}) | \
                 {recv_rate:.1} ({:.1} MiB/s, n={recv_n}) |",
                case.label,
                send_rate * mib,
                recv_rate * mib,
            );
            println!("{row}");
            rows.push(row);
        }
    }

    // One small exchange's protocol work, stage by stage (thread CPU time).
    let mut exchange_rows = Vec::new();
    for case in &CASES {
        let s = setup(case, dir.path())?;
        let w = exchange_work(&s, 10 << 10, 200)?;
        let stages = [
            ("seal", w.seal),
            ("open", w.open),
            ("receipt", w.receipt),
            ("receipt check", w.check),
            ("total", w.total()),
        ];
        let line: Vec<String> = stages
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.3} ms"))
            .collect();
        println!(
            "protocol work per message ({}, 10 KiB, one thread): {}",
            case.label,
            line.join(", ")
        );
        let cells: Vec<String> = stages.iter().map(|(_, ms)| format!("{ms:.3}")).collect();
        exchange_rows.push(format!("| {} | {} |", case.label, cells.join(" | ")));
    }

    // The 1 GiB run in a child process, so its VmHWM is not this process's.
    let size_mib = args
        .first()
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(1024);
    let child = Command::new(std::env::current_exe()?)
        .args(["--one-gib", &size_mib.to_string()])
        .output()?;
    let child_out = String::from_utf8_lossy(&child.stdout).to_string();
    if !child.status.success() {
        return Err(format!(
            "the --one-gib run failed: {}{}",
            child_out,
            String::from_utf8_lossy(&child.stderr)
        )
        .into());
    }
    let field = |key: &str| -> String {
        child_out
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    let kib_to_mib = |v: String| v.parse::<f64>().map_or(v, |k| format!("{:.1}", k / 1024.0));
    let big = format!(
        "{size_mib} MiB attachment ({}): send {} s, receive {} s, wire {} bytes; \
         peak RSS (VmHWM) {} MiB after send, {} MiB after receive",
        CASES[ONE_GIB_CASE].label,
        field("send_secs"),
        field("receive_secs"),
        field("wire"),
        kib_to_mib(field("hwm_after_send_kib")),
        kib_to_mib(field("hwm_kib")),
    );
    println!("{big}");

    let speed: Vec<String> = OPENSSL_SPEED_RUNS
        .iter()
        .flat_map(|args| openssl_speed(args))
        .collect();

    let date = OffsetDateTime::now_utc().date();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\n## WS-Security: sign+encrypt / decrypt+verify\n\n\
         Measured by `cargo run --release -p varti-as4 --example security_bench` on {date}, \
         {cores} cores ({cpu}), shared with other jobs at the time.\n\
         One payload of generated (incompressible) bytes, signed and encrypted, not \
         compressed, BinarySecurityToken references. Sign+encrypt is `outbound::send` into a \
         file; decrypt+verify is `MimePackage::parse` of that file + `inbound::receive` \
         (payload delivered to a spool file). Messages per second (payload MiB/s, \
         iterations).\n\n\
         | Profile | Payload | sign+encrypt msg/s | decrypt+verify msg/s |\n\
         |---|---|---|---|\n{}\n\n\
         {big}.\n\n\
         One small exchange's protocol work (10 KiB, compressed, signed, encrypted, signed \
         non-repudiation receipt), in memory on one thread, CPU ms per stage: the sender \
         seals; the receiver parses, decrypts, verifies and inflates; it signs the receipt; \
         the sender verifies the receipt and checks its references.\n\n\
         | Profile | seal | open | receipt | receipt check | total |\n\
         |---|---|---|---|---|---|\n{}\n\n\
         `openssl speed -seconds 1 rsa2048 rsa3072 ed25519 ecdsap256 ecdhp256 ecdhx25519`, \
         `openssl speed -seconds 1 -evp aes-128-gcm` and `-evp sha256` on the same \
         machine:\n\n```text\n{}\n```",
        rows.join("\n"),
        exchange_rows.join("\n"),
        speed.join("\n"),
        cpu = cpu_model(),
    );
    Ok(())
}
