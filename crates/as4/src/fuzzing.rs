//! The bodies of the fuzz targets of this crate, shared by the fuzzers (`fuzz/` at the
//! repository root) and by the corpus tests (`tests/fuzz_corpus.rs`), so a corpus file
//! means the same thing to both. Not part of Varti's API: hidden from the documentation
//! and free to change.
//!
//! Each function takes the fuzzer's bytes, runs one entry point of the crate on them and
//! panics only when an invariant that must hold for *any* input is broken (the fuzzer
//! reports that panic as a crash); refusals of bad input are the expected outcome.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use time::OffsetDateTime;

use crate::inbound::{self, ReceivePolicy};
use crate::message::dump::{read_dump, MessageDump};
use crate::message::mime::{MimeLimits, MimePackage};
use crate::message::soap::{self, BuildOptions, ParseLimits};
use crate::pmode::files::{self, LoadOptions};
use crate::security::profile::AS4_1_15;

/// The instant certificates are judged at: fixed, so a corpus file gives the same result
/// on every day (inside the validity of the test PKI in `certs/`).
const AT_UNIX: i64 = 1_893_456_000; // 2030-01-01T00:00:00Z

/// Small limits, so that the fuzzer reaches every limit check with small inputs.
fn small_limits() -> MimeLimits {
    MimeLimits {
        max_header_block: 4096,
        max_parts: 16,
        max_root_size: 1 << 20,
        max_part_size: 1 << 20,
        max_total_size: 4 << 20,
        spill_threshold: 4096,
        ..MimeLimits::default()
    }
}

/// A reader that hands out at most `step` bytes per call, so the push parser sees its
/// input cut at every kind of place (chosen from the input's length, so the fuzzer can
/// vary it and a corpus file always replays the same way).
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.step).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn trickle(data: &[u8]) -> impl BufRead + '_ {
    const STEPS: [usize; 7] = [1, 2, 3, 7, 64, 4096, usize::MAX];
    let step = STEPS[data.len() % STEPS.len()];
    BufReader::with_capacity(step.min(64 * 1024), Trickle { data, step })
}

/// Reads `data` as a message dump (HTTP-style headers and a MIME or SOAP body, or a bare
/// envelope: [`read_dump`]) through a reader that delivers it in small pieces.
fn dump(data: &[u8]) -> Option<MessageDump> {
    read_dump(trickle(data), &small_limits()).ok()
}

/// The MIME reader: `data` is a message dump (the shape of the interop vectors). A package
/// that was read must keep what it promised: every attachment reads back as many bytes as
/// its length says, with the digest it reports.
pub fn mime(data: &[u8]) {
    let Some(dump) = dump(data) else { return };
    check_package(&dump.package);
}

fn check_package(package: &MimePackage) {
    for a in package.attachments() {
        let mut body = Vec::new();
        a.body()
            .and_then(|mut r| r.read_to_end(&mut body))
            .expect("an attachment that was read can be read back");
        assert_eq!(body.len() as u64, a.len(), "attachment length");
        assert_eq!(
            openssl::sha::sha256(&body),
            a.sha256().unwrap(),
            "attachment digest"
        );
        if let Some(id) = a.content_id() {
            assert!(package.attachment_by_content_id(id).is_some());
        }
    }
}

/// The SOAP/ebMS header reader: `data` is a SOAP envelope. A header that was read and that
/// Varti can write again must read back the same ([`soap::build_envelope`]). Receipt
/// content other than NRI is kept as carried, not self-contained
/// ([`Receipt::other`](crate::message::model::Receipt::other)), so such headers are not
/// written back.
pub fn soap(data: &[u8]) {
    let limits = ParseLimits::default();
    let Ok(envelope) = soap::parse_envelope_with_limits(data, &limits) else {
        return;
    };
    let raw_receipt_content = envelope.messaging.signals.iter().any(
        |s| matches!(&s.kind, crate::message::model::SignalKind::Receipt(r) if !r.other.is_empty()),
    );
    if raw_receipt_content {
        return;
    }
    let Ok(written) = soap::build_envelope(&envelope.messaging, &BuildOptions::default()) else {
        return;
    };
    let again = soap::parse_envelope_with_limits(written.as_bytes(), &limits)
        .unwrap_or_else(|e| panic!("Varti cannot read the header it wrote: {e}\n{written}"));
    assert_eq!(
        again.messaging, envelope.messaging,
        "the header changed when written and read again:\n{written}"
    );
}

/// The fixed keys of the WS-Security target: the message comes from `varti-a` to
/// `varti-b` of the test PKI in `certs/`.
pub struct SecurityFixture {
    signer: X509,
    ca: X509,
    decryption: (PKey<Private>, X509),
}

impl SecurityFixture {
    /// Reads the keys from the test PKI directory (`certs/` at the repository root):
    /// `varti-a/sign.cert.pem` (the partner's signing certificate), `ca.cert.pem` (the
    /// trust anchor), `varti-b/enc.key.pem` and `varti-b/enc.cert.pem` (our decryption key).
    pub fn from_certs_dir(dir: &Path) -> io::Result<SecurityFixture> {
        let read = |p: &str| std::fs::read(dir.join(p));
        let cert = |p: &str| {
            X509::from_pem(&read(p)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        let key = PKey::private_key_from_pem(&read("varti-b/enc.key.pem")?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(SecurityFixture {
            signer: cert("varti-a/sign.cert.pem")?,
            ca: cert("ca.cert.pem")?,
            decryption: (key, cert("varti-b/enc.cert.pem")?),
        })
    }

    /// The receive policy of a leg from `varti-a` on the AS4 1.15 profile: signature
    /// required, encryption optional (so signed-only messages reach the verifier too).
    pub fn policy(&self) -> ReceivePolicy {
        let mut p = ReceivePolicy::strict(&AS4_1_15);
        p.require_encryption = false;
        p.decryption = Some((self.decryption.0.clone().into(), self.decryption.1.clone()));
        p.partner_certificates = vec![self.signer.clone()];
        p.trust_anchors = vec![self.ca.clone()];
        p.expected_signer = Some(self.signer.clone());
        p.at = OffsetDateTime::from_unix_timestamp(AT_UNIX).expect("a valid instant");
        p.decompression_cap = 1 << 20;
        p
    }
}

/// The WS-Security receive path (decrypt, verify, policy, trust, decompress:
/// [`inbound::receive`]): `data` is a message dump, checked against the fixed keys of
/// `fixture`. A message that is accepted must carry a signature by the fixture's signer.
pub fn ws_security(data: &[u8], fixture: &SecurityFixture) {
    let Some(dump) = dump(data) else { return };
    let Ok(received) = inbound::receive(&dump.package, &fixture.policy()) else {
        return;
    };
    let signature = received
        .signature
        .as_ref()
        .expect("the policy requires a signature, so an accepted message has one");
    assert_eq!(
        signature.signer.to_der().ok(),
        fixture.signer.to_der().ok(),
        "accepted a message signed by someone else"
    );
}

/// The PMode loader ([`files::load_dir`] after the files are read): `data` is one or more
/// PMode files separated by NUL bytes (which TOML text cannot hold), read as if they were
/// in `dir` (certificate paths are relative to it), with certificates judged at a fixed
/// time.
pub fn pmode(data: &[u8], dir: &Path) {
    let texts: Vec<(PathBuf, String)> = data
        .split(|&b| b == 0)
        .take(8)
        .enumerate()
        .filter_map(|(i, bytes)| {
            let text = std::str::from_utf8(bytes).ok()?;
            Some((dir.join(format!("fuzz-{i}.toml")), text.to_owned()))
        })
        .collect();
    if texts.is_empty() {
        return;
    }
    let options = LoadOptions {
        at_unix: Some(AT_UNIX),
        ..LoadOptions::default()
    };
    let (set, diags) = files::load_texts(&texts, &options, Vec::new());
    if !diags.iter().any(|d| d.is_error()) {
        // A set without errors is usable: every leg names parties of the set.
        for leg in &set.legs {
            for party in leg.from.parties.iter().chain(&leg.to.parties) {
                assert!(
                    set.party(party).is_some(),
                    "leg names unknown party {party}"
                );
            }
        }
    }
}

/// Runs `target` over every file of `dirs` (a fuzz target's corpus and regression
/// directories), each on a worker thread, and panics naming every file that made it panic,
/// or the file it was still busy with after `per_file` (a hang). Missing directories are
/// skipped; finding no file at all is an error (a corpus that silently went away).
pub fn replay_corpus<F>(dirs: &[PathBuf], per_file: std::time::Duration, target: F)
where
    F: Fn(&[u8]) + Send + 'static,
{
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus file in {dirs:?}");
    let (tx, rx) = std::sync::mpsc::channel();
    let work = files.clone();
    std::thread::spawn(move || {
        for (i, path) in work.iter().enumerate() {
            let data = std::fs::read(path).expect("a readable corpus file");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&data)));
            if tx.send((i, outcome.is_ok())).is_err() {
                return;
            }
        }
    });
    let mut failed = Vec::new();
    for (i, path) in files.iter().enumerate() {
        match rx.recv_timeout(per_file) {
            Ok((j, ok)) => {
                assert_eq!(i, j);
                if !ok {
                    failed.push(path.display().to_string());
                }
            }
            Err(_) => panic!(
                "the target did not finish {} within {per_file:?} (a hang)",
                path.display()
            ),
        }
    }
    assert!(
        failed.is_empty(),
        "the target panicked on {} of {} files: {failed:#?}",
        failed.len(),
        files.len()
    );
}
