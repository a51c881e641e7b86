//! Round trips of Varti's own encryption for every key protection and token reference,
//! payloads of 0 B to 20 MB (streamed), and the tampering that must fail with EBMS:0102
//! (or EBMS:0103 for algorithms the policy does not accept).

use std::fs::File;
use std::io::{self, Read, Seek, Write};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sha::Sha256;
use openssl::x509::{X509NameBuilder, X509};
use varti_as4::error::{EbmsError, ErrorCode};
use varti_as4::security::encrypt::{
    decrypt_parts, encrypt_parts, open_encryption, DecryptedPart, DecryptionPolicy,
    EncryptionHeader, EncryptionSettings, KeyProtection, PlainPart, TokenReference,
};

const ALL: [KeyProtection; 3] = [
    KeyProtection::RsaOaepSha256,
    KeyProtection::X25519HkdfKwAes128,
    KeyProtection::EcdhEsP256HkdfKwAes128,
];

struct Party {
    key: PKey<Private>,
    cert: X509,
}

/// A certificate for `subject_key`, issued by a throwaway CA (so Issuer ≠ Subject and
/// IssuerSerial references are meaningful). X25519 keys cannot sign, hence the CA.
fn party(kp: KeyProtection, cn: &str, serial: u32) -> Party {
    let key = match kp {
        KeyProtection::X25519HkdfKwAes128 => PKey::generate_x25519().unwrap(),
        KeyProtection::EcdhEsP256HkdfKwAes128 => {
            let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
        }
        _ => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
    };
    let ca_key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut issuer = X509NameBuilder::new().unwrap();
    issuer.append_entry_by_text("C", "LV").unwrap();
    issuer.append_entry_by_text("O", "Test, CA Inc.").unwrap();
    issuer.append_entry_by_text("CN", "Varti test CA").unwrap();
    let issuer = issuer.build();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", cn).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_issuer_name(&issuer).unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    Party {
        key,
        cert: b.build(),
    }
}

fn policy_for(kp: KeyProtection) -> DecryptionPolicy {
    match kp {
        KeyProtection::RsaOaepSha256 => DecryptionPolicy::as4_v1(),
        KeyProtection::X25519HkdfKwAes128 => DecryptionPolicy::as4_v2_common(),
        KeyProtection::EcdhEsP256HkdfKwAes128 => DecryptionPolicy::as4_v2_ec(),
        other => DecryptionPolicy::new([other]),
    }
}

/// Deterministic pseudo-random bytes, generated on the fly (never held whole).
struct Gen {
    left: u64,
    state: u64,
}

impl Gen {
    fn new(len: u64, seed: u64) -> Self {
        Gen {
            left: len,
            state: seed | 1,
        }
    }
}

impl Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn sha_of(mut r: impl Read) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish()
}

/// Wraps the header fragments in a SOAP envelope, as the envelope builder would.
fn envelope(h: &EncryptionHeader) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <S12:Envelope xmlns:S12=\"http://www.w3.org/2003/05/soap-envelope\"><S12:Header>\
         <wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" \
         S12:mustUnderstand=\"true\">{}</wsse:Security></S12:Header><S12:Body/></S12:Envelope>",
        h.to_xml()
    )
}

/// Encrypts one generated payload of `len` bytes into a temp file.
fn encrypt_one(
    to: &Party,
    kp: KeyProtection,
    tr: TokenReference,
    len: u64,
    seed: u64,
) -> (String, File) {
    let mut out = tempfile::tempfile().unwrap();
    let mut plain = Gen::new(len, seed);
    let header = {
        let mut w = io::BufWriter::new(&mut out);
        let h = encrypt_parts(
            &EncryptionSettings {
                receiver_cert: &to.cert,
                key_protection: kp,
                token_reference: tr,
            },
            [PlainPart {
                content_id: "<part-1@varti>",
                content_type: "application/gzip",
                plaintext: &mut plain,
                ciphertext: &mut w,
            }],
        )
        .unwrap();
        w.flush().unwrap();
        h
    };
    out.rewind().unwrap();
    (envelope(&header), out)
}

fn decrypt_one(
    xml: &str,
    me: &Party,
    policy: &DecryptionPolicy,
    ciphertext: &[u8],
) -> Result<Vec<DecryptedPart>, EbmsError> {
    decrypt_parts(xml, &me.key, &me.cert, policy, |cid| {
        (cid == "part-1@varti").then_some(ciphertext)
    })
}

fn read_all(mut f: File) -> Vec<u8> {
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn round_trips_every_key_protection_and_size() {
    for kp in ALL {
        let bob = party(kp, "bob", 1001);
        for (len, seed) in [(0u64, 3u64), (1, 5), (1 << 20, 7), (20 << 20, 11)] {
            let (xml, mut ct) =
                encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, len, seed);
            assert_eq!(ct.metadata().unwrap().len(), len + 12 + 16);
            let dec = open_encryption(&xml, &bob.key, &bob.cert, &policy_for(kp)).unwrap();
            assert_eq!(dec.key_protection(), kp);
            assert_eq!(dec.parts().len(), 1);
            let part = dec.part_for("cid:part-1@varti").unwrap().clone();
            assert_eq!(part.mime_type.as_deref(), Some("application/gzip"));
            // Streamed both ways: file -> decryptor -> hashing sink.
            let mut hasher = HashSink(Sha256::new(), 0);
            let n = dec.decrypt_part(&part, &mut ct, &mut hasher).unwrap();
            assert_eq!(n, len, "{kp:?} {len}");
            assert_eq!(hasher.1, len);
            assert_eq!(
                hasher.0.finish(),
                sha_of(Gen::new(len, seed)),
                "{kp:?} {len}"
            );
        }
    }
}

struct HashSink(Sha256, u64);

impl Write for HashSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        self.1 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_token_reference_is_resolved_for_every_key_protection() {
    for kp in ALL {
        let bob = party(kp, "bob", 77);
        for tr in [
            TokenReference::BinarySecurityToken,
            TokenReference::SubjectKeyIdentifier,
            TokenReference::IssuerSerial,
        ] {
            let (xml, ct) = encrypt_one(&bob, kp, tr, 1000, 42);
            let ct = read_all(ct);
            let parts = decrypt_one(&xml, &bob, &policy_for(kp), &ct)
                .unwrap_or_else(|e| panic!("{kp:?} {tr:?}: {e}"));
            assert_eq!(read_all(parts.into_iter().next().unwrap().file), {
                let mut v = Vec::new();
                Gen::new(1000, 42).read_to_end(&mut v).unwrap();
                v
            });
            // …and another certificate (same subject, same issuer name, other serial and
            // key) is not addressed.
            let eve = party(kp, "bob", 78);
            let err = decrypt_one(&xml, &eve, &policy_for(kp), &ct).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::FailedDecryption,
                "{kp:?} {tr:?}: {err}"
            );
            assert!(err.detail.contains("addressed"), "{err}");
        }
    }
}

#[test]
fn several_parts_share_one_key_and_keep_their_types() {
    let bob = party(KeyProtection::RsaOaepSha256, "bob", 5);
    let inputs: Vec<(String, &str, Vec<u8>)> = vec![
        ("a@x".into(), "application/xml", b"<a/>".to_vec()),
        ("b@x".into(), "application/pdf", vec![]),
        (
            "c@x".into(),
            "text/plain; charset=\"utf-8\"",
            vec![9u8; 70_000],
        ),
    ];
    let mut outs: Vec<Vec<u8>> = vec![Vec::new(); inputs.len()];
    let mut readers: Vec<&[u8]> = inputs.iter().map(|(_, _, d)| d.as_slice()).collect();
    let parts: Vec<PlainPart> = inputs
        .iter()
        .zip(readers.iter_mut())
        .zip(outs.iter_mut())
        .map(|(((cid, ty, _), r), w)| PlainPart {
            content_id: cid,
            content_type: ty,
            plaintext: r,
            ciphertext: w,
        })
        .collect();
    let h = encrypt_parts(
        &EncryptionSettings {
            receiver_cert: &bob.cert,
            key_protection: KeyProtection::RsaOaepSha256,
            token_reference: TokenReference::SubjectKeyIdentifier,
        },
        parts,
    )
    .unwrap();
    assert_eq!(h.encrypted_data.len(), 3);
    assert!(h.binary_security_token.is_none());
    let xml = envelope(&h);
    let got = decrypt_parts(
        &xml,
        &bob.key,
        &bob.cert,
        &DecryptionPolicy::as4_v1(),
        |cid| {
            let i = inputs.iter().position(|(c, _, _)| c == cid)?;
            Some(outs[i].as_slice())
        },
    )
    .unwrap();
    assert_eq!(got.len(), 3);
    for (p, (cid, ty, data)) in got.into_iter().zip(inputs.iter()) {
        assert_eq!(&p.content_id, cid);
        assert_eq!(p.mime_type.as_deref(), Some(*ty));
        assert_eq!(&read_all(p.file), data);
    }
}

#[test]
fn truncated_ciphertext_fails_decryption() {
    for kp in ALL {
        let bob = party(kp, "bob", 9);
        let (xml, ct) = encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, 5000, 1);
        let ct = read_all(ct);
        for cut in [ct.len() - 1, ct.len() - 16, 27, 12, 5, 0] {
            let err = decrypt_one(&xml, &bob, &policy_for(kp), &ct[..cut]).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::FailedDecryption,
                "{kp:?} cut {cut}: {err}"
            );
            assert!(
                err.detail.contains("truncated") || err.detail.contains("tag"),
                "{err}"
            );
        }
    }
}

#[test]
fn flipped_tag_or_iv_byte_fails_decryption() {
    let bob = party(KeyProtection::X25519HkdfKwAes128, "bob", 9);
    let kp = KeyProtection::X25519HkdfKwAes128;
    let (xml, ct) = encrypt_one(&bob, kp, TokenReference::IssuerSerial, 3000, 1);
    let ct = read_all(ct);
    assert!(decrypt_one(&xml, &bob, &policy_for(kp), &ct).is_ok());
    for pos in [ct.len() - 1, ct.len() - 16, 0, 11] {
        let mut bad = ct.clone();
        bad[pos] ^= 0x80;
        let err = decrypt_one(&xml, &bob, &policy_for(kp), &bad).unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedDecryption, "pos {pos}: {err}");
        assert!(err.detail.contains("authentication tag"), "{err}");
    }
}

#[test]
fn wrong_private_key_fails_decryption() {
    for kp in ALL {
        let bob = party(kp, "bob", 9);
        let other = party(kp, "other", 10);
        let (xml, ct) = encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, 100, 1);
        let ct = read_all(ct);
        // Bob's certificate with someone else's private key.
        let mixed = Party {
            key: other.key.clone(),
            cert: bob.cert.clone(),
        };
        let err = decrypt_one(&xml, &mixed, &policy_for(kp), &ct).unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedDecryption, "{kp:?}: {err}");
    }
}

#[test]
fn content_key_from_another_message_fails_decryption() {
    // The EncryptedKey of message 2 with the payload of message 1: the key unwraps fine,
    // but it is the wrong key, and the GCM tag says so.
    for kp in ALL {
        let bob = party(kp, "bob", 9);
        let (_xml1, ct1) = encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, 100, 1);
        let (xml2, _ct2) = encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, 100, 1);
        let err = decrypt_one(&xml2, &bob, &policy_for(kp), &read_all(ct1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::FailedDecryption, "{kp:?}: {err}");
        assert!(err.detail.contains("authentication tag"), "{err}");
    }
}

#[test]
fn altered_wrapped_key_or_salt_fails_decryption() {
    let kp = KeyProtection::EcdhEsP256HkdfKwAes128;
    let bob = party(kp, "bob", 9);
    let (xml, ct) = encrypt_one(&bob, kp, TokenReference::SubjectKeyIdentifier, 100, 1);
    let ct = read_all(ct);
    let salt_start = xml.find("<dsig-more:Salt>").unwrap() + "<dsig-more:Salt>".len();
    let mut bad = xml.clone();
    let c = if &xml[salt_start..salt_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    bad.replace_range(salt_start..salt_start + 1, c);
    let err = decrypt_one(&bad, &bob, &policy_for(kp), &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedDecryption, "{err}");
    assert!(err.detail.contains("unwrapped"), "{err}");
}

#[test]
fn legacy_key_transports_are_refused_unless_allowed() {
    let bob = party(KeyProtection::RsaOaepSha256, "bob", 9);
    for legacy in [KeyProtection::RsaPkcs1v15, KeyProtection::RsaOaepMgf1pSha1] {
        let (xml, ct) = encrypt_one(&bob, legacy, TokenReference::BinarySecurityToken, 64, 4);
        let ct = read_all(ct);
        let err = decrypt_one(&xml, &bob, &DecryptionPolicy::as4_v1(), &ct).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::PolicyNoncompliance,
            "{legacy:?}: {err}"
        );
        assert!(err.detail.contains(legacy.describe()), "{err}");
        // With the PMode flag it is accepted.
        let allowed = DecryptionPolicy::as4_v1().allow(legacy);
        let parts = decrypt_one(&xml, &bob, &allowed, &ct).unwrap();
        let mut expected = Vec::new();
        Gen::new(64, 4).read_to_end(&mut expected).unwrap();
        assert_eq!(read_all(parts.into_iter().next().unwrap().file), expected);
    }
    // Allowing SHA-1 OAEP does not let PKCS#1 v1.5 in.
    let (xml, ct) = encrypt_one(
        &bob,
        KeyProtection::RsaPkcs1v15,
        TokenReference::BinarySecurityToken,
        64,
        4,
    );
    let policy = DecryptionPolicy::as4_v1().allow(KeyProtection::RsaOaepMgf1pSha1);
    let err = decrypt_one(&xml, &bob, &policy, &read_all(ct)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
}

#[test]
fn a_2_0_message_is_refused_by_a_1_15_policy_and_vice_versa() {
    let kp = KeyProtection::X25519HkdfKwAes128;
    let bob = party(kp, "bob", 9);
    let (xml, ct) = encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, 10, 1);
    let err = decrypt_one(&xml, &bob, &DecryptionPolicy::as4_v1(), &read_all(ct)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");

    // Encrypting with a profile that does not fit the receiver's key is refused up front.
    let rsa = party(KeyProtection::RsaOaepSha256, "rsa", 2);
    let mut sink = Vec::new();
    let err = encrypt_parts(
        &EncryptionSettings {
            receiver_cert: &rsa.cert,
            key_protection: kp,
            token_reference: TokenReference::BinarySecurityToken,
        },
        [PlainPart {
            content_id: "x",
            content_type: "text/plain",
            plaintext: &mut &b"hi"[..],
            ciphertext: &mut sink,
        }],
    )
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
    assert!(err.detail.contains("X25519"), "{err}");
}

#[test]
fn hostile_header_constructs_are_refused() {
    let kp = KeyProtection::RsaOaepSha256;
    let bob = party(kp, "bob", 9);
    let (xml, ct) = encrypt_one(&bob, kp, TokenReference::BinarySecurityToken, 10, 1);
    let ct = read_all(ct);
    let pol = DecryptionPolicy::as4_v1();

    // Attachment-Complete instead of Attachment-Content-Only.
    let bad = xml.replace("#Attachment-Content-Only", "#Attachment-Complete");
    let err = decrypt_one(&bad, &bob, &pol, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");

    // Another data cipher.
    let bad = xml.replace("xmlenc11#aes128-gcm", "xmlenc11#aes256-gcm");
    let err = decrypt_one(&bad, &bob, &pol, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");

    // A duplicated EncryptedData Id (reference confusion).
    let ed_start = xml.find("<xenc:EncryptedData").unwrap();
    let ed_end = xml.find("</xenc:EncryptedData>").unwrap() + "</xenc:EncryptedData>".len();
    let dup = xml[ed_start..ed_end].replace("cid:part-1@varti", "cid:evil@varti");
    let mut bad = xml.clone();
    bad.insert_str(ed_end, &dup);
    let err = decrypt_one(&bad, &bob, &pol, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");
    assert!(err.detail.contains("more than one element"), "{err}");

    // A DTD.
    let bad = xml.replacen(
        "<S12:Envelope",
        "<!DOCTYPE S12:Envelope [<!ENTITY x \"y\">]><S12:Envelope",
        1,
    );
    let err = decrypt_one(&bad, &bob, &pol, &ct).unwrap_err();
    assert_eq!(err.code, ErrorCode::PolicyNoncompliance, "{err}");

    // The referenced MIME part is missing.
    let err = decrypt_parts(&xml, &bob.key, &bob.cert, &pol, |_| None::<&[u8]>).unwrap_err();
    assert_eq!(err.code, ErrorCode::FailedDecryption, "{err}");
    assert!(err.detail.contains("no MIME part"), "{err}");
}
