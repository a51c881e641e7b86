//! The OOTS common services over HTTP: the HTTPS [`Transport`] the `varti-oots` client
//! uses, the look-up service `varti serve` offers portals ([`CommonServices`]: a fixed
//! base URL or [`discovery`] by DNS NAPTR), the JSON it answers with, and the routes of
//! the local stand-in server (`varti oots standin`).

pub mod discovery;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use varti_access_point::https::{error_chain, https_client, HttpsClient, HttpsOptions};

use bytes::BytesMut;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use varti_oots::common_services::answer::{CsException, DataServiceEvidenceType, Requirement};
use varti_oots::common_services::client::BoxFuture;
use varti_oots::common_services::query::discovery_name;
use varti_oots::common_services::standin::StandIn;
use varti_oots::common_services::{
    Client as CsClient, ClientConfig, HttpReply, Service, Transport, TransportError, TrustAnchors,
};
use varti_oots::edm::sdg::LangText;

use self::discovery::{DiscoveryError, NaptrDiscovery};
use crate::config::{CommonServicesConfig, Discovery};
use varti_access_point::server::http::{self as body, Body};
use varti_access_point::server::tls::{self, TlsError};
use varti_access_point::server::{PeerInfo, RouteFuture, Routes};

/// Largest answer read (the EB's whole requirements catalogue is under 1 MiB).
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Where Debian-family systems keep the public CA bundle.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// HTTPS GETs with hyper and rustls, each bounded by the client's timeout.
pub struct HttpsTransport {
    client: HttpsClient<Empty<Bytes>>,
    allow_plain_http: bool,
}

impl HttpsTransport {
    /// A transport trusting `cas` for the services' TLS certificates. `allow_plain_http`
    /// permits `http://` base URLs (the local stand-in).
    pub fn new(cas: &[CertificateDer<'static>], allow_plain_http: bool) -> Result<Self, TlsError> {
        let tls_config = tls::client_config(cas, None)?;
        let client = https_client(HttpsOptions {
            allow_plain_http,
            ..HttpsOptions::new(tls_config)
        });
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

/// Where the services are: one configured base, or per country by DNS.
enum Base {
    Fixed(String),
    Discovered {
        // Boxed: the resolver is large and there is one `Base` per gateway.
        dns: Box<NaptrDiscovery>,
        production: bool,
        edm_major: u32,
    },
}

/// The look-ups `varti serve` makes for portals (`[oots.common_services]`): one
/// [`CsClient`] per base URL (each with its answer cache), the base found by
/// configuration or by DNS NAPTR per country and service.
pub struct CommonServices {
    base: Base,
    transport: Arc<HttpsTransport>,
    template: ClientConfig,
    clients: Mutex<HashMap<String, Arc<CsClient>>>,
}

impl CommonServices {
    /// The service a validated configuration describes; `None` when look-ups are off.
    /// Errors name the key and the fix.
    pub fn from_config(c: &CommonServicesConfig) -> Result<Option<CommonServices>, String> {
        if !c.enabled() {
            return Ok(None);
        }
        let timeout = Duration::from_secs(c.timeout_secs);
        let base = match (&c.url, c.discovery) {
            (Some(url), _) => Base::Fixed(url.clone()),
            (None, env) => Base::Discovered {
                dns: Box::new(NaptrDiscovery::new(c.dns_server, timeout)?),
                production: env == Discovery::Prod,
                edm_major: c.edm_major,
            },
        };
        let trust = if c.verify_signatures {
            let mut pem = Vec::new();
            for p in &c.trust {
                let bytes = std::fs::read(p).map_err(|e| {
                    format!(
                        "oots.common_services.trust: cannot read {}: {e}",
                        p.display()
                    )
                })?;
                pem.extend_from_slice(&bytes);
                pem.push(b'\n');
            }
            Some(
                TrustAnchors::from_pem(&pem)
                    .map_err(|e| format!("oots.common_services.trust: {e}"))?,
            )
        } else {
            tracing::warn!("oots.common_services.verify_signatures is off: common-services answers are not checked (a local stand-in only)");
            None
        };
        let transport = HttpsTransport::from_ca_file(&c.tls_ca, c.allow_http)
            .map_err(|e| format!("oots.common_services.tls_ca: {e}"))?;
        let mut template = ClientConfig::new("", "");
        template.timeout = timeout;
        template.freshness = Duration::from_secs(c.cache_secs);
        template.trust = trust;
        Ok(Some(CommonServices {
            base,
            transport: Arc::new(transport),
            template,
            clients: Mutex::new(HashMap::new()),
        }))
    }

    /// The client for `service` in `country` (discovering its base URL if so configured).
    pub async fn client(
        &self,
        country: &str,
        service: Service,
    ) -> Result<Arc<CsClient>, DiscoveryError> {
        let base = match &self.base {
            Base::Fixed(url) => url.clone(),
            // The resolver caches answers for their DNS TTL, so this asks the network
            // only when the record may have changed.
            Base::Discovered {
                dns,
                production,
                edm_major,
            } => {
                dns.discover(&discovery_name(country, service, *edm_major, *production))
                    .await?
            }
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = clients.entry(base.clone()).or_insert_with(|| {
            let mut config = self.template.clone();
            config.eb_base_url = base.clone();
            config.dsd_base_url = base;
            Arc::new(CsClient::new(config, self.transport.clone()))
        });
        Ok(client.clone())
    }
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

/// The English text, else the first.
fn en(texts: &[LangText]) -> String {
    texts
        .iter()
        .find(|t| t.lang.as_deref() == Some("EN"))
        .or(texts.first())
        .map(|t| t.text.trim().to_owned())
        .unwrap_or_default()
}

/// A look-up's requirements as JSON (and as lines for a terminal); `with_types` also
/// lists their evidence types as lines.
pub fn requirements_out(items: &[Requirement], with_types: bool) -> (Value, Vec<String>) {
    let mut lines = Vec::new();
    let value = items
        .iter()
        .map(|r| {
            lines.push(format!("{}  {}", r.identifier, en(&r.names)));
            let types: Vec<Value> = r
                .evidence_types()
                .map(|(t, country)| {
                    if with_types {
                        lines.push(format!(
                            "  evidence type {} [{}]  {}",
                            t.classification,
                            country.unwrap_or("?"),
                            en(&t.titles)
                        ));
                    }
                    json!({"classification": t.classification, "country": country, "title": en(&t.titles)})
                })
                .collect();
            json!({
                "identifier": r.identifier,
                "name": en(&r.names),
                "procedures": r.reference_frameworks.iter().flat_map(|f| f.related_to.clone()).collect::<Vec<_>>(),
                "evidence_types": types,
            })
        })
        .collect();
    (value, lines)
}

/// A DSD answer as JSON (and as lines for a terminal). Each data service carries
/// `request`: the fields of `POST /api/v1/oots/requests` it determines (`provider_party`,
/// `provider`, `evidence_type`, `edm_version`), ready to merge into a portal's request.
pub fn data_services_out(items: &[DataServiceEvidenceType], country: &str) -> (Value, Vec<String>) {
    let mut lines = Vec::new();
    let value = items
        .iter()
        .map(|t| {
            lines.push(format!(
                "evidence type {} ({})  {}",
                t.identifier,
                t.classification,
                en(&t.titles)
            ));
            let services: Vec<Value> = t
                .data_services()
                .map(|d| {
                    lines.push(format!(
                        "  provider {} [{}] {} via access point {} [{}] speaking {}",
                        d.provider.value,
                        d.provider.scheme_id.as_deref().unwrap_or("-"),
                        d.provider_name.unwrap_or(""),
                        d.access_point.value,
                        d.access_point.scheme_id.as_deref().unwrap_or("-"),
                        d.edm_versions.join(", ")
                    ));
                    json!({
                        "provider": {"id": d.provider.value, "scheme": d.provider.scheme_id, "name": d.provider_name},
                        "access_point": {"id": d.access_point.value, "scheme": d.access_point.scheme_id},
                        "edm_versions": d.edm_versions,
                        "request": {
                            "provider_party": d.access_point.value,
                            "edm_version": d.edm_versions.first(),
                            "provider": {
                                "identifier": {
                                    "scheme": d.provider.scheme_id.clone().unwrap_or_default(),
                                    "value": d.provider.value,
                                },
                                "name": d.provider_name.unwrap_or_default(),
                                "country": country,
                            },
                            "evidence_type": {
                                "identifier": t.identifier,
                                "classification": t.classification,
                                "title": en(&t.titles),
                                "format": t.distributions.first().map(|d| d.format.clone()),
                            },
                        },
                    })
                })
                .collect();
            json!({
                "identifier": t.identifier,
                "classification": t.classification,
                "title": en(&t.titles),
                "formats": t.distributions.iter().map(|d| d.format.clone()).collect::<Vec<_>>(),
                "level_of_assurance": t.level_of_assurance,
                "data_services": services,
            })
        })
        .collect();
    (value, lines)
}

/// A common-services exception as JSON (with what a DSD:ERR:0005 answer asks for).
pub fn exception_out(e: &CsException) -> Value {
    json!({
        "code": e.code,
        "type": e.exception_type,
        "message": e.message,
        "detail": e.detail,
        "needs_user_input": e.needs_user_input(),
        "evidence_type_id": e.additional_input.as_ref().and_then(|i| i.evidence_type.as_ref()).map(|t| t.identifier.clone()),
        "jurisdiction_context_id": e.additional_input.as_ref().and_then(|i| i.jurisdiction.as_ref()).map(|j| j.context_id.clone()),
        "classifications": e.additional_input.as_ref().map(|i| i.classifications.iter().map(|c| c.identifier.clone()).collect::<Vec<_>>()).unwrap_or_default(),
    })
}
