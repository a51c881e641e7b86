//! One way to build the runtime's outbound HTTP(S) clients (partners, webhooks, registers,
//! the common services, identity providers), and one way to say why a request failed.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A pooled hyper client over rustls, sending bodies of type `B`.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// How an outbound client connects.
#[derive(Debug, Clone)]
pub struct HttpsOptions {
    /// The TLS settings (roots, client identity), from
    /// [`tls::client_config`](crate::server::tls::client_config) or the caller's own.
    pub tls: rustls::ClientConfig,
    /// Whether `http://` URLs are allowed (local tests, backends on a protected network).
    pub allow_plain_http: bool,
    /// Bound on establishing the TCP connection (none: the operating system's).
    pub connect_timeout: Option<Duration>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Whether HTTP/2 is offered (ALPN) besides HTTP/1.1.
    pub http2: bool,
}

impl HttpsOptions {
    /// HTTPS only, HTTP/1.1 and HTTP/2, no connect bound, idle connections kept 60 s.
    pub fn new(tls: rustls::ClientConfig) -> HttpsOptions {
        HttpsOptions {
            tls,
            allow_plain_http: false,
            connect_timeout: None,
            pool_idle_timeout: Duration::from_secs(60),
            http2: true,
        }
    }
}

/// The pooled client for `options`.
pub fn https_client<B>(options: HttpsOptions) -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_connect_timeout(options.connect_timeout);
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(options.tls);
    let https = match (options.allow_plain_http, options.http2) {
        (true, true) => builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http),
        (true, false) => builder.https_or_http().enable_http1().wrap_connector(http),
        (false, true) => builder
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http),
        (false, false) => builder.https_only().enable_http1().wrap_connector(http),
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

/// `outer: inner: innermost` — hyper's top-level errors alone are too vague to act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
