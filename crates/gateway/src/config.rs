//! The configuration file (`varti.toml`).
//!
//! Every key has an embedded default, so `varti serve` runs without a file: HTTPS on
//! `127.0.0.1:8443` with `certs/varti-a/tls.cert.pem` + `certs/varti-a/tls.key.pem`, data in `./var`, PModes in
//! `./pmodes`, the embedded sled store in `./var/store`. `deploy/varti.example.toml`
//! documents every key; keep it in step with this module (a test parses it).
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error
//! names the key and says how to fix it.
//!
//! Relative paths in a file are taken relative to the directory of that file, so a unit file
//! can start Varti from any working directory; the embedded defaults (no file) are relative to
//! the working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used. The message names the file or key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source} (check the --config path and its permissions)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("configuration file {path} is invalid: {message}\n(every key is documented in deploy/varti.example.toml; unknown keys are refused so typos cannot go unnoticed)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key, line and column).
        message: String,
    },
    /// A value parsed but cannot work.
    #[error("configuration key `{key}` {problem}; {fix}")]
    Invalid {
        /// The dotted key, e.g. `tls.client_ca`.
        key: &'static str,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: &'static str,
    },
}

/// The whole configuration. Construct it with [`Config::load`] or [`Config::default`]
/// (the embedded defaults), then [`Config::validate`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where messages, payloads and state live. Default `./var`.
    pub data_dir: PathBuf,
    /// Directory of PMode files. Default `./pmodes`.
    pub pmodes_dir: PathBuf,
    /// The MSH listener (where partners POST AS4 messages).
    pub server: ServerConfig,
    /// TLS of the MSH listener.
    pub tls: TlsConfig,
    /// The operations listener (`/health`, `/ready`, `/metrics`).
    pub ops: OpsConfig,
    /// The message store.
    pub store: StoreConfig,
    /// How long evidence and metadata are kept.
    pub retention: RetentionConfig,
    /// Size and connection limits.
    pub limits: LimitsConfig,
    /// The outbound HTTP client (pushing messages to partners).
    pub client: ClientConfig,
    /// Logging.
    pub log: LogConfig,
    /// Who this access point is: its party and its signing and encryption keys.
    pub identity: IdentityConfig,
    /// The sender: how outbound messages are claimed and pushed.
    pub sender: SenderConfig,
    /// The backend API (procedure portals, evidence providers) and its webhooks.
    pub backend: BackendConfig,
    /// The preview space (OOTS: citizens see evidence before it is sent).
    pub preview: crate::preview::PreviewConfig,
    /// `[oots]`: the OOTS gateway (off unless a role is set).
    pub oots: crate::oots::OotsConfig,
}

/// This access point's own party and keys (the partners' certificates come from the PModes).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The party name (a `[[party]]` of the PModes) this access point acts as. Default
    /// `varti-a`.
    pub party: String,
    /// PEM private key that signs messages and receipts.
    pub signing_key: PathBuf,
    /// PEM certificate of the signing key (the one partners have in their PModes).
    pub signing_cert: PathBuf,
    /// PEM private key that decrypts messages sent to us.
    pub encryption_key: PathBuf,
    /// PEM certificate of the encryption key.
    pub encryption_cert: PathBuf,
    /// PEM CA certificates that partners' signing certificates must chain to. Empty: each
    /// partner's PMode certificate is pinned (trusted directly).
    pub trust_anchors: Vec<PathBuf>,
}

/// The outbound sender.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Milliseconds between looks for due messages when idle (new submissions wake the
    /// sender at once). Default 500.
    pub poll_interval_ms: u64,
    /// Seconds a claimed message stays leased to this instance; if the instance dies, the
    /// other instance takes the message over after this. Default 600 (longer than
    /// `client.request_timeout_secs`).
    pub lease_secs: u64,
    /// Messages sent concurrently. Default 16.
    pub concurrency: usize,
    /// A name for this instance in leases and logs. Default: the host name and process id.
    pub instance: Option<String>,
}

/// The backend API: HTTP/JSON for the systems behind the access point.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Listener of the backend API (plain HTTP; keep it on loopback or a protected
    /// network, or put TLS in front). Default 127.0.0.1:8480.
    pub listen: SocketAddr,
    /// The backends allowed to use the API.
    pub clients: Vec<BackendClient>,
}

/// One backend system.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendClient {
    /// Its name: the owner of the messages it submits and receives.
    pub name: String,
    /// SHA-256 (hex) of its API token (`varti` never stores the token itself). Create one
    /// with `openssl rand -hex 32` and hash it with `printf %s TOKEN | sha256sum`.
    pub token_sha256: String,
    /// Inbound messages for these services (all when empty) are delivered to this backend.
    #[serde(default)]
    pub services: Vec<String>,
    /// URL notified of received / sent / failed messages (HMAC-SHA256 signed).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Secret of the webhook HMAC (`X-Varti-Signature: sha256=<hex>`).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// An administrator: sees every backend's messages and may purge (`POST
    /// /api/v1/admin/purge`). Default false.
    #[serde(default)]
    pub admin: bool,
    /// OOTS: the procedure portal this client is. Its evidence requests name it as the
    /// evidence requester (agent `ER`) and `originalSender`, whatever the request body
    /// says; required for OOTS requests when `[oots] platform` is set.
    #[serde(default)]
    pub oots_party: Option<crate::oots::config::OotsParty>,
}

/// The MSH listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Default `127.0.0.1:8443`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Seconds a client may take to finish the TLS handshake. Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds a client may take to send a request's headers. Default 30.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay without any traffic before it is closed. Default 120.
    pub idle_timeout_secs: u64,
    /// Seconds that running requests get to finish on shutdown. Default 30.
    pub shutdown_grace_secs: u64,
    /// Seconds a client may pause while sending a request body; a longer pause ends the
    /// request (408) and, on HTTP/1.1, the connection. Default 30.
    pub body_read_timeout_secs: u64,
    /// Lowest average rate of a request body, in bytes per second, after a head start of
    /// `body_read_timeout_secs` (only the time spent waiting for the client counts). Bounds
    /// the whole body: the largest one (`limits.max_request_body_bytes`) must arrive within
    /// `body_read_timeout_secs + max_request_body_bytes / min_body_bytes_per_sec` of
    /// waiting. Default 65536 (64 KiB/s).
    pub min_body_bytes_per_sec: u64,
    /// Seconds a client may leave a response untaken (its TCP or HTTP/2 window closed)
    /// before the connection is closed. Default 60.
    pub write_timeout_secs: u64,
}

/// TLS of the MSH listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by its intermediates. Default
    /// `certs/varti-a/tls.cert.pem`.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1). Default
    /// `certs/varti-a/tls.key.pem`.
    pub key: PathBuf,
    /// Whether clients must present a certificate. Default `optional`.
    pub client_auth: ClientAuth,
    /// PEM file of the CA certificates that client certificates must chain to. Required
    /// unless `client_auth = "off"`. Default `certs/ca.cert.pem`.
    pub client_ca: PathBuf,
}

/// Client (mutual) TLS authentication on the MSH listener.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates are asked for.
    Off,
    /// A client certificate is asked for and verified if sent; clients without one connect.
    Optional,
    /// The handshake fails without a client certificate that chains to `tls.client_ca`.
    Required,
}

/// The operations listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of the plain-HTTP listener for `/health`, `/ready` and `/metrics`. Default
    /// `127.0.0.1:9464` (loopback: metrics are not for partners). `/health` is also answered
    /// on the MSH listener for load balancers.
    pub listen: SocketAddr,
}

/// The message store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Which store. Only `sled` (embedded) exists today.
    pub kind: StoreKind,
    /// Directory of the embedded store. Default `<data_dir>/store`.
    pub path: Option<PathBuf>,
    /// PostgreSQL connection string (`kind = "postgres"`), e.g.
    /// `postgresql://varti@db1,db2/varti?target_session_attrs=read-write`.
    pub url: Option<String>,
}

/// The store implementation.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded sled database with payload files beside it.
    Sled,
    /// PostgreSQL, shared by an active-active pair (`url` required).
    Postgres,
}

/// How long things are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days after delivery (inbound) or acknowledgement (outbound) until payloads are purged.
    /// Default 7. 0 purges at the next purge run.
    pub payload_days: u32,
    /// Days until message metadata and receipts are purged. Default 365. Must be at least
    /// `payload_days`.
    pub metadata_days: u32,
}

/// Size and connection limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted on `/msh`, in bytes. Default 2 GiB.
    pub max_request_body_bytes: u64,
    /// Most simultaneous connections on the MSH listener; more wait in the accept queue.
    /// Default 1024.
    pub max_connections: usize,
    /// Most simultaneous connections on the MSH listener from one IP address; more are
    /// closed on accept, so one source cannot take every slot. Default 128 (1/8 of the
    /// default `max_connections`). At most `max_connections`.
    pub max_connections_per_ip: usize,
    /// With `tls.client_auth = "optional"`: most simultaneous MSH connections whose client
    /// sent no certificate. More are closed right after the TLS handshake: clients without
    /// a certificate (load balancers' health checks, or attackers when every partner uses
    /// mutual TLS) have the lowest priority and cannot take partners' slots. Default 64. At
    /// most `max_connections`; 0 closes every connection without a certificate.
    pub max_anonymous_connections: usize,
    /// HTTP/2: most concurrent requests (streams) on one connection. Default 64.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: largest header list of a request, in bytes (bounds CONTINUATION frames too).
    /// Default 65536.
    pub http2_max_header_list_bytes: u32,
}

/// The outbound HTTP client.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Seconds to establish a TCP connection. Default 10.
    pub connect_timeout_secs: u64,
    /// Seconds for one whole exchange (send the body, receive the response). Default 300.
    pub request_timeout_secs: u64,
    /// Seconds an idle pooled connection is kept for reuse. Default 90.
    pub pool_idle_timeout_secs: u64,
    /// Largest response body read, in bytes (responses are receipts and errors). Default
    /// 16 MiB.
    pub max_response_bytes: usize,
}

/// Logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human) or `json` (one object per line). Default `text`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,varti_gateway=debug`. Default `info`.
    /// The `RUST_LOG` environment variable overrides it.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./var"),
            pmodes_dir: PathBuf::from("./pmodes"),
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            ops: OpsConfig::default(),
            store: StoreConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            client: ClientConfig::default(),
            log: LogConfig::default(),
            identity: IdentityConfig::default(),
            sender: SenderConfig::default(),
            backend: BackendConfig::default(),
            preview: crate::preview::PreviewConfig::default(),
            oots: crate::oots::OotsConfig::default(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            party: "varti-a".to_owned(),
            signing_key: PathBuf::from("certs/varti-a/sign.key.pem"),
            signing_cert: PathBuf::from("certs/varti-a/sign.cert.pem"),
            encryption_key: PathBuf::from("certs/varti-a/enc.key.pem"),
            encryption_cert: PathBuf::from("certs/varti-a/enc.cert.pem"),
            trust_anchors: vec![PathBuf::from("certs/ca.cert.pem")],
        }
    }
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            poll_interval_ms: 500,
            lease_secs: 600,
            concurrency: 16,
            instance: None,
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            clients: Vec::new(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 30,
            idle_timeout_secs: 120,
            shutdown_grace_secs: 30,
            body_read_timeout_secs: 30,
            min_body_bytes_per_sec: 64 * 1024,
            write_timeout_secs: 60,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::from("certs/varti-a/tls.cert.pem"),
            key: PathBuf::from("certs/varti-a/tls.key.pem"),
            client_auth: ClientAuth::Optional,
            client_ca: PathBuf::from("certs/ca.cert.pem"),
        }
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sled,
            path: None,
            url: None,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            payload_days: 7,
            metadata_days: 365,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_body_bytes: 2 * 1024 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_ip: 128,
            max_anonymous_connections: 64,
            http2_max_concurrent_streams: 64,
            http2_max_header_list_bytes: 64 * 1024,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout_secs: 10,
            request_timeout_secs: 300,
            pool_idle_timeout_secs: 90,
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`; relative paths inside it are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_relative_to(base);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without resolving paths or validating. The error is the parser's
    /// message (with key, line and column).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Makes every relative path absolute-ish by prefixing `base`.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        self.oots.resolve_relative_to(base);
        fix(&mut self.pmodes_dir);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        if let Some(p) = self.store.path.as_mut() {
            fix(p);
        }
        fix(&mut self.identity.signing_key);
        fix(&mut self.identity.signing_cert);
        fix(&mut self.identity.encryption_key);
        fix(&mut self.identity.encryption_cert);
        self.identity.trust_anchors.iter_mut().for_each(fix);
        if let Some(p) = self.preview.oidc.client_secret_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.preview.oidc.ca_file.as_mut() {
            fix(p);
        }
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.oots.validate()?;
        if let Some(c) = self.oots.connectors.iter().find(|c| c.preview) {
            // The PreviewLocation a provider answers with must be an https URL (EDM rules
            // R-EDM-ERR-C019, R-EDM-REQ-C005): a preview space elsewhere cannot be used.
            if !self.preview.enabled || !self.preview.public_url.starts_with("https://") {
                return Err(ConfigError::Invalid {
                    key: "oots.connectors.preview",
                    problem: format!(
                        "evidence type `{}` needs preview, but the preview space is {}",
                        c.evidence_type,
                        if self.preview.enabled {
                            "not at an https:// public_url"
                        } else {
                            "not enabled"
                        }
                    ),
                    fix: "set [preview] enabled = true with public_url = \"https://…\" (OOTS preview links must be https)",
                });
            }
        }
        let positive = [
            (
                "server.handshake_timeout_secs",
                self.server.handshake_timeout_secs,
            ),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            (
                "server.body_read_timeout_secs",
                self.server.body_read_timeout_secs,
            ),
            (
                "server.min_body_bytes_per_sec",
                self.server.min_body_bytes_per_sec,
            ),
            ("server.write_timeout_secs", self.server.write_timeout_secs),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip as u64,
            ),
            (
                "limits.http2_max_concurrent_streams",
                u64::from(self.limits.http2_max_concurrent_streams),
            ),
            (
                "limits.http2_max_header_list_bytes",
                u64::from(self.limits.http2_max_header_list_bytes),
            ),
            (
                "client.connect_timeout_secs",
                self.client.connect_timeout_secs,
            ),
            (
                "client.request_timeout_secs",
                self.client.request_timeout_secs,
            ),
            (
                "limits.max_request_body_bytes",
                self.limits.max_request_body_bytes,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            ("sender.poll_interval_ms", self.sender.poll_interval_ms),
            ("sender.lease_secs", self.sender.lease_secs),
            ("sender.concurrency", self.sender.concurrency as u64),
            (
                "client.max_response_bytes",
                self.client.max_response_bytes as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    problem: "is 0".into(),
                    fix: "use a positive value (or remove the key to get the default)",
                });
            }
        }
        for (key, value) in [
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            (
                "limits.max_anonymous_connections",
                self.limits.max_anonymous_connections,
            ),
        ] {
            if value > self.limits.max_connections {
                return Err(ConfigError::Invalid {
                    key,
                    problem: format!(
                        "({value}) is larger than limits.max_connections ({})",
                        self.limits.max_connections
                    ),
                    fix: "it is a share of limits.max_connections: lower it (default 1/8 of max_connections for one IP address, 1/16 without a client certificate)",
                });
            }
        }
        if self.limits.http2_max_header_list_bytes < 4096 {
            return Err(ConfigError::Invalid {
                key: "limits.http2_max_header_list_bytes",
                problem: format!(
                    "({}) is below 4096",
                    self.limits.http2_max_header_list_bytes
                ),
                fix: "allow at least 4096 bytes of headers (default 65536): AS4 requests carry a long Content-Type",
            });
        }
        if self.retention.metadata_days < self.retention.payload_days {
            return Err(ConfigError::Invalid {
                key: "retention.metadata_days",
                problem: format!(
                    "({}) is shorter than retention.payload_days ({})",
                    self.retention.metadata_days, self.retention.payload_days
                ),
                fix: "metadata (with receipts) must outlive the payloads it describes: raise it",
            });
        }
        if self.server.listen == self.ops.listen && self.server.listen.port() != 0 {
            return Err(ConfigError::Invalid {
                key: "ops.listen",
                problem: format!("is the same address as server.listen ({})", self.ops.listen),
                fix: "give the operations listener its own port (default 127.0.0.1:9464)",
            });
        }
        if self.store.kind == StoreKind::Postgres && self.store.url.is_none() {
            return Err(ConfigError::Invalid {
                key: "store.url",
                problem: "is missing while store.kind is \"postgres\"".into(),
                fix: "give the connection string, e.g. url = \"postgresql://varti@db1,db2/varti?target_session_attrs=read-write\"",
            });
        }
        if self.sender.lease_secs <= self.client.request_timeout_secs {
            return Err(ConfigError::Invalid {
                key: "sender.lease_secs",
                problem: format!(
                    "({}) is not longer than client.request_timeout_secs ({})",
                    self.sender.lease_secs, self.client.request_timeout_secs
                ),
                fix: "a lease must outlast one exchange, or the other instance could send the same message meanwhile: raise it",
            });
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.backend.clients {
            if !names.insert(c.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "backend.clients",
                    problem: format!("names `{}` twice", c.name),
                    fix: "give every backend its own name",
                });
            }
            if c.token_sha256.len() != 64 || !c.token_sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(ConfigError::Invalid {
                    key: "backend.clients.token_sha256",
                    problem: format!("of `{}` is not 64 hex digits", c.name),
                    fix: "put the SHA-256 of the token, from `printf %s TOKEN | sha256sum`",
                });
            }
            if let Some(p) = &c.oots_party {
                p.validate("backend.clients.oots_party")?;
            }
            if c.webhook_url.is_some() != c.webhook_secret.is_some() {
                return Err(ConfigError::Invalid {
                    key: "backend.clients.webhook_secret",
                    problem: format!("and webhook_url of `{}` must be given together", c.name),
                    fix: "set both (the secret signs every notification) or neither",
                });
            }
        }
        if self.backend.listen == self.server.listen && self.backend.listen.port() != 0 {
            return Err(ConfigError::Invalid {
                key: "backend.listen",
                problem: format!(
                    "is the same address as server.listen ({})",
                    self.backend.listen
                ),
                fix: "give the backend API its own port (default 127.0.0.1:8480)",
            });
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            ConfigError::Invalid {
                key: "log.level",
                problem: format!("`{}` is not a valid filter ({e})", self.log.level),
                fix: "use a level such as `info` or directives such as `info,varti_gateway=debug`",
            }
        })?;
        Ok(())
    }

    /// The embedded store's directory: `store.path`, or `<data_dir>/store`.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("store"))
    }
}

/// Seconds to a [`Duration`] (config values are whole seconds).
pub fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let d = Config::default();
        assert_eq!(d.server.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(d.tls.client_auth, ClientAuth::Optional);
        assert_eq!(d.store_path(), PathBuf::from("./var/store"));
        d.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[tls]\nclient_authh = \"required\"\n").unwrap_err();
        assert!(err.contains("client_authh"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let err = Config::parse("[tls]\nclient_auth = \"maybe\"\n").unwrap_err();
        assert!(
            err.contains("client_auth") || err.contains("maybe"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config::default();
        c.retention.metadata_days = 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("retention.metadata_days"), "{err}");
        let mut c = Config::default();
        c.server.idle_timeout_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.idle_timeout_secs"), "{err}");
        let mut c = Config::default();
        c.log.level = "info,=[".into();
        assert!(c.validate().unwrap_err().to_string().contains("log.level"));
    }

    /// Issue 13's acceptance on the embedded defaults: a stalled body is closed within
    /// 60 s and an HTTP/2 connection that sends only the preface within 30 s. The
    /// mechanisms are proven with short bounds by tests/serve_slowloris.rs; this pins the
    /// defaults they run on.
    #[test]
    fn embedded_defaults_bound_every_connection_phase() {
        let d = Config::default();
        assert!(d.server.body_read_timeout_secs <= 60);
        assert!(d.server.header_read_timeout_secs <= 30);
        assert!(d.server.handshake_timeout_secs <= 30);
        assert!(d.server.write_timeout_secs <= 120);
        // A client cannot take every slot from one address or without a certificate.
        assert!(d.limits.max_connections_per_ip * 4 <= d.limits.max_connections);
        assert!(d.limits.max_anonymous_connections * 8 <= d.limits.max_connections);
        // The largest body at the lowest rate still has a deadline (under a day).
        let body_deadline = d.server.body_read_timeout_secs
            + d.limits.max_request_body_bytes / d.server.min_body_bytes_per_sec;
        assert!(body_deadline < 24 * 3600, "{body_deadline} s");
    }

    #[test]
    fn connection_shares_cannot_exceed_the_connection_limit() {
        let mut c = Config::default();
        c.limits.max_connections_per_ip = c.limits.max_connections + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_connections_per_ip"), "{err}");
        let mut c = Config::default();
        c.limits.max_anonymous_connections = c.limits.max_connections + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.max_anonymous_connections"), "{err}");
        let mut c = Config::default();
        c.server.body_read_timeout_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.body_read_timeout_secs"), "{err}");
    }

    #[test]
    fn a_preview_connector_needs_the_preview_space_at_an_https_url() {
        let base = "[oots]\nrole = \"provider\"\n[[oots.connectors]]\nevidence_type = \"EV\"\nurl = \"http://127.0.0.1:1/x\"\npreview = true\n";
        let err = Config::parse(base)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("oots.connectors.preview") && err.contains("not enabled"),
            "{err}"
        );
        let plain =
            format!("{base}[preview]\nenabled = true\npublic_url = \"http://127.0.0.1:8490\"\n");
        let err = Config::parse(&plain)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("https"), "{err}");
        let https = plain.replace("http://127.0.0.1:8490", "https://preview.example.lv");
        Config::parse(&https).unwrap().validate().unwrap();
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let mut c = Config::parse("data_dir = \"data\"\n[tls]\ncert = \"/abs/c.pem\"\n").unwrap();
        c.resolve_relative_to(Path::new("/etc/varti"));
        assert_eq!(c.data_dir, PathBuf::from("/etc/varti/data"));
        assert_eq!(c.tls.cert, PathBuf::from("/abs/c.pem"));
        assert_eq!(c.store_path(), PathBuf::from("/etc/varti/data/store"));
    }

    #[test]
    fn pair_example_configs_parse_and_differ_only_in_the_instance() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pair");
        let read = |f: &str| {
            let text = std::fs::read_to_string(dir.join(f)).expect("deploy/pair config exists");
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{f}: {e}"));
            c
        };
        let (mut one, two) = (read("varti-dc1.toml"), read("varti-dc2.toml"));
        assert_eq!(one.store.kind, StoreKind::Postgres);
        assert!(one
            .store
            .url
            .as_deref()
            .unwrap()
            .contains("target_session_attrs=read-write"));
        assert_ne!(one.sender.instance, two.sender.instance);
        one.sender.instance = two.sender.instance.clone();
        assert_eq!(one, two);
    }

    #[test]
    fn example_config_documents_every_section_and_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/varti.example.toml");
        let text = std::fs::read_to_string(&path).expect("deploy/varti.example.toml exists");
        let parsed = Config::parse(&text).unwrap();
        parsed.validate().unwrap();
        // The example shows the defaults, so a reader can trust it as the reference.
        assert_eq!(parsed, Config::default());
    }
}
