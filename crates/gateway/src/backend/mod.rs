//! The backend API: HTTP/JSON for the systems behind the access point (procedure portals,
//! evidence providers), on its own plain-HTTP listener (`backend.listen`).
//!
//! Every route is under `/api/v1`; [`ROUTES`] is the routing table and `docs/openapi.json`
//! (served at `/api/v1/openapi.json`) describes the same routes — a test keeps the two in
//! step.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /messages` | submit: a multipart form with a `metadata` JSON part, then the files |
//! | `GET /messages` | own messages, newest first, paged (`direction`, `state`, `limit`, `after`) |
//! | `GET /messages/{id}` | one message: metadata, state, attempts, last error, history |
//! | `GET /messages/{id}/payloads/{n}` | payload `n` (from 0), streamed |
//! | `POST /messages/{id}/ack` | inbound: the backend has the message (→ `downloaded`) |
//! | `POST /messages/{id}/resend` | outbound: send a failed message again |
//! | `GET /status` | party, instance, message counts by state |
//! | `GET /openapi.json` | the OpenAPI 3.1 document (no authentication) |
//! | `POST /admin/purge` | admin clients: apply the retention now |
//! | `POST /previews` | open a preview of evidence files for a citizen (see [`crate::preview::api`]) |
//! | `GET /previews/{id}` | a preview's state (`?wait=SECONDS` holds the answer until it changes) |
//! | `POST /oots/requests` | OOTS: an evidence request from a portal's data ([`crate::oots::requester`]) |
//! | `GET /oots/requests` | OOTS: own requests, newest first (`state`, `limit`) |
//! | `GET /oots/requests/{id}` | OOTS: where the request is, its evidence or error |
//! | `GET /oots/requests/{id}/evidence/{n}` | OOTS: evidence file `n`, streamed |
//! | `GET /oots/lookup/requirements`, `…/evidence-types`, `…/data-services` | OOTS: the common services asked for a portal ([`crate::oots::lookup`]) |
//!
//! # Authentication and isolation
//!
//! Each request carries `Authorization: Bearer <token>`. The server keeps only the token's
//! SHA-256 (`backend.clients.token_sha256`) and compares the hash of the presented token
//! with every client's in constant time. A backend sees only the messages it owns
//! ([`MessageMeta::owner`](varti_store::MessageMeta::owner) is its name); another backend's
//! message answers 404, exactly like an id that does not exist, so ids do not leak. A client
//! with `admin = true` sees every message and may purge.
//!
//! # Streaming
//!
//! Payloads never sit whole in memory: an upload's file parts are handed chunk by chunk
//! (bounded channel) to a blocking task that writes them into the store's payload store,
//! and downloads are read from the payload store in 64 KiB chunks.
//!
//! # Errors
//!
//! Every error is JSON `{"error": "what is wrong", "hint": "what to do"}` with a status that
//! says whose fault it is: 400 bad request, 401 no or bad token, 403 not an admin, 404 no
//! such message (or route), 409 conflicts with the message's state or a taken id, 410
//! payload purged, 413 upload too large, 422 no PMode leg fits, 500 store failure.

mod messages;
mod submit;

pub(crate) use messages::parse_query;
pub use messages::purge_now;

use std::sync::Arc;

use ::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::Incoming;
use varti_store::StoreError;

use crate::access_point::AccessPoint;
use crate::common_services::CommonServices;
use crate::config::BackendClient;
use crate::oots::lookup::Lookup;
use crate::preview::PreviewSpace;
use crate::server::http::full;
use crate::server::{Body, PeerInfo, RouteFuture, Routes};

/// Every route is under this prefix.
pub const PREFIX: &str = "/api/v1";

/// The OpenAPI 3.1 document of this API (`docs/openapi.json`), served at
/// `/api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../../docs/openapi.json");

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Submit,
    List,
    Show,
    Payload,
    Ack,
    Resend,
    Status,
    OpenApi,
    Purge,
    PreviewOpen,
    PreviewShow,
    OotsCreate,
    OotsList,
    OotsShow,
    OotsEvidence,
    OotsPreviewReturn,
    OotsLookup(crate::oots::lookup::Lookup),
}

/// One entry of the routing table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path below [`PREFIX`], with `{name}` for a path parameter (one segment).
    pub path: &'static str,
    op: Op,
}

const fn route(method: &'static str, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

/// The routing table: the router dispatches by it, and a test checks it against the
/// OpenAPI document.
pub const ROUTES: &[Route] = &[
    route("POST", "/messages", Op::Submit),
    route("GET", "/messages", Op::List),
    route("GET", "/messages/{id}", Op::Show),
    route("GET", "/messages/{id}/payloads/{n}", Op::Payload),
    route("POST", "/messages/{id}/ack", Op::Ack),
    route("POST", "/messages/{id}/resend", Op::Resend),
    route("GET", "/status", Op::Status),
    route("GET", "/openapi.json", Op::OpenApi),
    route("POST", "/admin/purge", Op::Purge),
    route("POST", "/previews", Op::PreviewOpen),
    route("GET", "/previews/{id}", Op::PreviewShow),
    route("POST", "/oots/requests", Op::OotsCreate),
    route("GET", "/oots/requests", Op::OotsList),
    route("GET", "/oots/requests/{id}", Op::OotsShow),
    route("GET", "/oots/requests/{id}/evidence/{n}", Op::OotsEvidence),
    route(
        "POST",
        "/oots/requests/{id}/preview-return",
        Op::OotsPreviewReturn,
    ),
    route(
        "GET",
        "/oots/lookup/requirements",
        Op::OotsLookup(Lookup::Requirements),
    ),
    route(
        "GET",
        "/oots/lookup/evidence-types",
        Op::OotsLookup(Lookup::EvidenceTypes),
    ),
    route(
        "GET",
        "/oots/lookup/data-services",
        Op::OotsLookup(Lookup::DataServices),
    ),
];

/// An API error: status, what is wrong, what to do.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub error: String,
    /// What to do about it.
    pub hint: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            hint: hint.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error, hint)
    }

    /// 404 for a message id this client cannot see (whether or not it exists).
    pub fn no_message(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no message with id `{id}`"),
            "check the id (GET /api/v1/messages lists yours); a backend sees only its own \
             messages, and metadata older than retention.metadata_days is purged",
        )
    }

    /// 500: an internal failure (a task died).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {what}"),
            "the server log has details; retry later",
        )
    }

    /// The JSON response.
    pub fn response(&self) -> Response<Body> {
        let mut response = json_response(
            self.status,
            &serde_json::json!({"error": self.error, "hint": self.hint}),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"varti\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { message_id } => ApiError::no_message(message_id),
            StoreError::AlreadyExists { .. } => ApiError::new(
                StatusCode::CONFLICT,
                e.to_string(),
                "omit message_id to have one generated, or use a new one",
            ),
            StoreError::StateConflict { .. } | StoreError::InvalidTransition { .. } => {
                ApiError::new(
                    StatusCode::CONFLICT,
                    e.to_string(),
                    "GET the message to see its state and history, then decide again",
                )
            }
            StoreError::InvalidInput(_) => {
                ApiError::bad_request(e.to_string(), "fix the value named in the error")
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the store failed: {e}"),
                "the server log has details; retry later",
            ),
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).expect("JSON values serialise");
    text.push(b'\n');
    let mut response = Response::new(full(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An authenticated backend.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its name (owner of its messages).
    pub name: String,
    /// Whether it sees every message and may purge.
    pub admin: bool,
    token_sha256: [u8; 32],
}

impl Client {
    /// Whether this client may see a message owned by `owner`.
    pub fn sees(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }
}

/// The backend API's routes.
pub struct BackendRoutes {
    ap: Arc<AccessPoint>,
    clients: Vec<Client>,
    preview: Option<Arc<PreviewSpace>>,
    common_services: Option<Arc<CommonServices>>,
}

impl BackendRoutes {
    /// Routes over the running access point; its `backend.clients` may authenticate.
    pub fn new(ap: Arc<AccessPoint>) -> BackendRoutes {
        let clients = ap.config.backend.clients.iter().map(client_of).collect();
        BackendRoutes {
            ap,
            clients,
            preview: None,
            common_services: None,
        }
    }

    /// Serves the OOTS look-ups through `cs` (without it they answer 404 "not configured").
    pub fn with_common_services(mut self, cs: Option<Arc<CommonServices>>) -> BackendRoutes {
        self.common_services = cs;
        self
    }

    /// Serves the preview routes over `preview` (without it they answer 404 "not enabled").
    pub fn with_preview(mut self, preview: Option<Arc<PreviewSpace>>) -> BackendRoutes {
        self.preview = preview;
        self
    }

    /// The client whose token the request carries.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Client, ApiError> {
        let unauthorized = |error: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                error,
                "send `Authorization: Bearer <token>` with the token whose SHA-256 is the \
                 client's token_sha256 in [[backend.clients]] (the CLI reads --token or \
                 VARTI_TOKEN)",
            )
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("no Authorization header"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
        let presented = openssl::sha::sha256(token.as_bytes());
        // Compare with every client (no early exit) so timing does not tell which matched.
        let mut found = None;
        for client in &self.clients {
            if openssl::memcmp::eq(&presented, &client.token_sha256) {
                found = Some(client);
            }
        }
        found
            .cloned()
            .ok_or_else(|| unauthorized("the token is not valid"))
    }
}

fn client_of(c: &BackendClient) -> Client {
    let mut token_sha256 = [0u8; 32];
    // Config::validate checked 64 hex digits.
    for (i, pair) in c.token_sha256.as_bytes().chunks(2).take(32).enumerate() {
        let hex = std::str::from_utf8(pair).unwrap_or("00");
        token_sha256[i] = u8::from_str_radix(hex, 16).unwrap_or(0);
    }
    Client {
        name: c.name.clone(),
        admin: c.admin,
        token_sha256,
    }
}

/// Finds the route for `method` and `path` (below [`PREFIX`]): the route and its
/// percent-decoded path parameters, or the error to answer (404 no route, 405 wrong
/// method, 400 undecodable parameter).
fn find_route(method: &Method, path: &str) -> Result<(Route, Vec<String>), ApiError> {
    for r in ROUTES {
        let Some(params) = match_path(r.path, path) else {
            continue;
        };
        if r.method != method.as_str() {
            continue;
        }
        let params = params
            .into_iter()
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| {
                        ApiError::bad_request(
                            format!("path segment `{p}` is not percent-encoded UTF-8"),
                            "percent-encode the message id in the path",
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((*r, params));
    }
    let allowed = allowed_methods(path);
    if allowed.is_empty() {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such route: {method} {PREFIX}{path}"),
            "the routes are listed in GET /api/v1/openapi.json",
        ))
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} is not allowed on {PREFIX}{path}; use {}",
                allowed.join(" or ")
            ),
            "the routes are listed in GET /api/v1/openapi.json",
        ))
    }
}

/// The path parameters if `path` fits `pattern` (`{name}` matches one non-empty segment).
fn match_path<'a>(pattern: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let pattern: Vec<&str> = pattern.split('/').skip(1).collect();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if pattern.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pattern.iter().zip(&segments) {
        if p.starts_with('{') {
            if s.is_empty() {
                return None;
            }
            params.push(*s);
        } else if p != s {
            return None;
        }
    }
    Some(params)
}

/// The methods some route serves on `path`.
fn allowed_methods(path: &str) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|r| match_path(r.path, path).is_some())
        .map(|r| r.method)
        .collect()
}

impl Routes for BackendRoutes {
    fn call(&self, request: Request<Incoming>, _peer: PeerInfo) -> RouteFuture {
        let ap = self.ap.clone();
        let path = request.uri().path().to_owned();
        let Some(rest) = path
            .strip_prefix(PREFIX)
            .filter(|r| r.is_empty() || r.starts_with('/'))
        else {
            let error = ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no such route: {path}"),
                "the backend API is under /api/v1 (see GET /api/v1/openapi.json)",
            );
            return Box::pin(async move { error.response() });
        };
        let (route, params) = match find_route(request.method(), rest) {
            Ok(found) => found,
            Err(e) => {
                let mut response = e.response();
                if e.status == StatusCode::METHOD_NOT_ALLOWED {
                    let allow = allowed_methods(rest).join(", ");
                    if let Ok(v) = HeaderValue::from_str(&allow) {
                        response.headers_mut().insert(header::ALLOW, v);
                    }
                }
                return Box::pin(async move { response });
            }
        };
        if route.op == Op::OpenApi {
            return Box::pin(async move { openapi() });
        }
        let client = match self.authenticate(request.headers()) {
            Ok(c) => c,
            Err(e) => return Box::pin(async move { e.response() }),
        };
        let query = request.uri().query().unwrap_or("").to_owned();
        let preview = self.preview.clone();
        let common_services = self.common_services.clone();
        Box::pin(async move {
            let id = params.first().cloned().unwrap_or_default();
            let result = match route.op {
                Op::Submit => submit::submit(ap, client, request).await,
                Op::List => messages::list(ap, client, &query).await,
                Op::Show => messages::show(ap, client, id).await,
                Op::Payload => {
                    let n = params.get(1).cloned().unwrap_or_default();
                    messages::payload(ap, client, id, &n).await
                }
                Op::Ack => messages::ack(ap, client, id).await,
                Op::Resend => messages::resend(ap, client, id).await,
                Op::Status => messages::status(ap, client).await,
                Op::Purge => messages::purge(ap, client).await,
                Op::PreviewOpen => {
                    let max_body = ap.config.limits.max_request_body_bytes;
                    crate::preview::api::open(preview, client, request, max_body).await
                }
                Op::PreviewShow => crate::preview::api::show(preview, client, id, &query).await,
                Op::OotsCreate => crate::oots::requester::create(ap, client, request).await,
                Op::OotsList => crate::oots::requester::list(ap, client, &query).await,
                Op::OotsShow => crate::oots::requester::show(ap, client, id).await,
                Op::OotsEvidence => {
                    let n = params.get(1).cloned().unwrap_or_default();
                    crate::oots::requester::evidence(ap, client, id, &n).await
                }
                Op::OotsPreviewReturn => {
                    crate::oots::requester::preview_return(ap, client, id, request).await
                }
                Op::OotsLookup(what) => {
                    crate::oots::lookup::lookup(ap, common_services, what, &query).await
                }
                Op::OpenApi => Ok(openapi()),
            };
            result.unwrap_or_else(|e| e.response())
        })
    }
}

fn openapi() -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(OPENAPI_JSON.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Runs a blocking store step off the async workers.
async fn blocking<T, F>(ap: Arc<AccessPoint>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&AccessPoint) -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&ap))
        .await
        .map_err(ApiError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn document() -> serde_json::Value {
        serde_json::from_str(OPENAPI_JSON).expect("docs/openapi.json is JSON")
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["servers"][0]["url"], PREFIX);
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                if ["get", "post", "put", "delete", "patch", "head"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(documented, served);
        // And the router really answers each documented route (not "no such route").
        for (method, path) in &documented {
            let concrete = path.replace("{id}", "x%40y").replace("{n}", "0");
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (route, params) = find_route(&method, &concrete).unwrap();
            assert_eq!(route.path, path);
            if path.contains("{id}") {
                assert_eq!(params[0], "x@y");
            }
        }
    }

    #[test]
    fn every_documented_operation_lists_its_errors_and_refs_resolve() {
        let doc = document();
        let text = OPENAPI_JSON;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let responses = op["responses"].as_object().unwrap_or_else(|| {
                    panic!("{method} {path} has no responses");
                });
                assert!(
                    responses
                        .keys()
                        .any(|k| k.starts_with('2') || k.starts_with('3')),
                    "{method} {path} has no success response"
                );
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
                if path != "/openapi.json" {
                    assert!(
                        responses.contains_key("401"),
                        "{method} {path} does not document 401"
                    );
                }
            }
        }
        // Every $ref points at a component that exists.
        let mut rest = text;
        while let Some(at) = rest.find("\"$ref\": \"#/components/") {
            rest = &rest[at + "\"$ref\": \"#/components/".len()..];
            let end = rest.find('"').unwrap();
            let (kind, name) = rest[..end].split_once('/').unwrap();
            assert!(
                doc["components"][kind][name].is_object(),
                "dangling $ref #/components/{kind}/{name}"
            );
        }
    }

    #[test]
    fn router_answers_404_and_405() {
        let e = find_route(&Method::GET, "/nothing").unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = find_route(&Method::DELETE, "/messages").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.error.contains("POST or GET"), "{}", e.error);
        let e = find_route(&Method::GET, "/messages//payloads/0").unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn token_hash_is_decoded() {
        let hash = openssl::sha::sha256(b"secret");
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let c = client_of(&BackendClient {
            name: "p".into(),
            token_sha256: hex,
            services: vec![],
            webhook_url: None,
            webhook_secret: None,
            admin: false,
            oots_party: None,
        });
        assert_eq!(c.token_sha256, hash);
    }
}
