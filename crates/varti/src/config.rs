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
pub use varti_access_point::config::{
    ApiClient, ClientAuth, ClientConfig, IdentityConfig, LimitsConfig, Pkcs11Config,
    RetentionConfig, SenderConfig, ServerConfig, Settings, TlsConfig,
};
use varti_oots_gateway::config::{InvalidSetting, OotsConfig, OotsParty};
use varti_oots_gateway::preview::PreviewConfig;

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
    #[error("configuration file {path} is invalid: {source}\n(every key is documented in deploy/varti.example.toml; unknown keys are refused so typos cannot go unnoticed)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names the key, line and column).
        source: toml::de::Error,
    },
    /// A value of the OOTS gateway's sections parsed but cannot work.
    #[error(transparent)]
    Oots(#[from] InvalidSetting),
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
    pub preview: PreviewConfig,
    /// `[oots]`: the OOTS gateway (off unless a role is set).
    pub oots: OotsConfig,
    /// `[console]`: the operations console (`/console/`).
    pub console: varti_access_point::console::ConsoleConfig,
    /// `[webhooks]`: the webhook outbox's lease (issue 18).
    pub webhooks: WebhooksConfig,
    /// `[pkcs11]`: the HSM module of private keys named by `pkcs11:` URIs.
    pub pkcs11: Pkcs11Config,
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

/// `[webhooks]`: how webhook events (kept in the store's outbox) are shared between the
/// instances of a pair.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Seconds a webhook event being delivered stays leased to this instance (the lease
    /// covers each retry's wait): if the instance dies, another instance sharing the store
    /// delivers the event after this, with the same event id. Default 60.
    pub lease_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig { lease_secs: 60 }
    }
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
    pub oots_party: Option<OotsParty>,
}

impl BackendClient {
    /// The access point's view of this client (all but the OOTS party).
    pub fn api_client(&self) -> ApiClient {
        ApiClient {
            name: self.name.clone(),
            token_sha256: self.token_sha256.clone(),
            services: self.services.clone(),
            webhook_url: self.webhook_url.clone(),
            webhook_secret: self.webhook_secret.clone(),
            admin: self.admin,
        }
    }
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
    /// Embedded store only: a directory where `varti serve` writes a backup of the running
    /// store (`varti-<UTC time>.vbak`, the `varti db backup` format) every
    /// `backup_every_secs`. Unset: no scheduled backups.
    pub backup_dir: Option<PathBuf>,
    /// Seconds between scheduled backups (default 86400: daily). The first is taken one
    /// interval after start.
    pub backup_every_secs: u64,
    /// How many scheduled backups to keep in `backup_dir` (oldest removed; default 7).
    pub backup_keep: usize,
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

/// Logging.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human) or `json` (one object per line). Default `text`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,varti_access_point=debug`. Default `info`.
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
            preview: PreviewConfig::default(),
            oots: OotsConfig::default(),
            console: Default::default(),
            webhooks: WebhooksConfig::default(),
            pkcs11: Pkcs11Config::default(),
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
            backup_dir: None,
            backup_every_secs: 86_400,
            backup_keep: 7,
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
        let mut config = Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_relative_to(base);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without resolving paths or validating. The error names the key,
    /// line and column.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Makes every relative path absolute-ish by prefixing `base`.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // A private-key setting may be a pkcs11: URI rather than a path.
        let fix_key = |p: &mut PathBuf| {
            if !p.to_string_lossy().starts_with("pkcs11:") {
                fix(p)
            }
        };
        if let Some(m) = self.pkcs11.module.as_mut() {
            fix(m);
        }
        fix(&mut self.data_dir);
        self.oots.resolve_relative_to(base);
        fix(&mut self.pmodes_dir);
        fix(&mut self.tls.cert);
        fix_key(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        if let Some(p) = self.store.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.store.backup_dir.as_mut() {
            fix(p);
        }
        fix_key(&mut self.identity.signing_key);
        if let Some(p) = self.identity.next_signing_key.as_mut() {
            fix_key(p);
        }
        if let Some(p) = self.identity.next_signing_cert.as_mut() {
            fix(p);
        }
        fix(&mut self.identity.signing_cert);
        fix_key(&mut self.identity.encryption_key);
        fix(&mut self.identity.encryption_cert);
        self.identity.trust_anchors.iter_mut().for_each(fix);
        if let Some(p) = self.preview.oidc.client_secret_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.preview.oidc.ca_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.preview.evidence_key_file.as_mut() {
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
            ("webhooks.lease_secs", self.webhooks.lease_secs),
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
        if self.store.backup_dir.is_some() {
            if self.store.kind != StoreKind::Sled {
                return Err(ConfigError::Invalid {
                    key: "store.backup_dir",
                    problem: "is set for the PostgreSQL store".into(),
                    fix: "back PostgreSQL up with pg_basebackup and WAL archiving (deploy/pair/README.md); remove backup_dir",
                });
            }
            if self.store.backup_every_secs == 0 || self.store.backup_keep == 0 {
                return Err(ConfigError::Invalid {
                    key: "store.backup_every_secs",
                    problem: "or store.backup_keep is 0".into(),
                    fix: "give the seconds between backups (e.g. 86400) and how many to keep (e.g. 7)",
                });
            }
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
                fix: "use a level such as `info` or directives such as `info,varti_access_point=debug`",
            }
        })?;
        Ok(())
    }

    /// What the access point is opened with: its sections of this file, the directories
    /// and the backend clients.
    pub fn access_point_settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            pmodes_dir: self.pmodes_dir.clone(),
            identity: self.identity.clone(),
            tls: self.tls.clone(),
            client: self.client.clone(),
            sender: self.sender.clone(),
            limits: self.limits.clone(),
            retention: self.retention.clone(),
            trusted_proxies: self.server.trusted_proxies.clone(),
            pkcs11: self.pkcs11.clone(),
            clients: self
                .backend
                .clients
                .iter()
                .map(BackendClient::api_client)
                .collect(),
        }
    }

    /// The procedure portal each backend client is (`oots_party`), by client name.
    pub fn oots_portals(&self) -> std::collections::HashMap<String, OotsParty> {
        self.backend
            .clients
            .iter()
            .filter_map(|c| Some((c.name.clone(), c.oots_party.clone()?)))
            .collect()
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
        let err = Config::parse("[tls]\nclient_authh = \"required\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_authh"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let err = Config::parse("[tls]\nclient_auth = \"maybe\"\n")
            .unwrap_err()
            .to_string();
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
    fn pair_example_configs_parse_and_differ_only_in_the_instance_and_host() {
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
        // Each binds the backend API to its own host's address (#14: both said DC1's).
        assert_ne!(one.backend.listen.ip(), two.backend.listen.ip());
        one.backend.listen = two.backend.listen;
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
