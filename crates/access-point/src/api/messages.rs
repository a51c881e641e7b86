//! The read and state-changing routes: list, show, download, ack, resend, status, purge.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::http::{header, HeaderValue, Response, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti_store::{
    AuditOutcome, Direction, Event, ListCursor, ListFilter, MessageProperty, MessageRecord, State,
    StoreError, TransitionOutcome, MAX_PAGE_SIZE,
};

use super::{blocking, json_response, ApiError, Client, PREFIX};
use crate::access_point::AccessPoint;
use crate::server::http::reader_body;
use crate::server::Body;

/// `GET /messages?direction=&state=&partner=&since=&until=&conversation=&service=&action=\
/// &property=&id_prefix=&include_test=&limit=&after=`.
pub(super) async fn list(
    ap: Arc<AccessPoint>,
    client: Client,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    let filter = list_filter(&client, query)?;
    let page = blocking(ap, move |ap| Ok(ap.store.list(&filter)?)).await?;
    let messages: Vec<Value> = page.records.iter().map(summary).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "messages": messages,
            "next": page.next.as_ref().map(encode_cursor),
        }),
    ))
}

/// The store filter a listing query asks for, limited to what `client` may see.
pub(crate) fn list_filter(client: &Client, query: &str) -> Result<ListFilter, ApiError> {
    let mut filter = ListFilter {
        owner: (!client.admin).then(|| client.name.clone()),
        exclude_test: true,
        ..ListFilter::default()
    };
    let text = |value: String, what: &str| {
        if value.is_empty() {
            Err(ApiError::bad_request(
                format!("`{what}` is empty"),
                format!("give a value, e.g. {what}=…, or leave the parameter out"),
            ))
        } else {
            Ok(Some(value))
        }
    };
    for (key, value) in parse_query(query)? {
        match key.as_str() {
            "partner" => filter.partner = text(value, "partner")?,
            "conversation" => filter.conversation_id = text(value, "conversation")?,
            "service" => filter.service = text(value, "service")?,
            "action" => filter.action = text(value, "action")?,
            "id_prefix" => filter.id_prefix = text(value, "id_prefix")?,
            "since" => filter.created_from = Some(parse_time(&value, "since")?),
            "until" => filter.created_until = Some(parse_time(&value, "until")?),
            "property" => {
                let (name, v) = value
                    .split_once('=')
                    .filter(|(n, _)| !n.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            format!("property `{value}` is not NAME=VALUE"),
                            "give property=originalSender%3Durn%3A… (the name, `=`, the value; \
                         percent-encoded); repeat it to require several",
                        )
                    })?;
                filter.properties.push((name.to_owned(), v.to_owned()));
            }
            "include_test" => {
                filter.exclude_test = match value.as_str() {
                    "true" | "1" | "" => false,
                    "false" | "0" => true,
                    _ => return Err(ApiError::bad_request(
                        format!("include_test `{value}` is not true or false"),
                        "use include_test=true to list test-service and connectivity messages too",
                    )),
                }
            }
            "direction" => {
                filter.direction = Some(match value.as_str() {
                    "inbound" => Direction::Inbound,
                    "outbound" => Direction::Outbound,
                    _ => {
                        return Err(ApiError::bad_request(
                            format!("direction `{value}` is unknown"),
                            "use direction=inbound or direction=outbound",
                        ))
                    }
                })
            }
            "state" => {
                for name in value.split(',').filter(|s| !s.is_empty()) {
                    let state = State::parse(name).ok_or_else(|| {
                        ApiError::bad_request(
                            format!("state `{name}` is unknown"),
                            format!(
                                "use one or more (comma-separated) of: {}",
                                State::ALL.map(State::as_str).join(", ")
                            ),
                        )
                    })?;
                    filter.states.push(state);
                }
            }
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            format!("limit `{value}` is not a number from 1 to {MAX_PAGE_SIZE}"),
                            "page through longer lists with `after`",
                        )
                    })?
            }
            "after" => filter.after = Some(decode_cursor(&value)?),
            _ => {
                return Err(ApiError::bad_request(
                    format!("query parameter `{key}` is unknown"),
                    "GET /api/v1/messages takes direction, state, partner, since, until, \
                     conversation, service, action, property, id_prefix, include_test, limit \
                     and after",
                ))
            }
        }
    }
    Ok(filter)
}

/// An RFC 3339 time of a query parameter.
fn parse_time(value: &str, what: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
        ApiError::bad_request(
            format!("{what} `{value}` is not an RFC 3339 time ({e})"),
            format!("give e.g. {what}=2026-03-03T00:00:00Z (percent-encode `+` as %2B)"),
        )
    })
}

/// `GET /messages/{id}`.
pub(super) async fn show(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let record = visible(ap, &client, id).await?;
    Ok(json_response(StatusCode::OK, &detail(&record)))
}

/// `GET /messages/{id}/payloads/{n}`: streams the payload. A download of an inbound
/// message is recorded in its history (`fetch`, which payload, which client); it does not
/// change the state: the backend says it has the message with `ack`.
pub(crate) async fn payload(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
    n: &str,
) -> Result<Response<Body>, ApiError> {
    let record = visible(ap.clone(), &client, id.clone()).await?;
    let count = record.meta.payloads.len();
    let entry = n
        .parse::<usize>()
        .ok()
        .and_then(|i| record.meta.payloads.get(i))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("message `{id}` has no payload `{n}` (it has {count}, numbered from 0)"),
                "GET the message: its payloads list their href",
            )
        })?;
    let gone = |at: Option<OffsetDateTime>| {
        ApiError::new(
            StatusCode::GONE,
            format!(
                "the payloads of message `{id}` were purged{}",
                at.map(|t| format!(" at {}", rfc3339(t)))
                    .unwrap_or_default()
            ),
            "payloads are kept retention.payload_days after the message settled; ask the \
             sender to send it again",
        )
    };
    if record.payloads_purged_at.is_some() {
        return Err(gone(record.payloads_purged_at));
    }
    let stored = entry.stored.clone();
    let inbound = record.direction == Direction::Inbound;
    let message_id = id.clone();
    let index: usize = n.parse().unwrap_or_default();
    let by = client.name.clone();
    let reader = blocking(ap, move |ap| {
        let reader = ap.store.payloads().open(&stored)?;
        if inbound {
            ap.store
                .record_download(&message_id, index, &by, ap.clock.now())?;
            tracing::info!(message_id = %message_id, payload = index, client = %by, "payload downloaded");
        }
        Ok(reader)
    })
    .await
    .map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            gone(None)
        } else {
            e
        }
    })?;
    let body = http_body_util::BodyExt::boxed(reader_body(reader, Some(entry.stored.size)));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let mime = HeaderValue::from_str(&entry.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, mime);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&entry.content_id) {
        headers.insert("x-varti-content-id", v);
    }
    Ok(response)
}

/// `POST /messages/{id}/ack`: the backend has the inbound message.
pub(crate) async fn ack(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let record = visible(ap.clone(), &client, id.clone()).await?;
    if record.direction != Direction::Inbound {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("message `{id}` is outbound: only received messages are acknowledged by their backend"),
            "outbound messages are acknowledged by the partner's receipt; watch their state",
        ));
    }
    let by = client.clone();
    let state = blocking(ap, move |ap| {
        let now = ap.clock.now();
        // The state read above may have moved on (a webhook delivered it meanwhile):
        // compare-and-set from what is read now, a few times.
        let mut current = record.state;
        for _ in 0..3 {
            match ap.store.transition(&id, current, Event::Download, now) {
                Ok(TransitionOutcome::Applied(s)) => {
                    tracing::info!(message_id = %id, client = %by.name, "acknowledged by its backend");
                    // A backend acknowledging its own message is in the message's history;
                    // an administrator acknowledging for it is an administrative act.
                    if by.admin {
                        let _ = ap.audit(
                            &by.name,
                            "message.ack",
                            &id,
                            AuditOutcome::Ok,
                            json!({"state": s}),
                        );
                    }
                    return Ok(s);
                }
                Ok(TransitionOutcome::AlreadyApplied(s)) => return Ok(s),
                Err(StoreError::StateConflict { actual, .. }) => current = actual,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("message `{id}` kept changing state while it was acknowledged"),
            "try again",
        ))
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"message_id": record.meta.message_id, "state": state}),
    ))
}

/// `POST /messages/{id}/resend`: a failed outbound message is due again.
pub(crate) async fn resend(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let record = visible(ap.clone(), &client, id.clone()).await?;
    if record.direction != Direction::Outbound || record.state != State::Failed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "message `{id}` is {} and {}: only failed outbound messages can be resent",
                record.direction, record.state
            ),
            "a message still sending retries by itself; watch its state",
        ));
    }
    let by = client.name.clone();
    let state = blocking(ap.clone(), move |ap| {
        let state = match ap
            .store
            .transition(&id, State::Failed, Event::Resend, ap.clock.now())?
        {
            TransitionOutcome::Applied(s) => s,
            TransitionOutcome::AlreadyApplied(s) => s,
        };
        let _ = ap.audit(
            &by,
            "message.resend",
            &id,
            AuditOutcome::Ok,
            json!({"state": state}),
        );
        Ok(state)
    })
    .await?;
    tracing::info!(message_id = %record.meta.message_id, by = %client.name, "resend requested");
    ap.wake_sender.notify_one();
    Ok(json_response(
        StatusCode::OK,
        &json!({"message_id": record.meta.message_id, "state": state}),
    ))
}

/// `POST /messages/{id}/retry`: an outbound message waiting for its next attempt is due
/// now (after a partner's outage, without waiting for the retry schedule).
pub(crate) async fn retry(
    ap: Arc<AccessPoint>,
    client: Client,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let record = visible(ap.clone(), &client, id.clone()).await?;
    let not_waiting = |direction: Direction, state: State| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "message `{id}` is {direction} and {state}: only outbound messages waiting for \
                 a retry (waiting_for_retry) can be retried now"
            ),
            match state {
                State::Failed => "a failed message is sent again with `resend`",
                State::Submitted | State::Sending => "it is being sent already; watch its state",
                _ => "there is nothing left to send",
            },
        )
    };
    if record.direction != Direction::Outbound || record.state != State::WaitingForRetry {
        return Err(not_waiting(record.direction, record.state));
    }
    let by = client.name.clone();
    let message_id = id.clone();
    let made_due = blocking(ap.clone(), move |ap| {
        match ap.store.retry_now(&message_id, &by, ap.clock.now()) {
            Ok(changed) => {
                let details = json!({"made_due": changed});
                let _ = ap.audit(&by, "message.retry", &message_id, AuditOutcome::Ok, details);
                Ok(Ok(changed))
            }
            Err(StoreError::StateConflict { actual, .. }) => Ok(Err(actual)),
            Err(e) => Err(e.into()),
        }
    })
    .await?
    .map_err(|actual| not_waiting(Direction::Outbound, actual))?;
    tracing::info!(message_id = %id, by = %client.name, made_due, "retry now requested");
    ap.wake_sender.notify_one();
    Ok(json_response(
        StatusCode::OK,
        &json!({"message_id": id, "state": State::WaitingForRetry, "made_due": made_due}),
    ))
}

/// `POST /admin/retry?partner=P`: every outbound message waiting for its retry (to
/// partner `P`, if given) is due now. Admin clients only.
pub(super) async fn retry_waiting(
    ap: Arc<AccessPoint>,
    client: Client,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    if !client.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("client `{}` is not an administrator", client.name),
            "retrying every waiting message is for clients with admin = true in \
             [[backend.clients]]; retry one of your own with POST /messages/{id}/retry",
        ));
    }
    let mut partner = None;
    for (key, value) in parse_query(query)? {
        match key.as_str() {
            "partner" if !value.is_empty() => partner = Some(value),
            _ => {
                return Err(ApiError::bad_request(
                    format!("query parameter `{key}` is unknown or empty"),
                    "POST /api/v1/admin/retry takes partner=PARTY (optional)",
                ))
            }
        }
    }
    let by = client.name.clone();
    let p = partner.clone();
    let ids = blocking(ap.clone(), move |ap| {
        let ids = ap
            .store
            .retry_waiting(p.as_deref(), None, &by, ap.clock.now())?;
        let details = json!({"partner": p, "count": ids.len()});
        let subject = p.as_deref().unwrap_or("");
        let _ = ap.audit(&by, "messages.retry", subject, AuditOutcome::Ok, details);
        Ok(ids)
    })
    .await?;
    tracing::info!(by = %client.name, partner = partner.as_deref().unwrap_or("*"), count = ids.len(), "retry now requested for waiting messages");
    if !ids.is_empty() {
        ap.wake_sender.notify_one();
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"partner": partner, "count": ids.len(), "message_ids": ids}),
    ))
}

/// `GET /status`: who we are and the caller's messages by state.
pub(super) async fn status(
    ap: Arc<AccessPoint>,
    client: Client,
) -> Result<Response<Body>, ApiError> {
    let owner = (!client.admin).then(|| client.name.clone());
    let counts = blocking(ap.clone(), move |ap| {
        let mut counts: BTreeMap<&'static str, u64> =
            State::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        // Test traffic is not business: a received ping is not a backlog.
        let mut filter = ListFilter {
            owner,
            limit: MAX_PAGE_SIZE,
            exclude_test: true,
            ..ListFilter::default()
        };
        loop {
            let page = ap.store.list(&filter)?;
            for r in &page.records {
                *counts.entry(r.state.as_str()).or_default() += 1;
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        Ok(counts)
    })
    .await?;
    let total: u64 = counts.values().sum();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "party": ap.current().identity.party,
            "instance": ap.instance,
            "client": client.name,
            "admin": client.admin,
            "counts": counts,
            "total": total,
        }),
    ))
}

/// `POST /admin/purge`: removes payloads and metadata past the retention now.
pub(super) async fn purge(
    ap: Arc<AccessPoint>,
    client: Client,
) -> Result<Response<Body>, ApiError> {
    if !client.admin {
        let name = client.name.clone();
        let _ = blocking(ap, move |ap| {
            let why = json!({"error": "not an administrator"});
            Ok(ap.audit(&name, "messages.purge", "", AuditOutcome::Refused, why))
        })
        .await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("client `{}` is not an administrator", client.name),
            "purging is for clients with admin = true in [[backend.clients]]; the server also \
             purges by itself every hour",
        ));
    }
    let by = client.name.clone();
    let purged = blocking(ap, move |ap| {
        let purged = purge_now(ap, ap.clock.now());
        let (outcome, details) = match &purged {
            Ok(p) => (
                AuditOutcome::Ok,
                json!({"payloads_purged": p.payloads, "metadata_purged": p.metadata, "test_purged": p.test}),
            ),
            Err(e) => (AuditOutcome::Failed, json!({"error": e.to_string()})),
        };
        let _ = ap.audit(&by, "messages.purge", "", outcome, details);
        Ok(purged?)
    })
    .await?;
    tracing::info!(by = %client.name, payloads = purged.payloads, metadata = purged.metadata, test = purged.test, "purge requested");
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "payloads_purged": purged.payloads,
            "metadata_purged": purged.metadata,
            "test_purged": purged.test,
        }),
    ))
}

/// What one retention run removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Messages whose payloads were purged (`retention.payload_days`).
    pub payloads: usize,
    /// Message records removed (`retention.metadata_days`).
    pub metadata: usize,
    /// Test messages removed whole (`retention.test_days`).
    pub test: usize,
}

/// Applies `retention` at `now`: payloads of messages settled more than `payload_days` ago,
/// then records settled more than `metadata_days` ago, then test traffic that arrived more
/// than `test_days` ago.
pub fn purge_now(ap: &AccessPoint, now: OffsetDateTime) -> Result<Purged, StoreError> {
    let days = |d: u32| time::Duration::days(i64::from(d));
    let retention = &ap.settings.retention;
    let payloads = ap
        .store
        .purge_payloads(now - days(retention.payload_days), now)?;
    let metadata = ap
        .store
        .purge_metadata(now - days(retention.metadata_days))?;
    let test = ap.store.purge_test(now - days(retention.test_days))?;
    Ok(Purged {
        payloads,
        metadata,
        test,
    })
}

/// The record, if `client` may see it (404 otherwise, as for an unknown id).
async fn visible(
    ap: Arc<AccessPoint>,
    client: &Client,
    id: String,
) -> Result<MessageRecord, ApiError> {
    let lookup = id.clone();
    let record = blocking(ap, move |ap| Ok(ap.store.get(&lookup)?)).await?;
    match record {
        Some(r) if client.sees(&r.meta.owner) => Ok(r),
        _ => Err(ApiError::no_message(&id)),
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn properties(props: &[MessageProperty]) -> Value {
    props
        .iter()
        .map(|p| match &p.type_ {
            Some(t) => json!({"name": p.name, "value": p.value, "type": t}),
            None => json!({"name": p.name, "value": p.value}),
        })
        .collect()
}

/// What a listing shows of a message.
pub(super) fn summary(r: &MessageRecord) -> Value {
    let m = &r.meta;
    json!({
        "message_id": m.message_id,
        "direction": r.direction,
        "state": r.state,
        "owner": m.owner,
        "from_party": m.from_party,
        "to_party": m.to_party,
        "service": m.service,
        "action": m.action,
        "conversation_id": m.conversation_id,
        "ref_to_message_id": m.ref_to_message_id,
        "properties": properties(&m.properties),
        "payload_count": m.payloads.len(),
        "attempts": r.attempts,
        "last_error": r.last_error,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
    })
}

/// Everything the API shows of one message.
pub(super) fn detail(r: &MessageRecord) -> Value {
    let mut v = summary(r);
    let id = &r.meta.message_id;
    let encoded = percent_encoding::utf8_percent_encode(id, SEGMENT).to_string();
    v["leg"] = json!(r.meta.pmode_id);
    v["payloads"] = r
        .meta
        .payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "index": i,
                "content_id": p.content_id,
                "mime_type": p.mime_type,
                "size": p.stored.size,
                "properties": properties(&p.properties),
                "href": format!("{PREFIX}/messages/{encoded}/payloads/{i}"),
            })
        })
        .collect();
    v["next_attempt_at"] = json!(r.next_attempt_at.map(rfc3339));
    v["duplicates"] = json!(r.duplicates);
    v["receipt"] = json!(r.receipt.is_some());
    v["settled_at"] = json!(r.settled_at.map(rfc3339));
    v["payloads_purged_at"] = json!(r.payloads_purged_at.map(rfc3339));
    v["history"] = r
        .history
        .iter()
        .map(|h| {
            json!({
                "at": rfc3339(h.at),
                "event": h.event,
                "from": h.from,
                "to": h.to,
                "note": h.note,
            })
        })
        .collect();
    v
}

/// Characters escaped in a path segment (everything but RFC 3986 unreserved).
pub(crate) const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A cursor as an opaque token: base64url of `<unix nanoseconds> <message id>`.
pub(crate) fn encode_cursor(c: &ListCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{} {}",
        c.created_at.unix_timestamp_nanos(),
        c.message_id
    ))
}

fn decode_cursor(token: &str) -> Result<ListCursor, ApiError> {
    let bad = || {
        ApiError::bad_request(
            format!("`after` value `{token}` is not a cursor this server issued"),
            "pass the `next` value of the previous page unchanged",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (nanos, id) = text.split_once(' ').ok_or_else(bad)?;
    let nanos: i128 = nanos.parse().map_err(|_| bad())?;
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
    Ok(ListCursor {
        created_at,
        message_id: id.to_owned(),
    })
}

/// `key=value` pairs of a query string, percent-decoded (`+` is a space).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                ApiError::bad_request(
                    format!("query `{query}` is not percent-encoded UTF-8"),
                    "percent-encode the query parameters",
                )
            })
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(admin: bool) -> Client {
        Client {
            name: "portal".into(),
            admin,
            token_sha256: [0; 32],
        }
    }

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c = ListCursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
                .unwrap(),
            message_id: "a b@c".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)).unwrap(), c);
        assert_eq!(
            decode_cursor("!!").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn list_filter_is_limited_to_the_owner_unless_admin() {
        let f = list_filter(
            &client(false),
            "direction=inbound&state=received,delivered&limit=5",
        )
        .unwrap();
        assert_eq!(f.owner.as_deref(), Some("portal"));
        assert_eq!(f.direction, Some(Direction::Inbound));
        assert_eq!(f.states, vec![State::Received, State::Delivered]);
        assert_eq!(f.limit, 5);
        assert_eq!(list_filter(&client(true), "").unwrap().owner, None);
        for bad in [
            "state=lost",
            "limit=0",
            "limit=100000",
            "direction=up",
            "colour=red",
        ] {
            let e = list_filter(&client(false), bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
