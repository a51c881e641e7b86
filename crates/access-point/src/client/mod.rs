//! The outbound HTTP client: pushes AS4 messages to partners.
//!
//! One pooled hyper client per partner, because TLS settings are per partner (the CA its
//! server certificate must chain to, and the client certificate we present to it): a
//! connection set up for one partner is never reused for another. Within a partner,
//! connections are kept alive and reused (HTTP/1.1 keep-alive, or HTTP/2 when the partner
//! offers it).
//!
//! Request bodies stream from a [`Read`] (a file, a MIME writer), never from a whole `Vec`;
//! response bodies are read into memory up to a limit, since they are receipts and errors.

use crate::https::{error_chain, https_client, HttpsClient, HttpsOptions};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use rustls::pki_types::CertificateDer;

use crate::config::ClientConfig;
use crate::server::http::{full, reader_body, writer_body, Body, BodyWriter, ChannelBody};
use crate::server::tls::{self, TlsError};

/// Why an outbound exchange failed. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TLS settings were registered for this partner.
    #[error("no TLS settings for partner `{0}`: register them with OutboundClient::set_partner (from the partner's PMode)")]
    UnknownPartner(String),
    /// The partner's TLS settings are unusable.
    #[error("TLS settings for partner `{partner}`: {source}")]
    Tls {
        /// The partner.
        partner: String,
        /// What is wrong.
        source: TlsError,
    },
    /// The URL cannot be used.
    #[error("cannot send to `{url}`: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Connecting, the TLS handshake or the HTTP exchange failed.
    #[error("sending to {url} failed: {detail} (is the partner's access point up, and do its TLS settings match the PMode?)")]
    Exchange {
        /// The URL.
        url: String,
        /// The underlying error chain.
        detail: String,
    },
    /// The whole exchange took longer than `client.request_timeout_secs`.
    #[error("sending to {url} timed out after {after:?} (client.request_timeout_secs)")]
    Timeout {
        /// The URL.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The response body is larger than `client.max_response_bytes`.
    #[error("the response from {url} is larger than {limit} bytes (client.max_response_bytes); a receipt or error should be far smaller")]
    ResponseTooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
}

/// Timeouts and limits of the outbound client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Time to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Time for a whole exchange (send the body, read the response).
    pub request_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// Largest response body read.
    pub max_response_bytes: usize,
    /// Allow `http://` URLs (only for local tests with `--insecure-http`).
    pub allow_plain_http: bool,
}

impl From<&ClientConfig> for ClientSettings {
    fn from(c: &ClientConfig) -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(c.connect_timeout_secs),
            request_timeout: Duration::from_secs(c.request_timeout_secs),
            pool_idle_timeout: Duration::from_secs(c.pool_idle_timeout_secs),
            max_response_bytes: c.max_response_bytes,
            allow_plain_http: false,
        }
    }
}

/// Our client certificate chain (leaf first) and its private key (a file key, or a token
/// key whose handshake signatures the token makes).
#[derive(Debug)]
pub struct ClientIdentity {
    /// Certificate chain and key.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

/// TLS settings for one partner (from its PMode).
#[derive(Debug)]
pub struct PartnerTls {
    /// CA certificates the partner's server certificate must chain to.
    pub trusted_cas: Vec<CertificateDer<'static>>,
    /// The client certificate to present, when the partner requires mutual TLS.
    pub client_identity: Option<ClientIdentity>,
}

impl PartnerTls {
    /// Reads the trusted CA file and, optionally, our client certificate and key (PEM).
    pub fn from_pem_files(
        trusted_ca: &Path,
        client_cert_and_key: Option<(&Path, &Path)>,
    ) -> Result<PartnerTls, TlsError> {
        let trusted_cas = tls::load_certs(trusted_ca, "partner's trusted CA file")?;
        let client_identity = match client_cert_and_key {
            None => None,
            Some((cert, key)) => Some(ClientIdentity {
                certified: crate::server::tls_key::certified_key(
                    tls::load_certs(cert, "our client certificate file")?,
                    key,
                    "our client key file",
                )?,
            }),
        };
        Ok(PartnerTls {
            trusted_cas,
            client_identity,
        })
    }
}

/// A request body: streamed from a reader, or written as it goes by a [`BodyWriter`].
pub struct OutboundBody {
    source: BodySource,
    length: Option<u64>,
}

enum BodySource {
    Reader(Box<dyn Read + Send>),
    Written(ChannelBody),
    /// Sent as one frame, without a blocking task to read it.
    Memory(Bytes),
}

impl std::fmt::Debug for OutboundBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundBody")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl OutboundBody {
    /// Streams a file; its size is sent as `Content-Length`.
    pub fn from_file(file: File) -> std::io::Result<OutboundBody> {
        let length = file.metadata()?.len();
        Ok(OutboundBody::from_reader(file, Some(length)))
    }

    /// Streams any reader. Give `length` only when it is exact (else chunked encoding).
    pub fn from_reader(reader: impl Read + Send + 'static, length: Option<u64>) -> OutboundBody {
        OutboundBody {
            source: BodySource::Reader(Box::new(reader)),
            length,
        }
    }

    /// A body written while it is sent (chunked encoding): write it through the returned
    /// [`BodyWriter`] on a blocking thread and [`finish`](BodyWriter::finish) it. A writer
    /// dropped unfinished breaks the request off.
    pub fn written() -> (BodyWriter, OutboundBody) {
        let (writer, body) = writer_body();
        let body = OutboundBody {
            source: BodySource::Written(body),
            length: None,
        };
        (writer, body)
    }

    /// A body already in memory (a small message, a signal).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> OutboundBody {
        let bytes: Bytes = bytes.into();
        OutboundBody {
            length: Some(bytes.len() as u64),
            source: BodySource::Memory(bytes),
        }
    }
}

/// A partner's answer.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body (at most `max_response_bytes`).
    pub body: Bytes,
}

type HttpClient = HttpsClient<Body>;

/// The outbound client: per-partner TLS, pooled connections, timeouts.
pub struct OutboundClient {
    settings: ClientSettings,
    partners: RwLock<HashMap<String, HttpClient>>,
}

impl std::fmt::Debug for OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OutboundClient {
    /// A client without partners yet.
    pub fn new(settings: ClientSettings) -> OutboundClient {
        OutboundClient {
            settings,
            partners: RwLock::new(HashMap::new()),
        }
    }

    /// Registers (or replaces) a partner's TLS settings. Replacing drops the partner's
    /// pooled connections, so a PMode change takes effect on the next message.
    pub fn set_partner(&self, partner: &str, partner_tls: PartnerTls) -> Result<(), ClientError> {
        let identity = partner_tls
            .client_identity
            .map(|identity| identity.certified);
        let tls_config =
            tls::client_config_certified(&partner_tls.trusted_cas, identity).map_err(|source| {
                ClientError::Tls {
                    partner: partner.to_owned(),
                    source,
                }
            })?;
        let client = https_client(HttpsOptions {
            allow_plain_http: self.settings.allow_plain_http,
            connect_timeout: Some(self.settings.connect_timeout),
            pool_idle_timeout: self.settings.pool_idle_timeout,
            ..HttpsOptions::new(tls_config)
        });
        self.partners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partner.to_owned(), client);
        Ok(())
    }

    /// Forgets a partner (and its pooled connections).
    pub fn remove_partner(&self, partner: &str) {
        self.partners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(partner);
    }

    /// POSTs `body` to `url` with `content_type`, using `partner`'s TLS settings, and
    /// returns the response (any status: interpreting it is the caller's job).
    pub async fn post(
        &self,
        partner: &str,
        url: &str,
        content_type: &str,
        body: OutboundBody,
    ) -> Result<OutboundResponse, ClientError> {
        let client = self
            .partners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(partner)
            .cloned()
            .ok_or_else(|| ClientError::UnknownPartner(partner.to_owned()))?;
        let url_error = |problem: String| ClientError::Url {
            url: url.to_owned(),
            problem,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| url_error(format!("not a valid URL ({e})")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.settings.allow_plain_http => {}
            Some("http") => {
                return Err(url_error(
                    "plain http is refused; partners are reached over https only".into(),
                ))
            }
            _ => return Err(url_error("the URL must start with https://".into())),
        }
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|_| url_error(format!("invalid Content-Type `{content_type}`")))?;
        let mut request = Request::post(uri)
            .body(match body.source {
                BodySource::Reader(reader) => reader_body(reader, body.length).boxed(),
                BodySource::Written(written) => written.boxed(),
                BodySource::Memory(bytes) => full(bytes),
            })
            .map_err(|e| url_error(e.to_string()))?;
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        if let Some(length) = body.length {
            request
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        let limit = self.settings.max_response_bytes;
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| ClientError::Exchange {
                    url: url.to_owned(),
                    detail: error_chain(&e),
                })?;
            let (parts, mut incoming) = response.into_parts();
            let too_large = || ClientError::ResponseTooLarge {
                url: url.to_owned(),
                limit,
            };
            if let Some(announced) = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                if announced > limit as u64 {
                    return Err(too_large());
                }
            }
            let mut collected = BytesMut::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| ClientError::Exchange {
                    url: url.to_owned(),
                    detail: format!("reading the response: {}", error_chain(&e)),
                })?;
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > limit {
                        return Err(too_large());
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Ok(OutboundResponse {
                status: parts.status,
                headers: parts.headers,
                body: collected.freeze(),
            })
        };
        tokio::time::timeout(self.settings.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_owned(),
                after: self.settings.request_timeout,
            })?
    }
}
