//! The HTTP server: listeners (TLS or, explicitly, plain), connection limits and timeouts,
//! graceful shutdown, and the routes of the MSH and operations listeners.
//!
//! The MSH endpoint `POST /msh` hands each request to an [`MshHandler`]. Handlers are
//! synchronous on purpose: the MIME parser and the store are `Read`-based and blocking, so
//! the handler runs under `spawn_blocking` and reads the body through a [`BodyReader`] fed by
//! a bounded channel (flat memory, TCP back-pressure). See [`http`] for the bridge.

pub mod http;
pub mod tls;

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

pub use self::http::{Body, BodyReader, FaultCode};
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
}

impl MshRoutes {
    /// Routes to `handler`, refusing bodies over `max_body` bytes.
    pub fn new(handler: Arc<dyn MshHandler>, max_body: u64, metrics: Arc<Metrics>) -> Self {
        MshRoutes {
            handler,
            max_body,
            metrics,
        }
    }
}

impl Routes for MshRoutes {
    fn call(&self, request: Request<Incoming>, peer: PeerInfo) -> RouteFuture {
        let handler = self.handler.clone();
        let max_body = self.max_body;
        let metrics = self.metrics.clone();
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
    let (parts, body) = request.into_parts();
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

/// Per-connection limits and timeouts of a listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// TLS settings; `None` serves plain HTTP (only with `--insecure-http`, or the loopback
    /// operations listener).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers.
    pub header_read_timeout: Duration,
    /// A connection without traffic and without a running request for this long is closed.
    pub idle_timeout: Duration,
    /// Most simultaneous connections.
    pub max_connections: usize,
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
            .max_concurrent_streams(64);
        let builder = Arc::new(builder);
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
            let _ = stream.set_nodelay(true);
            let routes = routes.clone();
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            let options = options.clone();
            connections.spawn(async move {
                let _permit = permit;
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
                        let client_certificates = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default();
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

/// Serves HTTP on one connection until it ends, idles out, or shutdown asks it to finish.
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
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let routes = routes.clone();
        let peer = peer.clone();
        let guard = in_flight.request_started();
        async move {
            let response = routes.call(request, peer).await;
            drop(guard);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = options.idle_timeout;
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
            }
        }
        _ = activity.idle_for(idle) => {
            tracing::debug!(peer = %remote, "closing idle connection");
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(e) = connection.await {
                tracing::debug!(peer = %remote, error = %e, "connection ended with an error during shutdown");
            }
        }
    }
}

/// When a connection last moved bytes, and how many requests it is running.
#[derive(Clone)]
struct Activity {
    inner: Arc<ActivityInner>,
}

struct ActivityInner {
    origin: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

/// Decrements the in-flight count when a request's handler returns.
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            inner: Arc::new(ActivityInner {
                origin: Instant::now(),
                last_ms: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    fn touch(&self) {
        let now = self.inner.origin.elapsed().as_millis() as u64;
        self.inner.last_ms.store(now, Ordering::Relaxed);
    }

    fn request_started(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no traffic and no running request for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed));
            let since = self.inner.origin.elapsed().saturating_sub(last);
            if since >= idle && self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            let wait = idle.saturating_sub(since).max(Duration::from_millis(100));
            tokio::time::sleep(wait).await;
        }
    }
}

/// An I/O stream that records activity on every successful read or write.
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Activity) -> Self {
        activity.touch();
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
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
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
