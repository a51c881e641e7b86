//! The look-ups for procedure portals (requester side): the common services asked through
//! the backend API, so a portal needs neither their addresses nor their signing keys.
//!
//! | route | query | common-services query |
//! |---|---|---|
//! | `GET /oots/lookup/requirements` | `procedure`, `country` | EB requirements by procedure and jurisdiction |
//! | `GET /oots/lookup/evidence-types` | `requirement`, `country` | EB evidence types by requirement and jurisdiction |
//! | `GET /oots/lookup/data-services` | `evidence_type`, `country`, optional `specification`, `evidence_type_id`, `jurisdiction_context_id`, `admin_l2`, `admin_l3`, `classification=ID=VALUE` (repeatable) | DSD data services by evidence type and jurisdiction |
//!
//! Answers are `{"query_url", "from_cache", "signed_by", "items"}`; each data service
//! carries `request`, the fields of `POST /oots/requests` it determines. A DSD answer
//! asking for more input (`DSD:ERR:0005`) is 422 with the `exception` saying what to ask
//! the user; a late service is 504, a refused signature or a broken answer 502.

use std::sync::Arc;

use http::{Response, StatusCode};
use serde_json::json;
use varti_oots::common_services::{CsError, DataServicesQuery, Service, TransportError};

use crate::common_services::{data_services_out, exception_out, requirements_out};
use crate::gateway::Gateway;
use crate::requester::not_requester;
use varti_access_point::api::{json_response, ApiError};
use varti_access_point::server::Body;

/// Which look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// EB: requirements of a procedure.
    Requirements,
    /// EB: evidence types proving a requirement.
    EvidenceTypes,
    /// DSD: data services delivering an evidence type.
    DataServices,
}

/// Answers a look-up route; `query` is the request's query string.
pub(crate) async fn lookup(
    gw: Arc<Gateway>,
    what: Lookup,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    if !gw.config.role.requests() {
        return Err(not_requester());
    }
    let cs = gw.common_services.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "common-services look-ups are not configured",
            "set oots.common_services.url, or discovery = \"acc\" / \"prod\", in varti.toml",
        )
    })?;
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let one = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    let required = |name: &'static str| {
        one(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::bad_request(
                format!("the query parameter `{name}` is missing"),
                "see the lookup operations in GET /api/v1/openapi.json",
            )
        })
    };
    let country = required("country")?.to_ascii_uppercase();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ApiError::bad_request(
            format!("`{country}` is not a two-letter country code"),
            "give the ISO 3166-1 alpha-2 code (EL for Greece), e.g. country=LV",
        ));
    }
    let service = match what {
        Lookup::DataServices => Service::DataServiceDirectory,
        _ => Service::EvidenceBroker,
    };
    let client = cs.client(&country, service).await.map_err(|e| {
        tracing::warn!(error = %e, "common-services discovery failed");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            e.to_string(),
            "the gateway could not find the common services for this country; its operator can check the DNS settings named",
        )
    })?;
    let outcome = match what {
        Lookup::Requirements => {
            let procedure = required("procedure")?;
            client.requirements(procedure, &country).await.map(|f| {
                (
                    f.url,
                    f.from_cache,
                    f.signature,
                    requirements_out(&f.answer.items, false).0,
                )
            })
        }
        Lookup::EvidenceTypes => {
            let requirement = required("requirement")?;
            client.evidence_types(requirement, &country).await.map(|f| {
                (
                    f.url,
                    f.from_cache,
                    f.signature,
                    requirements_out(&f.answer.items, true).0,
                )
            })
        }
        Lookup::DataServices => {
            let evidence_type = required("evidence_type")?;
            let opt = |name: &str| one(name).filter(|v| !v.is_empty()).map(str::to_owned);
            let mut classifications = Vec::new();
            for (k, v) in &params {
                if k == "classification" {
                    let (id, value) = v.split_once('=').ok_or_else(|| {
                        ApiError::bad_request(
                            format!("classification `{v}` is not ID=VALUE"),
                            "repeat classification=CONCEPT-ID=VALUE for each value the DSD asked for",
                        )
                    })?;
                    classifications.push((id.to_owned(), value.to_owned()));
                }
            }
            let q = DataServicesQuery {
                evidence_type_classification: evidence_type.to_owned(),
                country_code: country.clone(),
                specification: opt("specification"),
                evidence_type_id: opt("evidence_type_id"),
                jurisdiction_context_id: opt("jurisdiction_context_id"),
                jurisdiction_admin_l2: opt("admin_l2"),
                jurisdiction_admin_l3: opt("admin_l3"),
                classifications,
            };
            client.data_services(q).await.map(|f| {
                (
                    f.url,
                    f.from_cache,
                    f.signature,
                    data_services_out(&f.answer.items, &country).0,
                )
            })
        }
    };
    match outcome {
        Ok((url, from_cache, signature, items)) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "query_url": url,
                "from_cache": from_cache,
                "signed_by": signature.map(|s| s.signer),
                "items": items,
            }),
        )),
        Err(e) => {
            let api = cs_error(&e);
            match e.exception() {
                // The service's own answer: hand its exception over for the portal to act on.
                Some(x) => Ok(json_response(
                    api.status,
                    &json!({"error": api.error, "hint": api.hint, "exception": exception_out(x)}),
                )),
                None => Err(api),
            }
        }
    }
}

/// The API error for a failed look-up: whose fault and what to check.
fn cs_error(e: &CsError) -> ApiError {
    tracing::warn!(error = %e, "common-services look-up failed");
    match e {
        CsError::Transport {
            source: TransportError::Timeout(d),
            ..
        } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the common services did not answer within {d:?}: {e}"),
            "retry later; the gateway's operator can check that the services are reachable from it and oots.common_services.timeout_secs",
        ),
        CsError::Signature { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("the common-services answer's signature was refused, so it is not used: {e}"),
            "the answer does not come from a trusted common-services instance; the gateway's operator can check oots.common_services.trust",
        ),
        CsError::Answer { .. } if e.exception().is_some_and(|x| x.needs_user_input()) => {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                e.to_string(),
                "ask the user for what `exception` names and look up again with evidence_type_id, jurisdiction_context_id, admin_l2/admin_l3 and classification=ID=VALUE",
            )
        }
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            e.to_string(),
            "the common services failed or answered something unreadable; retry later, or check the query's values",
        ),
    }
}
