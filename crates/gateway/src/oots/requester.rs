//! The requester side: the backend API for procedure portals, and the correlation of
//! answers to their requests.
//!
//! | route | what |
//! |---|---|
//! | `POST /oots/requests` | the portal's data (JSON) → an EDM request sent over AS4; answers 202 with the record |
//! | `GET /oots/requests/{id}` | where the request is: `sent`, `answered` (with its evidence files), `error` (the EDM error), `preview_required`, `timed_out`, `failed` |
//! | `GET /oots/requests/{id}/evidence/{n}` | evidence file `n` (from 0), streamed |
//!
//! A portal with a `webhook_url` is also notified when its request settles: a POST with
//! `X-Varti-Event: oots_request`, the usual `X-Varti-Delivery` and `X-Varti-Signature`
//! headers, and the body `{"event": "oots_request", "request_id": …, "state": …}`; it then
//! GETs the request.
//!
//! Correlation: the AS4 request's MessageId is `<id>@oots.varti` and its ConversationId
//! is `<id>`; an answer names the request by `RefToMessageId`, or (peers that do not set
//! it) by `ConversationId`. Its EDM `requestId` must be `urn:uuid:<id>`; an answer that
//! does not fit is logged and ignored, so it cannot settle someone else's request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use varti_oots::edm::EdmDocument;
use varti_oots::flow::{self, RequestData};
use varti_store::{MessageProperty, MessageRecord, PayloadEntry};

use super::records::{self, EdmErrorInfo, EvidenceFile, RequestRecord, RequestState};
use super::{ACTION_ERROR, ACTION_REQUEST, EDM_MIME, OWNER, SERVICE, SERVICE_TYPE};
use crate::access_point::submit::{submit, Submission, SubmitError};
use crate::access_point::AccessPoint;
use crate::backend::{json_response, ApiError, Client};
use crate::server::http::reader_body;
use crate::server::Body;

/// The suffix of a request's AS4 MessageId.
const MESSAGE_ID_SUFFIX: &str = "@oots.varti";
/// The largest request JSON accepted.
const MAX_REQUEST_JSON: usize = 256 * 1024;

/// `POST /oots/requests`: what a portal sends.
#[derive(Debug, Deserialize)]
struct CreateRequest {
    /// The provider's access point (a PMode party name or id).
    provider_party: String,
    /// Seconds to wait for the answer (default `oots.request_timeout_secs`).
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// The EDM data.
    #[serde(flatten)]
    data: RequestData,
}

/// 404: the gateway is not configured as a requester.
pub(crate) fn not_requester() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "this gateway does not send OOTS requests",
        "set oots.role = \"requester\" or \"both\" in varti.toml",
    )
}

fn no_request(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no OOTS request with id `{id}`"),
        "use the id POST /api/v1/oots/requests answered with; a portal sees only its own requests",
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// `POST /oots/requests`.
pub async fn create(
    ap: Arc<AccessPoint>,
    client: Client,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !ap.config.oots.role.requests() {
        return Err(not_requester());
    }
    let body = Limited::new(request.into_body(), MAX_REQUEST_JSON)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body cannot be read or is over {MAX_REQUEST_JSON} bytes: {e}"),
                "send only the request's JSON description",
            )
        })?
        .to_bytes();
    let create: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            format!("the body is not a valid OOTS request description: {e}"),
            "see the OotsRequestCreate schema in GET /api/v1/openapi.json",
        )
    })?;
    let uuid = flow::uuid_v4();
    let edm = flow::build_request_with_id(&create.data, &format!("urn:uuid:{uuid}"))
        .map_err(|e| ApiError::bad_request(e.to_string(), "fix the value named in the error"))?;
    let version = edm
        .specification_identifier()
        .unwrap_or("oots-edm:v2.0")
        .to_owned();
    let xml = EdmDocument::Request(edm).to_xml();
    let timeout = create
        .timeout_secs
        .unwrap_or(ap.config.oots.request_timeout_secs)
        .max(1);
    let data = create.data;
    let provider_party = create.provider_party;
    let record = blocking(move || {
        let now = OffsetDateTime::now_utc();
        let stored = ap.store.payloads().put(&mut xml.as_bytes())?;
        let message_id = format!("{uuid}{MESSAGE_ID_SUFFIX}");
        let prop = |name: &str, a: &flow::AgentData| MessageProperty {
            name: name.to_owned(),
            value: a.identifier.value.clone(),
            type_: Some(a.identifier.scheme.clone()),
        };
        let sub = Submission {
            owner: OWNER.to_owned(),
            message_id: Some(message_id.clone()),
            to_party: provider_party.clone(),
            service: SERVICE.to_owned(),
            service_type: Some(SERVICE_TYPE.to_owned()),
            action: ACTION_REQUEST.to_owned(),
            conversation_id: Some(uuid.clone()),
            properties: vec![
                prop("originalSender", &data.requester),
                prop("finalRecipient", &data.provider),
                MessageProperty {
                    name: "ExchangeId".into(),
                    value: uuid.clone(),
                    type_: None,
                },
                MessageProperty {
                    name: "SpecificationId".into(),
                    value: version,
                    type_: None,
                },
            ],
            payloads: vec![PayloadEntry {
                content_id: format!("edm-{uuid}@varti"),
                mime_type: EDM_MIME.to_owned(),
                stored: stored.clone(),
                properties: Vec::new(),
            }],
            ..Submission::default()
        };
        let record = RequestRecord {
            id: uuid.clone(),
            owner: client.name.clone(),
            state: RequestState::Sent,
            created_at: records::rfc3339_now(),
            deadline_unix: now.unix_timestamp() + timeout as i64,
            provider_party,
            request_message_id: message_id,
            conversation_id: uuid.clone(),
            evidence_type: data.evidence_type.identifier.clone(),
            response_message_id: None,
            evidences: Vec::new(),
            error: None,
            preview_location: None,
            reason: None,
            settled_at: None,
        };
        // The record first: an answer may arrive before submit returns.
        records::create(&ap, &record).map_err(ApiError::internal)?;
        if let Err(e) = submit(&ap, sub, now) {
            let _ = ap.store.payloads().remove(&stored);
            let _ = records::settle(&ap, &uuid, |r| {
                r.state = RequestState::Failed;
                r.reason = Some(format!("not sent: {e}"));
            });
            return Err(match e {
                SubmitError::NoRoute(m) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("no OOTS PMode leg reaches `{}`: {m}", record.provider_party),
                    "name the provider's access point as a party of the OOTS PMode (pmodes/oots.toml)",
                ),
                SubmitError::Invalid(m) => ApiError::bad_request(m, "fix the value named in the error"),
                SubmitError::Store(s) => s.into(),
            });
        }
        tracing::info!(request = %uuid, provider = %record.provider_party, "OOTS evidence request sent");
        Ok(record)
    })
    .await?;
    Ok(json_response(StatusCode::ACCEPTED, &view(&record)))
}

/// The JSON a portal sees.
fn view(r: &RequestRecord) -> Value {
    json!({
        "id": r.id,
        "state": r.state,
        "created_at": r.created_at,
        "deadline": OffsetDateTime::from_unix_timestamp(r.deadline_unix).ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "settled_at": r.settled_at,
        "provider_party": r.provider_party,
        "evidence_type": r.evidence_type,
        "request_message_id": r.request_message_id,
        "conversation_id": r.conversation_id,
        "response_message_id": r.response_message_id,
        "evidences": r.evidences.iter().enumerate().map(|(n, e)| json!({
            "href": format!("{}/oots/requests/{}/evidence/{n}", crate::backend::PREFIX, r.id),
            "mime_type": e.mime_type,
            "size": e.size,
            "title": e.title,
            "classification": e.classification,
        })).collect::<Vec<_>>(),
        "error": r.error,
        "preview_location": r.preview_location,
        "reason": r.reason,
    })
}

async fn visible(
    ap: &Arc<AccessPoint>,
    client: &Client,
    id: &str,
) -> Result<RequestRecord, ApiError> {
    if !ap.config.oots.role.requests() {
        return Err(not_requester());
    }
    let (ap2, id2) = (ap.clone(), id.to_owned());
    let record = blocking(move || records::load(&ap2, &id2).map_err(ApiError::internal)).await?;
    match record {
        Some(r) if client.sees(&r.owner) => Ok(r),
        _ => Err(no_request(id)),
    }
}

/// `GET /oots/requests/{id}`.
pub async fn show(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let r = visible(&ap, &client, &id).await?;
    Ok(json_response(StatusCode::OK, &view(&r)))
}

/// `GET /oots/requests/{id}/evidence/{n}`: the file, streamed from the payload store.
pub async fn evidence(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
    n: &str,
) -> Result<Response<Body>, ApiError> {
    let r = visible(&ap, &client, &id).await?;
    let file = n
        .parse::<usize>()
        .ok()
        .and_then(|i| r.evidences.get(i))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "request `{id}` has no evidence `{n}` (it has {}, numbered from 0)",
                    r.evidences.len()
                ),
                "GET the request: its evidences list their href",
            )
        })?;
    let message_id = r.response_message_id.clone().unwrap_or_default();
    let reader = blocking(move || {
        let record = ap.store.get(&message_id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "the response message is no longer stored",
                "metadata older than retention.metadata_days is purged",
            )
        })?;
        if record.payloads_purged_at.is_some() {
            return Err(ApiError::new(
                StatusCode::GONE,
                "the evidence was purged",
                "evidence is kept retention.payload_days; ask for it again",
            ));
        }
        let entry = record
            .meta
            .payloads
            .get(file.payload)
            .ok_or_else(|| ApiError::internal("the evidence payload is missing"))?;
        Ok(ap.store.payloads().open(&entry.stored)?)
    })
    .await?;
    let body = BodyExt::boxed(reader_body(reader, Some(file.size)));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&file.mime_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The request an answer belongs to: by `RefToMessageId`, else by `ConversationId`.
fn request_id_of(record: &MessageRecord) -> Option<String> {
    if let Some(id) = record
        .meta
        .ref_to_message_id
        .as_deref()
        .and_then(|r| r.strip_suffix(MESSAGE_ID_SUFFIX))
    {
        return Some(id.to_owned());
    }
    records::valid_id(&record.meta.conversation_id).then(|| record.meta.conversation_id.clone())
}

/// An `ExecuteQueryResponse` or `ExceptionResponse` arrived (already claimed): settles its
/// request.
pub fn answer_received(ap: &Arc<AccessPoint>, record: &MessageRecord) {
    let mid = record.id();
    let Some(id) = request_id_of(record) else {
        tracing::warn!(message_id = %mid, "OOTS answer that names no request of ours (RefToMessageId / ConversationId); ignored");
        return;
    };
    let bytes = match read_edm_blocking(ap, record) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(message_id = %mid, request = %id, error = %e, "OOTS answer unreadable; ignored");
            return;
        }
    };
    let doc = match EdmDocument::parse(&bytes) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(message_id = %mid, request = %id, error = %e, "OOTS answer is not an EDM document; ignored");
            return;
        }
    };
    let expected = format!("urn:uuid:{id}");
    let answered_id = match &doc {
        EdmDocument::Response(r) => r.request_id(),
        EdmDocument::Error(e) => e.request_id(),
        EdmDocument::Request(_) => None,
    };
    // An error to a request the provider could not read carries a fresh requestId; the
    // AS4 correlation is enough then. Otherwise the ids must agree.
    if answered_id != Some(expected.as_str())
        && !(record.meta.action == ACTION_ERROR && answered_id.is_some())
    {
        tracing::warn!(message_id = %mid, request = %id, answered = ?answered_id, "OOTS answer's requestId does not match the request; ignored");
        return;
    }
    let payloads = &record.meta.payloads;
    let settled = records::settle(ap, &id, |r| {
        r.response_message_id = Some(mid.to_owned());
        match &doc {
            EdmDocument::Response(resp) => {
                r.state = RequestState::Answered;
                for ev in resp.evidences() {
                    let Some(href) = ev.repository_item.as_ref().map(|i| i.href.clone()) else {
                        continue;
                    };
                    let cid = href.trim_start_matches("cid:");
                    if let Some((n, p)) = payloads.iter().enumerate().find(|(_, p)| {
                        p.content_id
                            .trim_start_matches("cid:")
                            .trim_matches(['<', '>'])
                            == cid
                    }) {
                        r.evidences.push(EvidenceFile {
                            payload: n,
                            content_id: p.content_id.clone(),
                            mime_type: p.mime_type.clone(),
                            size: p.stored.size,
                            title: ev.repository_item.as_ref().and_then(|i| i.title.clone()),
                            classification: ev.classification.clone(),
                        });
                    } else {
                        tracing::warn!(request = %id, href, "the response references an attachment the message does not carry");
                    }
                }
            }
            EdmDocument::Error(e) => {
                let ex = e.exception();
                r.error = ex.map(|x| EdmErrorInfo {
                    code: x.code.clone(),
                    exception_type: x.exception_type.as_ref().map(|t| t.local.clone()),
                    message: x.message.clone(),
                    detail: x.detail.clone(),
                    severity: x.severity.clone(),
                });
                if e.is_preview_required() {
                    r.state = RequestState::PreviewRequired;
                    r.preview_location = e.preview_location().map(str::to_owned);
                } else {
                    r.state = RequestState::Error;
                }
            }
            EdmDocument::Request(_) => {
                r.state = RequestState::Error;
                r.reason = Some("the provider answered with a request document".into());
            }
        }
    });
    match settled {
        Ok(Some(r)) => {
            tracing::info!(request = %id, state = ?r.state, "OOTS request answered");
            notify(ap, &r);
        }
        Ok(None) => {
            tracing::info!(message_id = %mid, request = %id, "OOTS answer for a request that is unknown or already settled (e.g. timed out); kept, not applied")
        }
        Err(e) => tracing::error!(request = %id, error = %e, "cannot record the OOTS answer"),
    }
}

fn read_edm_blocking(ap: &Arc<AccessPoint>, record: &MessageRecord) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let entry = record
        .meta
        .payloads
        .iter()
        .find(|p| p.mime_type == EDM_MIME)
        .or_else(|| record.meta.payloads.first())
        .ok_or("the message has no payload")?;
    let mut bytes = Vec::new();
    ap.store
        .payloads()
        .open(&entry.stored)
        .map_err(|e| e.to_string())?
        .take(super::MAX_EDM_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The AS4 message `message_id` failed for good: if it is a request of ours, the request
/// failed.
pub fn request_failed(ap: &Arc<AccessPoint>, message_id: &str, error: &str) {
    let Some(id) = message_id.strip_suffix(MESSAGE_ID_SUFFIX) else {
        return;
    };
    if let Ok(Some(r)) = records::settle(ap, id, |r| {
        r.state = RequestState::Failed;
        r.reason = Some(format!(
            "the request could not be delivered to the provider's access point: {error}"
        ));
    }) {
        tracing::warn!(request = %id, error, "OOTS request failed");
        notify(ap, &r);
    }
}

/// Ends every open request past its deadline as `timed_out`.
pub fn expire(ap: &Arc<AccessPoint>, now: OffsetDateTime) {
    if !ap.config.oots.role.requests() {
        return;
    }
    for id in records::open_ids(ap) {
        let Ok(Some(r)) = records::load(ap, &id) else {
            continue;
        };
        if r.deadline_unix > now.unix_timestamp() {
            continue;
        }
        if let Ok(Some(r)) = records::settle(ap, &id, |r| {
            r.state = RequestState::TimedOut;
            r.reason = Some("no answer from the provider within the request timeout".into());
        }) {
            tracing::warn!(request = %id, "OOTS request timed out");
            notify(ap, &r);
        }
    }
}

/// Tells the portal (when it has a webhook) that its request settled.
fn notify(ap: &Arc<AccessPoint>, r: &RequestRecord) {
    let Some(c) = ap.config.backend.clients.iter().find(|c| c.name == r.owner) else {
        return;
    };
    let (Some(url), Some(secret)) = (c.webhook_url.clone(), c.webhook_secret.clone()) else {
        return;
    };
    let body = serde_json::to_vec(&json!({
        "event": "oots_request",
        "request_id": r.id,
        "state": r.state,
        "at": records::rfc3339_now(),
    }))
    .expect("JSON values serialise");
    let signature = crate::webhooks::signature(secret.as_bytes(), &body);
    let delivery = uuid::Uuid::new_v4().to_string();
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        for attempt in 0..5u32 {
            let req = Request::post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header(crate::webhooks::EVENT_HEADER, "oots_request")
                .header(crate::webhooks::DELIVERY_HEADER, &delivery)
                .header(crate::webhooks::SIGNATURE_HEADER, &signature)
                .body(Full::new(Bytes::from(body.clone())));
            let Ok(req) = req else { return };
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                super::connector::http().request(req),
            )
            .await;
            if matches!(&sent, Ok(Ok(resp)) if resp.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
        }
        tracing::warn!(
            url,
            "the OOTS webhook was not accepted after 5 attempts; the portal must GET the request"
        );
    });
}
