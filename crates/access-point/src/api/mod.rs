//! The backend API: HTTP/JSON for the systems behind the access point (procedure portals,
//! evidence providers), on its own plain-HTTP listener (`backend.listen`).
//!
//! Every route is under `/api/v1`. [`ApiRouter`] is the router: it serves the message routes
//! below, and features of the runtime (the OOTS gateway, the preview space) mount their own
//! routes and OpenAPI fragments into it at start-up ([`ApiRouter::mount`],
//! [`ApiRouter::add_openapi`]). The merged document is served at `/api/v1/openapi.json`;
//! tests keep it in step with the routes served.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /messages` | submit: a multipart form with a `metadata` JSON part, then the files |
//! | `GET /messages` | own messages, newest first, paged (`after`); searched by `direction`, `state`, `partner`, `since`/`until`, `conversation`, `service`, `action`, `property`, `id_prefix`; test traffic only with `include_test=true` |
//! | `GET /messages/{id}` | one message: metadata, state, attempts, last error, history |
//! | `GET /messages/{id}/payloads/{n}` | payload `n` (from 0), streamed; recorded in the history, the state stays |
//! | `POST /messages/{id}/ack` | inbound: the backend has the message (→ `downloaded`) |
//! | `POST /messages/{id}/resend` | outbound: send a failed message again |
//! | `POST /messages/{id}/retry` | outbound: a message waiting for its retry is due now |
//! | `GET /status` | party, instance, message counts by state |
//! | `GET /openapi.json` | the OpenAPI 3.1 document (no authentication) |
//! | `POST /admin/purge` | admin clients: apply the retention now |
//! | `POST /admin/retry` | admin clients: every waiting message (of `partner`) is due now |
//! | `POST /admin/reload` | admin clients: reload PModes, certificates, CRLs, backend clients |
//! | `GET /audit` | admin clients: the audit trail, oldest first, paged (`since`, `after`, `limit`) |
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

pub(crate) mod messages;
mod ops;
pub(crate) mod submit;

pub use messages::parse_query;
pub use messages::{purge_now, Purged};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::Incoming;
use varti_store::StoreError;

use crate::access_point::AccessPoint;
use crate::config::ApiClient;
use crate::server::http::full;
use crate::server::{Body, PeerInfo, RouteFuture, Routes};

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
    pub(crate) fn no_message(id: &str) -> Self {
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
    /// The operations console acting for its user `name`: it sees every message (roles
    /// are checked by the console before it acts). Its acts are audited as `name`.
    pub(crate) fn console(name: String) -> Client {
        Client {
            name,
            admin: true,
            token_sha256: [0; 32],
        }
    }

    /// Whether this client may see a message owned by `owner`.
    pub fn sees(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }
}

/// Every route is under this prefix.
pub const PREFIX: &str = "/api/v1";

/// The OpenAPI 3.1 document of the message routes; features add their fragments to it.
const OPENAPI_MESSAGES: &str = include_str!("../../openapi/messages.json");

/// What a handler gets: the authenticated client, the request, the percent-decoded path
/// parameters (in the order of the route's `{name}`s) and the raw query string.
#[derive(Debug)]
pub struct ApiCall {
    /// The client whose token the request carries.
    pub client: Client,
    /// The request (its body not yet read).
    pub request: Request<Incoming>,
    /// The path parameters, percent-decoded.
    pub params: Vec<String>,
    /// The query string (without `?`; empty when there is none).
    pub query: String,
}

impl ApiCall {
    /// Path parameter `i` (empty when the route has fewer).
    pub fn param(&self, i: usize) -> String {
        self.params.get(i).cloned().unwrap_or_default()
    }
}

/// What a handler answers: the response, or the error to answer as JSON.
pub(crate) type ApiResult = Result<Response<Body>, ApiError>;

/// The future a handler returns.
pub(crate) type ApiFuture = Pin<Box<dyn Future<Output = ApiResult> + Send>>;

type Handler = Arc<dyn Fn(ApiCall) -> ApiFuture + Send + Sync>;

/// One route of the router.
#[derive(Clone)]
struct Route {
    method: &'static str,
    /// The path below [`PREFIX`], with `{name}` for a path parameter (one segment).
    path: &'static str,
    handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Why an OpenAPI fragment cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// The fragment is not JSON.
    #[error("the OpenAPI fragment is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The fragment describes a path or component that is already there.
    #[error("the OpenAPI fragment describes {0} twice")]
    Duplicate(String),
}

/// The backend API's router: authentication, the routing table and the OpenAPI document.
pub struct ApiRouter {
    /// The access point whose current backend clients may authenticate (none: nobody).
    ap: Option<Arc<AccessPoint>>,
    routes: Vec<Route>,
    openapi: serde_json::Value,
}

impl std::fmt::Debug for ApiRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRouter")
            .field("routes", &self.routes().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ApiRouter {
    /// The router over the running access point, serving the message routes; its
    /// configured API clients may authenticate.
    pub fn new(ap: Arc<AccessPoint>) -> ApiRouter {
        let mut router = ApiRouter {
            ap: Some(ap.clone()),
            routes: Vec::new(),
            openapi: serde_json::from_str(OPENAPI_MESSAGES)
                .expect("the built-in OpenAPI document is JSON"),
        };
        let a = ap.clone();
        router.mount("POST", "/messages", move |c| {
            Box::pin(submit::submit(a.clone(), c.client, c.request))
        });
        let a = ap.clone();
        router.mount("GET", "/messages", move |c| {
            let a = a.clone();
            Box::pin(async move { messages::list(a, c.client, &c.query).await })
        });
        let a = ap.clone();
        router.mount("GET", "/messages/{id}", move |c| {
            let id = c.param(0);
            Box::pin(messages::show(a.clone(), c.client, id))
        });
        let a = ap.clone();
        router.mount("GET", "/messages/{id}/payloads/{n}", move |c| {
            let (a, id, n) = (a.clone(), c.param(0), c.param(1));
            Box::pin(async move { messages::payload(a, c.client, id, &n).await })
        });
        let a = ap.clone();
        router.mount("POST", "/messages/{id}/ack", move |c| {
            let id = c.param(0);
            Box::pin(messages::ack(a.clone(), c.client, id))
        });
        let a = ap.clone();
        router.mount("POST", "/messages/{id}/resend", move |c| {
            let id = c.param(0);
            Box::pin(messages::resend(a.clone(), c.client, id))
        });
        let a = ap.clone();
        router.mount("POST", "/messages/{id}/retry", move |c| {
            let id = c.param(0);
            Box::pin(messages::retry(a.clone(), c.client, id))
        });
        let a = ap.clone();
        router.mount("POST", "/admin/retry", move |c| {
            let a = a.clone();
            Box::pin(async move { messages::retry_waiting(a, c.client, &c.query).await })
        });
        let a = ap.clone();
        router.mount("GET", "/status", move |c| {
            Box::pin(messages::status(a.clone(), c.client))
        });
        let a = ap.clone();
        router.mount("POST", "/admin/purge", move |c| {
            Box::pin(messages::purge(a.clone(), c.client))
        });
        ops::mount(&mut router, ap);
        router
    }

    /// Serves `handler` for `method` on `path` (below [`PREFIX`], `{name}` for a path
    /// parameter). Requests reach it authenticated.
    pub fn mount<F>(&mut self, method: &'static str, path: &'static str, handler: F)
    where
        F: Fn(ApiCall) -> ApiFuture + Send + Sync + 'static,
    {
        self.routes.push(Route {
            method,
            path,
            handler: Arc::new(handler),
        });
    }

    /// Adds a feature's OpenAPI fragment (`{"paths": …, "webhooks": …, "components": …}`)
    /// to the served document.
    pub fn add_openapi(&mut self, fragment: &str) -> Result<(), OpenApiError> {
        let fragment: serde_json::Value = serde_json::from_str(fragment)?;
        let merge = |into: &mut serde_json::Value, from: &serde_json::Value, what: &str| {
            let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
                return Ok(());
            };
            for (k, v) in from {
                if into.insert(k.clone(), v.clone()).is_some() {
                    return Err(OpenApiError::Duplicate(format!("{what} {k}")));
                }
            }
            Ok(())
        };
        merge(&mut self.openapi["paths"], &fragment["paths"], "path")?;
        if fragment["webhooks"].is_object() && self.openapi["webhooks"].is_null() {
            self.openapi["webhooks"] = serde_json::json!({});
        }
        merge(
            &mut self.openapi["webhooks"],
            &fragment["webhooks"],
            "webhook",
        )?;
        if let Some(kinds) = fragment["components"].as_object() {
            for (kind, items) in kinds {
                let into = &mut self.openapi["components"][kind];
                if into.is_null() {
                    *into = serde_json::json!({});
                }
                merge(into, items, kind)?;
            }
        }
        Ok(())
    }

    /// The OpenAPI document served at `/api/v1/openapi.json`.
    pub fn openapi(&self) -> &serde_json::Value {
        &self.openapi
    }

    /// The routes served, as `(method, path below PREFIX)`, plus `GET /openapi.json`.
    pub fn routes(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.routes
            .iter()
            .map(|r| (r.method, r.path))
            .chain(std::iter::once(("GET", "/openapi.json")))
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
        // The clients of the set in force: a reload adds, removes and changes them.
        let clients: Vec<Client> = match &self.ap {
            Some(ap) => ap.current().clients().iter().map(client_of).collect(),
            None => Vec::new(),
        };
        // Compare with every client (no early exit) so timing does not tell which matched.
        let mut found = None;
        for client in &clients {
            if openssl::memcmp::eq(&presented, &client.token_sha256) {
                found = Some(client);
            }
        }
        found
            .cloned()
            .ok_or_else(|| unauthorized("the token is not valid"))
    }
}

fn client_of(c: &ApiClient) -> Client {
    let mut token_sha256 = [0u8; 32];
    // The configuration was validated: 64 hex digits.
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

impl ApiRouter {
    /// Finds the route for `method` and `path` (below [`PREFIX`]): the route and its
    /// percent-decoded path parameters, or the error to answer (404 no route, 405 wrong
    /// method, 400 undecodable parameter).
    fn find_route(&self, method: &Method, path: &str) -> Result<(&Route, Vec<String>), ApiError> {
        for r in &self.routes {
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
            return Ok((r, params));
        }
        let allowed = self.allowed_methods(path);
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

    /// The methods some route serves on `path`.
    fn allowed_methods(&self, path: &str) -> Vec<&'static str> {
        self.routes()
            .filter(|(_, p)| match_path(p, path).is_some())
            .map(|(m, _)| m)
            .collect()
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

impl Routes for ApiRouter {
    fn call(&self, request: Request<Incoming>, _peer: PeerInfo) -> RouteFuture {
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
        if request.method() == Method::GET && rest == "/openapi.json" {
            let response = json_response(StatusCode::OK, &self.openapi);
            return Box::pin(async move { response });
        }
        let (route, params) = match self.find_route(request.method(), rest) {
            Ok(found) => found,
            Err(e) => {
                let mut response = e.response();
                if e.status == StatusCode::METHOD_NOT_ALLOWED {
                    let allow = self.allowed_methods(rest).join(", ");
                    if let Ok(v) = HeaderValue::from_str(&allow) {
                        response.headers_mut().insert(header::ALLOW, v);
                    }
                }
                return Box::pin(async move { response });
            }
        };
        let client = match self.authenticate(request.headers()) {
            Ok(c) => c,
            Err(e) => return Box::pin(async move { e.response() }),
        };
        let query = request.uri().query().unwrap_or("").to_owned();
        let handler = route.handler.clone();
        // The first call of each client since start-up is audited (see `crate::audit`).
        let first_use = self
            .ap
            .as_ref()
            .filter(|ap| !ap.token_seen(&client.name))
            .cloned();
        Box::pin(async move {
            if let Some(ap) = first_use {
                let (name, admin) = (client.name.clone(), client.admin);
                let _ = tokio::task::spawn_blocking(move || ap.audit_token_use(&name, admin)).await;
            }
            let call = ApiCall {
                client,
                request,
                params,
                query,
            };
            handler(call).await.unwrap_or_else(|e| e.response())
        })
    }
}

/// Runs a blocking store step off the async workers.
pub(crate) async fn blocking<T, F>(ap: Arc<AccessPoint>, f: F) -> Result<T, ApiError>
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

    fn router() -> ApiRouter {
        let mut router = ApiRouter {
            ap: None,
            routes: Vec::new(),
            openapi: serde_json::from_str(OPENAPI_MESSAGES).unwrap(),
        };
        for (method, path) in [
            ("POST", "/messages"),
            ("GET", "/messages"),
            ("GET", "/messages/{id}/payloads/{n}"),
        ] {
            router.mount(method, path, |_| {
                Box::pin(async { Err(ApiError::internal("not called")) })
            });
        }
        router
    }

    /// An access point over the repository's PModes and test keys, on a throw-away store.
    fn access_point(dir: &std::path::Path) -> Arc<AccessPoint> {
        crate::test_support::access_point(dir).0
    }

    #[test]
    fn every_message_route_is_documented_and_every_documented_route_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let router = ApiRouter::new(access_point(dir.path()));
        let served: std::collections::BTreeSet<_> = router
            .routes()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in router.openapi()["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        assert_eq!(served, documented);
    }

    #[test]
    fn router_answers_404_and_405_and_decodes_parameters() {
        let r = router();
        let e = r.find_route(&Method::GET, "/nothing").unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = r.find_route(&Method::DELETE, "/messages").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.error.contains("POST or GET"), "{}", e.error);
        let e = r
            .find_route(&Method::GET, "/messages//payloads/0")
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let (route, params) = r
            .find_route(&Method::GET, "/messages/x%40y/payloads/0")
            .unwrap();
        assert_eq!(route.path, "/messages/{id}/payloads/{n}");
        assert_eq!(params, ["x@y", "0"]);
    }

    #[test]
    fn fragments_merge_and_may_not_redefine() {
        let mut r = router();
        r.add_openapi(
            r#"{"paths": {"/extra": {"get": {}}}, "components": {"schemas": {"Extra": {}}}}"#,
        )
        .unwrap();
        assert!(r.openapi()["paths"]["/extra"].is_object());
        assert!(r.openapi()["components"]["schemas"]["Extra"].is_object());
        assert!(r.openapi()["paths"]["/messages"].is_object());
        let e = r
            .add_openapi(r#"{"paths": {"/messages": {}}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("/messages"), "{e}");
    }

    #[test]
    fn token_hash_is_decoded() {
        let hash = openssl::sha::sha256(b"secret");
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let c = client_of(&ApiClient {
            name: "p".into(),
            token_sha256: hex,
            services: vec![],
            webhook_url: None,
            webhook_secret: None,
            admin: false,
        });
        assert_eq!(c.token_sha256, hash);
    }
}
