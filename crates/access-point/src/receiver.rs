//! `POST /msh`: the receiving side of the access point.
//!
//! One request, in order: parse the MIME package (streamed; attachments spill to files in
//! the spool directory, except large encrypted payloads, which are decrypted into them as
//! they arrive: `varti_as4::receive::EarlyDecryption`) → read the ebMS header →
//! `varti_as4::receive::accept` (find the leg, check that the message is for us, decrypt,
//! verify, trust, decompress, enforce the leg, build the receipt) → the check of the
//! feature that claimed the service, if any ([`AccessPoint::check_inbound`]) → store
//! payloads and record durably → only then answer with the receipt. A duplicate (same
//! MessageId) gets the original receipt and is stored and delivered only once. Any refusal
//! is an ebMS error signal (signed when the message could be attributed to a leg that
//! signs) and changes no stored state.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use ::http::{header, HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use varti_as4::error::{EbmsError, ErrorCode};
use varti_as4::inbound::{DeliveredPayload, ReceivedMessage};
use varti_as4::message::mime::{MimeError, MimeLimits, MimePackage};
use varti_as4::message::model::{SignalKind, DEFAULT_MPC};
use varti_as4::message::soap::{self, Envelope};
use varti_as4::pmode::model::Leg;
use varti_as4::receive::{self, Accepted, Arrival, EarlyDecryption, Refusal};
use varti_as4::security::sign::SigningIdentity;
use varti_store::{
    FileEncoding, InsertOutcome, MessageMeta, MessageProperty, NewInbound, PayloadEntry, PayloadRef,
};

use crate::access_point::{AccessPoint, InboundMessage, MessageEvent, TEST_SERVICE_OWNER};
use crate::ops::{Direction, Outcome};
use crate::pull;
use crate::reload::Snapshot;
use crate::server::{FaultCode, MshHandler, MshRequest, MshResponse, MshResponseBody};
use crate::submit::leg_key;

/// Content type of SOAP 1.2 responses (receipts and error signals).
const SOAP12: &str = "application/soap+xml; charset=UTF-8";

/// The MSH handler of a running access point.
#[derive(Debug)]
pub struct Receiver {
    ap: Arc<AccessPoint>,
}

impl Receiver {
    /// A receiver for `ap`.
    pub fn new(ap: Arc<AccessPoint>) -> Receiver {
        Receiver { ap }
    }
}

impl MshHandler for Receiver {
    fn handle(&self, mut request: MshRequest) -> MshResponse {
        let started = Instant::now();
        let Some(content_type) = request
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            drain(&mut request.body);
            return MshResponse::fault(
                StatusCode::BAD_REQUEST,
                FaultCode::Sender,
                "the request has no Content-Type; send multipart/related (AS4) or application/soap+xml",
            );
        };
        let spool = self.ap.spool_dir();
        if let Err(e) = std::fs::create_dir_all(&spool) {
            tracing::error!(dir = %spool.display(), error = %e, "cannot create the spool directory");
            drain(&mut request.body);
            return internal_fault("the access point cannot store messages right now");
        }
        // The set this message is received under, to the end (a reload meanwhile does not
        // change it halfway).
        let snap = self.ap.current();
        let read = read_message(
            &self.ap,
            &snap,
            Arrival::Pushed,
            &mut request.body,
            &content_type,
        );
        let package = match read {
            Ok(p) => p,
            Err(e) => {
                drain(&mut request.body);
                let e = e.to_ebms();
                if e.transient {
                    return busy(&self.ap, &e);
                }
                tracing::warn!(peer = %request.peer.remote_addr, error = %e.detail, code = e.code.code(), "AS4 request refused: bad MIME package");
                self.ap
                    .metrics
                    .message(Direction::Inbound, Outcome::Rejected);
                return error_response(&e, None, None);
            }
        };
        let envelope = match soap::parse_envelope(&package.root().content) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(peer = %request.peer.remote_addr, error = %e.detail, code = e.code.code(), "AS4 request refused: bad SOAP envelope");
                self.ap
                    .metrics
                    .message(Direction::Inbound, Outcome::Rejected);
                return error_response(&e, None, None);
            }
        };
        let response = if envelope.messaging.user_message.is_some() {
            let peer = peer_address(&self.ap, &request);
            accept_user_message(
                &self.ap,
                &snap,
                &package,
                envelope,
                Arrival::Pushed,
                Some(peer),
            )
        } else {
            self.signal(&package, &envelope.messaging)
        };
        self.ap
            .metrics
            .observe_latency(Direction::Inbound, started.elapsed());
        response
    }
}

/// Reads the body of an AS4 message (whose `Content-Type` is `content_type`) that arrived
/// as `arrival` says, to be accepted under `snap`: attachments past the spill threshold go
/// to the spool directory (created by the caller), charged to the spool budget, except the
/// large encrypted parts of a message its leg takes, which are decrypted into it as they
/// arrive ([`EarlyDecryption`]), under the same PModes and keys that accept them.
pub(crate) fn read_message(
    ap: &AccessPoint,
    snap: &Snapshot,
    arrival: Arrival,
    body: impl Read,
    content_type: &str,
) -> Result<MimePackage, MimeError> {
    let limits = MimeLimits {
        max_total_size: ap.settings.limits.max_request_body_bytes,
        temp_dir: Some(ap.spool_dir()),
        spool_budget: Some(ap.spool_budget.clone()),
        ..MimeLimits::default()
    };
    let spool = ap.spool();
    let mut early = EarlyDecryption::new(
        arrival,
        &snap.pmodes,
        &snap.identity,
        ap.clock.now(),
        &spool,
    );
    MimePackage::read_http_body_tapped(body, content_type, &limits, Some(&mut early))
}

/// The peer of a pushed message as the history records it: the TCP peer, or, when that is
/// a trusted proxy (`server.trusted_proxies`), the client its `X-Forwarded-For` names (the
/// rightmost address: the one the proxy added; the ones before it are the client's word).
fn peer_address(ap: &AccessPoint, request: &MshRequest) -> String {
    let tcp = request.peer.remote_addr;
    if !ap.settings.trusted_proxies.contains(&tcp.ip()) {
        return tcp.to_string();
    }
    let forwarded = request
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())
        .and_then(|v| v.parse::<std::net::IpAddr>().ok());
    match forwarded {
        Some(client) => format!("{client} (via proxy {tcp})"),
        None => tcp.to_string(),
    }
}

/// Our signing identity on `leg` (receipts and signals we send on it).
pub(crate) fn signing_identity<'a>(snap: &'a Snapshot, leg: &Leg) -> SigningIdentity<'a> {
    snap.identity.signing_identity(leg)
}

/// A user message, pushed to `/msh` or pulled from a partner, whose SOAP root was read
/// into `envelope`: accepted by [`receive::accept`] (route, verify, enforce, receipt) under
/// `snap` (the set in force when it arrived, to the end), then stored. The answer holds
/// the receipt or the error signal (HTTP 200), or a SOAP fault when the message could not
/// be stored (HTTP 500: the sender tries again).
pub(crate) fn accept_user_message(
    ap: &AccessPoint,
    snap: &Snapshot,
    package: &MimePackage,
    envelope: Envelope,
    arrival: Arrival,
    peer: Option<String>,
) -> MshResponse {
    let now = ap.clock.now();
    let spool = ap.spool();
    let accepted = match receive::accept(
        package,
        envelope,
        arrival,
        &snap.pmodes,
        &snap.identity,
        now,
        &spool,
    ) {
        Ok(a) => a,
        Err(refusal) => return refused(ap, refusal),
    };
    let Accepted {
        message: received,
        user_message: um,
        leg,
        partner,
        test_service,
        receipt,
    } = accepted;
    let id = um.message_info.message_id.clone();
    let owner = if test_service {
        TEST_SERVICE_OWNER.to_owned()
    } else {
        ap.owner_for_service(&um.collaboration_info.service.value)
    };
    // The feature that takes the service may refuse the message before anything of it is
    // stored: the payloads' temporary files go with `received`.
    if !test_service {
        let view = InboundMessage {
            user_message: &um,
            partner,
            payloads: &received.payloads,
        };
        if let Err(r) = ap.judge_inbound(&view) {
            ap.metrics.refusal(&owner, r.reason);
            return refused(
                ap,
                snap.identity
                    .refusal(r.error.for_message(id.clone()), Some(&id), Some(leg)),
            );
        }
    }
    let payloads = match store_payloads(ap, received, test_service) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "cannot store the payloads");
            return internal_fault("the access point cannot store messages right now");
        }
    };
    let meta = MessageMeta {
        message_id: id.clone(),
        owner: owner.clone(),
        from_party: first_id(&um.party_info.from.party_ids),
        to_party: first_id(&um.party_info.to.party_ids),
        service: um.collaboration_info.service.value.clone(),
        action: um.collaboration_info.action.clone(),
        conversation_id: um.collaboration_info.conversation_id.clone(),
        ref_to_message_id: um.message_info.ref_to_message_id.clone(),
        pmode_id: leg_key(leg),
        payloads,
        properties: um
            .properties
            .iter()
            .map(|p| MessageProperty {
                name: p.name.clone(),
                value: p.value.clone(),
                type_: p.type_.clone(),
            })
            .collect(),
    };
    let stored_payloads: Vec<_> = meta.payloads.iter().map(|p| p.stored.clone()).collect();
    match ap.store.insert_inbound(
        NewInbound {
            meta,
            receipt: receipt.clone(),
            peer,
        },
        now,
    ) {
        Ok(InsertOutcome::Inserted) => {
            tracing::info!(message_id = %id, leg = %leg.label(), test = test_service, "message received and acknowledged");
            ap.metrics.message(Direction::Inbound, Outcome::Success);
            if !test_service {
                ap.announce(MessageEvent::Received {
                    message_id: id.clone(),
                    owner,
                });
            }
            soap_response(StatusCode::OK, Bytes::from(receipt))
        }
        Ok(InsertOutcome::Duplicate {
            original_receipt: receipt,
            ..
        }) => {
            tracing::info!(message_id = %id, "duplicate message: the original receipt is sent again");
            ap.metrics.message(Direction::Inbound, Outcome::Duplicate);
            soap_response(StatusCode::OK, Bytes::from(receipt))
        }
        Err(e) => {
            for p in &stored_payloads {
                let _ = ap.store.payloads().remove(p);
            }
            match e {
                varti_store::StoreError::AlreadyExists { .. } => refused(
                    ap,
                    snap.identity.refusal(
                        EbmsError::new(
                            ErrorCode::InvalidHeader,
                            "the MessageId is already used by a message this access point sent; message ids must be unique",
                        ),
                        Some(&id),
                        Some(leg),
                    ),
                ),
                e => {
                    tracing::error!(message_id = %id, error = %e, "cannot store the message");
                    internal_fault("the access point cannot store messages right now")
                }
            }
        }
    }
}

/// Answers a refused user message with its error signal (logged and counted).
fn refused(ap: &AccessPoint, refusal: Refusal) -> MshResponse {
    let e = &refusal.error;
    if e.transient {
        return busy(ap, e);
    }
    tracing::warn!(message_id = e.ref_to_message_id.as_deref().unwrap_or(""), code = e.code.code(), error = %e.detail, "message refused");
    ap.metrics.message(Direction::Inbound, Outcome::Rejected);
    refusal_response(refusal)
}

/// Moves the delivered payloads into the payload store (test messages keep none).
fn store_payloads(
    ap: &AccessPoint,
    received: ReceivedMessage,
    test_service: bool,
) -> Result<Vec<PayloadEntry>, varti_store::StoreError> {
    let mut entries: Vec<PayloadEntry> = Vec::new();
    if test_service {
        return Ok(entries);
    }
    for mut p in received.payloads {
        let stored = match keep_payload(ap, &mut p) {
            Ok(s) => s,
            Err(e) => {
                for done in &entries {
                    let _ = ap.store.payloads().remove(&done.stored);
                }
                return Err(e);
            }
        };
        entries.push(PayloadEntry {
            content_id: p.content_id,
            mime_type: p.mime_type,
            stored,
            properties: p
                .properties
                .into_iter()
                .filter(|q| q.name != "MimeType" && q.name != "CompressionType")
                .map(|q| MessageProperty {
                    name: q.name,
                    value: q.value,
                    type_: q.type_,
                })
                .collect(),
        });
    }
    Ok(entries)
}

/// Stores one delivered payload. A large one is a spool file already, written and hashed
/// once while it was decrypted and inflated — or, received compressed, the decrypted part
/// still in gzip, checked and hashed by inflating it without writing: the payload store
/// takes that file over (a rename) where it can, instead of reading, hashing and writing it
/// all again. Small payloads come from memory and go into the record (inline): no file on
/// either side.
fn keep_payload(
    ap: &AccessPoint,
    p: &mut DeliveredPayload,
) -> Result<PayloadRef, varti_store::StoreError> {
    let (len, sha256) = (p.len, p.sha256);
    let encoding = if p.content_is_gzip {
        FileEncoding::Gzip
    } else {
        FileEncoding::Plain
    };
    let payloads = ap.store.payloads();
    if let Some(stored) = p
        .content
        .hand_over(|file| payloads.adopt(file, encoding, len, &sha256))?
    {
        return Ok(stored);
    }
    let mut reader = p.open().map_err(|e| varti_store::StoreError::Io {
        context: "reopening a received payload".into(),
        source: e,
    })?;
    payloads.put(&mut reader)
}

impl Receiver {
    /// A signal on /msh: a pull request, or the receipt (or error) answering a message a
    /// partner pulled (both handled by the [`pull`](crate::pull) module). Other
    /// asynchronous receipts and errors are not used by Varti's push legs (AS4 answers
    /// synchronously) and are ignored.
    fn signal(
        &self,
        package: &MimePackage,
        messaging: &varti_as4::message::model::Messaging,
    ) -> MshResponse {
        let Some(signal) = messaging.signals.first() else {
            let e = EbmsError::new(
                ErrorCode::InvalidHeader,
                "eb:Messaging holds neither a UserMessage nor a SignalMessage",
            );
            return error_response(&e, None, None);
        };
        match &signal.kind {
            SignalKind::PullRequest(request) => pull::answer_pull_request(
                &self.ap,
                package,
                signal,
                request.mpc.as_deref().unwrap_or(DEFAULT_MPC),
            ),
            _ => {
                if let Some(answer) = pull::answer_signal(&self.ap, package, signal) {
                    return answer;
                }
                tracing::info!(
                    message_id = %signal.message_info.message_id,
                    ref_to = ?signal.message_info.ref_to_message_id,
                    "asynchronous signal ignored: Varti's legs exchange receipts and errors synchronously"
                );
                MshResponse {
                    status: StatusCode::ACCEPTED,
                    headers: HeaderMap::new(),
                    body: MshResponseBody::Empty,
                }
            }
        }
    }
}

fn first_id(ids: &[varti_as4::message::model::PartyId]) -> String {
    ids.first().map(|p| p.value.clone()).unwrap_or_default()
}

/// Reads what is left of a refused request so that the connection can be reused.
fn drain(body: &mut dyn Read) {
    let _ = io::copy(body, &mut io::sink());
}

pub(crate) fn soap_response(status: StatusCode, body: Bytes) -> MshResponse {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SOAP12));
    MshResponse {
        status,
        headers,
        body: MshResponseBody::Bytes(body),
    }
}

/// The answer to a message we cannot take right now (the spool budget is used up): HTTP
/// 503 with a SOAP Receiver fault and no ebMS signal, so the sender tries again later.
fn busy(ap: &AccessPoint, e: &EbmsError) -> MshResponse {
    tracing::warn!(message_id = e.ref_to_message_id.as_deref().unwrap_or(""), error = %e.detail, used = ap.spool_budget.used(), budget = ap.spool_budget.limit(), "message not taken now: the spool budget is used up");
    ap.metrics.message(Direction::Inbound, Outcome::Rejected);
    MshResponse::fault(
        StatusCode::SERVICE_UNAVAILABLE,
        FaultCode::Receiver,
        &e.detail,
    )
}

pub(crate) fn internal_fault(reason: &str) -> MshResponse {
    MshResponse::fault(
        StatusCode::INTERNAL_SERVER_ERROR,
        FaultCode::Receiver,
        reason,
    )
}

/// An ebMS error signal answering the message `ref_to` (signed by `identity` when given).
///
/// HTTP 200 (the request was processed and its answer is the error signal), except for a
/// WS-Security failure: its signal carries a SOAP Fault
/// ([`security_fault`](varti_as4::outbound::security_fault)), and a SOAP response holding a
/// fault goes with HTTP 500, as Domibus answers (its senders and the EC test bed expect
/// it; SOAP 1.2's HTTP binding would allow 400 for a Sender fault, which those senders do
/// not all treat alike).
pub(crate) fn error_response(
    error: &EbmsError,
    ref_to: Option<&str>,
    identity: Option<&SigningIdentity<'_>>,
) -> MshResponse {
    refusal_response(Refusal::new(error.clone(), ref_to, identity))
}

/// The HTTP answer carrying a refusal's error signal (see [`error_response`] for the
/// status).
fn refusal_response(refusal: Refusal) -> MshResponse {
    let status = if refusal.is_security_fault() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    match refusal.signal {
        Ok(envelope) => soap_response(status, Bytes::from(envelope)),
        Err(e) => {
            tracing::error!(error = %e.detail, "cannot build an error signal");
            internal_fault(&refusal.error.detail)
        }
    }
}
