//! The requester side: the backend API for procedure portals, and the correlation of
//! answers to their requests.
//!
//! | route | what |
//! |---|---|
//! | `POST /oots/requests` | the portal's data (JSON) → an EDM request sent over AS4; answers 202 with the record |
//! | `GET /oots/requests` | the client's own requests, newest first (`state`, `limit`) |
//! | `GET /oots/requests/{id}` | where the request is: `sent`, `answered` (with its evidence files), `error` (the EDM error), `preview_required`, `timed_out`, `failed` |
//! | `GET /oots/requests/{id}/evidence/{n}` | evidence file `n` (from 0), streamed |
//! | `POST /oots/requests/{id}/preview-return` | after preview: the second request of the exchange (optional JSON `{"return_location": "https://…", "timeout_secs": …}`); answers 202 with the record, `sent` again |
//!
//! # Many portals on one gateway (intermediary platform)
//!
//! Each portal is a backend client. A request belongs to the client that created it: the
//! GET, the listing and the evidence of another client's request answer 404, exactly like
//! an id that does not exist, so ids do not leak (admin clients see all). The parties are
//! the configuration's, not the body's: the client's `oots_party` is the evidence
//! requester (agent `ER`) and the AS4 `originalSender`, and `[oots] platform` is named as
//! the intermediary (agent `IP`); a body naming other ones is refused (403), so a portal
//! cannot speak for another. With a platform configured, a client without `oots_party`
//! cannot send requests.
//!
//! # Hand-over and purge
//!
//! An evidence file counts as handed over when its owning portal's download took the whole
//! file; once every file is (or the request settled without evidence), the exchange's
//! payloads are purged after `oots.evidence_retention_secs`, and a later download answers
//! 410. See [`records`] for the retention of the records themselves.
//!
//! A portal with a `webhook_url` is also notified when its request settles: a POST with
//! `X-Varti-Event: oots_request`, the usual `X-Varti-Delivery` and `X-Varti-Signature`
//! headers, and the body `{"event": "oots_request", "request_id": …, "state": …}`; it then
//! GETs the request.
//!
//! Correlation: the AS4 request's MessageId is `<id>@oots.varti` and its ConversationId
//! is `<id>`; an answer names the request by `RefToMessageId`, or (peers that do not set
//! it) by `ConversationId`. Its EDM `requestId` must be `urn:uuid:<id>`. The conversation
//! travels in clear headers, so the correlation alone proves nothing: the answer must also
//! be bound to the request's parties — sent by the gateway the request went to, in the
//! name of the provider the request named ([`check_answer`], run before the answer is
//! stored). An answer that does not fit is refused with an ebMS error and never stored,
//! so it cannot settle someone else's request nor leave evidence behind.
//!
//! After preview (the provider answered EDM:ERR:0002 PreviewRequired), the second request
//! is the first one again with a new EDM id (`urn:uuid:<uuid>`, kept in the record as
//! `edm_request_id`), a new IssueDateTime, the `PreviewLocation` echoed and, in EDM 2.0,
//! the portal's `ReturnLocation`; it goes on the same conversation with the MessageId
//! `<id>.<n>@oots.varti`, so answers still correlate to the record, and only the answer
//! naming the second request's EDM id settles it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::config::OotsParty;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use varti_access_point::access_point::{InboundMessage, InboundRefusal};
use varti_access_point::Snapshot;
use varti_as4::error::{EbmsError, ErrorCode};
use varti_as4::inbound::DeliveredPayload;
use varti_as4::message::model::UserMessage;
use varti_as4::pmode::model::Party;
use varti_oots::edm::error::EdmErrorKind;
use varti_oots::edm::sdg::Agent;
use varti_oots::edm::EdmDocument;
use varti_oots::flow::{self, RequestData};
use varti_store::{MessageProperty, MessageRecord, PayloadEntry};

use crate::gateway::Gateway;
use crate::gateway::{
    ACTION_ERROR, ACTION_REQUEST, ACTION_RESPONSE, EDM_MIME, OWNER, SERVICE, SERVICE_TYPE,
};
use crate::records::{self, EdmErrorInfo, EvidenceFile, RequestRecord, RequestState};
use varti_access_point::api::{json_response, ApiError, Client};
use varti_access_point::server::http::reader_body;
use varti_access_point::server::Body;
use varti_access_point::submit::{submit, Submission, SubmitError};
use varti_access_point::webhooks::Notice;

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
pub(crate) async fn create(
    gw: Arc<Gateway>,
    client: Client,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !gw.config.role.requests() {
        return Err(not_requester());
    }
    let body = json_body(request, "send only the request's JSON description").await?;
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request(
            format!("the body is not a valid OOTS request description: {e}"),
            "see the OotsRequestCreate schema in GET /api/v1/openapi.json",
        )
    };
    let mut body: Value = serde_json::from_slice(&body).map_err(invalid)?;
    apply_parties(&gw, &client, &mut body)?;
    let create: CreateRequest = serde_json::from_value(body).map_err(invalid)?;
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
        .unwrap_or(gw.config.request_timeout_secs)
        .max(1);
    let data = create.data;
    let provider_party = create.provider_party;
    let record = blocking(move || {
        let now = gw.ap.clock.now();
        let stored = gw.ap.store.payloads().put(&mut xml.as_bytes())?;
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
            edm_request_id: None,
            id: uuid.clone(),
            owner: client.name.clone(),
            state: RequestState::Sent,
            created_at: records::rfc3339_now(&gw),
            deadline_unix: now.unix_timestamp() + timeout as i64,
            provider_party,
            provider_id: Some(data.provider.identifier.value.trim().to_owned()),
            provider_scheme: Some(data.provider.identifier.scheme.clone()),
            request_message_id: message_id,
            conversation_id: uuid.clone(),
            evidence_type: data.evidence_type.identifier.clone(),
            response_message_id: None,
            evidences: Vec::new(),
            error: None,
            preview_location: None,
            reason: None,
            settled_at: None,
            handed_over_unix: None,
            evidence_purged_at: None,
        };
        // The record first: an answer may arrive before submit returns.
        records::create(&gw, &record).map_err(ApiError::internal)?;
        submit_request(&gw, sub, &record, now)?;
        tracing::info!(request = %uuid, provider = %record.provider_party, "OOTS evidence request sent");
        Ok(record)
    })
    .await?;
    Ok(json_response(StatusCode::ACCEPTED, &view(&record)))
}

/// Fixes the request's parties from the configuration (see the module documentation):
/// the client's `oots_party` as `requester`, the platform as `intermediary`.
fn apply_parties(gw: &Gateway, client: &Client, body: &mut Value) -> Result<(), ApiError> {
    let portal = gw.portals.get(&client.name);
    let platform = gw.config.platform.as_ref();
    if platform.is_some() && portal.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "backend client `{}` is no procedure portal of this platform: it has no oots_party",
                client.name
            ),
            "set oots_party = { scheme, id, name } on its [[backend.clients]] entry in varti.toml",
        ));
    }
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body is not a JSON object",
            "see the OotsRequestCreate schema in GET /api/v1/openapi.json",
        ));
    };
    let fixed: [(&str, Option<&OotsParty>); 2] =
        [("requester", portal), ("intermediary", platform)];
    for (field, party) in fixed {
        let Some(party) = party else { continue };
        let agent = party.agent_data();
        if let Some(given) = fields.get(field).filter(|v| !v.is_null()) {
            let id = &given["identifier"];
            if id["scheme"] != agent.identifier.scheme || id["value"] != agent.identifier.value {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "`{field}` names {} {}, but this gateway acts as {} {} there",
                        id["scheme"], id["value"], agent.identifier.scheme, agent.identifier.value
                    ),
                    format!("leave `{field}` out: the gateway fills it in from its configuration"),
                ));
            }
        }
        fields.insert(
            field.to_owned(),
            serde_json::to_value(agent).expect("JSON values serialise"),
        );
    }
    Ok(())
}

/// `GET /oots/requests`: the client's own requests (every one for an admin), newest first;
/// `state` filters, `limit` (1–1000, default 100) bounds.
pub(crate) async fn list(
    gw: Arc<Gateway>,
    client: Client,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    if !gw.config.role.requests() {
        return Err(not_requester());
    }
    let (mut limit, mut state) = (100usize, None::<RequestState>);
    for (key, value) in varti_access_point::api::parse_query(query)? {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            format!("limit `{value}` is not 1 to 1000"),
                            "give a number from 1 to 1000",
                        )
                    })?
            }
            "state" => {
                state = Some(
                    serde_json::from_value(Value::String(value.clone())).map_err(|_| {
                        ApiError::bad_request(
                            format!("state `{value}` is unknown"),
                            "use sent, answered, error, preview_required, timed_out or failed",
                        )
                    })?,
                )
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!("query parameter `{key}` is unknown"),
                    "use state and limit",
                ))
            }
        }
    }
    let mut mine = blocking(move || Ok(records::all(&gw))).await?;
    mine.retain(|r| client.sees(&r.owner) && state.is_none_or(|s| r.state == s));
    // RFC 3339 in UTC sorts as text; the id breaks ties so pages are stable.
    mine.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    mine.truncate(limit);
    Ok(json_response(
        StatusCode::OK,
        &json!({ "requests": mine.iter().map(view).collect::<Vec<_>>() }),
    ))
}

/// Submits a request whose record is already written (open); when it cannot be sent,
/// removes its EDM document, marks the record `failed` and says why.
fn submit_request(
    gw: &Arc<Gateway>,
    sub: Submission,
    record: &RequestRecord,
    now: OffsetDateTime,
) -> Result<(), ApiError> {
    let stored: Vec<_> = sub.payloads.iter().map(|p| p.stored.clone()).collect();
    let Err(e) = submit(&gw.ap, sub, now) else {
        return Ok(());
    };
    for p in &stored {
        let _ = gw.ap.store.payloads().remove(p);
    }
    let _ = records::settle(gw, &record.id, |r| {
        r.state = RequestState::Failed;
        r.reason = Some(format!("not sent: {e}"));
    });
    Err(match e {
        SubmitError::NoRoute(m) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no OOTS PMode leg reaches `{}`: {m}", record.provider_party),
            "name the provider's access point as a party of the OOTS PMode (pmodes/oots.toml)",
        ),
        SubmitError::Invalid(m) => ApiError::bad_request(m, "fix the value named in the error"),
        SubmitError::Store(s) => s.into(),
    })
}

/// `POST /oots/requests/{id}/preview-return`: what a portal may send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewReturn {
    /// Where the user goes back after the preview (EDM 2.0 `ReturnLocation`, https).
    #[serde(default)]
    return_location: Option<String>,
    /// Seconds to wait for the answer (default `oots.request_timeout_secs`): it must cover
    /// the user's time in the preview space.
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// `POST /oots/requests/{id}/preview-return`: the second request of a preview exchange.
pub(crate) async fn preview_return(
    gw: Arc<Gateway>,
    client: Client,
    id: String,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let record = visible(&gw, &client, &id).await?;
    let body = json_body(request, "send only {\"return_location\": …}").await?;
    let ret: PreviewReturn = if body.iter().all(u8::is_ascii_whitespace) {
        PreviewReturn::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                format!("the body is not a valid preview return: {e}"),
                "send {\"return_location\": \"https://…\"} or nothing",
            )
        })?
    };
    let (Some(location), RequestState::PreviewRequired) =
        (record.preview_location.clone(), record.state)
    else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "request `{id}` is `{}`, not `preview_required`",
                serde_json::to_value(record.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
            "POST preview-return only after the provider asked for preview (state preview_required, with preview_location)",
        ));
    };
    if let Some(r) = &ret.return_location {
        // The EDM rules (R-EDM-REQ-C005 family) allow only https locations.
        if !r.starts_with("https://") {
            return Err(ApiError::bad_request(
                format!("return_location `{r}` is not an https:// URL"),
                "give the portal page the user returns to, as https://…",
            ));
        }
    }
    let timeout = ret
        .timeout_secs
        .unwrap_or(gw.config.request_timeout_secs)
        .max(1);
    let record = blocking(move || {
        let first = gw.ap.store.get(&record.request_message_id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "the first request message is no longer stored",
                "metadata older than retention.metadata_days is purged; send a new request",
            )
        })?;
        let bytes = read_edm_blocking(&gw, &first).map_err(ApiError::internal)?;
        let Ok(EdmDocument::Request(mut edm)) = EdmDocument::parse(&bytes) else {
            return Err(ApiError::internal("the stored first request is not an EDM request"));
        };
        let version = edm
            .specification_identifier()
            .unwrap_or("oots-edm:v2.0")
            .to_owned();
        let v1 = varti_oots::edm::EdmVersion::from_identifier(&version)
            .is_some_and(|v| v.is_v1());
        if ret.return_location.is_some() && v1 {
            return Err(ApiError::bad_request(
                format!("return_location is an EDM 2.0 slot; this request is {version}"),
                "leave return_location out for EDM 1.x requests",
            ));
        }
        let uuid = flow::uuid_v4();
        let edm_id = format!("urn:uuid:{uuid}");
        edm.id = Some(edm_id.clone());
        use varti_oots::edm::regrep::{Slot, SlotValue};
        edm.set_slot(Slot::new("IssueDateTime", SlotValue::DateTime(flow::now_xsd())));
        edm.set_slot(Slot::new("PreviewLocation", SlotValue::String(location)));
        if let Some(r) = &ret.return_location {
            edm.set_slot(Slot::new("ReturnLocation", SlotValue::String(r.clone())));
        }
        let xml = EdmDocument::Request(edm).to_xml();
        let now = gw.ap.clock.now();
        let stored = gw.ap.store.payloads().put(&mut xml.as_bytes())?;
        let message_id = format!("{}.{}{MESSAGE_ID_SUFFIX}", record.id, &uuid[..8]);
        let sub = Submission {
            owner: OWNER.to_owned(),
            message_id: Some(message_id.clone()),
            to_party: record.provider_party.clone(),
            service: SERVICE.to_owned(),
            service_type: Some(SERVICE_TYPE.to_owned()),
            action: ACTION_REQUEST.to_owned(),
            conversation_id: Some(record.conversation_id.clone()),
            // The same four corners, ExchangeId and SpecificationId as the first request.
            properties: first.meta.properties.clone(),
            payloads: vec![PayloadEntry {
                content_id: format!("edm-{uuid}@varti"),
                mime_type: EDM_MIME.to_owned(),
                stored: stored.clone(),
                properties: Vec::new(),
            }],
            ..Submission::default()
        };
        // The record first: an answer may arrive before submit returns.
        let reopened = records::reopen(&gw, &record.id, RequestState::PreviewRequired, |r| {
            r.deadline_unix = now.unix_timestamp() + timeout as i64;
            r.request_message_id = message_id.clone();
            r.edm_request_id = Some(edm_id.clone());
            r.response_message_id = None;
            r.error = None;
            r.reason = None;
        })
        .map_err(ApiError::internal)?;
        let Some(reopened) = reopened else {
            let _ = gw.ap.store.payloads().remove(&stored);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request `{}` is no longer `preview_required`", record.id),
                "the second request was already sent; GET the request",
            ));
        };
        submit_request(&gw, sub, &reopened, now)?;
        tracing::info!(request = %reopened.id, message_id = %message_id, "OOTS second request (after preview) sent");
        Ok(reopened)
    })
    .await?;
    Ok(json_response(StatusCode::ACCEPTED, &view(&record)))
}

/// A portal's JSON body, at most `MAX_REQUEST_JSON` bytes; `hint` says what to send.
async fn json_body(request: Request<Incoming>, hint: &'static str) -> Result<Bytes, ApiError> {
    let body = varti_access_point::server::http::timed_body(request);
    Ok(Limited::new(body, MAX_REQUEST_JSON)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body cannot be read or is over {MAX_REQUEST_JSON} bytes: {e}"),
                hint,
            )
        })?
        .to_bytes())
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
            "href": format!("{}/oots/requests/{}/evidence/{n}", varti_access_point::api::PREFIX, r.id),
            "mime_type": e.mime_type,
            "size": e.size,
            "title": e.title,
            "classification": e.classification,
            "downloaded": e.downloaded_at.is_some(),
        })).collect::<Vec<_>>(),
        "evidence_purged_at": r.evidence_purged_at,
        "error": r.error,
        "preview_location": r.preview_location,
        "reason": r.reason,
    })
}

async fn visible(gw: &Arc<Gateway>, client: &Client, id: &str) -> Result<RequestRecord, ApiError> {
    if !gw.config.role.requests() {
        return Err(not_requester());
    }
    let (ap2, id2) = (gw.clone(), id.to_owned());
    let record = blocking(move || records::load(&ap2, &id2).map_err(ApiError::internal)).await?;
    match record {
        Some(r) if client.sees(&r.owner) => Ok(r),
        _ => Err(no_request(id)),
    }
}

/// `GET /oots/requests/{id}`.
pub(crate) async fn show(
    gw: Arc<Gateway>,
    client: Client,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let r = visible(&gw, &client, &id).await?;
    Ok(json_response(StatusCode::OK, &view(&r)))
}

/// `GET /oots/requests/{id}/evidence/{n}`: the file, streamed from the payload store.
pub(crate) async fn evidence(
    gw: Arc<Gateway>,
    client: Client,
    id: String,
    n: &str,
) -> Result<Response<Body>, ApiError> {
    let r = visible(&gw, &client, &id).await?;
    let index = n.parse::<usize>().ok();
    let file = index
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
    if r.evidence_purged_at.is_some() {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!("the evidence of request `{id}` was handed over and then purged"),
            "evidence is kept oots.evidence_retention_secs after the portal downloaded every file; ask for it again with a new request",
        ));
    }
    let index = index.unwrap_or_default();
    let message_id = r.response_message_id.clone().unwrap_or_default();
    let size = file.size;
    let ap2 = gw.clone();
    let reader = blocking(move || {
        let gw = ap2;
        let record = gw.ap.store.get(&message_id)?.ok_or_else(|| {
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
        Ok(gw.ap.store.payloads().open(&entry.stored)?)
    })
    .await?;
    let body = BodyExt::boxed(reader_body(reader, Some(size)));
    // Only the owner's download is a hand-over (an admin looking is not).
    let body = if client.name == r.owner {
        let id = id.clone();
        BodyExt::boxed(HandOver {
            inner: body,
            sent: 0,
            expected: size,
            done: Some(Box::new(move || {
                tokio::task::spawn_blocking(move || handed_over(&gw, &id, index));
            })),
        })
    } else {
        body
    };
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

/// Evidence file `n` of request `id` went to its portal whole: note it, and purge when that
/// completed the hand-over and the retention is 0.
fn handed_over(gw: &Arc<Gateway>, id: &str, n: usize) {
    match records::mark_downloaded(gw, id, n) {
        Ok(Some(r)) if r.handed_over_unix.is_some() => {
            tracing::info!(request = %id, "OOTS: every evidence file handed over to the portal");
            records::purge_request(gw, id, gw.ap.clock.now());
        }
        Ok(_) => {}
        Err(e) => tracing::error!(request = %id, error = %e, "cannot note the evidence download"),
    }
}

/// A response body that calls `done` once the connection has taken all `expected` bytes:
/// the hand-over of an evidence file (a download that breaks off never gets there).
struct HandOver {
    inner: Body,
    sent: u64,
    expected: u64,
    done: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl http_body::Body for HandOver {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let complete = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                this.sent == this.expected
            }
            Poll::Ready(None) => this.sent == this.expected,
            _ => false,
        };
        if complete {
            if let Some(done) = this.done.take() {
                done();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The record id in one of our request MessageIds: `<id>@oots.varti`, or
/// `<id>.<n>@oots.varti` for the second request after preview.
fn record_id_of_message(message_id: &str) -> Option<&str> {
    let local = message_id.strip_suffix(MESSAGE_ID_SUFFIX)?;
    Some(local.split_once('.').map_or(local, |(id, _)| id))
}

/// The request an answer belongs to: by `RefToMessageId`, else by `ConversationId`.
fn request_id_of(record: &MessageRecord) -> Option<String> {
    request_id_from(
        record.meta.ref_to_message_id.as_deref(),
        &record.meta.conversation_id,
    )
}

/// The request named by an answer's `RefToMessageId`, else by its `ConversationId`.
fn request_id_from(ref_to: Option<&str>, conversation_id: &str) -> Option<String> {
    if let Some(id) = ref_to.and_then(record_id_of_message) {
        return Some(id.to_owned());
    }
    records::valid_id(conversation_id).then(|| conversation_id.to_owned())
}

/// An answer refused at reception: what the log, the metric and the journal of refusals
/// say about it, and the ebMS error its sender gets.
struct Refused {
    code: ErrorCode,
    reason: &'static str,
    /// For the sender (the error signal's description): names nothing it could not know.
    detail: String,
    /// For the operator (the log and the journal): may name the parties the request
    /// involved.
    why: String,
}

impl Refused {
    fn new(code: ErrorCode, reason: &'static str, detail: impl Into<String>) -> Refused {
        let detail = detail.into();
        Refused {
            code,
            reason,
            why: detail.clone(),
            detail,
        }
    }

    fn why(mut self, why: impl Into<String>) -> Refused {
        self.why = why.into();
        self
    }
}

/// The check of every inbound OOTS answer, before anything of it is stored (registered by
/// [`Gateway::new`] on the access point, see [`varti_access_point::access_point::InboundCheck`]).
///
/// An `ExecuteQueryResponse` or `ExceptionResponse` is let through only when it answers an
/// evidence request of this gateway (`RefToMessageId`, else `ConversationId`, then the EDM
/// `requestId`) and is bound to the parties of that request:
///
/// * its AS4 sender (the party whose own certificate signed it) is the gateway the request
///   was sent to, or one `[[oots.answer_gateways]]` names for the provider;
/// * its `originalSender` is the evidence provider the request named;
/// * the EDM names that provider too: every EvidenceProvider agent of a response (agents
///   classified `IP` aside), the ErrorProvider of an error. One exception: the asked
///   gateway may answer EDM:ERR:0006 (it serves no such provider) in its own name, with
///   `originalSender` and ErrorProvider naming the same organisation; such an answer
///   carries no evidence;
/// * its evidence files (the EDM document aside) total at most
///   `oots.max_received_evidence_bytes`.
///
/// Anything else is refused with an ebMS error signal instead of the receipt, so it is
/// stored nowhere and its payloads' temporary files are gone before the sender reads the
/// error: EBMS:0003 ValueInconsistent when it names no request of ours or parties that
/// are not the request's, EBMS:0004 Other when its EDM document cannot be read, EBMS:0010
/// ProcessingModeMismatch (as for the leg's own payload sizes) over the evidence cap,
/// whose request then ends `error` with EDM:ERR:0008. Each refusal is logged with both
/// parties, counted in `varti_refusals_total{owner="varti:oots",reason}` and noted
/// (metadata only) in the journal of refusals ([`records::note_refused`]).
pub(crate) fn check_answer(
    gw: &Arc<Gateway>,
    m: &InboundMessage<'_>,
) -> Result<(), InboundRefusal> {
    let um = m.user_message;
    if !matches!(
        um.collaboration_info.action.as_str(),
        ACTION_RESPONSE | ACTION_ERROR
    ) {
        return Ok(());
    }
    let mut record = None;
    let verdict = judge_answer(gw, m, &mut record);
    let Err(refused) = verdict else {
        return Ok(());
    };
    let original_sender = property(um, "originalSender").map(|(v, _)| v);
    let provider = record
        .as_ref()
        .and_then(|r| provider_of_record(gw, r).map(|(p, _)| p));
    tracing::warn!(
        message_id = %um.message_info.message_id,
        action = %um.collaboration_info.action,
        from_party = %m.partner.name,
        original_sender = original_sender.unwrap_or_default(),
        request = record.as_ref().map(|r| r.id.as_str()).unwrap_or_default(),
        asked_gateway = record.as_ref().map(|r| r.provider_party.as_str()).unwrap_or_default(),
        provider = provider.as_deref().unwrap_or_default(),
        reason = refused.reason,
        code = refused.code.code(),
        "OOTS answer refused before it was stored: {}",
        refused.why
    );
    let entry = json!({
        "at": records::rfc3339_now(gw),
        "message_id": um.message_info.message_id,
        "action": um.collaboration_info.action,
        "from_party": m.partner.name,
        "original_sender": original_sender,
        "conversation_id": um.collaboration_info.conversation_id,
        "ref_to_message_id": um.message_info.ref_to_message_id,
        "request_id": record.as_ref().map(|r| r.id.clone()),
        "asked_gateway": record.as_ref().map(|r| r.provider_party.clone()),
        "provider": provider,
        "reason": refused.reason,
        "error": refused.code.code(),
        "detail": refused.why,
        "payloads": m.payloads.len(),
        "payload_bytes": m.payloads.iter().map(|p| p.len).sum::<u64>(),
    });
    if let Err(e) = records::note_refused(gw, &entry) {
        tracing::error!(error = %e, "OOTS: cannot note the refused answer in the journal of refusals");
    }
    Err(InboundRefusal {
        error: EbmsError::new(refused.code, refused.detail),
        reason: refused.reason,
    })
}

/// The verdict on an answer (see [`check_answer`]); `record` gets the request it names,
/// when there is one.
fn judge_answer(
    gw: &Arc<Gateway>,
    m: &InboundMessage<'_>,
    record_out: &mut Option<RequestRecord>,
) -> Result<(), Refused> {
    let um = m.user_message;
    let info = &um.collaboration_info;
    let unsolicited = |why: String| {
        Refused::new(
            ErrorCode::ValueInconsistent,
            "unsolicited",
            format!("the answer names no evidence request this gateway has sent: {why}"),
        )
    };
    if !gw.config.role.requests() {
        return Err(unsolicited(
            "this gateway does not send evidence requests".into(),
        ));
    }
    let names = || {
        format!(
            "RefToMessageId `{}`, ConversationId `{}`",
            um.message_info.ref_to_message_id.as_deref().unwrap_or(""),
            info.conversation_id
        )
    };
    let Some(id) = request_id_from(
        um.message_info.ref_to_message_id.as_deref(),
        &info.conversation_id,
    ) else {
        return Err(unsolicited(names()));
    };
    let record = match records::load(gw, &id) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(unsolicited(names())),
        Err(e) => {
            tracing::error!(request = %id, error = %e, "OOTS: cannot read the request record an answer names");
            return Err(unsolicited(names()));
        }
    };
    let record = record_out.insert(record);
    let Some((provider, scheme)) = provider_of_record(gw, record) else {
        return Err(unsolicited(names()).why(format!(
            "the request {id} names no evidence provider this gateway can tell"
        )));
    };
    // 1. The gateway it comes from.
    let snap = gw.ap.current();
    let asked = party_named(&snap, &record.provider_party);
    let from_asked = asked.is_some_and(|p| p.name == m.partner.name);
    let via_configured = gw
        .config
        .answer_gateways_for(&provider)
        .any(|g| party_named(&snap, g).is_some_and(|p| p.name == m.partner.name));
    if !(from_asked || via_configured) {
        return Err(Refused::new(
            ErrorCode::ValueInconsistent,
            "wrong_gateway",
            format!(
                "this gateway sent no evidence request on conversation `{}` to party `{}`",
                info.conversation_id, m.partner.name
            ),
        )
        .why(format!(
            "the answer comes from party `{}`, but request {id} was sent to `{}` and no oots.answer_gateways entry lets provider `{provider}` answer through `{}`",
            m.partner.name, record.provider_party, m.partner.name
        )));
    }
    // 2. Its EDM document, naming the latest request of the exchange.
    let bytes = edm_of(m.payloads).map_err(|why| {
        Refused::new(
            ErrorCode::Other,
            "unreadable",
            format!("the answer's EDM document cannot be read: {why}"),
        )
    })?;
    let doc = EdmDocument::parse(&bytes).map_err(|e| {
        Refused::new(
            ErrorCode::Other,
            "unreadable",
            format!("the answer's first part is not an EDM document: {e}"),
        )
    })?;
    let expected = record
        .edm_request_id
        .clone()
        .unwrap_or_else(|| format!("urn:uuid:{id}"));
    let answered = match &doc {
        EdmDocument::Response(r) => r.request_id(),
        EdmDocument::Error(e) => e.request_id(),
        EdmDocument::Request(_) => None,
    };
    // An error to a request the provider could not read may carry a fresh requestId.
    let is_error = info.action == ACTION_ERROR && matches!(doc, EdmDocument::Error(_));
    if answered != Some(expected.as_str()) && !(is_error && answered.is_some()) {
        return Err(Refused::new(
            ErrorCode::ValueInconsistent,
            "wrong_request_id",
            format!(
                "the EDM requestId `{}` is not the request's `{expected}`",
                answered.unwrap_or("")
            ),
        ));
    }
    // 3. The provider: originalSender and the EDM's EvidenceProvider / ErrorProvider.
    let same = |value: &str, kind: Option<&str>| {
        value.trim() == provider
            && match (kind, scheme.as_deref()) {
                (Some(k), Some(s)) => k.trim() == s.trim(),
                _ => true,
            }
    };
    let original_sender = property(um, "originalSender");
    let edm_providers: Vec<(String, Option<String>)> = match &doc {
        EdmDocument::Response(r) => r
            .evidence_providers()
            .into_iter()
            .filter(|a| a.classification.as_deref() != Some("IP"))
            .map(agent_id)
            .collect(),
        EdmDocument::Error(e) => e.error_provider().into_iter().map(agent_id).collect(),
        EdmDocument::Request(_) => Vec::new(),
    };
    // The asked gateway answering in its own name that it serves no such provider.
    let gateway_itself = from_asked
        && is_error
        && matches!(&doc, EdmDocument::Error(e) if e.kind() == Some(EdmErrorKind::UnresolvedReference))
        && matches!((original_sender, edm_providers.as_slice()), (Some((os, _)), [(p, _)]) if os.trim() == p.trim() && !p.trim().is_empty());
    if !gateway_itself {
        let named = original_sender.map(|(v, _)| v.trim()).unwrap_or("");
        if !original_sender.is_some_and(|(v, t)| same(v, t)) {
            return Err(Refused::new(
                ErrorCode::ValueInconsistent,
                "wrong_original_sender",
                format!(
                    "the originalSender `{named}` is not the evidence provider the request named (`{provider}`)"
                ),
            ));
        }
        let wrong: Vec<&str> = edm_providers
            .iter()
            .filter(|(v, s)| !same(v, s.as_deref()))
            .map(|(v, _)| v.as_str())
            .collect();
        if edm_providers.is_empty() || !wrong.is_empty() {
            let what = if is_error {
                "ErrorProvider"
            } else {
                "EvidenceProvider"
            };
            return Err(Refused::new(
                ErrorCode::ValueInconsistent,
                "wrong_evidence_provider",
                format!(
                    "the EDM's {what} {} is not the evidence provider the request named (`{provider}`)",
                    if wrong.is_empty() { "agent is missing and".to_owned() } else { format!("`{}`", wrong.join("`, `")) }
                ),
            ));
        }
    }
    // 4. The evidence cap.
    let edm_part = edm_index(m.payloads);
    let evidence: u64 = m
        .payloads
        .iter()
        .enumerate()
        .filter(|(n, _)| Some(*n) != edm_part)
        .map(|(_, p)| p.len)
        .sum();
    let cap = gw.config.max_received_evidence_bytes;
    if evidence > cap {
        let detail = format!(
            "the answer's evidence files total {evidence} bytes, over the {cap} bytes this gateway accepts (oots.max_received_evidence_bytes)"
        );
        let settled = records::settle(gw, &id, |r| {
            r.state = RequestState::Error;
            r.error = Some(EdmErrorInfo {
                code: Some(EdmErrorKind::Query.code().to_owned()),
                exception_type: Some(EdmErrorKind::Query.exception_type().local),
                message: Some("The evidence response cannot be processed".into()),
                detail: Some(detail.clone()),
                severity: Some(varti_oots::edm::error::SEVERITY_ERROR.to_owned()),
            });
            r.reason = Some(format!(
                "this gateway refused the provider's answer {}: {detail}",
                um.message_info.message_id
            ));
        });
        match settled {
            Ok(Some(r)) => on_settled(gw, &r),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(request = %id, error = %e, "cannot record the refused OOTS answer")
            }
        }
        return Err(Refused::new(
            ErrorCode::ProcessingModeMismatch,
            "evidence_over_cap",
            detail,
        ));
    }
    Ok(())
}

/// A message property's value and type.
fn property<'a>(um: &'a UserMessage, name: &str) -> Option<(&'a str, Option<&'a str>)> {
    um.properties
        .iter()
        .find(|p| p.name == name)
        .map(|p| (p.value.as_str(), p.type_.as_deref()))
}

fn agent_id(a: Agent) -> (String, Option<String>) {
    a.identifier
        .map(|i| (i.value.trim().to_owned(), i.scheme_id))
        .unwrap_or_default()
}

/// The PMode party `who` names (by name, else by one of its ids).
fn party_named<'a>(snap: &'a Snapshot, who: &str) -> Option<&'a Party> {
    let who = who.trim();
    let pmodes = &snap.pmodes;
    pmodes.party(who).or_else(|| {
        pmodes
            .parties
            .iter()
            .find(|p| p.ids.iter().any(|i| i.value == who))
    })
}

/// The evidence provider request `r` named (identifier, scheme): kept in the record, or
/// (older records) the request message's `finalRecipient`.
fn provider_of_record(gw: &Gateway, r: &RequestRecord) -> Option<(String, Option<String>)> {
    if let Some(p) = &r.provider_id {
        return Some((p.trim().to_owned(), r.provider_scheme.clone()));
    }
    let message = gw.ap.store.get(&r.request_message_id).ok().flatten()?;
    message
        .meta
        .properties
        .iter()
        .find(|p| p.name == "finalRecipient")
        .map(|p| (p.value.trim().to_owned(), p.type_.clone()))
}

/// Which payload is the EDM document: the `application/x-ebrs+xml` part, else the first.
fn edm_index(payloads: &[DeliveredPayload]) -> Option<usize> {
    payloads
        .iter()
        .position(|p| p.mime_type == EDM_MIME)
        .or((!payloads.is_empty()).then_some(0))
}

/// The EDM document of a received answer, read from the spool (bounded by
/// [`MAX_EDM_BYTES`](crate::gateway::MAX_EDM_BYTES)).
fn edm_of(payloads: &[DeliveredPayload]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let p = edm_index(payloads)
        .map(|n| &payloads[n])
        .ok_or("the message has no payload")?;
    if p.len > crate::gateway::MAX_EDM_BYTES {
        return Err(format!(
            "it is {} bytes, over the {}-byte limit",
            p.len,
            crate::gateway::MAX_EDM_BYTES
        ));
    }
    let mut bytes = Vec::new();
    p.open()
        .map_err(|e| e.to_string())?
        .take(crate::gateway::MAX_EDM_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// An `ExecuteQueryResponse` or `ExceptionResponse` arrived (already claimed, and let
/// through by [`check_answer`]): settles its request. An answer that settles nothing (its
/// request settled meanwhile, e.g. timed out, or it does not fit after all) is never
/// handed over: its payloads are purged at once, its metadata stays in the store.
pub(crate) fn answer_received(gw: &Arc<Gateway>, record: &MessageRecord) {
    let mid = record.id();
    let Some(id) = request_id_of(record) else {
        discard(
            gw,
            mid,
            "names no request of ours (RefToMessageId / ConversationId)",
        );
        return;
    };
    let bytes = match read_edm_blocking(gw, record) {
        Ok(b) => b,
        Err(e) => {
            discard(gw, mid, &format!("is unreadable ({e}), request {id}"));
            return;
        }
    };
    let doc = match EdmDocument::parse(&bytes) {
        Ok(d) => d,
        Err(e) => {
            discard(
                gw,
                mid,
                &format!("is not an EDM document ({e}), request {id}"),
            );
            return;
        }
    };
    // The answer must name the latest request of the exchange.
    let expected = match records::load(gw, &id) {
        Ok(Some(r)) => r.edm_request_id.unwrap_or_else(|| format!("urn:uuid:{id}")),
        _ => format!("urn:uuid:{id}"),
    };
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
        discard(
            gw,
            mid,
            &format!("names requestId {answered_id:?}, not request {id}'s `{expected}`"),
        );
        return;
    }
    let payloads = &record.meta.payloads;
    let settled = records::settle(gw, &id, |r| {
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
                            downloaded_at: None,
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
            on_settled(gw, &r);
        }
        Ok(None) => {
            // A late answer to a settled request is never handed over: its evidence goes
            // at once, like any answer that settles nothing.
            let late = matches!(records::load(gw, &id), Ok(Some(r)) if r.state.is_final());
            purge_answer(gw, mid);
            tracing::info!(message_id = %mid, request = %id, late, "OOTS answer for a request that is unknown or already settled (e.g. timed out); not applied, its payloads purged")
        }
        Err(e) => tracing::error!(request = %id, error = %e, "cannot record the OOTS answer"),
    }
}

/// An answer that settles nothing: logged, and its payloads purged at once.
fn discard(gw: &Arc<Gateway>, mid: &str, why: &str) {
    tracing::warn!(message_id = %mid, "OOTS answer {why}; ignored, its payloads purged");
    purge_answer(gw, mid);
}

/// Purges the payloads of the stored answer `mid` (its metadata stays, for audit).
fn purge_answer(gw: &Arc<Gateway>, mid: &str) {
    if let Err(e) = gw.ap.store.purge_payloads_of(mid, gw.ap.clock.now()) {
        tracing::warn!(message_id = %mid, error = %e, "cannot purge the OOTS answer's payloads");
    }
}

fn read_edm_blocking(gw: &Arc<Gateway>, record: &MessageRecord) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let entry = record
        .meta
        .payloads
        .iter()
        .find(|p| p.mime_type == EDM_MIME)
        .or_else(|| record.meta.payloads.first())
        .ok_or("the message has no payload")?;
    let mut bytes = Vec::new();
    gw.ap
        .store
        .payloads()
        .open(&entry.stored)
        .map_err(|e| e.to_string())?
        .take(crate::gateway::MAX_EDM_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The AS4 message `message_id` failed for good: if it is a request of ours, the request
/// failed.
pub(crate) fn request_failed(gw: &Arc<Gateway>, message_id: &str, error: &str) {
    let Some(id) = record_id_of_message(message_id) else {
        return;
    };
    if let Ok(Some(r)) = records::settle(gw, id, |r| {
        r.state = RequestState::Failed;
        r.reason = Some(format!(
            "the request could not be delivered to the provider's access point: {error}"
        ));
    }) {
        tracing::warn!(request = %id, error, "OOTS request failed");
        on_settled(gw, &r);
    }
}

/// Ends every open request past its deadline as `timed_out`.
pub(crate) fn expire(gw: &Arc<Gateway>, now: OffsetDateTime) {
    if !gw.config.role.requests() {
        return;
    }
    for id in records::open_ids(gw) {
        let Ok(Some(r)) = records::load(gw, &id) else {
            continue;
        };
        if r.deadline_unix > now.unix_timestamp() {
            continue;
        }
        if let Ok(Some(r)) = records::settle(gw, &id, |r| {
            r.state = RequestState::TimedOut;
            r.reason = Some("no answer from the provider within the request timeout".into());
        }) {
            tracing::warn!(request = %id, "OOTS request timed out");
            on_settled(gw, &r);
        }
    }
}

/// A request settled: tell its portal, and purge at once what is due (a request without
/// evidence is handed over by settling).
fn on_settled(gw: &Arc<Gateway>, r: &RequestRecord) {
    notify(gw, r);
    if r.handed_over_unix.is_some() {
        records::purge_request(gw, &r.id, gw.ap.clock.now());
    }
}

/// Tells the portal (through the webhook dispatcher, when it has a webhook) that its
/// request settled.
fn notify(gw: &Arc<Gateway>, r: &RequestRecord) {
    let body = serde_json::to_vec(&json!({
        "event": "oots_request",
        "request_id": r.id,
        "state": r.state,
        "at": records::rfc3339_now(gw),
    }))
    .expect("JSON values serialise");
    gw.ap.notify(Notice {
        owner: r.owner.clone(),
        event: "oots_request",
        subject: r.id.clone(),
        body,
    });
}
