//! `POST /api/v1/messages`: a backend submits a message.
//!
//! The body is `multipart/form-data`: first a `metadata` part (JSON, see [`Metadata`]),
//! then one part per payload, named as `metadata.payloads[].part` says. Each file part is
//! streamed into the payload store as it arrives: the async side forwards the parser's
//! chunks through a bounded channel to a blocking task running
//! [`PayloadStore::put`](varti_store::PayloadStore::put), so memory stays flat whatever the
//! size. Then [`submit`](crate::submit::submit) records the message.
//!
//! Clean-up is drop-safe: a payload reader sees an error (not an end of file) when the
//! request is abandoned mid-part, so no truncated payload is ever stored; payloads already
//! stored are removed when the submission fails or the request is dropped before the
//! message was recorded.

use std::io::{self, Read};
use std::sync::Arc;

use ::http::{header, Request, Response, StatusCode};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::sync::mpsc;
use varti_as4::message::id as message_id;
use varti_as4::spool::WritingBehind;
use varti_store::{
    Direction, FileEncoding, MessageProperty, PayloadEntry, PayloadRef, Store, StoreError,
    INLINE_PAYLOAD_MAX,
};

use super::{json_response, ApiError, Client};
use crate::access_point::AccessPoint;
use crate::server::Body;
use crate::submit::{self as ap_submit, Submission, SubmitError};

pub(crate) mod fuzzing;

/// Largest `metadata` part accepted.
const MAX_METADATA: u64 = 1024 * 1024;

/// The media type of a payload for which neither the metadata nor its form part gives one.
const DEFAULT_MIME_TYPE: &str = "application/octet-stream";

/// Most payloads one message may carry.
const MAX_PAYLOADS: usize = 1000;

/// Chunks buffered between the parser and the payload writer. Hyper hands over up to about
/// 400 KiB per chunk: two keep the writer busy while the next one is read, and bound what
/// waits in memory when the disk is slower than the client (eight added about 3 MiB to the
/// peak RSS of a 20 MiB upload on a loaded machine).
const UPLOAD_CHANNEL_DEPTH: usize = 2;

/// The `metadata` part of a submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Metadata {
    /// The receiving party: a `[[party]]` name or one of its party ids.
    pub to_party: String,
    /// The type of `to_party` when it is an id whose type matters.
    #[serde(default)]
    pub to_party_type: Option<String>,
    /// `eb:Service`.
    pub service: String,
    /// `eb:Service/@type`.
    #[serde(default)]
    pub service_type: Option<String>,
    /// `eb:Action`.
    pub action: String,
    /// `eb:AgreementRef`, to choose among legs.
    #[serde(default)]
    pub agreement: Option<String>,
    /// `eb:ConversationId` (generated when absent).
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// `eb:RefToMessageId`: the message this one answers.
    #[serde(default)]
    pub ref_to_message_id: Option<String>,
    /// The MessageId (generated when absent).
    #[serde(default)]
    pub message_id: Option<String>,
    /// `eb:MessageProperties`.
    #[serde(default)]
    pub properties: Vec<Property>,
    /// The payloads, in message order; each names the form part carrying its bytes.
    #[serde(default)]
    pub payloads: Vec<PayloadSpec>,
}

/// A message or part property.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Property {
    /// `@name`.
    pub name: String,
    /// The value.
    pub value: String,
    /// `@type`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
}

/// One payload of a submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PayloadSpec {
    /// The form field name of the part with the bytes.
    pub part: String,
    /// Its MIME type (default: the part's `Content-Type`, else `application/octet-stream`).
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Its Content-ID (`cid:` optional; generated when absent).
    #[serde(default)]
    pub content_id: Option<String>,
    /// `eb:PartProperties`.
    #[serde(default)]
    pub properties: Vec<Property>,
}

impl From<Property> for MessageProperty {
    fn from(p: Property) -> Self {
        MessageProperty {
            name: p.name,
            value: p.value,
            type_: p.type_,
        }
    }
}

/// Payloads stored for a submission not yet recorded; removed on drop unless disarmed.
struct Stored {
    store: Arc<dyn Store>,
    parts: Vec<(String, PayloadRef, String)>,
}

impl Stored {
    fn take(&mut self) -> Vec<(String, PayloadRef, String)> {
        std::mem::take(&mut self.parts)
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        let refs: Vec<PayloadRef> = self.parts.drain(..).map(|(_, r, _)| r).collect();
        if refs.is_empty() {
            return;
        }
        let store = self.store.clone();
        let remove = move || {
            for r in &refs {
                if let Err(e) = store.payloads().remove(r) {
                    tracing::warn!(payload = %r.id, error = %e, "cannot remove the payload of a refused submission");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

/// Handles `POST /messages`.
pub(super) async fn submit(
    ap: Arc<AccessPoint>,
    client: Client,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::bad_request(
            format!("the body must be multipart/form-data with a boundary (Content-Type is `{content_type}`)"),
            "send a form: a `metadata` part with the JSON, then one part per file, e.g. \
             curl -F metadata=@meta.json -F file0=@invoice.xml",
        )
    })?;
    let max_body = ap.settings.limits.max_request_body_bytes;
    let body = crate::server::http::timed_body(request);
    let mut form = open_form(body, boundary, max_body);
    let mut stored = Stored {
        store: ap.store.clone(),
        parts: Vec::new(),
    };
    let mut sink = StoreSink {
        ap: ap.clone(),
        owner: client.name.clone(),
    };
    let metadata = read_form(&mut form, &mut sink, &mut stored.parts).await?;

    // Payloads in the order the metadata lists them.
    let mut parts = stored.take();
    let mut entries = Vec::with_capacity(metadata.payloads.len());
    let mut refs = Vec::with_capacity(metadata.payloads.len());
    for spec in &metadata.payloads {
        let at = parts
            .iter()
            .position(|(n, _, _)| *n == spec.part)
            .expect("checked above");
        let (_, payload, mime_type) = parts.swap_remove(at);
        refs.push(payload.clone());
        entries.push(PayloadEntry {
            content_id: spec
                .content_id
                .as_deref()
                .map(|c| c.trim_start_matches("cid:").to_owned())
                .unwrap_or_else(|| format!("{}@varti", uuid::Uuid::new_v4())),
            mime_type,
            stored: payload,
            properties: spec.properties.iter().cloned().map(Into::into).collect(),
        });
    }
    let submission = Submission {
        owner: client.name.clone(),
        message_id: metadata.message_id,
        to_party: metadata.to_party,
        to_party_type: metadata.to_party_type,
        service: metadata.service,
        service_type: metadata.service_type,
        action: metadata.action,
        agreement: metadata.agreement,
        conversation_id: metadata.conversation_id,
        ref_to_message_id: metadata.ref_to_message_id,
        properties: metadata.properties.into_iter().map(Into::into).collect(),
        payloads: entries,
    };
    // Recording and the clean-up after a refusal run in one blocking task: once it starts,
    // a dropped request can no longer separate the message from its payloads.
    let owner = client.name.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let result = ap_submit::submit(&ap, submission, ap.clock.now());
        if result.is_err() {
            for r in &refs {
                let _ = ap.store.payloads().remove(r);
            }
        }
        result.map_err(|e| match e {
            // Taken while the payloads streamed: answered as the early check would.
            SubmitError::Store(StoreError::AlreadyExists { message_id, .. }) => {
                check_id_is_free(&ap, &owner, &message_id)
                    .err()
                    .unwrap_or_else(|| unusable_message_id(&message_id))
            }
            e => submit_error(e),
        })
    })
    .await
    .map_err(ApiError::internal)?;
    outcome.map(|message_id| {
        json_response(
            StatusCode::CREATED,
            &serde_json::json!({ "message_id": message_id }),
        )
    })
}

/// The `multipart/form-data` reader of a submission's `body`, with the limits of the
/// API: the whole body at most `max_body` bytes, the metadata part at most
/// [`MAX_METADATA`].
fn open_form<B>(body: B, boundary: String, max_body: u64) -> multer::Multipart<'static>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(max_body)
            .for_field("metadata", MAX_METADATA),
    );
    multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints)
}

/// Where [`read_form`] sends what it cannot judge from the form alone.
trait FormSink {
    /// What a stored payload is remembered as.
    type Stored;
    /// Checks `metadata.message_id` before any payload is streamed.
    async fn check_id(&mut self, id: &str) -> Result<(), ApiError>;
    /// Streams one file part to where payloads are kept: a part of the submission
    /// `metadata` whose media type is `mime_type`.
    async fn payload(
        &mut self,
        field: &mut multer::Field<'static>,
        metadata: &Metadata,
        mime_type: &str,
    ) -> Result<Self::Stored, ApiError>;
}

/// The payload store of the access point, and the client's own message ids.
struct StoreSink {
    ap: Arc<AccessPoint>,
    owner: String,
}

impl FormSink for StoreSink {
    type Stored = PayloadRef;

    async fn check_id(&mut self, id: &str) -> Result<(), ApiError> {
        let (ap, owner, id) = (self.ap.clone(), self.owner.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || check_id_is_free(&ap, &owner, &id))
            .await
            .map_err(ApiError::internal)?
    }

    async fn payload(
        &mut self,
        field: &mut multer::Field<'static>,
        metadata: &Metadata,
        mime_type: &str,
    ) -> Result<PayloadRef, ApiError> {
        // Where the message goes: a large part its leg compresses is stored compressed.
        let target = Submission {
            to_party: metadata.to_party.clone(),
            to_party_type: metadata.to_party_type.clone(),
            service: metadata.service.clone(),
            service_type: metadata.service_type.clone(),
            action: metadata.action.clone(),
            agreement: metadata.agreement.clone(),
            ..Submission::default()
        };
        stream_part(&self.ap, field, target, mime_type.to_owned()).await
    }
}

/// Reads a submission's form: the `metadata` part first (JSON, checked), then every file
/// part it names, each handed to `sink` and recorded in `parts` (form part name, what the
/// sink stored, the payload's media type: the metadata's, else the part's Content-Type,
/// else the default) as soon as it is stored, so that the caller can remove what was
/// stored when the submission fails. Every part the metadata names has arrived when this
/// returns `Ok`.
async fn read_form<S: FormSink>(
    form: &mut multer::Multipart<'static>,
    sink: &mut S,
    parts: &mut Vec<(String, S::Stored, String)>,
) -> Result<Metadata, ApiError> {
    // The metadata comes first: it says which parts are payloads.
    let field = form
        .next_field()
        .await
        .map_err(form_error)?
        .ok_or_else(|| missing_metadata("the form is empty"))?;
    if field.name() != Some("metadata") {
        return Err(missing_metadata(&format!(
            "the first part is `{}`",
            field.name().unwrap_or("")
        )));
    }
    let text = field.bytes().await.map_err(form_error)?;
    let metadata: Metadata = serde_json::from_slice(&text).map_err(|e| {
        ApiError::bad_request(
            format!("the metadata part is not valid: {e}"),
            "send JSON with to_party, service, action and optionally service_type, agreement, \
             conversation_id, ref_to_message_id, message_id, properties [{name, value, type?}] \
             and payloads [{part, mime_type?, content_id?, properties?}] (see \
             GET /api/v1/openapi.json)",
        )
    })?;
    check_metadata(&metadata)?;
    if let Some(id) = &metadata.message_id {
        // Before any payload is streamed: an id this client cannot use is refused at once.
        sink.check_id(id).await?;
    }

    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        let name = field.name().unwrap_or("").to_owned();
        let Some(spec) = metadata.payloads.iter().find(|p| p.part == name) else {
            return Err(ApiError::bad_request(
                format!("form part `{name}` is not named by any metadata.payloads[].part"),
                "list every file part in metadata.payloads (part = the form field name), or \
                 leave it out of the form",
            ));
        };
        if parts.iter().any(|(p, _, _)| *p == name) {
            return Err(ApiError::bad_request(
                format!("form part `{name}` is sent twice"),
                "give each file its own form field name",
            ));
        }
        // The metadata's media type, else the form part's, else the default.
        let mime_type = match &spec.mime_type {
            Some(m) => m.clone(),
            None => field
                .content_type()
                .map_or_else(|| DEFAULT_MIME_TYPE.to_owned(), |m| m.to_string()),
        };
        let payload = sink.payload(&mut field, &metadata, &mime_type).await?;
        parts.push((name, payload, mime_type));
    }
    if let Some(missing) = metadata
        .payloads
        .iter()
        .find(|p| !parts.iter().any(|(n, _, _)| *n == p.part))
    {
        return Err(ApiError::bad_request(
            format!(
                "metadata.payloads names part `{}` but the form has no such part",
                missing.part
            ),
            "send one form part per payload, named as its `part` says",
        ));
    }
    Ok(metadata)
}
fn missing_metadata(what: &str) -> ApiError {
    ApiError::bad_request(
        format!("{what}: the first form part must be `metadata` (JSON)"),
        "put the metadata part before the files: the files are streamed to the store as they \
         arrive, so the server must know them first",
    )
}

fn check_metadata(m: &Metadata) -> Result<(), ApiError> {
    let bad = |e: String, hint: &str| Err(ApiError::bad_request(e, hint));
    for (key, value) in [
        ("to_party", &m.to_party),
        ("service", &m.service),
        ("action", &m.action),
    ] {
        if value.trim().is_empty() {
            return bad(
                format!("metadata.{key} is empty"),
                "name the receiving party, the service and the action of a PMode leg",
            );
        }
    }
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 1024
            && !s.chars().any(|c| c.is_whitespace() || "<>\"".contains(c))
    };
    if let Some(v) = &m.message_id {
        if message_id::check(v).is_err() {
            return Err(unusable_message_id(v));
        }
    }
    if let Some(v) = &m.ref_to_message_id {
        if let Err(why) = message_id::check(v) {
            return bad(
                format!("metadata.ref_to_message_id `{v}`: {why}"),
                "give the MessageId of the message this one answers, exactly as it was sent",
            );
        }
    }
    if m.payloads.len() > MAX_PAYLOADS {
        return bad(
            format!(
                "{} payloads; at most {MAX_PAYLOADS} are accepted",
                m.payloads.len()
            ),
            "bundle the files (e.g. into a ZIP) or send several messages",
        );
    }
    let mut parts = std::collections::HashSet::new();
    let mut cids = std::collections::HashSet::new();
    for p in &m.payloads {
        if p.part.is_empty() || p.part == "metadata" {
            return bad(
                format!(
                    "metadata.payloads[].part `{}` is not a usable form field name",
                    p.part
                ),
                "name each file's form field, e.g. file0, file1",
            );
        }
        if !parts.insert(p.part.as_str()) {
            return bad(
                format!("metadata.payloads names part `{}` twice", p.part),
                "each payload needs its own form part",
            );
        }
        if let Some(cid) = &p.content_id {
            let bare = cid.trim_start_matches("cid:");
            if !id_ok(bare) {
                return bad(
                    format!("content_id `{cid}` is not usable"),
                    "use a Content-ID without angle brackets or spaces, or leave it out",
                );
            }
            if !cids.insert(bare) {
                return bad(
                    format!("content_id `{cid}` is used twice"),
                    "Content-IDs must be unique within a message",
                );
            }
        }
        if let Some(mime) = &p.mime_type {
            if !mime.contains('/') || mime.chars().any(|c| c.is_control()) {
                return bad(
                    format!("mime_type `{mime}` of part `{}` is not a MIME type", p.part),
                    "use a type/subtype such as application/xml",
                );
            }
        }
        if let Some(q) = p
            .properties
            .iter()
            .find(|q| q.name == "MimeType" || q.name == "CompressionType")
        {
            return bad(
                format!("part property `{}` is set by AS4 itself", q.name),
                "give the type as mime_type; compression is the PMode's business",
            );
        }
        // What the receiver would refuse (a malformed or repeated CharacterSet): refused
        // here, before anything is sent.
        let props: Vec<(&str, &str)> = p
            .properties
            .iter()
            .map(|q| (q.name.as_str(), q.value.as_str()))
            .collect();
        if let Err(e) = varti_as4::compress::part_compression(&props) {
            return bad(
                format!("part `{}`: {}", p.part, e.detail),
                "give CharacterSet once, as a character set name such as UTF-8 or UTF-16",
            );
        }
    }
    if let Some(q) = m
        .properties
        .iter()
        .chain(m.payloads.iter().flat_map(|p| p.properties.iter()))
        .find(|q| q.name.trim().is_empty())
    {
        return bad(
            format!("a property with value `{}` has no name", q.value),
            "every property needs a name",
        );
    }
    Ok(())
}

/// Stores an upload — a part of type `mime_type` of a message for `target` — the way its
/// leg will send it: gzip-compressed when the leg compresses that type, the part is larger
/// than a payload kept inline and the store keeps payloads as files. The part is then
/// compressed as it arrives (on the cores `compress::gzip` uses for a large part) into a
/// spool file, which the payload store takes over as a file kept in gzip, and the sender
/// sends those bytes as they are. Compressing when sealing instead wrote the payload's
/// bytes to the disk, read them back and compressed them while the message waited
/// (`docs/benchmarks.md`). The recorded size and SHA-256 are the payload's own, counted on
/// the way in. Any other part, or one a store cannot take over as a file (another file
/// system), is stored as [`PayloadStore::put`] stores the payload's bytes.
///
/// [`PayloadStore::put`]: varti_store::PayloadStore::put
fn put_upload(
    ap: &AccessPoint,
    reader: &mut dyn Read,
    target: &Submission,
    mime_type: &str,
) -> Result<PayloadRef, StoreError> {
    let payloads = ap.store.payloads();
    let read_failed = |e: io::Error| StoreError::Io {
        context: "cannot read the payload being stored (nothing was kept)".into(),
        source: e,
    };
    let mut head = Vec::new();
    Read::take(&mut *reader, INLINE_PAYLOAD_MAX as u64 + 1)
        .read_to_end(&mut head)
        .map_err(read_failed)?;
    if head.len() <= INLINE_PAYLOAD_MAX {
        // The whole part (the upload has ended: it is not read again), kept inline.
        return payloads.put(&mut &head[..]);
    }
    if !(payloads.adopts_files() && ap_submit::leg_compresses(ap, target, mime_type)) {
        return payloads.put(&mut Read::chain(&head[..], reader));
    }
    let spool_failed = |e: io::Error| StoreError::Io {
        context: "cannot compress the payload into the spool directory".into(),
        source: e,
    };
    let dir = ap.spool_dir();
    std::fs::create_dir_all(&dir).map_err(spool_failed)?;
    let file = tempfile::NamedTempFile::new_in(&dir).map_err(spool_failed)?;
    let mut counted = CountingReader {
        inner: Read::chain(io::Cursor::new(head), reader),
        hash: openssl::sha::Sha256::new(),
        len: 0,
    };
    // The store syncs the file it takes over: its writeback starts as it is written.
    let written = varti_as4::compress::gzip(
        &mut counted,
        io::BufWriter::with_capacity(64 * 1024, WritingBehind::new(file.as_file())),
    );
    if let Err(e) = written {
        // The upload broke off, or the spool file could not be written: the error says.
        return Err(StoreError::Io {
            context: "cannot read the payload or compress it into the spool directory \
                      (nothing was kept)"
                .into(),
            source: e,
        });
    }
    let (len, sha256) = (counted.len, counted.hash.finish());
    if let Some(kept) = payloads.adopt(file.path(), FileEncoding::Gzip, len, &sha256)? {
        // The name is the store's now: dropping the temporary file must not remove it.
        let (_file, path) = file.into_parts();
        let _ = path.keep();
        return Ok(kept);
    }
    let mut inflated =
        flate2::read::MultiGzDecoder::new(io::BufReader::new(file.reopen().map_err(spool_failed)?));
    payloads.put(&mut inflated)
}

/// Counts and hashes what is read through it.
struct CountingReader<R> {
    inner: R,
    hash: openssl::sha::Sha256,
    len: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Streams one form part (of type `mime_type`, of a message for `target`) into the payload
/// store, as [`put_upload`] stores it.
async fn stream_part(
    ap: &Arc<AccessPoint>,
    field: &mut multer::Field<'static>,
    target: Submission,
    mime_type: String,
) -> Result<PayloadRef, ApiError> {
    let (tx, rx) = mpsc::channel::<Bytes>(UPLOAD_CHANNEL_DEPTH);
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let writer_ap = ap.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut reader = UploadReader {
            rx,
            end: end_rx,
            current: Bytes::new(),
        };
        put_upload(&writer_ap, &mut reader, &target, &mime_type)
    });
    let mut form_failure = None;
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    // The writer stopped (it failed): its result says why.
                    break;
                }
            }
            Ok(None) => {
                let _ = end_tx.send(());
                break;
            }
            Err(e) => {
                form_failure = Some(form_error(e));
                break;
            }
        }
    }
    // Dropping the sender without the end mark makes the reader fail: no truncated payload.
    drop(tx);
    let written = writer.await.map_err(ApiError::internal)?;
    if let Some(e) = form_failure {
        if let Ok(payload) = &written {
            let _ = ap.store.payloads().remove(payload);
        }
        return Err(e);
    }
    written.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the payload: {e}"),
            "the server log has details; retry later",
        )
    })
}

/// The blocking end of an upload: ends only on the explicit end mark; a sender that goes
/// away without it (request dropped, form broken) is an error.
struct UploadReader {
    rx: mpsc::Receiver<Bytes>,
    end: tokio::sync::oneshot::Receiver<()>,
    current: Bytes,
}

impl Read for UploadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => {
                    return match self.end.try_recv() {
                        Ok(()) => Ok(0),
                        Err(_) => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the upload broke off before the part ended",
                        )),
                    }
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// A multipart parsing failure as an API error.
fn form_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request is larger than {limit} bytes (limits.max_request_body_bytes)"),
            "split the payloads over several messages, or raise the limit",
        ),
        multer::Error::FieldSizeExceeded { limit, field_name } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "form part `{}` is larger than {limit} bytes",
                field_name.unwrap_or_default()
            ),
            "the metadata part holds only the JSON description; send files as their own parts",
        ),
        e => ApiError::bad_request(
            format!("the multipart form cannot be read: {e}"),
            "send multipart/form-data as RFC 7578 describes (curl -F does); check the \
             boundary and that the body is complete",
        ),
    }
}

/// The answer to a `metadata.message_id` this client cannot use: one that is not an
/// RFC 2822 message id ([`message_id::check`]), and one another client (or an inbound
/// message) already has. The two answers are byte for byte the same, so a client learns
/// nothing of the other clients' messages (not their owner, state or partner) beyond what
/// the one global id space of ebMS3 implies: a syntactically valid id it cannot use is
/// taken. Ids generated by Varti (leave `message_id` out) cannot collide.
fn unusable_message_id(id: &str) -> ApiError {
    ApiError::bad_request(
        format!("metadata.message_id `{id}` cannot be used by this client"),
        format!(
            "give a new RFC 2822 message id that this client has not used: left@right, each \
             side letters, digits and !#$%&'*+-/=?^_`{{|}}~ in runs separated by single dots, \
             at most {} bytes; or leave message_id out to have one generated",
            message_id::MAX_LEN
        ),
    )
}

/// Whether `id` is free for a submission by `owner`: `Ok` when unused; 409 when this
/// client already submitted a message with it (a retried submission: the answer names
/// it); otherwise the same 400 as for an invalid id ([`unusable_message_id`]).
fn check_id_is_free(ap: &AccessPoint, owner: &str, id: &str) -> Result<(), ApiError> {
    match ap.store.get(id)? {
        None => Ok(()),
        Some(r) if r.direction == Direction::Outbound && r.meta.owner == owner => {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("this client already submitted message `{id}`"),
                "a retried submission is not sent twice: GET the message for its state; to \
                 send another message, omit message_id or use a new one",
            ))
        }
        Some(_) => Err(unusable_message_id(id)),
    }
}

/// A refused submission as an API error.
fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::NoRoute(detail) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            // The routing detail names the nearest leg and what differs.
            detail,
            "check to_party, service, service_type, action and agreement against the PModes \
             (`varti pmode show`)",
        ),
        SubmitError::Invalid(detail) => ApiError::bad_request(detail, "complete the metadata"),
        SubmitError::Store(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_reader_needs_the_end_mark() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Ended properly.
        let (tx, rx) = mpsc::channel(4);
        let (end_tx, end) = tokio::sync::oneshot::channel();
        rt.block_on(tx.send(Bytes::from_static(b"abc"))).unwrap();
        end_tx.send(()).unwrap();
        drop(tx);
        let mut r = UploadReader {
            rx,
            end,
            current: Bytes::new(),
        };
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        // Broken off.
        let (tx, rx) = mpsc::channel(4);
        let (_end_tx, end) = tokio::sync::oneshot::channel::<()>();
        rt.block_on(tx.send(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut r = UploadReader {
            rx,
            end,
            current: Bytes::new(),
        };
        let mut s = Vec::new();
        let e = r.read_to_end(&mut s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn metadata_checks_name_the_problem() {
        let m: Metadata = serde_json::from_value(serde_json::json!({
            "to_party": "b", "service": "s", "action": "a",
            "payloads": [{"part": "f", "mime_type": "text/plain"}, {"part": "f", "mime_type": "text/plain"}]
        }))
        .unwrap();
        let e = check_metadata(&m).unwrap_err();
        assert!(e.error.contains("twice"), "{}", e.error);
        let m: Metadata = serde_json::from_value(serde_json::json!({
            "to_party": "b", "service": "s", "action": "a", "message_id": "<x y>"
        }))
        .unwrap();
        assert!(check_metadata(&m).unwrap_err().error.contains("message_id"));
        let e = serde_json::from_value::<Metadata>(serde_json::json!({
            "to_party": "b", "service": "s", "action": "a", "actoin": "x"
        }))
        .unwrap_err();
        assert!(e.to_string().contains("actoin"), "{e}");
    }

    /// CP_TA27/28: a producer's CharacterSet is taken as given when it is a character set
    /// name, refused at submission when the receiver would refuse it.
    #[test]
    fn character_set_is_checked_at_submission() {
        let with = |values: &[&str]| {
            let props: Vec<_> = values
                .iter()
                .map(|v| serde_json::json!({"name": "CharacterSet", "value": v}))
                .collect();
            serde_json::from_value::<Metadata>(serde_json::json!({
                "to_party": "b", "service": "s", "action": "a",
                "payloads": [{"part": "f", "mime_type": "text/xml", "properties": props}]
            }))
            .unwrap()
        };
        check_metadata(&with(&["UTF-16"])).unwrap();
        check_metadata(&with(&["UTF-8"])).unwrap();
        let e = check_metadata(&with(&["UTF 16"])).unwrap_err();
        assert!(
            e.error.contains("`UTF 16` is not a character set"),
            "{}",
            e.error
        );
        let e = check_metadata(&with(&["UTF-8", "UTF-16"])).unwrap_err();
        assert!(e.error.contains("more than once"), "{}", e.error);
    }
}
