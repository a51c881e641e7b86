//! The send side: a user message and its payloads to a signed (optionally compressed and
//! encrypted) AS4 MIME package, and the signals a receiver answers with (receipts and
//! error signals).
//!
//! Order of operations (AS4 profile: compress, sign, encrypt):
//! 1. each payload is gzip-compressed (if the leg compresses, and its media type is not one
//!    the leg leaves uncompressed) into a temporary file, and its `PartInfo` gets
//!    `CompressionType` and `MimeType`;
//! 2. the envelope is built with `wsu:Id`s on eb:Messaging and the Body and the
//!    security-header placeholder, and signed over both and every attachment's
//!    (compressed) content;
//! 3. the parts are encrypted (AES-128-GCM, one content key for all) and the
//!    `xenc:EncryptedKey` / `xenc:EncryptedData` elements are put into the same
//!    `wsse:Security` header, before the signature;
//! 4. the MIME package is streamed to the caller's writer.
//!
//! Payloads are never held in memory whole: each is spooled in a [`SpoolBuffer`] (in memory
//! up to [`SPOOL_MEMORY_MAX`](crate::spool::SPOOL_MEMORY_MAX), else a temporary file removed
//! when the call returns), so a small message touches no file.

use std::io::{self, BufWriter, Read, Write};

use openssl::x509::X509Ref;

use crate::compress::{self, GZIP_MIME_TYPE, PROP_COMPRESSION_TYPE, PROP_MIME_TYPE};
use crate::error::{EbmsError, ErrorCode};
use crate::inbound::{key_protection_for, ReceivedMessage};
use crate::message::mime::{MimeWriter, PackageIds};
use crate::message::model::{
    MessageInfo, Messaging, PartInfo, Property, PullRequest, Receipt, SignalError, SignalKind,
    SignalMessage, UserMessage,
};
use crate::message::soap::{build_envelope, BuildOptions};
use crate::security::encrypt::{plan_encryption, EncryptionSettings, PlannedEncryption};
use crate::security::private_key::KeyOperations;
use crate::security::profile::Profile;
use crate::security::receipt::{non_repudiation_information, same_references};
use crate::security::sign::{
    sign_envelope, SignedReference, SigningIdentity, SECURITY_HEADER_PLACEHOLDER,
};
use crate::security::swa::AttachmentSource;
use crate::security::token::TokenReference;
use crate::spool::SpoolBuffer;

/// The security settings of the leg a message is sent on.
#[derive(Clone, Copy)]
pub struct SendPolicy<'a> {
    /// Who signs, with which profile and token reference.
    pub signing: SigningIdentity<'a>,
    /// Whom to encrypt the payloads for; `None` sends them unencrypted.
    pub encryption: Option<EncryptionSettings<'a>>,
    /// Whether payloads are gzip-compressed (AS4 compression feature).
    pub compress: bool,
    /// Media types left uncompressed even when `compress` is on (already-compressed
    /// formats; patterns as [`compress::leaves_uncompressed`] reads them). Such a part is
    /// sent as it is, without `CompressionType`: compression is declared per part, and a
    /// receiver must accept uncompressed parts.
    pub uncompressed_types: &'a [String],
    /// The payloads are gzip already (a relay forwarding parts as they came, or a test
    /// that needs a hand-made stream): sent as they are, marked compressed
    /// (`CompressionType`, with the payload's `mime_type` as `MimeType`). Set
    /// [`SendPolicy::compress`] false with it.
    pub already_gzip: bool,
}

impl<'a> SendPolicy<'a> {
    /// Signed by `key` and `certificate` with `profile` and `token_reference`; payloads
    /// encrypted for `encrypt_for` (when given) with the key transport that goes with the
    /// profile ([`key_protection_for`]) and the same token reference; gzip-compressed when
    /// `compress` (every part: no `uncompressed_types`). For a PMode leg use
    /// [`leg::send_policy`](crate::leg::send_policy).
    pub fn new(
        profile: &'static Profile,
        token_reference: TokenReference,
        key: &'a dyn KeyOperations,
        certificate: &'a X509Ref,
        encrypt_for: Option<&'a X509Ref>,
        compress: bool,
    ) -> SendPolicy<'a> {
        SendPolicy {
            signing: SigningIdentity {
                profile,
                key,
                certificate,
                token_reference,
            },
            encryption: encrypt_for.map(|receiver_cert| EncryptionSettings {
                receiver_cert,
                key_protection: key_protection_for(profile),
                token_reference,
            }),
            compress,
            uncompressed_types: &[],
            already_gzip: false,
        }
    }
}

/// One payload to send.
pub struct OutgoingPayload<'a> {
    /// The Content-ID (without `<>` or `cid:`).
    pub content_id: String,
    /// The payload's media type.
    pub mime_type: String,
    /// Extra `PartProperties` (compression properties are added for you).
    pub properties: Vec<Property>,
    /// The content.
    pub content: &'a mut dyn Read,
    /// Whether `content` is a gzip stream of the payload (a payload the store keeps
    /// compressed): sent as it is when the part is compressed, inflated while it is
    /// spooled when the leg leaves it uncompressed. Compressing it again would cost as
    /// much as compressing the payload (`docs/benchmarks.md`).
    pub content_is_gzip: bool,
    /// Reads `content` again from its start, the same bytes every time (a payload file),
    /// if it can be. When the part goes out as `content` is — compressed and given in
    /// gzip, or uncompressed and given so — its bytes are then read where they are for the
    /// signature and for the package, instead of being copied to a spool file first.
    pub reopen: Option<&'a Reopen<'a>>,
    /// The SHA-256 of the payload's own bytes, if known (the store recorded it when the
    /// payload came in). A part sent as those bytes (uncompressed), of a type the
    /// signature digests as it is (not XML, not text), is then signed with it instead of
    /// being read once more for its digest. A file changed since it was recorded is caught
    /// by the receiver's check of that digest, not signed anew.
    pub sha256: Option<[u8; 32]>,
}

/// Opens a payload's content anew, from its start (a reader that owns what it reads, such
/// as a file).
pub type Reopen<'a> = dyn Fn() -> io::Result<Box<dyn Read>> + 'a;

/// What [`send`] produced.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// The top-level `Content-Type` header value of the package.
    pub content_type: String,
    /// The references signed: keep them to check the receipt's NRR.
    pub references: Vec<SignedReference>,
    /// The envelope as sent.
    pub envelope: String,
    /// The user message's `eb:MessageId` (a receipt's RefToMessageId must name it).
    pub message_id: String,
}

fn internal(detail: impl Into<String>) -> EbmsError {
    EbmsError::new(ErrorCode::Other, detail)
}

fn io_err(what: &str) -> impl Fn(io::Error) -> EbmsError + '_ {
    move |e| internal(format!("{what}: {e}"))
}

/// A part to send: its content (compressed when the leg compresses).
struct Spooled<'a> {
    content_id: String,
    content_type: String,
    content: PartBytes<'a>,
    /// The SHA-256 of `content`, when it is the payload's own bytes and their SHA-256 was
    /// given ([`OutgoingPayload::sha256`]).
    known_sha256: Option<[u8; 32]>,
}

/// Where a part's bytes are read from, as many times as needed.
enum PartBytes<'a> {
    /// Copied (or compressed, or inflated) into a spool buffer.
    Spool(SpoolBuffer),
    /// Read where they are ([`OutgoingPayload::reopen`]).
    InPlace(&'a Reopen<'a>),
}

impl PartBytes<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            PartBytes::Spool(buffer) => Ok(buffer.open()?),
            PartBytes::InPlace(reopen) => reopen(),
        }
    }
}

impl AttachmentSource for Spooled<'_> {
    fn content_id(&self) -> &str {
        &self.content_id
    }
    fn content_type(&self) -> &str {
        &self.content_type
    }
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        self.content.open()
    }
    fn known_sha256(&self) -> Option<[u8; 32]> {
        self.known_sha256
    }
}

/// Builds and writes a signed AS4 message: `user_message` (its `parts` are replaced by
/// one `PartInfo` per payload), the payloads, per `policy`; the MIME package goes to `out`.
/// The same as [`prepare`] followed by [`Prepared::write_to`].
pub fn send(
    user_message: &UserMessage,
    payloads: Vec<OutgoingPayload<'_>>,
    policy: &SendPolicy<'_>,
    out: &mut dyn Write,
) -> Result<SentMessage, EbmsError> {
    prepare(user_message, payloads, policy)?.write_to(out)
}

/// A message signed (and its content key chosen) but not yet written: its
/// [`content_type`](Prepared::content_type) and [`references`](Prepared::references) are
/// known before the first byte of the package, so the package can be streamed into a
/// request whose headers go first. The parts are read (and encrypted) only by
/// [`Prepared::write_to`].
pub struct Prepared<'a> {
    ids: PackageIds,
    envelope: String,
    references: Vec<SignedReference>,
    message_id: String,
    parts: Vec<Spooled<'a>>,
    encryption: Option<PlannedEncryption>,
}

/// Compresses the payloads as the leg says (into spool buffers, or not at all when they
/// can be read where they are), signs the message and chooses its content key: step 1 to
/// 3 of the module's order. The package is written by [`Prepared::write_to`].
pub fn prepare<'a>(
    user_message: &UserMessage,
    payloads: Vec<OutgoingPayload<'a>>,
    policy: &SendPolicy<'_>,
) -> Result<Prepared<'a>, EbmsError> {
    let mut um = user_message.clone();
    um.parts.clear();
    let mut spooled = Vec::with_capacity(payloads.len());
    for p in payloads {
        let compress = policy.compress
            && !compress::leaves_uncompressed(&p.mime_type, policy.uncompressed_types);
        // The bytes go out as given: read where they are when they can be read again.
        let as_given = p.content_is_gzip == (compress || policy.already_gzip);
        let in_place = p.reopen.filter(|_| as_given);
        let mut content = SpoolBuffer::new(None);
        if in_place.is_none() {
            let mut w = BufWriter::with_capacity(64 * 1024, &mut content);
            if compress && !p.content_is_gzip {
                compress::gzip(p.content, &mut w).map_err(io_err("compressing a payload"))?;
            } else if p.content_is_gzip && !compress && !policy.already_gzip {
                let mut inflated = flate2::bufread::MultiGzDecoder::new(
                    io::BufReader::with_capacity(64 * 1024, p.content),
                );
                io::copy(&mut inflated, &mut w).map_err(io_err("inflating a payload"))?;
            } else {
                io::copy(p.content, &mut w).map_err(io_err("spooling a payload"))?;
            }
            w.flush().map_err(io_err("spooling a payload"))?;
        }
        let mut part = PartInfo::attachment(&p.content_id);
        part.properties = p.properties;
        part.properties
            .retain(|q| q.name != PROP_COMPRESSION_TYPE && q.name != PROP_MIME_TYPE);
        let gzipped = compress || policy.already_gzip;
        let content_type = if gzipped {
            part.properties
                .push(Property::new(PROP_COMPRESSION_TYPE, GZIP_MIME_TYPE));
            part.properties
                .push(Property::new(PROP_MIME_TYPE, p.mime_type.clone()));
            GZIP_MIME_TYPE.to_string()
        } else {
            part.properties
                .push(Property::new(PROP_MIME_TYPE, p.mime_type.clone()));
            p.mime_type.clone()
        };
        um.parts.push(part);
        spooled.push(Spooled {
            content_id: p.content_id,
            content_type,
            content: match in_place {
                Some(reopen) => PartBytes::InPlace(reopen),
                None => PartBytes::Spool(content),
            },
            // Sent uncompressed, the part is the payload's own bytes (inflated while
            // spooled if they were kept in gzip).
            known_sha256: p.sha256.filter(|_| !gzipped),
        });
    }
    // The signed parts' ids are derived from the MessageId, not random: sealing the same
    // stored message again (a retry after a restart, or the other instance of a pair taking
    // it over) then signs the same bytes, so the receipt the partner kept for the first copy
    // — which it answers a duplicate with — lists exactly the digests we sign now.
    let ids = DerivedIds::of(&um.message_info.message_id);
    let messaging = Messaging {
        id: Some(ids.messaging),
        user_message: Some(um),
        signals: Vec::new(),
    };
    let sources: Vec<&dyn AttachmentSource> =
        spooled.iter().map(|s| s as &dyn AttachmentSource).collect();
    let signed = sign_messaging(&messaging, &ids.body, &policy.signing, &sources, None)?;
    let mut envelope = signed.envelope;

    // Encrypt after signing: the content key is chosen and protected now, the encryption
    // elements go first in the header, and each part is encrypted straight into the
    // package as it is written (no spooled copy of the cipher text).
    let encryption = match &policy.encryption {
        Some(settings) if !spooled.is_empty() => {
            let parts = spooled
                .iter()
                .map(|s| (s.content_id.as_str(), s.content_type.as_str()));
            let plan = plan_encryption(settings, parts)?;
            envelope = insert_into_security_header(
                &envelope,
                &signed.security_header,
                &plan.header.to_xml(),
            )?;
            Some(plan)
        }
        _ => None,
    };
    Ok(Prepared {
        ids: PackageIds::random(),
        envelope,
        references: signed.references,
        message_id: user_message.message_info.message_id.clone(),
        parts: spooled,
        encryption,
    })
}

impl Prepared<'_> {
    /// The package's top-level `Content-Type` header value.
    pub fn content_type(&self) -> String {
        self.ids.content_type()
    }

    /// The references signed: keep them to check the receipt's NRR.
    pub fn references(&self) -> &[SignedReference] {
        &self.references
    }

    /// Writes the MIME package to `out`, each part encrypted on its way when the leg
    /// encrypts (step 4). A failure leaves `out` with part of a package.
    pub fn write_to(self, out: &mut dyn Write) -> Result<SentMessage, EbmsError> {
        let Prepared {
            ids,
            envelope,
            references,
            message_id,
            parts: spooled,
            encryption,
        } = self;

        let mut writer = MimeWriter::with_ids(out, ids);
        let content_type = writer.content_type();
        writer
            .write_root(envelope.as_bytes())
            .map_err(io_err("writing the MIME package"))?;
        for s in &spooled {
            let mut r = s.content.open().map_err(io_err("rewinding a payload"))?;
            match &encryption {
                Some(plan) => {
                    let mut failure = None;
                    let written = writer.write_attachment_with(
                        &s.content_id,
                        "application/octet-stream",
                        &[],
                        &mut |out| {
                            plan.encrypt(&mut r, out).map_err(|e| {
                                let text = e.detail.clone();
                                failure = Some(e);
                                io::Error::other(text)
                            })
                        },
                    );
                    if let Err(e) = written {
                        return Err(failure.unwrap_or_else(|| {
                            internal(format!("writing the MIME package: {e}"))
                        }));
                    }
                }
                None => {
                    writer
                        .write_attachment(&s.content_id, &s.content_type, &[], &mut r)
                        .map_err(io_err("writing the MIME package"))?;
                }
            }
        }
        writer
            .finish()
            .map_err(io_err("writing the MIME package"))?;
        Ok(SentMessage {
            content_type,
            references,
            envelope,
            message_id,
        })
    }
}

/// Inserts `fragment` at the start of the `wsse:Security` header `security_header`
/// (which occurs once in `envelope`).
fn insert_into_security_header(
    envelope: &str,
    security_header: &str,
    fragment: &str,
) -> Result<String, EbmsError> {
    let start = envelope
        .find(security_header)
        .ok_or_else(|| internal("the signed security header is not in the envelope"))?;
    let tag_end = security_header
        .find('>')
        .ok_or_else(|| internal("the security header has no start tag"))?;
    let at = start + tag_end + 1;
    let mut out = String::with_capacity(envelope.len() + fragment.len());
    out.push_str(&envelope[..at]);
    out.push_str(fragment);
    out.push_str(&envelope[at..]);
    Ok(out)
}

struct Signed {
    envelope: String,
    security_header: String,
    references: Vec<SignedReference>,
}

/// The `wsu:Id`s of a user message's signed eb:Messaging header and Body.
struct DerivedIds {
    messaging: String,
    body: String,
}

impl DerivedIds {
    /// Ids that depend only on the MessageId (unique within the document, which is all a
    /// `wsu:Id` must be; a hash, so no character of the MessageId needs escaping).
    fn of(message_id: &str) -> DerivedIds {
        let digest = openssl::sha::sha256(message_id.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        DerivedIds {
            messaging: format!("_eb-{hex}"),
            body: format!("_body-{hex}"),
        }
    }
}

/// Builds the envelope for `messaging` with the ids and placeholder the signer needs,
/// and signs it.
fn sign_messaging(
    messaging: &Messaging,
    body_id: &str,
    identity: &SigningIdentity<'_>,
    attachments: &[&dyn AttachmentSource],
    body_payload: Option<&str>,
) -> Result<Signed, EbmsError> {
    let unsigned = build_envelope(
        messaging,
        &BuildOptions {
            body_id: Some(body_id),
            extra_headers: vec![SECURITY_HEADER_PLACEHOLDER],
            body_payload,
        },
    )?;
    let s = sign_envelope(&unsigned, identity, attachments)?;
    Ok(Signed {
        envelope: s.envelope,
        security_header: s.security_header,
        references: s.references,
    })
}

/// A signal's envelope; `body` is written into the SOAP Body (a SOAP Fault), else it is
/// empty.
fn signal_envelope(
    signal: SignalMessage,
    identity: Option<&SigningIdentity<'_>>,
    body: Option<&str>,
) -> Result<String, EbmsError> {
    let messaging = Messaging {
        id: Some(format!("_eb-{}", uuid::Uuid::new_v4())),
        user_message: None,
        signals: vec![signal],
    };
    match identity {
        Some(id) => {
            let body_id = format!("_body-{}", uuid::Uuid::new_v4());
            Ok(sign_messaging(&messaging, &body_id, id, &[], body)?.envelope)
        }
        None => build_envelope(
            &messaging,
            &BuildOptions {
                body_payload: body,
                ..BuildOptions::default()
            },
        ),
    }
}

/// The SOAP 1.2 Fault that accompanies an error signal for a WS-Security failure (the
/// eDelivery conformance tests CP_TA35/37 expect "a WS-Security SOAP fault" for a broken
/// security header, and Domibus sends one): code `env:Sender` with the WS-Security 1.1
/// subcode — `wsse:FailedCheck` when a signature or a decryption failed (EBMS:0101,
/// EBMS:0102), `wsse:InvalidSecurity` when the security header breaks the policy
/// (EBMS:0103). `None` for other errors: they travel in the ebMS error signal alone.
pub fn security_fault(error: &EbmsError) -> Option<String> {
    let subcode = match error.code {
        ErrorCode::FailedAuthentication | ErrorCode::FailedDecryption => "FailedCheck",
        ErrorCode::PolicyNoncompliance => "InvalidSecurity",
        _ => return None,
    };
    let mut reason = String::with_capacity(error.detail.len());
    for c in format!("{}: {}", error.code, error.detail).chars() {
        match c {
            '&' => reason.push_str("&amp;"),
            '<' => reason.push_str("&lt;"),
            '>' => reason.push_str("&gt;"),
            // XML 1.0 cannot carry most control characters; a reason does not need them.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => reason.push(' '),
            c => reason.push(c),
        }
    }
    Some(format!(
        "<S12:Fault><S12:Code><S12:Value>S12:Sender</S12:Value><S12:Subcode><S12:Value xmlns:wsse=\"{wsse}\">wsse:{subcode}</S12:Value></S12:Subcode></S12:Code><S12:Reason><S12:Text xml:lang=\"en\">{reason}</S12:Text></S12:Reason></S12:Fault>",
        wsse = crate::ns::WSSE_NS,
    ))
}

fn new_message_id() -> String {
    format!("{}@varti", uuid::Uuid::new_v4())
}

/// Namespace of the element that wraps the copy of the received `eb:UserMessage` in a
/// plain (non-NRR) receipt.
pub(crate) const PLAIN_RECEIPT_NS: &str = "urn:varti:as4:receipt";

/// Builds the receipt for a received user message: a signed non-repudiation receipt
/// (`ebbp:NonRepudiationInformation` copying the received signature's references) when
/// `identity` is given and the message was signed, otherwise a plain receipt holding a
/// copy of the received `eb:UserMessage` (inside `varti:ReceivedUserMessage`). Returns the SOAP envelope.
pub fn build_receipt(
    received: &ReceivedMessage,
    identity: Option<&SigningIdentity<'_>>,
) -> Result<String, EbmsError> {
    let ref_to = received
        .messaging()
        .user_message
        .as_ref()
        .map(|u| u.message_info.message_id.clone())
        .ok_or_else(|| internal("a receipt answers a user message; this message has none"))?;
    let receipt = match (&received.signature, identity) {
        (Some(sig), Some(_)) => Receipt {
            non_repudiation: None,
            other: vec![non_repudiation_information(&sig.references)],
        },
        // The ebMS3 schema allows only foreign-namespace content in eb:Receipt
        // (`##other`), so the copy of the eb:UserMessage is wrapped in a Varti element.
        _ => Receipt::plain(format!(
            "<varti:ReceivedUserMessage xmlns:varti=\"{PLAIN_RECEIPT_NS}\">{}</varti:ReceivedUserMessage>",
            received
                .user_message_xml
                .as_deref()
                .ok_or_else(|| internal("the received user message was not kept"))?
        )),
    };
    let mut info = MessageInfo::new(new_message_id());
    info.ref_to_message_id = Some(ref_to);
    signal_envelope(
        SignalMessage {
            message_info: info,
            kind: SignalKind::Receipt(receipt),
        },
        identity,
        None,
    )
}

/// Builds an error signal for `error`, referring to `ref_to` (the message in error, when
/// known); signed when the leg signs (`identity` given). A WS-Security failure also
/// carries a SOAP Fault in the Body ([`security_fault`]). Returns the SOAP envelope.
pub fn build_error_signal(
    error: &EbmsError,
    ref_to: Option<&str>,
    identity: Option<&SigningIdentity<'_>>,
) -> Result<String, EbmsError> {
    let mut e = error.clone();
    if let Some(r) = ref_to {
        e = e.for_message(r);
    }
    let mut info = MessageInfo::new(new_message_id());
    info.ref_to_message_id = e.ref_to_message_id.clone();
    signal_envelope(
        SignalMessage {
            message_info: info,
            kind: SignalKind::Errors(vec![SignalError::from_ebms_error(&e)]),
        },
        identity,
        security_fault(&e).as_deref(),
    )
}

/// Builds a pull request (`eb:PullRequest`, ebMS3 Core §3.4) for the message partition
/// channel `mpc` (`None` or the default MPC: the attribute is left out), signed by
/// `identity` when given — the holder of the MPC authorises the puller by this signature.
/// Returns the SOAP envelope.
pub fn build_pull_request(
    mpc: Option<&str>,
    identity: Option<&SigningIdentity<'_>>,
) -> Result<String, EbmsError> {
    let mpc = mpc
        .filter(|m| *m != crate::message::model::DEFAULT_MPC)
        .map(str::to_owned);
    build_signal(
        SignalMessage {
            message_info: MessageInfo::new(new_message_id()),
            kind: SignalKind::PullRequest(PullRequest { mpc }),
        },
        identity,
    )
}

/// Builds the envelope of any signal exactly as given (its MessageId and timestamp
/// included), signed by `identity` when given. The builders above choose a fresh id and
/// the current time; this one is for tools and tests that must control them (a replayed
/// PullRequest, say).
pub fn build_signal(
    signal: SignalMessage,
    identity: Option<&SigningIdentity<'_>>,
) -> Result<String, EbmsError> {
    signal_envelope(signal, identity, None)
}

/// Sender side: checks that `receipt` (a message that passed [`receive`](crate::inbound::receive),
/// so its signature is verified) is a receipt for the message with id `request_message_id`
/// and that its non-repudiation information lists exactly the references we signed
/// (`sent`). `EBMS:0302 InvalidReceipt` otherwise. The references were read while the
/// receipt was received, from the very document its signature was verified on.
pub fn check_receipt(
    receipt: &ReceivedMessage,
    request_message_id: &str,
    sent: &[SignedReference],
) -> Result<(), EbmsError> {
    let invalid = |d: String| EbmsError::new(ErrorCode::InvalidReceipt, d);
    let signal = receipt
        .messaging()
        .signals
        .iter()
        .find(|s| matches!(s.kind, SignalKind::Receipt(_)))
        .ok_or_else(|| invalid("the message is not a receipt (no eb:Receipt signal)".into()))?;
    if signal.message_info.ref_to_message_id.as_deref() != Some(request_message_id) {
        return Err(invalid(format!(
            "the receipt refers to {:?}, not to the message {request_message_id}",
            signal.message_info.ref_to_message_id
        )));
    }
    if receipt.signature.is_none() && !sent.is_empty() {
        return Err(invalid(
            "the receipt is not signed, but the message was: a signed non-repudiation receipt is required"
                .into(),
        ));
    }
    if !sent.is_empty() {
        same_references(receipt.receipt_references()?, sent)?;
    }
    Ok(())
}
