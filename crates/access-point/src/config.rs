//! The access point's own sections of the configuration file: who it is (`[identity]`),
//! how it listens (`[server]`, `[tls]`), sends (`[client]`, `[sender]`), what it accepts
//! (`[limits]`) and keeps (`[retention]`).
//!
//! The `varti` binary's configuration file embeds these sections; the access point is
//! opened with [`Settings`], which holds them together with the directories and the
//! backend clients, and never sees the rest of the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// This access point's own party and keys (the partners' certificates come from the PModes).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The party name (a `[[party]]` of the PModes) this access point acts as. Default
    /// `varti-a`.
    pub party: String,
    /// PEM private key that signs messages and receipts, or an RFC 7512 `pkcs11:` URI of
    /// a key in an HSM (see `[pkcs11]`).
    pub signing_key: PathBuf,
    /// PEM certificate of the signing key (the one partners have in their PModes).
    pub signing_cert: PathBuf,
    /// Key rollover: the next signing key (PEM file or `pkcs11:` URI), used from
    /// `next_signing_from` on without a restart (docs/hsm.md, the rollover runbook).
    pub next_signing_key: Option<PathBuf>,
    /// The next signing key's certificate.
    pub next_signing_cert: Option<PathBuf>,
    /// From when the next key signs (RFC 3339, e.g. `2027-03-01T00:00:00Z`).
    pub next_signing_from: Option<String>,
    /// PEM private key that decrypts messages sent to us, or a `pkcs11:` URI.
    pub encryption_key: PathBuf,
    /// PEM certificate of the encryption key.
    pub encryption_cert: PathBuf,
    /// PEM CA certificates that partners' signing certificates must chain to. Empty: each
    /// partner's PMode certificate is pinned (trusted directly).
    pub trust_anchors: Vec<PathBuf>,
}

/// `[pkcs11]`: where private keys named by `pkcs11:` URIs live.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library) of the HSM, e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`. Unset: the `VARTI_PKCS11_MODULE` environment
    /// variable, or the URI's own `module-path`.
    pub module: Option<PathBuf>,
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
    /// How far the `eb:Timestamp` of a PullRequest we answer may be from our clock, either
    /// way (so it also tolerates that much clock skew). Within this window each
    /// PullRequest MessageId is answered once, by any instance sharing the store; a replay
    /// or an older request is refused with EBMS:0101. Default 300.
    pub pull_request_max_age_secs: u64,
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
    /// IP addresses of reverse proxies (TLS terminators, load balancers) in front of
    /// `/msh`. Only a request whose TCP peer is one of them has its `X-Forwarded-For`
    /// believed: the history then records the address the proxy names as the client (the
    /// rightmost entry, the one the proxy itself added). Default empty: the TCP peer is the
    /// peer, and `X-Forwarded-For` (which anyone can send) is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// TLS of the MSH listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by its intermediates. Default
    /// `certs/varti-a/tls.cert.pem`.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1). Default
    /// `certs/varti-a/tls.key.pem`. A `pkcs11:` URI names a key in an HSM.
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
    /// Days that test traffic (the ebMS test service, the EC connectivity test: what
    /// `varti ping` sends) is kept, counted from its arrival, whatever its state; then the
    /// whole record goes. Default 2. Such messages are never delivered to a backend, so
    /// `payload_days`/`metadata_days` (counted from settlement) would never remove them.
    pub test_days: u32,
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
    /// Disk space, in bytes, that all messages being received may take together in the
    /// spool directory (attachments as received, decrypted, decompressed). A message that
    /// finds no room is answered with HTTP 503 and sent again later by its sender; a
    /// compression bomb is still refused with EBMS:0303. Default 8 GiB: room for the
    /// largest message in its three forms.
    pub spool_budget_bytes: u64,
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
    /// Whether a message past 64 KiB of payloads is written into its request while the
    /// request goes out, with chunked transfer encoding (which every HTTP/1.1 receiver must
    /// read). `false` seals each attempt into a spool file first and sends its
    /// `Content-Length`: for a partner behind a proxy that refuses chunked requests (HTTP
    /// 411), at the cost of writing the message once more. Default `true`.
    pub chunked: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            party: "varti-a".to_owned(),
            signing_key: PathBuf::from("certs/varti-a/sign.key.pem"),
            signing_cert: PathBuf::from("certs/varti-a/sign.cert.pem"),
            next_signing_key: None,
            next_signing_cert: None,
            next_signing_from: None,
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
            pull_request_max_age_secs: 300,
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
            trusted_proxies: Vec::new(),
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

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            payload_days: 7,
            metadata_days: 365,
            test_days: 2,
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
            spool_budget_bytes: 8 * 1024 * 1024 * 1024,
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
            chunked: true,
        }
    }
}

/// One system behind the access point that may use the backend API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    /// Its name: the owner of the messages it submits and receives.
    pub name: String,
    /// SHA-256 (64 hex digits) of its API token; the token itself is never stored.
    pub token_sha256: String,
    /// Inbound messages for these services (all when empty) are delivered to it.
    pub services: Vec<String>,
    /// URL notified of its messages' events (HMAC-SHA256 signed).
    pub webhook_url: Option<String>,
    /// Secret of the webhook HMAC.
    pub webhook_secret: Option<String>,
    /// Whether it sees every message and may purge.
    pub admin: bool,
}

/// Everything the access point is opened with (see
/// [`AccessPoint::open`](crate::AccessPoint::open)).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where messages, payloads and the spool live.
    pub data_dir: PathBuf,
    /// Directory of PMode files.
    pub pmodes_dir: PathBuf,
    /// Our party and keys.
    pub identity: IdentityConfig,
    /// Our TLS certificate (also our client identity towards partners) and CA.
    pub tls: TlsConfig,
    /// The outbound HTTP client.
    pub client: ClientConfig,
    /// The sender.
    pub sender: SenderConfig,
    /// Size and connection limits.
    pub limits: LimitsConfig,
    /// How long things are kept.
    pub retention: RetentionConfig,
    /// The backend API's clients.
    pub clients: Vec<ApiClient>,
    /// `server.trusted_proxies`: whose `X-Forwarded-For` names the real peer.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `[pkcs11]`: the module of keys named by `pkcs11:` URIs.
    pub pkcs11: Pkcs11Config,
}

impl Default for Settings {
    /// The embedded defaults (relative to the working directory).
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./var"),
            pmodes_dir: PathBuf::from("./pmodes"),
            identity: IdentityConfig::default(),
            tls: TlsConfig::default(),
            client: ClientConfig::default(),
            sender: SenderConfig::default(),
            limits: LimitsConfig::default(),
            retention: RetentionConfig::default(),
            clients: Vec::new(),
            trusted_proxies: Vec::new(),
            pkcs11: Pkcs11Config::default(),
        }
    }
}

impl Settings {
    /// Where received payloads are spooled before they are stored (beside the store, so
    /// moving them is cheap).
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }
}
