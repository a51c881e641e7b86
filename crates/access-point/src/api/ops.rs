//! The administrators' operations routes: the audit trail and reloading.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /audit` | the audit trail, oldest first (`since` RFC 3339, `after` cursor, `limit`) |
//! | `POST /admin/reload` | re-read PModes, certificates, CRLs and backend clients now |
//!
//! Both are for clients with `admin = true` (403 otherwise; a refused reload request is
//! audited).

use std::sync::Arc;

use ::http::{Response, StatusCode};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use varti_store::{AuditFilter, AuditOutcome, MAX_AUDIT_PAGE};

use super::{blocking, json_response, parse_query, ApiError, ApiRouter, Client};
use crate::access_point::AccessPoint;
use crate::server::Body;

/// The OpenAPI fragment of these routes.
const OPENAPI_OPS: &str = include_str!("../../openapi/ops.json");

/// Mounts the routes and their OpenAPI fragment.
pub(super) fn mount(router: &mut ApiRouter, ap: Arc<AccessPoint>) {
    let a = ap.clone();
    router.mount("GET", "/audit", move |c| {
        let a = a.clone();
        Box::pin(async move { list(a, c.client, c.query).await })
    });
    router.mount("POST", "/admin/reload", move |c| {
        Box::pin(reload(ap.clone(), c.client))
    });
    router
        .add_openapi(OPENAPI_OPS)
        .expect("the built-in operations fragment merges");
}

fn forbidden(client: &Client, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("client `{}` is not an administrator", client.name),
        format!("{what} is for clients with admin = true in [[backend.clients]]"),
    )
}

/// `GET /audit`.
async fn list(
    ap: Arc<AccessPoint>,
    client: Client,
    query: String,
) -> Result<Response<Body>, ApiError> {
    if !client.admin {
        return Err(forbidden(&client, "the audit trail"));
    }
    let filter = audit_filter(&query)?;
    let page = blocking(ap, move |ap| Ok(ap.store.list_audit(&filter)?)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "entries": page.entries,
            "next": page.next.map(|n| n.to_string()),
        }),
    ))
}

fn audit_filter(query: &str) -> Result<AuditFilter, ApiError> {
    let mut filter = AuditFilter::default();
    for (key, value) in parse_query(query)? {
        match key.as_str() {
            "since" => {
                filter.since = Some(OffsetDateTime::parse(&value, &Rfc3339).map_err(|_| {
                    ApiError::bad_request(
                        format!("since `{value}` is not an RFC 3339 time"),
                        "give a time like 2026-05-01T00:00:00Z",
                    )
                })?)
            }
            "after" => {
                filter.after = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        format!("after `{value}` is not an entry number"),
                        "pass the `next` of the previous page",
                    )
                })?)
            }
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_AUDIT_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            format!("limit `{value}` is not a number from 1 to {MAX_AUDIT_PAGE}"),
                            "page through longer trails with `after`",
                        )
                    })?
            }
            _ => {
                return Err(ApiError::bad_request(
                    format!("query parameter `{key}` is unknown"),
                    "GET /api/v1/audit takes since, after and limit",
                ))
            }
        }
    }
    Ok(filter)
}

/// `POST /admin/reload`: 200 with the report when the new set is in force, 422 with the
/// report (its `errors`) when it was refused and the old set stays.
async fn reload(ap: Arc<AccessPoint>, client: Client) -> Result<Response<Body>, ApiError> {
    if !client.admin {
        let name = client.name.clone();
        let _ = blocking(ap, move |ap| {
            let why = json!({"error": "not an administrator"});
            Ok(ap.audit(&name, "config.reload", "", AuditOutcome::Refused, why))
        })
        .await;
        return Err(forbidden(&client, "reloading"));
    }
    let report = blocking(ap, move |ap| Ok(ap.reload(&client.name))).await?;
    let status = if report.applied {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut value = serde_json::to_value(&report).map_err(ApiError::internal)?;
    if !report.applied {
        // The usual error shape too, so that every client reads why.
        value["error"] = json!(format!(
            "the reload was refused; the previous PModes, certificates and clients stay in \
             force:\n  {}",
            report.errors.join("\n  ")
        ));
        value["hint"] = json!(
            "fix what is listed (`varti certs check --config FILE` and `varti pmode check DIR` \
             judge the same), then reload again"
        );
    }
    Ok(json_response(status, &value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_queries_are_parsed_and_bad_ones_refused() {
        let f = audit_filter("since=2026-05-01T00:00:00Z&after=7&limit=5").unwrap();
        assert_eq!(f.after, Some(7));
        assert_eq!(f.limit, 5);
        assert_eq!(f.since.map(|t| t.unix_timestamp()), Some(1_777_593_600));
        for bad in [
            "since=yesterday",
            "after=x",
            "limit=0",
            "limit=100000",
            "who=me",
        ] {
            let e = audit_filter(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
