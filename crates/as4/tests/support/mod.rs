//! Helpers shared by the pipeline tests: throw-away keys and certificates per profile,
//! a user message, and deterministic payload content (in memory, or streamed from a
//! reader for sizes that must never be held in memory).
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use openssl::x509::{X509Extension, X509NameBuilder, X509};
use time::OffsetDateTime;
use varti_as4::message::model::*;
use varti_as4::security::profile::{Profile, AS4_2_0_ECDSA, AS4_2_0_EDDSA};

/// A party's keys for one profile: signing key + self-signed cert, encryption key + cert
/// (X25519 keys cannot sign, so their certificate is issued by the signing key).
pub struct Keys {
    pub sign_key: PKey<Private>,
    pub sign_cert: X509,
    pub enc_key: PKey<Private>,
    pub enc_cert: X509,
}

/// What [`issue`] puts in a certificate.
pub struct CertSpec<'a> {
    /// The subject's name entries, e.g. `[("CN", "alice")]`.
    pub subject: &'a [(&'a str, &'a str)],
    /// Who issues it (certificate and key); `None`: self-signed.
    pub issuer: Option<(&'a X509, &'a PKey<Private>)>,
    /// Valid from the first to the second number of days from now.
    pub days: (i64, i64),
    /// A CA: a critical basicConstraints extension saying so.
    pub ca: bool,
    /// The keyUsage extension.
    pub key_usage: X509Extension,
    /// The serial number; `None`: a random one.
    pub serial: Option<u32>,
    /// Whether it carries a subjectKeyIdentifier.
    pub key_id: bool,
    /// Further extensions.
    pub extensions: Vec<X509Extension>,
}

impl<'a> CertSpec<'a> {
    /// A self-signed end-entity certificate for `subject`, valid from yesterday for a
    /// year, for signatures and key encipherment, with a subject key identifier.
    pub fn new(subject: &'a [(&'a str, &'a str)]) -> CertSpec<'a> {
        CertSpec {
            subject,
            issuer: None,
            days: (-1, 365),
            ca: false,
            key_usage: KeyUsage::new()
                .digital_signature()
                .non_repudiation()
                .key_encipherment()
                .build()
                .unwrap(),
            serial: None,
            key_id: true,
            extensions: Vec::new(),
        }
    }
}

/// A certificate for `subject_key` as `spec` says, signed by the issuer's key (its own
/// when self-signed).
pub fn issue(subject_key: &PKey<Private>, spec: CertSpec<'_>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    for (field, value) in spec.subject {
        name.append_entry_by_text(field, value).unwrap();
    }
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = match spec.serial {
        Some(n) => BigNum::from_u32(n).unwrap(),
        None => {
            let mut serial = BigNum::new().unwrap();
            serial.rand(100, MsbOption::MAYBE_ZERO, false).unwrap();
            serial
        }
    };
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    let issuer = spec.issuer;
    b.set_issuer_name(issuer.map(|(c, _)| c.subject_name()).unwrap_or(&name))
        .unwrap();
    b.set_pubkey(subject_key).unwrap();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (from_days, to_days) = spec.days;
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86400).unwrap())
        .unwrap();
    if spec.ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    b.append_extension(spec.key_usage).unwrap();
    if spec.key_id {
        let ski = SubjectKeyIdentifier::new()
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(ski).unwrap();
    }
    for extension in spec.extensions {
        b.append_extension(extension).unwrap();
    }
    let signer = issuer.map(|(_, k)| k).unwrap_or(subject_key);
    let md = if signer.id() == openssl::pkey::Id::ED25519 {
        MessageDigest::null()
    } else {
        MessageDigest::sha256()
    };
    b.sign(signer, md).unwrap();
    b.build()
}

/// A certificate `cn` for `subject_key` (see [`CertSpec::new`]), issued by `issuer`
/// (self-signed when `None`), valid from `from_days` to `to_days` days from now.
pub fn cert(
    subject_key: &PKey<Private>,
    cn: &str,
    issuer: Option<(&X509, &PKey<Private>)>,
    from_days: i64,
    to_days: i64,
) -> X509 {
    let subject = [("CN", cn)];
    let spec = CertSpec {
        issuer,
        days: (from_days, to_days),
        ..CertSpec::new(&subject)
    };
    issue(subject_key, spec)
}

pub fn keys(profile: &Profile, cn: &str) -> Keys {
    keys_valid(profile, cn, -1, 365)
}

pub fn keys_valid(profile: &Profile, cn: &str, from: i64, to: i64) -> Keys {
    let p256 = || {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap()
    };
    let (sign_key, enc_key) = match profile.name {
        n if std::ptr::eq(profile, &AS4_2_0_EDDSA) || n.contains("EdDSA") => (
            PKey::generate_ed25519().unwrap(),
            PKey::generate_x25519().unwrap(),
        ),
        _ if std::ptr::eq(profile, &AS4_2_0_ECDSA) => (p256(), p256()),
        _ => {
            let k = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
            (k.clone(), k)
        }
    };
    let sign_cert = cert(&sign_key, cn, None, from, to);
    let enc_cert = if enc_key.public_eq(&sign_key) {
        sign_cert.clone()
    } else {
        cert(
            &enc_key,
            &format!("{cn} encryption"),
            Some((&sign_cert, &sign_key)),
            from,
            to,
        )
    };
    Keys {
        sign_key,
        sign_cert,
        enc_key,
        enc_cert,
    }
}

pub fn user_message() -> UserMessage {
    let party = |id: &str, role: &str| Party {
        party_ids: vec![PartyId {
            value: id.into(),
            type_: Some("urn:oasis:names:tc:ebcore:partyid-type:unregistered".into()),
        }],
        role: role.into(),
    };
    UserMessage {
        mpc: None,
        message_info: MessageInfo::new(format!("{}@test", uuid::Uuid::new_v4())),
        party_info: PartyInfo {
            from: party("sender", ROLE_INITIATOR),
            to: party("receiver", ROLE_RESPONDER),
        },
        collaboration_info: CollaborationInfo {
            agreement_ref: None,
            service: Service {
                value: "urn:test:service".into(),
                type_: None,
            },
            action: "Deliver".into(),
            conversation_id: "conv-1".into(),
        },
        properties: vec![
            Property::new("originalSender", "urn:a"),
            Property::new("finalRecipient", "urn:b"),
        ],
        parts: Vec::new(),
    }
}

/// Deterministic content: compressible but not trivially.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64).map(|i| content_byte(i, seed)).collect()
}

/// The byte at offset `i` of [`content`] with `seed`.
fn content_byte(i: u64, seed: u8) -> u8 {
    ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i as u8 & 3)
}

/// [`content`] as a stream of `len` bytes, produced as it is read: a 100 MB payload
/// without a 100 MB buffer.
pub struct ContentReader {
    pos: u64,
    len: u64,
    seed: u8,
}

impl ContentReader {
    pub fn new(len: u64, seed: u8) -> ContentReader {
        ContentReader { pos: 0, len, seed }
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = content_byte(self.pos + k as u64, self.seed);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// SHA-256 of everything `r` yields, read in 64 KB steps.
pub fn sha256_of(mut r: impl Read) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return h.finish();
        }
        h.update(&buf[..n]);
    }
}

/// Runs the independent verifier `xmlsec1 --verify` on `envelope` with `signer`'s
/// certificate as the key (eb:Messaging and the SOAP Body carry the Id attributes):
/// `Err` with its stderr when it refuses the signature.
pub fn xmlsec1_verify(envelope: &str, signer: &X509) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("signer.pem");
    std::fs::write(&pem, signer.to_pem().unwrap()).unwrap();
    let path = dir.path().join("envelope.xml");
    std::fs::write(&path, envelope).unwrap();
    let out = std::process::Command::new("xmlsec1")
        .arg("--verify")
        .args([
            "--id-attr:Id",
            "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/:Messaging",
            "--id-attr:Id",
            "http://www.w3.org/2003/05/soap-envelope:Body",
            "--pubkey-cert-pem",
        ])
        .arg(&pem)
        .arg(&path)
        .output()
        .expect("xmlsec1 must be installed (apt-get install xmlsec1)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
