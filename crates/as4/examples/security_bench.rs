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
//! The output ends with a markdown section for `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p varti-as4 --example security_bench
//! cargo run --release -p varti-as4 --example security_bench -- --one-gib [SIZE_MIB]
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
use varti_as4::outbound::{send, OutgoingPayload, SendPolicy};
use varti_as4::security::profile::{Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
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
}

fn setup<'a>(case: &'a Case, spool: &Path) -> Result<Setup<'a>> {
    let alice = keys(case, "alice")?;
    let bob = keys(case, "bob")?;
    let mut policy = ReceivePolicy::strict(case.profile);
    policy.decryption = Some((bob.enc_key.clone().into(), bob.enc_cert.clone()));
    policy.partner_certificates = vec![alice.sign_cert.clone()];
    policy.trust_anchors = vec![alice.sign_cert.clone()];
    policy.spool_dir = Some(spool.to_path_buf());
    Ok(Setup {
        case,
        alice,
        bob,
        policy,
    })
}

/// Seals one message with a `size`-byte generated payload into `path`; returns its
/// Content-Type.
fn seal_to(s: &Setup<'_>, size: u64, path: &Path) -> Result<String> {
    let mut content = Generator::new(size);
    let payloads = vec![OutgoingPayload {
        content_id: "payload-1@varti.bench".into(),
        mime_type: "application/octet-stream".into(),
        properties: vec![],
        content: &mut content,
    }];
    let policy = SendPolicy::new(
        s.case.profile,
        TokenReference::BinarySecurityToken,
        &s.alice.sign_key,
        &s.alice.sign_cert,
        Some(&s.bob.enc_cert),
        false,
    );
    let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
    let sent = send(&user_message(), payloads, &policy, &mut out).map_err(|e| e.to_string())?;
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
         `openssl speed -seconds 1 rsa2048 rsa3072 ed25519 ecdsap256 ecdhp256 ecdhx25519`, \
         `openssl speed -seconds 1 -evp aes-128-gcm` and `-evp sha256` on the same \
         machine:\n\n```text\n{}\n```",
        rows.join("\n"),
        speed.join("\n"),
        cpu = cpu_model(),
    );
    Ok(())
}
