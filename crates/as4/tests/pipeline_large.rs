//! The largest payload the acceptance list names, 100 MB, through Varti's own sender and
//! receiver for each profile, compressed and not, beside an empty and a small part. The
//! payload is generated while it is read and the message goes through a file, so nothing
//! here needs a 100 MB buffer; the test then checks that the process's peak RSS stayed
//! far below the payload size, which it would not if any stage buffered the attachment.
//!
//! This file holds a single test on purpose: peak RSS is per process, and a test running
//! beside it in the same binary would blur the measurement.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use varti_as4::inbound::{key_protection_for, receive, ReceivePolicy};
use varti_as4::message::mime::{MimeLimits, MimePackage};
use varti_as4::outbound::{send, OutgoingPayload, SendPolicy};
use varti_as4::security::encrypt::EncryptionSettings;
use varti_as4::security::profile::{Profile, AS4_1_15, AS4_2_0_ECDSA, AS4_2_0_EDDSA};
use varti_as4::security::sign::SigningIdentity;
use varti_as4::security::token::TokenReference;

mod support;
use support::*;

const BIG: u64 = 100 * 1024 * 1024;

/// A `kB` figure from /proc/self/status (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn hundred_megabyte_attachment_round_trips_in_flat_memory() {
    let big_sha = sha256_of(ContentReader::new(BIG, 7));
    // Start the peak-RSS count afresh (Linux: "5" resets VmHWM to the current RSS).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = proc_status_bytes("VmRSS");

    let profiles: [&'static Profile; 3] = [&AS4_1_15, &AS4_2_0_EDDSA, &AS4_2_0_ECDSA];
    for profile in profiles {
        let alice = keys(profile, "alice");
        let bob = keys(profile, "bob");
        for compress in [false, true] {
            let what = format!("{} compress {compress}", profile.name);
            let started = std::time::Instant::now();
            let dir = tempfile::tempdir().unwrap();

            // Send: three parts, the big one read from a generator, into a file.
            let mut empty: &[u8] = b"";
            let mut small: &[u8] = b"<small/>";
            let mut big = ContentReader::new(BIG, 7);
            let payloads = vec![
                OutgoingPayload {
                    content_id: "empty@test".into(),
                    mime_type: "application/octet-stream".into(),
                    properties: vec![],
                    content: &mut empty,
                    content_is_gzip: false,
                    reopen: None,
                    sha256: None,
                },
                OutgoingPayload {
                    content_id: "small@test".into(),
                    mime_type: "application/xml".into(),
                    properties: vec![],
                    content: &mut small,
                    content_is_gzip: false,
                    reopen: None,
                    sha256: None,
                },
                OutgoingPayload {
                    content_id: "big@test".into(),
                    mime_type: "application/octet-stream".into(),
                    properties: vec![],
                    content: &mut big as &mut dyn Read,
                    content_is_gzip: false,
                    reopen: None,
                    sha256: None,
                },
            ];
            let policy = SendPolicy {
                signing: SigningIdentity {
                    profile,
                    key: &alice.sign_key,
                    certificate: &alice.sign_cert,
                    token_reference: TokenReference::BinarySecurityToken,
                },
                encryption: Some(EncryptionSettings {
                    receiver_cert: &bob.enc_cert,
                    key_protection: key_protection_for(profile),
                    token_reference: TokenReference::BinarySecurityToken,
                }),
                compress,
                uncompressed_types: &[],
                already_gzip: false,
            };
            let message_path = dir.path().join("message.mime");
            let mut out = BufWriter::new(File::create(&message_path).unwrap());
            let sent = send(&user_message(), payloads, &policy, &mut out).unwrap();
            out.flush().unwrap();
            drop(out);
            let size = std::fs::metadata(&message_path).unwrap().len();
            if !compress {
                assert!(size > BIG, "{what}: the message is only {size} bytes");
            }

            // Receive from the file, spilling into the test's directory.
            let limits = MimeLimits {
                temp_dir: Some(dir.path().to_path_buf()),
                ..MimeLimits::default()
            };
            let pkg = MimePackage::parse(
                BufReader::new(File::open(&message_path).unwrap()),
                &sent.content_type,
                &limits,
            )
            .unwrap();
            let mut rp = ReceivePolicy::strict(profile);
            rp.decryption = Some((bob.enc_key.clone().into(), bob.enc_cert.clone()));
            rp.partner_certificates = vec![alice.sign_cert.clone()];
            rp.trust_anchors = vec![alice.sign_cert.clone()];
            rp.spool_dir = Some(dir.path().to_path_buf());
            let msg = receive(&pkg, &rp).unwrap_or_else(|e| panic!("{what}: {e}"));

            assert_eq!(msg.payloads.len(), 3, "{what}");
            let sig = msg.signature.as_ref().unwrap();
            assert_eq!(sig.references.len(), 5, "{what}: Messaging, Body, 3 parts");
            assert!(msg.encryption.is_some(), "{what}");
            let expect: [(&str, u64, [u8; 32]); 3] = [
                ("empty@test", 0, openssl::sha::sha256(b"")),
                ("small@test", 8, openssl::sha::sha256(b"<small/>")),
                ("big@test", BIG, big_sha),
            ];
            for (p, (cid, len, sha)) in msg.payloads.iter().zip(expect) {
                assert_eq!(p.content_id, cid, "{what}");
                assert_eq!(p.was_compressed, compress, "{what}");
                assert_eq!(p.len, len, "{what}: {cid}");
                assert_eq!(p.sha256, sha, "{what}: {cid}");
                // The file itself, not only the digest the receiver reports.
                assert_eq!(sha256_of(p.open().unwrap()), sha, "{what}: {cid}");
            }
            drop(msg);
            drop(pkg);
            eprintln!(
                "{what}: {} MB message, {:.1} s",
                size / (1024 * 1024),
                started.elapsed().as_secs_f64()
            );
        }
    }

    let peak = proc_status_bytes("VmHWM");
    let growth = peak.saturating_sub(base);
    eprintln!(
        "peak RSS {} MB, {} MB above the start",
        peak / (1024 * 1024),
        growth / (1024 * 1024)
    );
    // Buffering the attachment anywhere would add at least 100 MB.
    assert!(
        growth < 40 * 1024 * 1024,
        "peak RSS grew by {} MB while streaming a 100 MB attachment",
        growth / (1024 * 1024)
    );
}
