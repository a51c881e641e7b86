//! The preview routes of the backend API, for evidence providers that run their own flow
//! and want Varti's preview space to show the citizen their evidence:
//!
//! - `POST /api/v1/previews`: a multipart form, a `metadata` JSON part first (`reference`,
//!   `person`, `requester`, optional `procedure`, `return_url`, `ttl_secs`, and `evidences`
//!   `[{part, title, media_type?}]`), then one part per evidence file (streamed to disk).
//!   Answers 201 with `{id, url, expires_at}`: send the citizen to `url`.
//! - `GET /api/v1/previews/{id}`: `{id, reference, state, expires_at, decided_at}`; state is
//!   `pending`, `approved`, `cancelled` or `expired`. `?wait=SECONDS` (at most 60) holds
//!   the answer until the state changes.
//!
//! A backend sees only the previews it opened.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{blocking, Person, PreviewEvidence, PreviewRequest, PreviewSpace};
use varti_access_point::api::{json_response, ApiError, ApiRouter, Client};
use varti_access_point::server::http::Body;

/// Largest metadata part.
const MAX_METADATA: u64 = 64 * 1024;
/// Longest `?wait=`.
const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    reference: String,
    person: Person,
    requester: String,
    #[serde(default)]
    procedure: Option<String>,
    #[serde(default)]
    return_url: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    evidences: Vec<EvidenceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceSpec {
    part: String,
    title: String,
    #[serde(default)]
    media_type: Option<String>,
}

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "the preview space is not enabled on this access point",
        "set [preview] enabled = true (with its identity provider) in the configuration",
    )
}

/// `POST /previews`.
pub async fn open(
    space: Option<Arc<PreviewSpace>>,
    client: Client,
    request: Request<Incoming>,
    max_body: u64,
) -> Result<Response<Body>, ApiError> {
    let space = space.ok_or_else(disabled)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let boundary = multer::parse_boundary(&content_type).map_err(|_| {
        ApiError::bad_request(
            "the body must be multipart/form-data: a `metadata` JSON part, then the evidence files",
            "e.g. curl -F metadata=@preview.json -F diploma=@diploma.pdf",
        )
    })?;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(max_body)
            .for_field("metadata", MAX_METADATA),
    );
    let mut form = multer::Multipart::with_constraints(
        varti_access_point::server::http::timed_body(request).into_data_stream(),
        boundary,
        constraints,
    );
    let form_error = |e: multer::Error| {
        ApiError::bad_request(
            format!("the form could not be read: {e}"),
            "send a valid multipart form",
        )
    };
    let field = form
        .next_field()
        .await
        .map_err(form_error)?
        .filter(|f| f.name() == Some("metadata"))
        .ok_or_else(|| {
            ApiError::bad_request(
                "the first form part must be `metadata`",
                "send the JSON description first, then the files",
            )
        })?;
    let text = field.bytes().await.map_err(form_error)?;
    let metadata: Metadata = serde_json::from_slice(&text).map_err(|e| {
        ApiError::bad_request(
            format!("the metadata part is not valid: {e}"),
            "send JSON with reference, person {given_name, family_name, birth_date, identifier?}, requester, evidences [{part, title, media_type?}] and optionally procedure, return_url, ttl_secs",
        )
    })?;
    if metadata.evidences.is_empty() {
        return Err(ApiError::bad_request(
            "metadata.evidences is empty",
            "a preview shows at least one evidence file",
        ));
    }
    if let Some(url) = &metadata.return_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ApiError::bad_request(
                "return_url must be an http(s) URL",
                "give the portal page the citizen returns to",
            ));
        }
    }

    // Files go to a directory of their own; a failed upload removes it.
    let dir = space
        .files_dir()
        .join(format!("upload-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(ApiError::internal)?;
    let result = receive_files(&mut form, &metadata, &dir).await;
    let files = match result {
        Ok(f) => f,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
    };
    let evidences = metadata
        .evidences
        .iter()
        .zip(files)
        .map(|(spec, (path, part_type))| PreviewEvidence {
            title: spec.title.clone(),
            media_type: spec
                .media_type
                .clone()
                .or(part_type)
                .unwrap_or_else(|| "application/octet-stream".into()),
            path,
            html: None,
        })
        .collect();
    let link = blocking(|| {
        space.open(PreviewRequest {
            reference: metadata.reference,
            person: metadata.person,
            requester: metadata.requester,
            procedure: metadata.procedure,
            evidences,
            return_url: metadata.return_url,
            ttl: metadata.ttl_secs.map(Duration::from_secs),
            owner: client.name.clone(),
        })
    })
    .map_err(ApiError::internal)?;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({
            "id": link.id,
            "url": link.url,
            "expires_at": link.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        }),
    ))
}

/// Streams the file parts into `dir`, in the metadata's order: (path, part content type).
async fn receive_files(
    form: &mut multer::Multipart<'static>,
    metadata: &Metadata,
    dir: &std::path::Path,
) -> Result<Vec<(std::path::PathBuf, Option<String>)>, ApiError> {
    let mut got: Vec<Option<(std::path::PathBuf, Option<String>)>> =
        vec![None; metadata.evidences.len()];
    while let Some(mut field) = form.next_field().await.map_err(|e| {
        ApiError::bad_request(
            format!("the form could not be read: {e}"),
            "send a valid multipart form",
        )
    })? {
        let name = field.name().unwrap_or("").to_owned();
        let Some(i) = metadata.evidences.iter().position(|e| e.part == name) else {
            return Err(ApiError::bad_request(
                format!("form part `{name}` is not named by metadata.evidences[].part"),
                "list every file part in metadata.evidences",
            ));
        };
        if got[i].is_some() {
            return Err(ApiError::bad_request(
                format!("form part `{name}` is sent twice"),
                "give each file its own form field name",
            ));
        }
        let path = dir.join(i.to_string());
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(ApiError::internal)?;
        while let Some(chunk) = field.chunk().await.map_err(|e| {
            ApiError::bad_request(format!("the upload broke off: {e}"), "send the file again")
        })? {
            file.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        file.flush().await.map_err(ApiError::internal)?;
        got[i] = Some((path, field.content_type().map(|m| m.to_string())));
    }
    got.into_iter()
        .zip(&metadata.evidences)
        .map(|(g, spec)| {
            g.ok_or_else(|| {
                ApiError::bad_request(
                    format!(
                        "metadata.evidences names part `{}` but the form has no such part",
                        spec.part
                    ),
                    "send one form part per evidence, named as its `part` says",
                )
            })
        })
        .collect()
}

/// `GET /previews/{id}`.
pub async fn show(
    space: Option<Arc<PreviewSpace>>,
    client: Client,
    id: String,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    let space = space.ok_or_else(disabled)?;
    let wait = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "wait")
        .map(|(_, v)| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request("wait must be a number of seconds", "e.g. ?wait=30")
            })
        })
        .transpose()?
        .map(|s| s.min(MAX_WAIT_SECS));
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no preview with id `{id}`"),
            "use the id POST /api/v1/previews returned; finished previews are forgotten after a day",
        )
    };
    let status = blocking(|| space.state(&id)).ok_or_else(not_found)?;
    if !client.sees(&status.owner) {
        return Err(not_found());
    }
    let status = match wait {
        Some(secs) if secs > 0 => space
            .wait(&id, Duration::from_secs(secs))
            .await
            .ok_or_else(not_found)?,
        _ => status,
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::to_value(&status).map_err(ApiError::internal)?,
    ))
}

/// The OpenAPI fragment of the preview routes.
const OPENAPI_PREVIEW: &str = include_str!("../../openapi/preview.json");

/// Mounts the preview routes (`/previews`, `/previews/{id}`) and their OpenAPI fragment on
/// the backend API. Without a preview space they answer 404 "not enabled".
pub fn mount(space: Option<Arc<PreviewSpace>>, router: &mut ApiRouter, max_body: u64) {
    router
        .add_openapi(OPENAPI_PREVIEW)
        .expect("the preview OpenAPI fragment fits the message routes' document");
    let s = space.clone();
    router.mount("POST", "/previews", move |c| {
        Box::pin(open(s.clone(), c.client, c.request, max_body))
    });
    router.mount("GET", "/previews/{id}", move |c| {
        let (s, id) = (space.clone(), c.param(0));
        Box::pin(async move { show(s, c.client, id, &c.query).await })
    });
}
