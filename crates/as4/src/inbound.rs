//! The receive pipeline: from a parsed MIME package to payloads ready for delivery.
//!
//! The stages run in a fixed order, each one a function below, and nothing is handed
//! over until all of them passed:
//!
//! 1. **parse** — the SOAP envelope with the ebMS reader ([`soap::parse_envelope`]) and,
//!    separately, with libxml2 for the security layer; more than one `eb:Messaging` is
//!    refused here already, signed or not.
//! 2. **decrypt** — payload parts named by `xenc:EncryptedData` are decrypted into
//!    anonymous temporary files (sign-then-encrypt, so decrypt-then-verify). The
//!    plaintext is still compressed: that is what the sender signed. A large part may
//!    have been decrypted already, while the MIME body was read ([`EarlyPart`]): its
//!    outcome is taken here as if the part were decrypted now, under the key this stage
//!    recovers.
//! 3. **verify** — the signature over eb:Messaging, the Body and every `cid:` attachment
//!    (over the decrypted, still-compressed bytes).
//! 4. **policy** — every payload part signed, every payload encrypted when the leg says
//!    so, and the eb:Messaging / Body that were verified are the very ones the ebMS
//!    reader read (signature-wrapping defence: same `wsu:Id`, canonical place).
//! 5. **trust** — the signer certificate against the leg's anchors at the policy time.
//! 6. **decompress** — per `PartProperties` (`CompressionType`, `MimeType`), bounded by
//!    the policy's cap (`EBMS:0303` on failure), into named temporary files.
//!
//! The caller passes the leg's security settings as a [`ReceivePolicy`];
//! [`receive::accept`](crate::receive::accept) finds the leg, builds the policy and runs
//! this pipeline for a received user message. Every failure is an [`EbmsError`] (`EBMS:0101` authentication,
//! `0102` decryption, `0103` policy, `0303` decompression, …) attributed to the
//! message id when it is known; on failure every temporary file is removed (they are
//! owned by values dropped with the error).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::sha::Sha256;
use openssl::x509::X509;
use time::OffsetDateTime;

use crate::compress;
use crate::error::{EbmsError, ErrorCode};
use crate::message::mime::{content_id_from_href, Attachment, MimePackage, TappedPart};
use crate::message::model::{Messaging, Property, SignalKind, EBMS_NS};
use crate::message::soap::{self, Envelope};
use crate::security::c14n;
use crate::security::dom::XmlDocument;
use crate::security::encrypt::{
    open_encryption, Decryption, DecryptionPolicy, EncryptedPart, KeyProtection, PartDecryptor,
    AES128_GCM,
};
use crate::security::private_key::PrivateKey;
use crate::security::profile::Profile;
use crate::security::receipt;
use crate::security::sign::SignedReference;
use crate::security::swa::AttachmentSource;
use crate::security::token::{self, TokenReference};
use crate::security::verify::{self, SignedPart, VerifiedReference, VerifyOptions};
use crate::spool::{Charged, SpoolBudget, SpoolBuffer, SpoolCharge};

use crate::ns::XENC_NS as NS_XENC;

mod early_digest;
use early_digest::{DigestFeed, EarlyDigest};

/// Default decompression cap per part: 1 GiB.
pub(crate) const DEFAULT_DECOMPRESSION_CAP: u64 = 1 << 30;

/// The security settings of the leg a message arrives on (from the PMode, later).
pub struct ReceivePolicy {
    /// The agreed signature algorithm suite; any other algorithm is `EBMS:0103`.
    pub profile: &'static Profile,
    /// Whether the message must be signed (eb:Messaging, Body and every payload).
    pub require_signature: bool,
    /// Whether every payload part must be encrypted.
    pub require_encryption: bool,
    /// Our decryption key and its certificate; needed only for encrypted messages.
    pub decryption: Option<(PrivateKey, X509)>,
    /// Key transports accepted (per profile, plus allowed legacy ones).
    pub key_transports: DecryptionPolicy,
    /// The partner's signing certificates: what a Key Identifier or IssuerSerial
    /// reference may name.
    pub partner_certificates: Vec<X509>,
    /// Trust anchors for the signer certificate (a CA, or the pinned partner certificate).
    pub trust_anchors: Vec<X509>,
    /// The certificate the signature must be made with: the sending party's signing
    /// certificate from the PMode. A certificate that merely chains to the anchors is not
    /// enough when several parties share a CA (one party could sign as another).
    pub expected_signer: Option<X509>,
    /// The sending party's next signing certificate (a key rollover): accepted like
    /// `expected_signer` while configured.
    pub next_expected_signer: Option<X509>,
    /// CRL files (PEM or DER) the signer's chain is checked against: the sending party's
    /// `crls` from the PMode. Empty: no revocation checking. When set, the signer's
    /// issuer must have a CRL among them, and a stale or wrongly signed CRL is refused
    /// (`crate::security::revocation`). Looked at for each message, so a refreshed file
    /// takes effect at once (a trust decision is remembered for a few minutes only while
    /// the files are unchanged).
    pub crl_files: Vec<PathBuf>,
    /// The time at which certificates must be valid (normally now).
    pub at: OffsetDateTime,
    /// Largest decompressed size of one part, in bytes.
    pub decompression_cap: u64,
    /// Where payload files are created (`None`: the system temporary directory). Use a
    /// directory on the same file system as the store so delivery is a rename.
    pub spool_dir: Option<PathBuf>,
    /// The disk budget the temporary files of this reception are charged to, shared with
    /// every other reception in flight (`None`: unbounded). See [`crate::spool`].
    pub spool_budget: Option<Arc<SpoolBudget>>,
    /// Whether the store will take the delivered payloads' spool files over (see
    /// [`Spool::write_behind`](crate::spool::Spool::write_behind)).
    pub write_behind: bool,
    /// Whether a large part received encrypted is delivered as the file it was decrypted
    /// into (see [`Spool::keep_decrypted`](crate::spool::Spool::keep_decrypted)).
    pub keep_decrypted: bool,
}

impl ReceivePolicy {
    /// A strict policy for `profile`: signature and encryption required, the profile's
    /// own key transport only, no anchors yet, validity checked now, 1 GiB cap.
    pub fn strict(profile: &'static Profile) -> ReceivePolicy {
        ReceivePolicy {
            profile,
            require_signature: true,
            require_encryption: true,
            decryption: None,
            key_transports: key_transports_for(profile),
            partner_certificates: Vec::new(),
            trust_anchors: Vec::new(),
            expected_signer: None,
            next_expected_signer: None,
            crl_files: Vec::new(),
            at: OffsetDateTime::now_utc(),
            decompression_cap: DEFAULT_DECOMPRESSION_CAP,
            spool_dir: None,
            spool_budget: None,
            write_behind: false,
            keep_decrypted: false,
        }
    }
}

/// The key transports a signature profile goes with: AS4 1.15 RSA-OAEP-SHA256, 2.0
/// X25519 or ECDH-ES P-256.
pub(crate) fn key_transports_for(profile: &Profile) -> DecryptionPolicy {
    DecryptionPolicy::new([key_protection_for(profile)])
}

/// The key protection of the encryption profile that goes with a signature profile.
pub fn key_protection_for(profile: &Profile) -> KeyProtection {
    use crate::security::profile::{SIG_ECDSA_SHA256, SIG_EDDSA_ED25519};
    match profile.signature.uri() {
        SIG_EDDSA_ED25519 => KeyProtection::X25519HkdfKwAes128,
        SIG_ECDSA_SHA256 => KeyProtection::EcdhEsP256HkdfKwAes128,
        _ => KeyProtection::RsaOaepSha256,
    }
}

/// What was verified about the signature (owned: it outlives the parsed document).
#[derive(Debug, Clone)]
pub struct SignatureInfo {
    /// The signer's certificate.
    pub signer: X509,
    /// Further certificates that came with it (a PKIPath's issuers).
    pub chain: Vec<X509>,
    /// How the signature named the certificate.
    pub token_reference: TokenReference,
    /// The signature method URI.
    pub signature_algorithm: &'static str,
    /// Every reference, in SignedInfo order, all verified. `element` is `None` (the
    /// document is gone); `reference_xml` is what an NRR receipt copies.
    pub references: Vec<VerifiedReference<'static>>,
}

/// What encryption was found and undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionInfo {
    /// How the content key was protected.
    pub key_protection: KeyProtection,
    /// The content encryption algorithm URI.
    pub content_algorithm: &'static str,
    /// The Content-IDs of the parts that were encrypted.
    pub parts: Vec<String>,
}

/// One payload as it would be delivered: decrypted, verified and decompressed.
#[derive(Debug)]
pub struct DeliveredPayload {
    /// The `eb:PartInfo/@href` (`cid:…`).
    pub href: String,
    /// The Content-ID of the MIME part.
    pub content_id: String,
    /// The payload's media type (`MimeType` part property, else the part's type).
    pub mime_type: String,
    /// The part's `PartProperties`.
    pub properties: Vec<Property>,
    /// Whether the part travelled gzip-compressed.
    pub was_compressed: bool,
    /// Whether `content` holds the part as it travelled, gzip-compressed (checked: it
    /// inflates, within the cap, to `len` bytes with `sha256`), instead of the payload's
    /// bytes. [`DeliveredPayload::open`] and [`DeliveredPayload::persist`] inflate it; a
    /// store may keep the file as it is.
    pub content_is_gzip: bool,
    /// Size of the payload's bytes (inflated, whatever `content` holds).
    pub len: u64,
    /// SHA-256 of the payload's bytes (inflated, whatever `content` holds).
    pub sha256: [u8; 32],
    /// Whether `len` and `sha256` were taken while the part arrived, beside its
    /// decryption, instead of by a pass over the part once it was checked. The values
    /// are the same either way, and both were taken from the bytes the signature covers.
    pub digested_on_arrival: bool,
    /// The content: in memory when small, else in a temporary file removed when this
    /// value is dropped; read it with [`DeliveredPayload::open`], keep it with
    /// [`DeliveredPayload::persist`]. Gzip when `content_is_gzip`.
    pub content: SpoolBuffer,
    /// Its bytes held against the spool budget until this value is dropped.
    _charge: SpoolCharge,
}

impl DeliveredPayload {
    /// Reads the payload's bytes from the start (inflating a content kept in gzip).
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        let content = self.content.open()?;
        if !self.content_is_gzip {
            return Ok(content);
        }
        Ok(Box::new(io::BufReader::with_capacity(
            64 * 1024,
            flate2::bufread::MultiGzDecoder::new(io::BufReader::with_capacity(64 * 1024, content)),
        )))
    }

    /// Keeps the payload's bytes as the file `path` (a rename when the content is in a file
    /// on the same file system and not kept in gzip).
    pub fn persist(self, path: &Path) -> io::Result<File> {
        if self.content_is_gzip {
            let mut file = File::create(path)?;
            io::copy(&mut self.open()?, &mut file)?;
            return Ok(file);
        }
        // The content leaves the spool: its bytes no longer count against the budget.
        self.content.persist(path)
    }
}

/// A message that passed every stage of [`receive`].
#[derive(Debug)]
pub struct ReceivedMessage {
    /// The parsed SOAP envelope (its `messaging` is the verified eb:Messaging).
    pub envelope: Envelope,
    /// The signature, when the message was signed.
    pub signature: Option<SignatureInfo>,
    /// The encryption, when payloads were encrypted.
    pub encryption: Option<EncryptionInfo>,
    /// The payloads, in `PayloadInfo` order.
    pub payloads: Vec<DeliveredPayload>,
    /// The `eb:UserMessage` element, exclusive-canonicalized (self-contained): what a
    /// plain receipt copies. `None` for a signal message.
    pub user_message_xml: Option<String>,
    /// For a receipt: the references its `ebbp:NonRepudiationInformation` lists, read from
    /// the document the signature was verified on (or why they cannot be read), so that
    /// [`check_receipt`](crate::outbound::check_receipt) does not parse the receipt again.
    /// `None` for any other message.
    receipt_references: Option<Result<Vec<SignedReference>, EbmsError>>,
}

impl ReceivedMessage {
    /// The eb:Messaging header.
    pub fn messaging(&self) -> &Messaging {
        &self.envelope.messaging
    }

    /// The id of the user message, or of the first signal.
    pub fn message_id(&self) -> Option<&str> {
        message_id_of(&self.envelope.messaging)
    }

    /// The references a receipt's non-repudiation information lists; an `EBMS:0302` error
    /// when the message is no receipt or does not hold exactly one such element.
    pub(crate) fn receipt_references(&self) -> Result<&[SignedReference], EbmsError> {
        match &self.receipt_references {
            Some(Ok(references)) => Ok(references),
            Some(Err(e)) => Err(e.clone()),
            None => Err(EbmsError::new(
                ErrorCode::InvalidReceipt,
                "the message is not a receipt (no eb:Receipt signal)",
            )),
        }
    }
}

/// The id of the user message in `m`, or of its first signal.
fn message_id_of(m: &Messaging) -> Option<&str> {
    m.user_message
        .as_ref()
        .map(|u| u.message_info.message_id.as_str())
        .or_else(|| {
            m.signals
                .first()
                .map(|s| s.message_info.message_id.as_str())
        })
}

fn subject_of(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn auth(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::FailedAuthentication, detail)
}
fn policy_err(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::PolicyNoncompliance, detail)
}
fn decryption(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::FailedDecryption, detail)
}

/// Runs the whole receive pipeline over a parsed package.
pub fn receive(
    package: &MimePackage,
    policy: &ReceivePolicy,
) -> Result<ReceivedMessage, EbmsError> {
    let root = &package.root().content;
    // The security layer's parse first: a second eb:Messaging anywhere is a
    // signature-wrapping attempt (EBMS:0101), whatever the ebMS reader would say of it.
    let doc = match XmlDocument::parse(root) {
        Ok(doc) => doc,
        // Malformed XML: the ebMS reader's diagnosis is the more precise one.
        Err(e) => return Err(soap::parse_envelope(root).err().unwrap_or(e)),
    };
    single_messaging(&doc)?;
    let envelope = soap::parse_envelope(root)?;
    receive_attributed(package, &doc, envelope, policy)
}

/// Runs the receive pipeline like [`receive`] over a package whose SOAP root the caller
/// has already read with [`soap::parse_envelope`] (into `envelope`): the ebMS reader does
/// not read it again. `envelope` must be what that reader made of this package's root;
/// the security layer still parses the root itself (libxml2), and the verification ties
/// the signed eb:Messaging and Body to the ids in `envelope`.
pub fn receive_envelope(
    package: &MimePackage,
    envelope: Envelope,
    policy: &ReceivePolicy,
) -> Result<ReceivedMessage, EbmsError> {
    let id = message_id_of(&envelope.messaging).map(str::to_string);
    let attributed = |e: EbmsError| match (&e.ref_to_message_id, &id) {
        (None, Some(id)) => e.for_message(id.clone()),
        _ => e,
    };
    let doc = XmlDocument::parse(&package.root().content).map_err(attributed)?;
    single_messaging(&doc).map_err(attributed)?;
    receive_attributed(package, &doc, envelope, policy)
}

/// The stages after parsing; errors are attributed to the message's id.
fn receive_attributed(
    package: &MimePackage,
    doc: &XmlDocument,
    envelope: Envelope,
    policy: &ReceivePolicy,
) -> Result<ReceivedMessage, EbmsError> {
    let id = message_id_of(&envelope.messaging).map(str::to_string);
    receive_parsed(package, doc, envelope, policy).map_err(|e| match (&e.ref_to_message_id, id) {
        (None, Some(id)) => e.for_message(id),
        _ => e,
    })
}

/// Refuses a document with more than one `eb:Messaging` anywhere (signature wrapping).
fn single_messaging(doc: &XmlDocument) -> Result<(), EbmsError> {
    let n = doc
        .elements()
        .filter(|e| e.is(EBMS_NS, "Messaging"))
        .count();
    if n > 1 {
        return Err(auth(format!(
            "the document holds {n} eb:Messaging elements; exactly one is allowed (possible \
             signature-wrapping attack)"
        )));
    }
    Ok(())
}

fn receive_parsed(
    package: &MimePackage,
    doc: &XmlDocument,
    envelope: Envelope,
    policy: &ReceivePolicy,
) -> Result<ReceivedMessage, EbmsError> {
    let root = &package.root().content;
    let messaging = doc
        .elements()
        .find(|e| e.is(EBMS_NS, "Messaging"))
        .ok_or_else(|| {
            EbmsError::new(ErrorCode::InvalidHeader, "the message has no eb:Messaging")
        })?;
    let user_message_xml = match messaging.child(EBMS_NS, "UserMessage") {
        Some(um) => Some(
            String::from_utf8(c14n::canonicalize_element(doc, um, &[])?)
                .map_err(|_| auth("the eb:UserMessage is not UTF-8"))?,
        ),
        None => None,
    };

    // Which MIME parts are payloads.
    let mut payload_parts: Vec<(&crate::message::model::PartInfo, &Attachment, String)> =
        Vec::new();
    if let Some(um) = &envelope.messaging.user_message {
        for part in &um.parts {
            let href = part.href.as_deref().unwrap_or("");
            let cid = content_id_from_href(href).ok_or_else(|| {
                // CP_TA08: eDelivery AS4 carries every payload as a MIME attachment; a
                // payload in the SOAP Body (no href, or `#id`) is in the wrong place.
                let placed = if href.is_empty() {
                    "a PartInfo without href makes the SOAP Body the payload".to_string()
                } else if href.starts_with('#') {
                    format!("PartInfo href '{href}' puts the payload in the SOAP Body")
                } else {
                    format!("PartInfo href '{href}' does not name a MIME attachment")
                };
                // EBMS:0010 (a failure) rather than 0002 FeatureNotSupported, whose
                // severity is a warning: the message is refused, not processed.
                EbmsError::new(
                    ErrorCode::ProcessingModeMismatch,
                    format!(
                        "{placed}; eDelivery AS4 carries payloads as MIME attachments \
                         referenced by cid: only — send the payload as an attachment"
                    ),
                )
            })?;
            let att = package.attachment_by_content_id(&cid).ok_or_else(|| {
                EbmsError::new(
                    ErrorCode::ValueInconsistent,
                    format!("PartInfo names {href}, but the message has no MIME part with that Content-ID"),
                )
            })?;
            payload_parts.push((part, att, cid));
        }
    }

    // Stage 2: decrypt.
    let (decrypted, encryption) = decrypt_stage(doc, root, package, policy)?;
    if policy.require_encryption {
        for (_, _, cid) in &payload_parts {
            if !decrypted.iter().any(|d| d.content_id == *cid) {
                return Err(policy_err(format!(
                    "payload cid:{cid} is not encrypted; the leg's security policy requires every \
                     payload encrypted"
                )));
            }
        }
    }

    // Stage 3 + 4: verify and enforce.
    let sources: Vec<Source<'_>> = package
        .attachments()
        .iter()
        .map(|a| {
            let cid = a.content_id().unwrap_or("");
            match decrypted.iter().find(|d| d.content_id == cid) {
                Some(d) => Source::Decrypted(d),
                None => Source::Mime(a),
            }
        })
        .collect();
    let (signature, signed_sha256) =
        verify_stage(doc, &envelope, &sources, &payload_parts, policy)?;

    // Stage 5: trust.
    if let Some(sig) = &signature {
        token::validate_signer_with_crl_files(
            &sig.signer,
            &sig.chain,
            &policy.trust_anchors,
            &policy.crl_files,
            policy.at,
        )?;
        if let Some(expected) = &policy.expected_signer {
            let is = |c: &X509| {
                matches!(
                    (sig.signer.to_der(), c.to_der()),
                    (Ok(a), Ok(b)) if a == b
                )
            };
            let same = is(expected) || policy.next_expected_signer.as_ref().is_some_and(is);
            if !same {
                return Err(auth(format!(
                    "the message is signed with the certificate of `{}`, not with the sending party's certificate (`{}`, from its PMode or, for a dynamic party, its SMP)",
                    subject_of(&sig.signer),
                    subject_of(expected)
                )));
            }
        }
    }

    // Stage 6: decompress into the payload files (or check a part kept as it travelled).
    let mut delivered = Vec::with_capacity(payload_parts.len());
    for (part, att, cid) in &payload_parts {
        let source = sources
            .iter()
            .find(|s| s.content_id() == cid)
            .expect("every payload part has a source");
        // A decrypted file can become one payload only: a part named by two PartInfos
        // is copied for each.
        let named_once = payload_parts.iter().filter(|(_, _, c)| c == cid).count() == 1;
        let keep = policy.keep_decrypted && named_once;
        let signed = signed_sha256
            .iter()
            .find(|(c, _)| c == cid)
            .map(|(_, h)| *h);
        delivered.push(deliver(part, att, cid, source, policy, keep, signed)?);
    }
    drop(sources);
    let mut decrypted = decrypted;
    let payloads = delivered
        .into_iter()
        .map(|d| match d {
            Delivery::Inflated(p) => p,
            Delivery::AsDecrypted(mut p) => {
                let at = decrypted
                    .iter()
                    .position(|d| d.content_id == p.content_id)
                    .expect("a part kept as decrypted was decrypted");
                let plain = decrypted.swap_remove(at);
                p.content = plain.content;
                p._charge = plain._charge;
                p
            }
        })
        .collect();
    let receipt_references = envelope
        .messaging
        .signals
        .iter()
        .any(|s| matches!(s.kind, SignalKind::Receipt(_)))
        .then(|| receipt::nrr_references(doc));
    Ok(ReceivedMessage {
        envelope,
        signature,
        encryption,
        payloads,
        user_message_xml,
        receipt_references,
    })
}

/// What [`deliver`] made of a part.
enum Delivery {
    /// Inflated (or copied) into a content of its own.
    Inflated(DeliveredPayload),
    /// Checked, and delivered as the decrypted part itself (still compressed if it
    /// travelled so): the caller moves the decrypted content into the payload (empty until
    /// then).
    AsDecrypted(DeliveredPayload),
}

/// A decrypted part: plaintext (still compressed) in an anonymous temporary file.
struct Plain {
    content_id: String,
    content_type: String,
    content: SpoolBuffer,
    /// The decrypted bytes held against the spool budget.
    _charge: SpoolCharge,
    /// The payload's length and SHA-256, being taken while the part arrived (a large part
    /// decrypted as it arrived only).
    early_digest: Option<EarlyDigest>,
}

impl Plain {
    /// The plaintext `content` of `part`, holding `charge`.
    fn new(part: &EncryptedPart, content: SpoolBuffer, charge: SpoolCharge) -> Plain {
        Plain {
            early_digest: None,
            content_id: part.content_id.clone(),
            content_type: part
                .mime_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            content,
            _charge: charge,
        }
    }
}

/// What the signature verifier and the decompressor read a part from.
enum Source<'a> {
    Mime(&'a Attachment),
    Decrypted(&'a Plain),
}

impl AttachmentSource for Source<'_> {
    fn content_id(&self) -> &str {
        match self {
            Source::Mime(a) => a.content_id().unwrap_or(""),
            Source::Decrypted(p) => &p.content_id,
        }
    }
    fn content_type(&self) -> &str {
        match self {
            Source::Mime(a) => a.content_type(),
            Source::Decrypted(p) => &p.content_type,
        }
    }
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            Source::Mime(a) => Ok(a.body()?),
            Source::Decrypted(p) => Ok(p.content.open()?),
        }
    }
}

fn decrypt_stage(
    doc: &XmlDocument,
    root: &[u8],
    package: &MimePackage,
    policy: &ReceivePolicy,
) -> Result<(Vec<Plain>, Option<EncryptionInfo>), EbmsError> {
    let encrypted_data = doc
        .elements()
        .filter(|e| e.is(NS_XENC, "EncryptedData"))
        .count();
    if encrypted_data == 0 {
        return Ok((Vec::new(), None));
    }
    let (key, cert) = policy.decryption.as_ref().ok_or_else(|| {
        decryption(
            "the message is encrypted but no decryption key is configured for this leg; \
             configure our encryption key and certificate",
        )
    })?;
    let header = std::str::from_utf8(root)
        .map_err(|_| EbmsError::new(ErrorCode::InvalidHeader, "the SOAP envelope is not UTF-8"))?;
    let dec = open_encryption(header, key, cert, &policy.key_transports)?;
    let mut out = Vec::with_capacity(dec.parts().len());
    for part in dec.parts() {
        let att = package
            .attachment_by_content_id(&part.content_id)
            .ok_or_else(|| {
                decryption(format!(
                "EncryptedData {} refers to cid:{}, but the message has no MIME part with that \
                 Content-ID",
                part.id, part.content_id
            ))
            })?;
        if att.is_tapped() {
            out.push(decrypted_early(att, &dec, part)?);
            continue;
        }
        let io_fail =
            |e: io::Error| decryption(format!("temporary file for cid:{}: {e}", part.content_id));
        let mut content = decrypted_content(policy);
        let mut charge = SpoolCharge::new(policy.spool_budget.as_ref());
        let decrypted = {
            let mut w = BufWriter::new(Charged {
                inner: &mut content,
                charge: &mut charge,
            });
            let mut body = att.body().map_err(io_fail)?;
            dec.decrypt_part(part, &mut body, &mut w)
                .and_then(|_| w.flush().map_err(io_fail))
        };
        match decrypted {
            // The writer failed because the spool budget had no room: not the message's
            // fault (the decryptor reports it as a decryption failure).
            Err(e) if charge.ran_out() => return Err(EbmsError::retry_later(e.detail)),
            other => other?,
        }
        out.push(Plain::new(part, content, charge));
    }
    let info = EncryptionInfo {
        key_protection: dec.key_protection(),
        content_algorithm: AES128_GCM,
        parts: out.iter().map(|p| p.content_id.clone()).collect(),
    };
    Ok((out, Some(info)))
}

/// Where a part is decrypted into under `policy`.
fn decrypted_content(policy: &ReceivePolicy) -> SpoolBuffer {
    let content = SpoolBuffer::new(policy.spool_dir.as_deref());
    if policy.keep_decrypted && policy.write_behind {
        // A large part decrypted here is the payload file the store takes over and
        // syncs (stage 6): its writeback starts now, beside the decryption.
        content.bound_for_disk()
    } else {
        content
    }
}

/// The plaintext of `part`, decrypted while the MIME body was read ([`EarlyPart`]): kept
/// only when that decryption succeeded under the very key `dec` recovered now.
fn decrypted_early(
    att: &Attachment,
    dec: &Decryption,
    part: &EncryptedPart,
) -> Result<Plain, EbmsError> {
    let early = att
        .take_tapped()
        .and_then(|made| made.downcast::<DecryptedEarly>().ok())
        .ok_or_else(|| {
            decryption(format!(
                "payload part cid:{} was taken over as it arrived, but not by this \
                 receiver's decryption",
                part.content_id
            ))
        })?;
    if early.key_fingerprint != dec.key_fingerprint() {
        // The header read twice gave two keys: only possible if our key changed between
        // the two readings. The cipher text is gone, so the part cannot be decrypted again.
        return Err(EbmsError::retry_later(format!(
            "payload part cid:{} was decrypted as it arrived under another content key than \
             the header yields now (our decryption key changed meanwhile); send it again",
            part.content_id
        )));
    }
    let (content, charge) = early.outcome?;
    let mut plain = Plain::new(part, content, charge);
    plain.early_digest = early.digest;
    Ok(plain)
}

/// An encrypted part being decrypted while the MIME body is read: the MIME reader hands
/// it the cipher text as it arrives ([`TappedPart`]) instead of spilling it to a file that
/// [`decrypt_stage`] would read back. Its outcome is judged by that stage like a part
/// decrypted there: the same errors, the same plaintext file. Nothing is trusted earlier
/// than before: the signature, the policy and the trust checks still run over the
/// plaintext afterwards, and a failure removes the file.
pub(crate) struct EarlyPart {
    key_fingerprint: [u8; 32],
    /// `None` once the part failed (then the rest of its bytes are only counted by the
    /// MIME reader).
    decryptor: Option<PartDecryptor>,
    out: BufWriter<SpoolBuffer>,
    charge: SpoolCharge,
    failed: Option<EbmsError>,
    /// The plaintext's way to the thread taking the payload's digest, and that thread.
    digest: Option<(DigestFeed, EarlyDigest)>,
}

/// What an [`EarlyPart`] leaves in its attachment for [`decrypt_stage`].
struct DecryptedEarly {
    key_fingerprint: [u8; 32],
    outcome: Result<(SpoolBuffer, SpoolCharge), EbmsError>,
    digest: Option<EarlyDigest>,
}

impl EarlyPart {
    /// The decryption of `part` under `dec`, into a spool file as `policy` says. When
    /// `compressed` (its only `PartInfo` declares it gzip-compressed) and the store will
    /// keep the part as it is, the payload's digest is taken beside the decryption
    /// ([`early_digest`]).
    pub(crate) fn new(
        dec: &Decryption,
        part: &EncryptedPart,
        policy: &ReceivePolicy,
        compressed: bool,
    ) -> Self {
        let digest = (compressed && policy.keep_decrypted)
            .then(|| EarlyDigest::start(policy.decompression_cap))
            .flatten();
        EarlyPart {
            key_fingerprint: dec.key_fingerprint(),
            decryptor: Some(dec.part_decryptor(part)),
            out: BufWriter::with_capacity(256 * 1024, decrypted_content(policy)),
            charge: SpoolCharge::new(policy.spool_budget.as_ref()),
            failed: None,
            digest,
        }
    }

    fn fail(&mut self, e: EbmsError) {
        // No room in the spool budget is not the message's fault (the decryptor reports
        // it as a decryption failure).
        let e = if self.charge.ran_out() {
            EbmsError::retry_later(e.detail)
        } else {
            e
        };
        self.failed = Some(e);
        self.decryptor = None;
        self.digest = None;
        // Unauthenticated plaintext: not kept a moment longer than needed.
        let _ = self.out.get_mut().clear();
    }
}

impl TappedPart for EarlyPart {
    fn write(&mut self, data: &[u8]) {
        let Some(decryptor) = &mut self.decryptor else {
            return;
        };
        let mut out = Teed {
            out: Charged {
                inner: &mut self.out,
                charge: &mut self.charge,
            },
            feed: self.digest.as_mut().map(|(feed, _)| feed),
        };
        if let Err(e) = decryptor.update(data, &mut out) {
            self.fail(e);
        }
    }

    fn finish(mut self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        // No decryptor left: the part failed already, and `failed` says why.
        if let Some(decryptor) = self.decryptor.take() {
            let mut out = Teed {
                out: Charged {
                    inner: &mut self.out,
                    charge: &mut self.charge,
                },
                feed: self.digest.as_mut().map(|(feed, _)| feed),
            };
            if let Err(e) = decryptor.finish(&mut out) {
                self.fail(e);
            }
        }
        let EarlyPart {
            key_fingerprint,
            out,
            charge,
            failed,
            digest,
            ..
        } = *self;
        // The part is whole and authentic as far as its tag goes: the worker may finish.
        let digest = digest.map(|(feed, digest)| {
            feed.end();
            digest
        });
        let outcome = match failed {
            Some(e) => Err(e),
            None => out
                .into_inner()
                .map(|content| (content, charge))
                .map_err(|e| {
                    decryption(format!("writing the decrypted part failed: {}", e.error()))
                }),
        };
        Box::new(DecryptedEarly {
            key_fingerprint,
            outcome,
            digest,
        })
    }
}

/// Writes the plaintext to the part's file and hands what was written to the digest's
/// worker.
struct Teed<'f, W> {
    out: W,
    feed: Option<&'f mut DigestFeed>,
}

impl<W: Write> Write for Teed<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(feed) = &mut self.feed {
            feed.push(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The content's SHA-256 of each payload part whose verified signature digest is exactly
/// that (by Content-ID): see [`verify::SignatureReport::content_sha256`].
type SignedSha256 = Vec<(String, [u8; 32])>;

fn verify_stage(
    doc: &XmlDocument,
    envelope: &Envelope,
    sources: &[Source<'_>],
    payload_parts: &[(&crate::message::model::PartInfo, &Attachment, String)],
    policy: &ReceivePolicy,
) -> Result<(Option<SignatureInfo>, SignedSha256), EbmsError> {
    let has_signature = doc.elements().any(|e| e.is(token::NS_DS, "Signature"));
    if !has_signature {
        if policy.require_signature {
            return Err(policy_err(
                "the message is not signed; the leg's security policy requires eb:Messaging, the \
                 Body and every payload signed",
            ));
        }
        return Ok((None, Vec::new()));
    }
    let xml = verify::verify_signature(
        doc,
        &VerifyOptions {
            profile: policy.profile,
            candidate_certificates: &policy.partner_certificates,
        },
    )?;
    let refs: Vec<&dyn AttachmentSource> =
        sources.iter().map(|s| s as &dyn AttachmentSource).collect();
    let report = xml.finish(&refs)?;
    let cids: Vec<&str> = payload_parts.iter().map(|(_, _, c)| c.as_str()).collect();
    report.require_signed(&cids)?;

    // The verified eb:Messaging / Body must be what the ebMS reader read: the element
    // the signature covers (at its canonical place) carries the id the reader saw.
    for (part, what, read_id) in [
        (
            SignedPart::Messaging,
            "eb:Messaging",
            &envelope.messaging.id,
        ),
        (SignedPart::Body, "SOAP Body", &envelope.body.id),
    ] {
        let signed = report
            .verified_element(&part)
            .ok_or_else(|| policy_err(format!("the {what} is not covered by the signature")))?;
        if !read_id
            .as_deref()
            .is_some_and(|id| signed.ids().contains(&id))
        {
            return Err(auth(format!(
                "the signed {what} (ids {:?}) is not the {what} the message was read from (id \
                 {read_id:?}) (possible signature-wrapping attack)",
                signed.ids()
            )));
        }
    }

    let references = report
        .references
        .iter()
        .map(|r| VerifiedReference {
            uri: r.uri.clone(),
            digest_method: r.digest_method.clone(),
            digest: r.digest.clone(),
            part: r.part.clone(),
            element: None,
            reference_xml: r.reference_xml.clone(),
        })
        .collect();
    let signed_sha256 = payload_parts
        .iter()
        .filter_map(|(_, _, cid)| report.content_sha256(cid).map(|h| (cid.clone(), h)))
        .collect();
    let info = SignatureInfo {
        signer: report.token.certificate.clone(),
        chain: report.token.chain.clone(),
        token_reference: report.token.reference,
        signature_algorithm: report.signature_algorithm,
        references,
    };
    Ok((Some(info), signed_sha256))
}

fn deliver(
    part: &crate::message::model::PartInfo,
    att: &Attachment,
    cid: &str,
    source: &Source<'_>,
    policy: &ReceivePolicy,
    keep_decrypted: bool,
    signed_sha256: Option<[u8; 32]>,
) -> Result<Delivery, EbmsError> {
    let compression = compress::part_info_compression(part)?;
    let io_fail = |e: io::Error| {
        EbmsError::new(
            ErrorCode::Other,
            format!("cannot write payload cid:{cid} to a temporary file: {e}"),
        )
    };
    let mut content = SpoolBuffer::new(policy.spool_dir.as_deref());
    if policy.write_behind {
        content = content.bound_for_disk();
    }
    let mut charge = SpoolCharge::new(policy.spool_budget.as_ref());
    let inflate = |out: &mut dyn Write| -> Result<(), EbmsError> {
        let input = source.open().map_err(io_fail)?;
        compress::gunzip(input, out, policy.decompression_cap)
            .map(drop)
            .map_err(|e| {
                EbmsError::new(
                    ErrorCode::DecompressionFailure,
                    format!("payload cid:{cid}: {}", e.detail),
                )
            })
    };
    let mime_type = compression
        .mime_type
        .clone()
        .unwrap_or_else(|| match source {
            Source::Decrypted(p) => p.content_type.clone(),
            Source::Mime(_) => att.content_type().to_string(),
        });
    let payload =
        |len, sha256, content, charge, content_is_gzip, digested_on_arrival| DeliveredPayload {
            href: part.href.clone().unwrap_or_default(),
            content_id: cid.to_string(),
            mime_type: mime_type.clone(),
            properties: part.properties.clone(),
            was_compressed: compression.compressed,
            content_is_gzip,
            len,
            sha256,
            digested_on_arrival,
            content,
            _charge: charge,
        };
    // A large part decrypted into a spool file of its own is kept as it is when the store
    // takes files over: one pass counts and hashes the payload's bytes, writing nothing —
    // inflating a compressed part to do so, which also checks it (EBMS:0303 past the cap,
    // as below). Writing the bytes a second time (four times as many for an XML document
    // inflated) cost most of the receiver's time for a large payload
    // (`docs/benchmarks.md`). A part sent unencrypted stays in the MIME package's spool,
    // which is not this payload's to keep: it is copied or inflated into a file as below.
    if keep_decrypted {
        if let Source::Decrypted(p) = source {
            if let (Some(file), Some(sha256), false) =
                (p.content.file(), signed_sha256, compression.compressed)
            {
                // The signature's check hashed these very bytes as they are (an
                // uncompressed part of a type digested as is): its digest is the payload's
                // SHA-256, and a second pass over the file would only repeat it.
                let len = file.as_file().metadata().map_err(io_fail)?.len();
                return Ok(Delivery::AsDecrypted(payload(
                    len,
                    sha256,
                    SpoolBuffer::new(None),
                    SpoolCharge::default(),
                    false,
                    false,
                )));
            }
            if p.content.file().is_some() {
                // Taken while the part arrived, from these very bytes: nothing to read
                // again (a worker that failed for any reason leaves it to the pass below).
                let early = p
                    .early_digest
                    .as_ref()
                    .and_then(|d| d.outcome(compression.compressed));
                if let Some((len, sha256)) = early {
                    return Ok(Delivery::AsDecrypted(payload(
                        len,
                        sha256,
                        SpoolBuffer::new(None),
                        SpoolCharge::default(),
                        compression.compressed,
                        true,
                    )));
                }
                let mut digest = DigestSink::default();
                if compression.compressed {
                    inflate(&mut digest)?;
                } else {
                    let mut input = source.open().map_err(io_fail)?;
                    io::copy(&mut input, &mut digest).map_err(io_fail)?;
                }
                return Ok(Delivery::AsDecrypted(payload(
                    digest.len,
                    digest.hash.finish(),
                    SpoolBuffer::new(None),
                    SpoolCharge::default(),
                    compression.compressed,
                    false,
                )));
            }
        }
    }
    let transient = |full: io::Error| {
        // Within its caps, but the spool has no room for it: not the message's fault.
        EbmsError::retry_later(format!(
            "payload cid:{cid}: {full}; the message can be received once messages in flight \
             are done (send it again later)"
        ))
    };
    let (len, sha256) = if compression.compressed {
        // First pass: at most INFLATE_PROBE bytes, or INFLATE_RATIO times the compressed
        // size, are written, the rest only counted, so a bomb is found (EBMS:0303) having
        // taken little of the spool whatever its size, and a real document is inflated once.
        let compressed_len = match source {
            Source::Decrypted(p) => match (p.content.bytes(), p.content.file()) {
                (Some(bytes), _) => bytes.len() as u64,
                (None, Some(file)) => file.as_file().metadata().map_err(io_fail)?.len(),
                (None, None) => 0,
            },
            Source::Mime(a) => a.len(),
        };
        let limit = INFLATE_PROBE.max(compressed_len.saturating_mul(INFLATE_RATIO));
        let mut out = HashingWriter::new(&mut content, Some(&mut charge), limit);
        inflate(&mut out)?;
        match out.stopped.take() {
            None => out.finish().map_err(io_fail)?,
            Some(Stop::SpoolFull(full)) => return Err(transient(full)),
            Some(Stop::Probe) => {
                // Within the cap but larger than the probe: reserve the whole size, then
                // inflate again, writing everything.
                let total = out.len;
                drop(out);
                charge.grow(total - charge.bytes()).map_err(transient)?;
                content.clear().map_err(io_fail)?;
                let mut out = HashingWriter::new(&mut content, None, u64::MAX);
                inflate(&mut out)?;
                let (len, sha256) = out.finish().map_err(io_fail)?;
                if len != total {
                    return Err(EbmsError::new(
                        ErrorCode::DecompressionFailure,
                        format!("payload cid:{cid} inflated to {total} bytes, then to {len}"),
                    ));
                }
                (len, sha256)
            }
        }
    } else {
        let mut out = HashingWriter::new(&mut content, Some(&mut charge), u64::MAX);
        let mut input = source.open().map_err(io_fail)?;
        io::copy(&mut input, &mut out).map_err(io_fail)?;
        match out.stopped.take() {
            Some(Stop::SpoolFull(full)) => return Err(transient(full)),
            _ => out.finish().map_err(io_fail)?,
        }
    };
    Ok(Delivery::Inflated(payload(
        len, sha256, content, charge, false, false,
    )))
}

/// Counts and hashes what is written to it, keeping nothing.
struct DigestSink {
    hash: Sha256,
    len: u64,
}

impl Default for DigestSink {
    fn default() -> Self {
        DigestSink {
            hash: Sha256::new(),
            len: 0,
        }
    }
}

impl Write for DigestSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How many inflated bytes the first pass over a compressed part writes at least before it
/// only counts: a part larger than this, and than [`INFLATE_RATIO`] times its compressed
/// size, is inflated twice (once to learn that it is within its cap, once to keep it), so
/// that a bomb never takes more of the spool than this bound.
const INFLATE_PROBE: u64 = 16 * 1024 * 1024;

/// How many times its compressed size the first pass writes of a part. Documents and data
/// compress 3 to 20 times with gzip; bombs a thousand times. A part within this ratio is
/// inflated once: a second inflation of a 1 GiB part cost seconds of the receiver's CPU.
const INFLATE_RATIO: u64 = 32;

/// The smallest write whose hashing runs on a thread of its own, beside the write: an
/// inflated member (1 MiB) is one. Below it, a thread costs more than it saves.
const HASH_APART: usize = 512 * 1024;

/// Runs `write` and adds `buf` to `hash`: for a large `buf` at the same time, the hashing
/// on a scoped thread, so that the thread writing a large part in order (the page-cache
/// copy) no longer also does its SHA-256 (a fifth of that thread's time for 1 GiB, in
/// `docs/benchmarks.md`). The digest is the same: the hash still sees the bytes in order.
fn hash_beside(
    hash: &mut Sha256,
    buf: &[u8],
    write: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let mut write = Some(write);
    if buf.len() >= HASH_APART {
        let beside = std::thread::scope(|scope| {
            let hashing = std::thread::Builder::new()
                .name("varti-hash".into())
                .spawn_scoped(scope, || hash.update(buf))
                .ok()?;
            let written = write.take().map_or(Ok(()), |write| write());
            // A panic while hashing is a bug; passed on as it is, not as an I/O error.
            if let Err(panic) = hashing.join() {
                std::panic::resume_unwind(panic);
            }
            Some(written)
        });
        if let Some(written) = beside {
            return written;
        }
    }
    // A small write, or no thread to be had (the process is at its limit): one after the
    // other, here.
    if let Some(write) = write.take() {
        write()?;
    }
    hash.update(buf);
    Ok(())
}

/// Why a [`HashingWriter`] stopped writing (it keeps counting).
enum Stop {
    /// The spool budget had no more room.
    SpoolFull(io::Error),
    /// The write limit (the probe) was reached.
    Probe,
}

/// Writes a delivered part to its file, hashing and counting it, charging the spool budget
/// (when given a charge) and writing at most `limit` bytes. Once it cannot write — no room
/// in the budget, or past the limit — it keeps counting without writing, so that the
/// decompressor still finds a part over its cap (a bomb, `EBMS:0303`).
struct HashingWriter<'c, W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
    limit: u64,
    charge: Option<&'c mut SpoolCharge>,
    stopped: Option<Stop>,
}

impl<'c> HashingWriter<'c, BufWriter<&'c mut SpoolBuffer>> {
    fn new(content: &'c mut SpoolBuffer, charge: Option<&'c mut SpoolCharge>, limit: u64) -> Self {
        HashingWriter {
            inner: BufWriter::with_capacity(64 * 1024, content),
            hash: Sha256::new(),
            len: 0,
            limit,
            charge,
            stopped: None,
        }
    }

    /// Flushes; the length and SHA-256 of what was written.
    fn finish(mut self) -> io::Result<(u64, [u8; 32])> {
        self.inner.flush()?;
        Ok((self.len, self.hash.finish()))
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        if self.stopped.is_none() && self.len + n > self.limit {
            self.stopped = Some(Stop::Probe);
        }
        if self.stopped.is_none() {
            let charged = match self.charge.as_deref_mut() {
                Some(charge) => charge.grow(n),
                None => Ok(()),
            };
            match charged {
                Ok(()) => hash_beside(&mut self.hash, buf, || self.inner.write_all(buf))?,
                Err(e) => self.stopped = Some(Stop::SpoolFull(e)),
            }
        }
        self.len += n;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small and large writes (the latter hashed on a thread beside the write) give the
    /// digest of the bytes in order, and a failed write is the writer's error.
    #[test]
    fn hashing_beside_a_large_write_gives_the_same_digest() {
        let small = vec![7u8; 1000];
        let large: Vec<u8> = (0..HASH_APART * 2 + 3).map(|i| (i % 251) as u8).collect();
        let mut hash = Sha256::new();
        let mut written = Vec::new();
        for buf in [&small, &large, &small] {
            hash_beside(&mut hash, buf, || {
                written.extend_from_slice(buf);
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(written.len(), 2 * small.len() + large.len());
        assert_eq!(hash.finish(), openssl::sha::sha256(&written));

        let mut hash = Sha256::new();
        let err = hash_beside(&mut hash, &large, || Err(io::Error::other("disk full")));
        assert_eq!(err.unwrap_err().to_string(), "disk full");
    }
}
