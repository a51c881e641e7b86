//! The OOTS common services over HTTP: the HTTPS [`Transport`] the `varti-oots` client
//! uses, and the routes of the local stand-in server (`varti oots standin`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use varti_oots::common_services::client::BoxFuture;
use varti_oots::common_services::standin::StandIn;
use varti_oots::common_services::{HttpReply, Transport, TransportError};

use crate::server::http::{self as body, Body};
use crate::server::tls::{self, TlsError};
use crate::server::{PeerInfo, RouteFuture, Routes};

/// Largest answer read (the EB's whole requirements catalogue is under 1 MiB).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Where Debian-family systems keep the public CA bundle.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// HTTPS GETs with hyper and rustls, each bounded by the client's timeout.
pub struct HttpsTransport {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    allow_plain_http: bool,
}

impl HttpsTransport {
    /// A transport trusting `cas` for the services' TLS certificates. `allow_plain_http`
    /// permits `http://` base URLs (the local stand-in).
    pub fn new(cas: &[CertificateDer<'static>], allow_plain_http: bool) -> Result<Self, TlsError> {
        let tls_config = tls::client_config(cas, None)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config);
        let https = if allow_plain_http {
            builder
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        } else {
            builder
                .https_only()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(HttpsTransport {
            client,
            allow_plain_http,
        })
    }

    /// A transport trusting the CAs of a PEM file (the system bundle, or a private CA).
    pub fn from_ca_file(path: &Path, allow_plain_http: bool) -> Result<Self, TlsError> {
        let cas = tls::load_certs(path, "common-services TLS CA file")?;
        Self::new(&cas, allow_plain_http)
    }
}

impl Transport for HttpsTransport {
    fn get<'a>(
        &'a self,
        url: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<HttpReply, TransportError>> {
        Box::pin(async move {
            let uri: Uri = url
                .parse()
                .map_err(|e| TransportError::Failed(format!("not a valid URL ({e})")))?;
            match uri.scheme_str() {
                Some("https") => {}
                Some("http") if self.allow_plain_http => {}
                _ => {
                    return Err(TransportError::Failed(
                        "the common services are reached over https:// only (http:// is allowed for the local stand-in with --insecure-http)".into(),
                    ))
                }
            }
            let mut request = Request::get(uri)
                .body(Empty::<Bytes>::new())
                .map_err(|e| TransportError::Failed(e.to_string()))?;
            request.headers_mut().insert(
                header::ACCEPT,
                HeaderValue::from_static("application/x-ebrs+xml, application/xml"),
            );
            let exchange = async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| TransportError::Failed(error_chain(&e)))?;
                let (parts, mut incoming) = response.into_parts();
                let mut collected = BytesMut::new();
                while let Some(frame) = incoming.frame().await {
                    let frame = frame.map_err(|e| {
                        TransportError::Failed(format!("reading the answer: {}", error_chain(&e)))
                    })?;
                    if let Ok(data) = frame.into_data() {
                        if collected.len() + data.len() > MAX_ANSWER_BYTES {
                            return Err(TransportError::Failed(format!(
                                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                            )));
                        }
                        collected.extend_from_slice(&data);
                    }
                }
                let headers = parts
                    .headers
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                Ok(HttpReply {
                    status: parts.status.as_u16(),
                    headers,
                    body: collected.to_vec(),
                })
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| TransportError::Timeout(timeout))?
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The stand-in's routes: `GET …/rest/search?…` answered by [`StandIn`], and
/// `GET /standin/requests` with the number of queries answered so far (tests count cache
/// misses with it). A far-edge test double: see [`varti_oots::common_services::standin`].
pub struct StandInRoutes {
    standin: Arc<StandIn>,
    queries: Arc<AtomicU64>,
}

impl StandInRoutes {
    /// Routes over a stand-in.
    pub fn new(standin: StandIn) -> Self {
        StandInRoutes {
            standin: Arc::new(standin),
            queries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The count of queries answered.
    pub fn query_counter(&self) -> Arc<AtomicU64> {
        self.queries.clone()
    }
}

impl Routes for StandInRoutes {
    fn call(&self, request: Request<Incoming>, _peer: PeerInfo) -> RouteFuture {
        let standin = self.standin.clone();
        let queries = self.queries.clone();
        Box::pin(async move {
            if request.method() != Method::GET {
                return body::text_response(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            }
            let path = request.uri().path().to_owned();
            if path == "/standin/requests" {
                return body::text_response(
                    StatusCode::OK,
                    format!("{}\n", queries.load(Ordering::SeqCst)),
                );
            }
            let query = request.uri().query().unwrap_or_default().to_owned();
            if path.ends_with("/rest/search") {
                queries.fetch_add(1, Ordering::SeqCst);
            }
            let now = time::OffsetDateTime::now_utc();
            let reply = tokio::task::spawn_blocking(move || standin.answer(&path, &query, now))
                .await
                .unwrap_or_else(|e| HttpReply {
                    status: 500,
                    headers: Vec::new(),
                    body: format!("the stand-in failed: {e}").into_bytes(),
                });
            to_response(reply)
        })
    }
}

fn to_response(reply: HttpReply) -> Response<Body> {
    let mut response = Response::new(body::full(reply.body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}
