//! The HTTP server: listeners (TLS or, explicitly, plain), connection limits and timeouts,
//! graceful shutdown, and the routes of the MSH and operations listeners.
//!
//! The MSH endpoint `POST /msh` hands each request to an [`MshHandler`]. Handlers are
//! synchronous on purpose: the MIME parser and the store are `Read`-based and blocking, so
//! the handler runs under `spawn_blocking` and reads the body through a [`BodyReader`] fed by
//! a bounded channel (flat memory, TCP back-pressure). See [`http`] for the bridge.

pub mod http;
pub mod tls;
pub(crate) mod tls_key;

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::http::{Body, BodyBounds, BodyReader, FaultCode};
use crate::ops::{Metrics, Readiness};

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The TCP peer.
    pub remote_addr: SocketAddr,
    /// Whether the connection is TLS (false only under `--insecure-http`).
    pub tls: bool,
    /// The client certificate chain (leaf first) when the client authenticated; verified
    /// against `tls.client_ca` by the TLS layer.
    pub client_certificates: Vec<CertificateDer<'static>>,
}

/// A request to the MSH endpoint, as the handler sees it.
#[derive(Debug)]
pub struct MshRequest {
    /// The request headers (`Content-Type` carries the MIME boundary and the SOAP action).
    pub headers: HeaderMap,
    /// The body, streamed: read it to the end (or stop early to refuse it).
    pub body: BodyReader,
    /// Who sent it.
    pub peer: PeerInfo,
}

/// What the handler answers.
pub struct MshResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers (set `Content-Type`).
    pub headers: HeaderMap,
    /// The body.
    pub body: MshResponseBody,
}

/// A response body: in memory (receipts, errors) or streamed from a reader (pulled user
/// messages with large payloads).
pub enum MshResponseBody {
    /// No body.
    Empty,
    /// A complete body.
    Bytes(Bytes),
    /// Streamed in 64 KiB chunks by a blocking task.
    Reader(Box<dyn Read + Send>),
}

impl std::fmt::Debug for MshResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MshResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl MshResponse {
    /// A SOAP 1.2 fault with the given status.
    pub fn fault(status: StatusCode, code: FaultCode, reason: &str) -> MshResponse {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(http::SOAP12_CONTENT_TYPE),
        );
        MshResponse {
            status,
            headers,
            body: MshResponseBody::Bytes(http::soap_fault(code, reason)),
        }
    }
}

/// Processes one AS4 request. Called on a blocking thread (`spawn_blocking`), so it may
/// block on the body, the store and crypto; it must not use the async runtime directly.
///
/// A handler should read the body to its end or until it decides to refuse the message;
/// the server closes the connection afterwards if unread body remains. If reading fails
/// because the size limit was hit, the server answers 413 whatever the handler returns.
pub trait MshHandler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, request: MshRequest) -> MshResponse;
}

/// The handler used until the receiving pipeline is wired in: it reads and discards the
/// body (so the transport can be exercised end to end) and answers 503 with a SOAP fault.
/// It does not pretend to process AS4.
#[derive(Debug, Default)]
pub struct NotWiredHandler;

impl MshHandler for NotWiredHandler {
    fn handle(&self, mut request: MshRequest) -> MshResponse {
        let read = io::copy(&mut request.body, &mut io::sink());
        tracing::warn!(
            peer = %request.peer.remote_addr,
            bytes = read.as_ref().ok(),
            "AS4 request refused: receiving pipeline not wired yet"
        );
        MshResponse::fault(
            StatusCode::SERVICE_UNAVAILABLE,
            FaultCode::Receiver,
            "receiving pipeline not wired yet",
        )
    }
}

/// A future answering one request.
pub type RouteFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The routes of one listener.
pub trait Routes: Send + Sync + 'static {
    /// Answers `request` from `peer`.
    fn call(&self, request: Request<Incoming>, peer: PeerInfo) -> RouteFuture;
}

/// The MSH listener's routes: `POST /msh` to the handler, `GET /health`.
pub struct MshRoutes {
    handler: Arc<dyn MshHandler>,
    max_body: u64,
    metrics: Arc<Metrics>,
    /// Answers `GET /ready` (status only) when set.
    readiness: Option<Readiness>,
}

impl MshRoutes {
    /// Routes to `handler`, refusing bodies over `max_body` bytes.
    pub fn new(handler: Arc<dyn MshHandler>, max_body: u64, metrics: Arc<Metrics>) -> Self {
        MshRoutes {
            handler,
            max_body,
            metrics,
            readiness: None,
        }
    }

    /// Also answers `GET /ready` with 200 or 503 (no body detail: partners reach this
    /// listener), so a TCP load balancer in front of the MSH listeners drains an instance
    /// that is not ready (its store takes no writes) and takes it back when it is.
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }
}

impl Routes for MshRoutes {
    fn call(&self, request: Request<Incoming>, peer: PeerInfo) -> RouteFuture {
        let handler = self.handler.clone();
        let max_body = self.max_body;
        let metrics = self.metrics.clone();
        let ready = self.readiness.as_ref().map(Readiness::is_ready);
        Box::pin(async move {
            let is_post = request.method() == Method::POST;
            let is_get = request.method() == Method::GET;
            match request.uri().path() {
                "/msh" if is_post => {
                    let started = Instant::now();
                    let response = msh(handler, max_body, request, peer).await;
                    metrics.observe_latency(crate::ops::Direction::Inbound, started.elapsed());
                    response
                }
                "/msh" => method_not_allowed("POST"),
                "/health" if is_get => crate::ops::health(),
                "/ready" if is_get && ready.is_some() => {
                    crate::ops::ready_status(ready == Some(true))
                }
                _ => not_found(),
            }
        })
    }
}

/// The operations listener's routes: `/health`, `/ready`, `/metrics`.
pub struct OpsRoutes {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl OpsRoutes {
    /// Ops routes over shared metrics and readiness.
    pub fn new(metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        OpsRoutes { metrics, readiness }
    }
}

impl Routes for OpsRoutes {
    fn call(&self, request: Request<Incoming>, _peer: PeerInfo) -> RouteFuture {
        let response = if request.method() != Method::GET {
            method_not_allowed("GET")
        } else {
            match request.uri().path() {
                "/health" => crate::ops::health(),
                "/ready" => crate::ops::ready(&self.readiness),
                "/metrics" => crate::ops::metrics(&self.metrics),
                _ => not_found(),
            }
        };
        Box::pin(async move { response })
    }
}

fn not_found() -> Response<Body> {
    http::text_response(StatusCode::NOT_FOUND, "not found\n")
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = http::text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("use {allow} on this path\n"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Runs the MSH handler on a blocking thread with the body bridged into a `Read`.
async fn msh(
    handler: Arc<dyn MshHandler>,
    max_body: u64,
    request: Request<Incoming>,
    peer: PeerInfo,
) -> Response<Body> {
    let too_large = |detail: String| {
        http::fault_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            FaultCode::Sender,
            &format!("the message is larger than this access point accepts ({detail}); split the payloads or agree a larger limit"),
        )
    };
    let bounds = http::body_bounds(&request);
    let is_http1 = request.version() < ::http::Version::HTTP_2;
    let (parts, body) = request.into_parts();
    // A client that stalls its body is cut off (see `BodyBounds`).
    let mut body = http::TimedBody::new(body, bounds);
    let stalled = body.stalled();
    // The start of the body is read here, before a blocking thread is given to the
    // handler: a client that stalls early costs a timer, not one of the few blocking
    // threads that partners' messages need. Most messages fit whole.
    let mut prefix = std::collections::VecDeque::new();
    let mut buffered = 0;
    while buffered < PREFETCH_BYTES && !http_body::Body::is_end_stream(&body) {
        match http_body_util::BodyExt::frame(&mut body).await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffered += data.len();
                    prefix.push_back(data);
                }
            }
            Some(Err(e)) => {
                if stalled.load(Ordering::SeqCst) {
                    break;
                }
                return http::fault_response(
                    StatusCode::BAD_REQUEST,
                    FaultCode::Sender,
                    &format!("{e}; send the message again"),
                );
            }
        }
    }
    if buffered as u64 > max_body {
        return too_large(format!("more than {max_body} bytes"));
    }
    let body = Prefixed { prefix, rest: body };
    // Refuse up front when the sender announced the size.
    if let Some(length) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > max_body {
            return too_large(format!("Content-Length {length} > {max_body} bytes"));
        }
    }
    let stalled_response = |bounds: BodyBounds| {
        tracing::info!("request body stalled; closing the connection");
        let mut response = http::fault_response(
            StatusCode::REQUEST_TIMEOUT,
            FaultCode::Sender,
            &format!(
                "the request body stalled: no data for {} s or slower than {} bytes/s on average; send the message without pauses",
                bounds.read_timeout.as_secs(),
                bounds.min_rate
            ),
        );
        if is_http1 {
            // The rest of the body cannot be skipped: the connection ends with this answer.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    };
    if stalled.load(Ordering::SeqCst) {
        return stalled_response(bounds);
    }
    let limit_hit = Arc::new(AtomicBool::new(false));
    let (reader, pump) = http::bridge(body, max_body, limit_hit.clone());
    let pump = tokio::spawn(pump);
    let msh_request = MshRequest {
        headers: parts.headers,
        body: reader,
        peer,
    };
    let outcome = tokio::task::spawn_blocking(move || handler.handle(msh_request)).await;
    // The handler has returned: its reader is gone, so the pump ends at its next send.
    pump.abort();
    if limit_hit.load(Ordering::SeqCst) {
        return too_large(format!("more than {max_body} bytes"));
    }
    if stalled.load(Ordering::SeqCst) {
        return stalled_response(bounds);
    }
    let msh_response = match outcome {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the MSH handler panicked");
            return http::fault_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                FaultCode::Receiver,
                "internal error while processing the message; it was not accepted, retry later",
            );
        }
    };
    let body = match msh_response.body {
        MshResponseBody::Empty => http::empty(),
        MshResponseBody::Bytes(b) => http::full(b),
        MshResponseBody::Reader(r) => http_body_util::BodyExt::boxed(http::reader_body(r, None)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = msh_response.status;
    *response.headers_mut() = msh_response.headers;
    response
}

/// How much of an MSH request body is read before the handler gets a blocking thread.
const PREFETCH_BYTES: usize = 64 * 1024;

/// A body whose first chunks were already read.
struct Prefixed<B> {
    prefix: std::collections::VecDeque<Bytes>,
    rest: B,
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

/// Per-connection limits and timeouts of a listener. Every phase of a connection is bounded:
/// the TLS handshake, the first request's headers (HTTP/1.1 and HTTP/2), each request body
/// ([`BodyBounds`]), the response write, and idleness between requests.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// TLS settings; `None` serves plain HTTP (only with `--insecure-http`, or the loopback
    /// operations listener).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers. On HTTP/2 (where hyper has no such timer) a
    /// connection whose first request has not arrived within this time is closed.
    pub header_read_timeout: Duration,
    /// A connection without a running request for this long is closed (bytes without a
    /// request, such as HTTP/2 PINGs or a trickle of header fragments, do not count).
    pub idle_timeout: Duration,
    /// How slowly a request body may arrive.
    pub body: BodyBounds,
    /// A response that the client does not take for this long (its TCP or HTTP/2 window
    /// stays closed) closes the connection.
    pub write_timeout: Duration,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address; more are closed on accept.
    pub max_connections_per_ip: usize,
    /// On a TLS listener that asks for client certificates: most simultaneous connections
    /// whose client sent none. More are closed right after their handshake, so clients
    /// without a certificate (the lowest priority) cannot take the slots of partners.
    /// `None`: no separate quota.
    pub max_anonymous_connections: Option<usize>,
    /// HTTP/2: most concurrent streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: largest header list (decoded, with CONTINUATION frames) of a request.
    pub http2_max_header_list_bytes: u32,
}

impl Default for ListenerOptions {
    /// Plain HTTP with the embedded defaults of `[server]` and `[limits]`.
    fn default() -> Self {
        ListenerOptions {
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body: BodyBounds::default(),
            write_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_ip: 128,
            max_anonymous_connections: None,
            http2_max_concurrent_streams: 64,
            http2_max_header_list_bytes: 64 * 1024,
        }
    }
}

/// HTTP/2 reset floods ("rapid reset", CVE-2023-44487, and streams the server must reset
/// for protocol errors): at most this many streams reset by the client before the server
/// accepted them may be pending; more close the connection with `ENHANCE_YOUR_CALM`.
const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2: at most this many streams reset by the server for a client's errors per
/// connection; more close the connection.
const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// Open connections per peer IP address, for `max_connections_per_ip`.
#[derive(Default)]
struct PerIp {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`PerIp`]; released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    /// Takes a slot for `ip`, unless it already has `max` connections.
    fn take(table: &Arc<PerIp>, ip: std::net::IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = table.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A bound listener, ready to serve.
pub struct Listener {
    tcp: TcpListener,
    options: ListenerOptions,
    accepted: Arc<AtomicU64>,
    name: &'static str,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port). `name` labels log lines.
    pub async fn bind(
        name: &'static str,
        addr: SocketAddr,
        options: ListenerOptions,
    ) -> io::Result<Listener> {
        let tcp = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} for the {name} listener: {e} (is the port in use, or below 1024 without the capability?)"),
            )
        })?;
        Ok(Listener {
            tcp,
            options,
            accepted: Arc::new(AtomicU64::new(0)),
            name,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Counter of TCP connections accepted so far (for tests and diagnostics).
    pub fn accepted_counter(&self) -> Arc<AtomicU64> {
        self.accepted.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, asks open connections to
    /// finish their current request, and waits up to `grace` for them.
    pub async fn serve(
        self,
        routes: Arc<dyn Routes>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let Listener {
            tcp,
            options,
            accepted,
            name,
        } = self;
        let limit = Arc::new(Semaphore::new(options.max_connections));
        let connections = TaskTracker::new();
        let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(options.http2_max_concurrent_streams)
            .max_header_list_size(options.http2_max_header_list_bytes)
            .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS);
        let builder = Arc::new(builder);
        let per_ip = Arc::new(PerIp::default());
        let anonymous = Arc::new(AtomicUsize::new(0));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let (stream, remote_addr) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Typically EMFILE: back off briefly instead of spinning.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let Some(ip_slot) =
                PerIp::take(&per_ip, remote_addr.ip(), options.max_connections_per_ip)
            else {
                tracing::debug!(listener = name, peer = %remote_addr, "closing a connection over limits.max_connections_per_ip");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let anonymous = anonymous.clone();
            let routes = routes.clone();
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            let options = options.clone();
            connections.spawn(async move {
                let _permit = permit;
                let _ip_slot = ip_slot;
                let activity = Activity::new();
                match acceptor {
                    None => {
                        let peer = PeerInfo {
                            remote_addr,
                            tls: false,
                            client_certificates: Vec::new(),
                        };
                        let io = Tracked::new(stream, activity.clone());
                        serve_connection(&builder, io, routes, peer, activity, &options, shutdown)
                            .await;
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            options.handshake_timeout,
                            acceptor.accept(stream),
                        );
                        let tls = match handshake.await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::info!(listener = name, peer = %remote_addr, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(listener = name, peer = %remote_addr, "TLS handshake timed out");
                                return;
                            }
                        };
                        let client_certificates: Vec<CertificateDer<'static>> = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
                        // Clients without a certificate share a small quota, so that they
                        // cannot take the slots of partners.
                        let _anonymous_slot = match options.max_anonymous_connections {
                            Some(max) if client_certificates.is_empty() => {
                                if anonymous.fetch_add(1, Ordering::SeqCst) >= max {
                                    anonymous.fetch_sub(1, Ordering::SeqCst);
                                    tracing::debug!(listener = name, peer = %remote_addr, "closing a connection without a client certificate: limits.max_anonymous_connections reached");
                                    return;
                                }
                                Some(CountSlot(anonymous))
                            }
                            _ => None,
                        };
                        let peer = PeerInfo {
                            remote_addr,
                            tls: true,
                            client_certificates,
                        };
                        let io = Tracked::new(tls, activity.clone());
                        serve_connection(&builder, io, routes, peer, activity, &options, shutdown)
                            .await;
                    }
                }
            });
        }
        drop(tcp);
        connections.close();
        tracing::info!(
            listener = name,
            open = connections.len(),
            "stopped accepting; waiting for open connections"
        );
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                open = connections.len(),
                "connections still open after the shutdown grace period; closing them"
            );
        }
    }
}

/// Serves HTTP on one connection until it ends, a bound of [`ListenerOptions`] closes it,
/// or shutdown asks it to finish.
async fn serve_connection<IO>(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: IO,
    routes: Arc<dyn Routes>,
    peer: PeerInfo,
    activity: Activity,
    options: &ListenerOptions,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = peer.remote_addr;
    let in_flight = activity.clone();
    let body_bounds = options.body;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let routes = routes.clone();
        let peer = peer.clone();
        let activity = in_flight.clone();
        let guard = activity.request_started();
        // Routes read bodies through `http::timed_body`, which finds the bounds here.
        request.extensions_mut().insert(body_bounds);
        async move {
            let response = routes.call(request, peer).await;
            // The request stays in flight until its response body has been sent.
            Ok::<_, Infallible>(response.map(|body| {
                http_body_util::BodyExt::boxed(Guarded {
                    inner: body,
                    activity,
                    _guard: guard,
                    waiting: false,
                })
            }))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
            }
        }
        reason = activity.watch(options) => {
            tracing::debug!(peer = %remote, reason, "closing connection");
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(e) = connection.await {
                tracing::debug!(peer = %remote, error = %e, "connection ended with an error during shutdown");
            }
        }
    }
}

/// What a connection is doing, for the bounds that [`Activity::watch`] enforces. Times are
/// milliseconds since `origin`; 0 in a `*_since` field means "not now".
#[derive(Clone)]
struct Activity {
    inner: Arc<ActivityInner>,
}

struct ActivityInner {
    origin: Instant,
    /// Requests whose headers have arrived so far.
    started: AtomicU64,
    /// Requests running (handler or response body not finished).
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection began).
    last_end_ms: AtomicU64,
    /// Since when a write to the socket has been blocked (+1; 0: not blocked).
    write_blocked_since: AtomicU64,
    /// Response bodies that yielded a chunk which the connection has not taken yet.
    responses_waiting: AtomicUsize,
    /// When a response body last made progress.
    response_progress_ms: AtomicU64,
}

/// Ends a request's flight when its response body is done (or dropped).
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        inner.last_end_ms.store(self.0.now_ms(), Ordering::SeqCst);
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            inner: Arc::new(ActivityInner {
                origin: Instant::now(),
                started: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                last_end_ms: AtomicU64::new(0),
                write_blocked_since: AtomicU64::new(0),
                responses_waiting: AtomicUsize::new(0),
                response_progress_ms: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.origin.elapsed().as_millis() as u64
    }

    fn request_started(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        self.inner.started.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn write_blocked(&self, blocked: bool) {
        let since = &self.inner.write_blocked_since;
        if blocked {
            let _ =
                since.compare_exchange(0, self.now_ms() + 1, Ordering::SeqCst, Ordering::SeqCst);
        } else if since.load(Ordering::Relaxed) != 0 {
            since.store(0, Ordering::SeqCst);
        }
    }

    /// Resolves, with the reason, when a bound of `options` is exceeded:
    /// - no request's headers within `header_read_timeout` of the start (HTTP/2 has no
    ///   header timer of its own; on HTTP/1.1 hyper's fires too);
    /// - no request running for `idle_timeout`;
    /// - a socket write blocked, or a response chunk not taken, for `write_timeout`.
    ///
    /// Request bodies are bounded where they are read ([`http::timed_body`]).
    async fn watch(&self, options: &ListenerOptions) -> &'static str {
        let header = options.header_read_timeout.as_millis() as u64;
        let idle = options.idle_timeout.as_millis() as u64;
        let write = options.write_timeout.as_millis() as u64;
        let inner = &self.inner;
        loop {
            let now = self.now_ms();
            // The earliest moment something can be due, at most 500 ms away (a state change
            // since this look may make a bound due sooner).
            let mut next = now + 500;
            if inner.started.load(Ordering::SeqCst) == 0 {
                if now >= header {
                    return "no request headers within server.header_read_timeout_secs";
                }
                next = next.min(header);
            }
            if inner.in_flight.load(Ordering::SeqCst) == 0 {
                let due = inner.last_end_ms.load(Ordering::SeqCst) + idle;
                if now >= due {
                    return "idle for server.idle_timeout_secs";
                }
                next = next.min(due);
            }
            let blocked = inner.write_blocked_since.load(Ordering::SeqCst);
            if blocked != 0 {
                let due = blocked - 1 + write;
                if now >= due {
                    return "the client took no response data for server.write_timeout_secs";
                }
                next = next.min(due);
            }
            if inner.responses_waiting.load(Ordering::SeqCst) > 0 {
                let due = inner.response_progress_ms.load(Ordering::SeqCst) + write;
                if now >= due {
                    return "the client took no response data for server.write_timeout_secs";
                }
                next = next.min(due);
            }
            tokio::time::sleep(Duration::from_millis(next.saturating_sub(now).max(10))).await;
        }
    }
}

/// A response body that keeps its request in flight until it is done, and tells
/// [`Activity::watch`] whether the connection takes its chunks.
struct Guarded {
    inner: Body,
    activity: Activity,
    _guard: InFlight,
    /// A chunk was yielded and the body has not been polled since.
    waiting: bool,
}

impl Guarded {
    fn taken(&mut self) {
        let inner = &self.activity.inner;
        inner
            .response_progress_ms
            .store(self.activity.now_ms(), Ordering::SeqCst);
        if self.waiting {
            self.waiting = false;
            inner.responses_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        self.taken();
        let result = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(result, Poll::Ready(Some(Ok(_)))) && !self.inner.is_end_stream() {
            self.waiting = true;
            self.activity
                .inner
                .responses_waiting
                .fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.waiting {
            self.activity
                .inner
                .responses_waiting
                .fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// An I/O stream that reports to [`Activity`] when its writes block (the client does not
/// read) and when they move again.
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Activity) -> Self {
        Tracked { inner, activity }
    }

    fn note<R>(&self, result: &Poll<R>) {
        self.activity.write_blocked(result.is_pending());
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note(&result);
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&result);
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Decrements a shared count on drop (a connection's place in a quota).
struct CountSlot(Arc<AtomicUsize>);

impl Drop for CountSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Named background tasks sharing one shutdown signal.
///
/// Every long-running task of `varti serve` is spawned here with a name, watches
/// [`Tasks::token`] and returns when it is cancelled. [`Tasks::shutdown`] cancels them all
/// and waits, naming any task that does not finish in time (then aborting it), so a hung
/// shutdown says what hangs.
#[derive(Debug, Default)]
pub struct Tasks {
    token: CancellationToken,
    handles: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// The shutdown signal: cancelled when shutdown begins.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns `task` under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        tracing::debug!(task = name, "task started");
        self.handles.push((name, tokio::spawn(task)));
    }

    /// Cancels every task and waits up to `deadline` for all of them. Returns true when every
    /// task ended by itself (false: some panicked or were aborted after the deadline).
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.token.cancel();
        let until = tokio::time::Instant::now() + deadline;
        let mut clean = true;
        for (name, mut handle) in self.handles {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(())) => tracing::debug!(task = name, "task finished"),
                Ok(Err(e)) => {
                    clean = false;
                    tracing::error!(task = name, error = %e, "task failed");
                }
                Err(_) => {
                    clean = false;
                    tracing::error!(task = name, "task did not stop in time; aborting it");
                    handle.abort();
                }
            }
        }
        clean
    }
}
