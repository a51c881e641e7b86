//! Data service connectors: the HTTP call from the provider side to a national register.
//!
//! # The protocol a register implements
//!
//! Varti POSTs `Content-Type: application/json` to the connector's `url`:
//!
//! ```json
//! {"request_id": "urn:uuid:…", "edm_version": "oots-edm:v2.0",
//!  "evidence_type": {"identifier": "…", "classification": "https://sr…", "formats": ["application/pdf"]},
//!  "procedure": "T1", "requirements": ["https://sr…"],
//!  "natural_person": {"identifier": "DK/LV/…", "family_name": "…", "given_name": "…",
//!                     "date_of_birth": "1990-01-01", "level_of_assurance": "High"},
//!  "legal_person": null,
//!  "requester": {"scheme": "urn:cef.eu:names:identifier:EAS:0096", "identifier": "…", "name": "…", "country": "DK"},
//!  "preview_possible": false}
//! ```
//!
//! and reads the answer:
//!
//! * **200** `multipart/form-data`: every part is one evidence file (its `Content-Type`
//!   is the evidence's media type), except an optional first part named `metadata` holding
//!   JSON `{"evidences": [{"part": "<part name>", "title": "…", "issuing_date": "YYYY-MM-DD",
//!   "stylesheet": "<part name>"}]}`. `stylesheet` names a part holding an XSLT 1.0
//!   stylesheet (at most 1 MiB) that turns that XML evidence into HTML for the preview space;
//!   that part is not an evidence itself. Without one, the connector's configured
//!   `stylesheet` applies.
//!   Files are streamed to the payload store, never held whole in memory; their total is
//!   capped by `oots.max_evidence_bytes`. An answer with no file means no evidence.
//! * **404**: no evidence, or no unique match for the person → EDM:ERR:0004.
//! * **400 / 422**: the register refuses the request as invalid → EDM:ERR:0003.
//! * Each attempt is bounded by the connector's `timeout_secs`; a timeout, a connection
//!   failure or an HTTP 5xx is retried `retries` times after `retry_delay_ms`. When every
//!   attempt timed out the answer is EDM:ERR:0005; otherwise EDM:ERR:0008.
//!
//! Any error body's text (up to 512 bytes) is kept as the EDM error's `detail`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use varti_access_point::https::{error_chain, https_client, HttpsClient, HttpsOptions};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use varti_store::PayloadRef;

use crate::config::ConnectorConfig;
use crate::gateway::Gateway;

type HttpClient = HttpsClient<Full<Bytes>>;

/// The request JSON sent to a register (see the module documentation).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectorRequest {
    /// The EDM request id.
    pub request_id: String,
    /// The EDM version of the request.
    pub edm_version: Option<String>,
    /// The evidence type asked for.
    pub evidence_type: serde_json::Value,
    /// The procedure code.
    pub procedure: Option<String>,
    /// The requirement identifiers.
    pub requirements: Vec<String>,
    /// The natural person, if the evidence is about one.
    pub natural_person: Option<serde_json::Value>,
    /// The legal person, if the evidence is about one.
    pub legal_person: Option<serde_json::Value>,
    /// The authority asking.
    pub requester: Option<serde_json::Value>,
    /// Whether the user may preview.
    pub preview_possible: bool,
}

/// One evidence file fetched from a register, already in the payload store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct FetchedEvidence {
    /// Where it is stored.
    pub stored: PayloadRef,
    /// Its media type.
    pub mime_type: String,
    /// Its title, if the register gave one.
    pub title: Option<String>,
    /// Its issuing date, if the register gave one.
    pub issuing_date: Option<String>,
    /// The XSLT 1.0 stylesheet the register sent to show this (XML) evidence, if any.
    pub stylesheet: Option<Vec<u8>>,
}

/// What a register answered, after retries.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The evidence files (none: no evidence).
    Evidence(Vec<FetchedEvidence>),
    /// No evidence or no unique match (HTTP 404).
    NotFound(String),
    /// The register refused the request as invalid (HTTP 400 / 422).
    Invalid(String),
    /// Every attempt timed out.
    TimedOut(String),
    /// The register could not be reached or failed (after the retries).
    Unavailable(String),
}

#[derive(Debug, Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    evidences: Vec<MetadataItem>,
}

#[derive(Debug, Deserialize)]
struct MetadataItem {
    part: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    issuing_date: Option<String>,
    #[serde(default)]
    stylesheet: Option<String>,
}

/// Largest stylesheet a register may send with its evidence.
const MAX_STYLESHEET: usize = 1024 * 1024;

enum Attempt {
    Done(Outcome),
    Retry { timed_out: bool, why: String },
}

/// The pooled HTTP(S) client for registers (and OOTS webhooks).
pub(crate) fn http() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // https registers are verified against the operating system's CA certificates
        // (as webhooks are); none found leaves https connectors failing with that reason.
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(found.certs);
        let config = rustls::ClientConfig::builder_with_provider(
            varti_access_point::server::tls::provider(),
        )
        .with_protocol_versions(varti_access_point::server::tls::VERSIONS)
        .expect("the TLS versions suit the provider")
        .with_root_certificates(roots)
        .with_no_client_auth();
        https_client(HttpsOptions {
            allow_plain_http: true,
            pool_idle_timeout: Duration::from_secs(30),
            http2: false,
            ..HttpsOptions::new(config)
        })
    })
}

/// Calls the register behind `connector` with `request`, with its timeout and retries.
pub(crate) async fn call(
    gw: &Arc<Gateway>,
    connector: &ConnectorConfig,
    request: &ConnectorRequest,
) -> Outcome {
    let body = Bytes::from(serde_json::to_vec(request).expect("JSON values serialise"));
    let attempts = connector.retries.saturating_add(1);
    let mut all_timed_out = true;
    let mut last = String::new();
    for attempt in 1..=attempts {
        let limit = Duration::from_secs(connector.timeout_secs);
        let result = tokio::time::timeout(limit, once(gw, connector, body.clone())).await;
        let (timed_out, why) = match result {
            Ok(Attempt::Done(outcome)) => return outcome,
            Ok(Attempt::Retry { timed_out, why }) => (timed_out, why),
            Err(_) => (
                true,
                format!(
                    "the register did not answer within {}s",
                    connector.timeout_secs
                ),
            ),
        };
        tracing::warn!(url = %connector.url, attempt, of = attempts, reason = %why, "data service connector call failed");
        all_timed_out &= timed_out;
        last = why;
        if attempt < attempts {
            tokio::time::sleep(Duration::from_millis(connector.retry_delay_ms)).await;
        }
    }
    let summary = format!(
        "the register at {} failed {attempts} attempt(s); last: {last}",
        connector.url
    );
    if all_timed_out {
        Outcome::TimedOut(summary)
    } else {
        Outcome::Unavailable(summary)
    }
}

async fn once(gw: &Arc<Gateway>, connector: &ConnectorConfig, body: Bytes) -> Attempt {
    let retry = |why: String| Attempt::Retry {
        timed_out: false,
        why,
    };
    let request = match Request::post(&connector.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "multipart/form-data")
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Done(Outcome::Unavailable(format!(
                "the connector URL `{}` cannot be used: {e}",
                connector.url
            )))
        }
    };
    let response = match http().request(request).await {
        Ok(r) => r,
        Err(e) => {
            return retry(format!(
                "cannot reach {}: {}",
                connector.url,
                error_chain(&e)
            ))
        }
    };
    let status = response.status();
    if status == StatusCode::OK {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        return match receive_files(gw, &content_type, response.into_body()).await {
            Ok(files) => Attempt::Done(Outcome::Evidence(files)),
            Err(why) => retry(why),
        };
    }
    let detail = error_text(response.into_body()).await;
    let detail = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    match status {
        StatusCode::NOT_FOUND => Attempt::Done(Outcome::NotFound(detail)),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            Attempt::Done(Outcome::Invalid(detail))
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => retry(detail),
        _ => Attempt::Done(Outcome::Unavailable(format!(
            "the register answered an unexpected {detail}"
        ))),
    }
}

/// The first 512 bytes of an error body, as text.
async fn error_text(body: hyper::body::Incoming) -> String {
    let limited = http_body_util::Limited::new(body, 64 * 1024);
    match limited.collect().await {
        Ok(c) => {
            let b = c.to_bytes();
            let text = String::from_utf8_lossy(&b[..b.len().min(512)]);
            text.trim().to_owned()
        }
        Err(_) => String::new(),
    }
}

/// Streams the multipart answer's files into the payload store.
async fn receive_files(
    gw: &Arc<Gateway>,
    content_type: &str,
    body: hyper::body::Incoming,
) -> Result<Vec<FetchedEvidence>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        format!("the register answered 200 with Content-Type `{content_type}`; it must be multipart/form-data (see the connector protocol)")
    })?;
    let max = gw.config.max_evidence_bytes;
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(max));
    let mut form =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut metadata = Metadata::default();
    let mut files: Vec<(String, FetchedEvidence)> = Vec::new();
    let mut stylesheets: Vec<(String, Vec<u8>)> = Vec::new();
    let result: Result<(), String> = async {
        while let Some(mut field) = form.next_field().await.map_err(|e| e.to_string())? {
            let name = field.name().unwrap_or_default().to_owned();
            if name == "metadata" && files.is_empty() {
                let bytes = field.bytes().await.map_err(|e| e.to_string())?;
                metadata = serde_json::from_slice(&bytes).map_err(|e| {
                    format!("the register's metadata part is not the expected JSON: {e}")
                })?;
                continue;
            }
            if metadata
                .evidences
                .iter()
                .any(|m| m.stylesheet.as_deref() == Some(name.as_str()))
            {
                let mut xsl = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| e.to_string())? {
                    if xsl.len() + chunk.len() > MAX_STYLESHEET {
                        return Err(format!(
                            "the stylesheet part `{name}` is larger than {MAX_STYLESHEET} bytes"
                        ));
                    }
                    xsl.extend_from_slice(&chunk);
                }
                stylesheets.push((name, xsl));
                continue;
            }
            let mime_type = field
                .content_type()
                .map(|m| m.essence_str().to_owned())
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            let spool = gw.ap.spool_dir();
            tokio::fs::create_dir_all(&spool)
                .await
                .map_err(|e| format!("cannot create {}: {e}", spool.display()))?;
            let tmp = spool.join(format!("oots-evidence-{}", uuid::Uuid::new_v4()));
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            let copied: Result<(), String> = async {
                while let Some(chunk) = field.chunk().await.map_err(|e| e.to_string())? {
                    file.write_all(&chunk).await.map_err(|e| e.to_string())?;
                }
                file.flush().await.map_err(|e| e.to_string())
            }
            .await;
            drop(file);
            let stored = match copied {
                Ok(()) => {
                    let gw = gw.clone();
                    let path = tmp.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut f = std::fs::File::open(&path)?;
                        gw.ap
                            .store
                            .payloads()
                            .put(&mut f)
                            .map_err(|e| std::io::Error::other(e.to_string()))
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("cannot store the evidence: {e}")))
                }
                Err(e) => Err(e),
            };
            let _ = tokio::fs::remove_file(&tmp).await;
            let stored = stored?;
            files.push((
                name,
                FetchedEvidence {
                    stored,
                    mime_type,
                    title: None,
                    issuing_date: None,
                    stylesheet: None,
                },
            ));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        discard(gw, files.into_iter().map(|(_, f)| f.stored).collect()).await;
        return Err(format!("the register's answer could not be read: {e}"));
    }
    Ok(files
        .into_iter()
        .map(|(name, mut f)| {
            if let Some(m) = metadata.evidences.iter().find(|m| m.part == name) {
                f.title = m.title.clone();
                f.issuing_date = m.issuing_date.clone();
                f.stylesheet = m.stylesheet.as_ref().and_then(|s| {
                    stylesheets
                        .iter()
                        .find(|(name, _)| name == s)
                        .map(|(_, xsl)| xsl.clone())
                });
            }
            f
        })
        .collect())
}

/// Removes stored payloads nothing will reference.
pub(crate) async fn discard(gw: &Arc<Gateway>, payloads: Vec<PayloadRef>) {
    if payloads.is_empty() {
        return;
    }
    let gw = gw.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for p in &payloads {
            let _ = gw.ap.store.payloads().remove(p);
        }
    })
    .await;
}
