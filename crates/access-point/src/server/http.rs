//! HTTP plumbing shared by the server and the client: body types, the bridge from an async
//! body to a blocking [`Read`], and SOAP fault responses.
//!
//! Why a bridge: the MIME parser and the store are synchronous (`Read`-based) and run under
//! `spawn_blocking`. The async side pumps body frames into a *bounded* channel and the
//! blocking side pulls them through [`BodyReader`]; when the parser is slower than the
//! network, the channel fills, the pump stops polling, hyper stops reading the socket and TCP
//! flow control slows the sender. Memory stays flat whatever the body size.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

/// The response body type of every route: a boxed stream of byte chunks.
pub type Body = BoxBody<Bytes, io::Error>;

/// Chunks buffered between the network and a blocking reader or writer. With hyper's read
/// sizes (at most a few hundred KiB per frame) this bounds the buffer to a few MiB.
const CHANNEL_DEPTH: usize = 8;

/// Chunk size when streaming from a [`Read`] into a body.
const READ_CHUNK: usize = 64 * 1024;

/// A complete, in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body fed by a channel of chunks; an `Err` item aborts the body (the peer sees a reset).
/// The body ends only once its feeder said it is complete: a channel closed without that
/// (the feeding thread panicked, or gave up without a word) aborts it too, so a peer never
/// takes part of a body for the whole.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// The exact length when known (sent as `Content-Length` instead of chunked).
    length: Option<u64>,
    /// Set by the feeder once everything was sent.
    complete: Arc<AtomicBool>,
    /// The body has ended (cleanly or not): nothing more to yield.
    ended: bool,
}

impl ChannelBody {
    /// A body fed through `rx`, complete once `complete` is set.
    fn new(
        rx: mpsc::Receiver<io::Result<Bytes>>,
        length: Option<u64>,
        complete: Arc<AtomicBool>,
    ) -> ChannelBody {
        ChannelBody {
            rx,
            length,
            complete,
            ended: false,
        }
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(chunk)) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Some(Err(e)) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.ended = true;
                if self.complete.load(Ordering::Acquire) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(io::Error::other(
                        "the body was not written to its end (writing it failed)",
                    ))))
                }
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.length {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}

/// Streams a blocking reader as a body: a blocking task reads 64 KiB chunks into a bounded
/// channel. Must be called inside a tokio runtime. If the body is dropped (peer gone,
/// timeout), the reader task stops at its next chunk. `length`, when given, must be exact:
/// it is announced as `Content-Length`.
pub fn reader_body(mut reader: Box<dyn Read + Send>, length: Option<u64>) -> ChannelBody {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let complete = Arc::new(AtomicBool::new(false));
    let read_all = complete.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let item = match reader.read(&mut buf) {
                Ok(0) => {
                    read_all.store(true, Ordering::Release);
                    return;
                }
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    ChannelBody::new(rx, length, complete)
}

/// A body written by a blocking writer: returns the [`BodyWriter`] to write it with and
/// the body to hand to hyper (sent chunked). What is written goes out in chunks of up to
/// 64 KiB through a bounded channel, so a slow peer slows the writer and memory stays flat.
pub fn writer_body() -> (BodyWriter, ChannelBody) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let complete = Arc::new(AtomicBool::new(false));
    let writer = BodyWriter {
        tx,
        buf: Vec::with_capacity(READ_CHUNK),
        complete: complete.clone(),
    };
    (writer, ChannelBody::new(rx, None, complete))
}

/// The blocking end of a body written as it goes ([`writer_body`]): implements [`Write`].
///
/// Writes block the calling thread, so use it only from `spawn_blocking` (or another thread
/// outside the runtime's workers). [`BodyWriter::finish`] ends the body; a writer dropped
/// unfinished (whatever wrote into it failed) ends the body with an error instead, so the
/// peer sees a broken request and never takes a part for the whole. A write after the body
/// was dropped (the request failed, timed out or was answered early) fails with
/// [`io::ErrorKind::BrokenPipe`].
#[derive(Debug)]
pub struct BodyWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// Shared with the body: set by [`BodyWriter::finish`].
    complete: Arc<AtomicBool>,
}

impl BodyWriter {
    /// Sends what is buffered and ends the body.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the body was dropped (its request ended): nothing written now goes out.
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_closed()
    }

    fn send(&self, chunk: Bytes) -> io::Result<()> {
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the request body is no longer read (the request ended)",
            )
        })
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(READ_CHUNK),
        ));
        self.send(chunk)
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > READ_CHUNK {
            self.send_buffered()?;
        }
        if data.len() >= READ_CHUNK {
            // A whole chunk already: one copy into its own buffer, none into ours.
            self.send(Bytes::copy_from_slice(data))?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// The blocking end of a streamed request body: implements [`Read`].
///
/// Reads block the calling thread, so use it only from `spawn_blocking` (or another thread
/// outside the runtime's workers). The body ends with `Ok(0)`; a body that broke off (peer
/// reset, size limit) ends with an `Err` whose message says why.
#[derive(Debug)]
pub struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

impl BodyReader {
    /// A reader over fixed bytes (tests, or bodies already in memory).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> BodyReader {
        let (_tx, rx) = mpsc::channel(1);
        BodyReader {
            rx,
            current: bytes.into(),
            done: false,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Connects an async body to a [`BodyReader`]: returns the reader and a future that pumps
/// the body into it. Spawn the future; it ends when the body ends, fails, exceeds `limit`
/// bytes (the reader then gets an error naming the limit and `limit_hit` is set), or when
/// the reader is dropped.
pub(crate) fn bridge<B>(
    body: B,
    limit: u64,
    limit_hit: Arc<AtomicBool>,
) -> (BodyReader, impl std::future::Future<Output = ()> + Send)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let pump = async move {
        let mut body = body;
        let mut seen: u64 = 0;
        loop {
            let frame = match body.frame().await {
                None => return,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    let _ = tx
                        .send(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("the request body broke off: {e}"),
                        )))
                        .await;
                    return;
                }
            };
            // Trailers are not used by AS4; skip them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen > limit {
                limit_hit.store(true, Ordering::SeqCst);
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the request body exceeds the limit of {limit} bytes \
                             (limits.max_request_body_bytes)"
                        ),
                    )))
                    .await;
                return;
            }
            if tx.send(Ok(data)).await.is_err() {
                // The handler stopped reading: nothing more to do.
                return;
            }
        }
    };
    (
        BodyReader {
            rx,
            current: Bytes::new(),
            done: false,
        },
        pump,
    )
}

/// How slowly a client may send a request body. Every listener puts its bounds into each
/// request's extensions; [`timed_body`] applies them.
///
/// Two rules, counting only the time spent waiting for the client (not the time the
/// consumer takes to process what it got, so back-pressure never counts against the
/// sender):
/// - no single wait for the next bytes may last longer than `read_timeout`;
/// - in total, the waits may last at most `read_timeout + received / min_rate`: the body
///   must arrive at `min_rate` bytes per second on average after a head start. For the
///   largest body accepted this is the overall deadline of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyBounds {
    /// Longest wait for the next bytes (`server.body_read_timeout_secs`).
    pub read_timeout: std::time::Duration,
    /// Lowest average rate, in bytes per second (`server.min_body_bytes_per_sec`).
    pub min_rate: u64,
}

impl Default for BodyBounds {
    /// The embedded defaults of `[server]`: 30 s per wait, 64 KiB/s on average.
    fn default() -> Self {
        BodyBounds {
            read_timeout: std::time::Duration::from_secs(30),
            min_rate: 64 * 1024,
        }
    }
}

impl BodyBounds {
    /// The most waiting allowed in total once `received` bytes have arrived.
    fn wait_budget(&self, received: u64) -> std::time::Duration {
        let rate = self.min_rate.max(1);
        self.read_timeout
            .saturating_add(std::time::Duration::from_millis(
                received.saturating_mul(1000) / rate,
            ))
    }
}

/// A request body bounded by [`BodyBounds`]: when the client stalls, the body ends with an
/// [`io::ErrorKind::TimedOut`] error that names the setting, and [`TimedBody::stalled`]
/// turns true.
pub struct TimedBody<B> {
    inner: B,
    bounds: BodyBounds,
    received: u64,
    waited: std::time::Duration,
    /// When the current wait began (the last poll that returned `Pending`).
    waiting_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Arc<AtomicBool>,
}

impl<B> TimedBody<B> {
    /// Bounds `inner`.
    pub fn new(inner: B, bounds: BodyBounds) -> TimedBody<B> {
        TimedBody {
            inner,
            bounds,
            received: 0,
            waited: std::time::Duration::ZERO,
            waiting_since: None,
            timer: None,
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that turns true when the body was cut off because the client stalled.
    pub fn stalled(&self) -> Arc<AtomicBool> {
        self.stalled.clone()
    }

    fn stall_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the request body stalled: no data for {} s, or slower than {} bytes/s on \
                 average after {} bytes (server.body_read_timeout_secs, \
                 server.min_body_bytes_per_sec); send the body without pauses",
                self.bounds.read_timeout.as_secs(),
                self.bounds.min_rate,
                self.received
            ),
        )
    }
}

impl<B> std::fmt::Debug for TimedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody")
            .field("bounds", &self.bounds)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.stalled.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(item) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                this.timer = None;
                Poll::Ready(item.map(|r| match r {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            this.received += data.len() as u64;
                        }
                        Ok(frame)
                    }
                    Err(e) => Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("the request body broke off: {e}"),
                    )),
                }))
            }
            Poll::Pending => {
                let now = tokio::time::Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let left = this
                    .bounds
                    .wait_budget(this.received)
                    .saturating_sub(this.waited);
                let deadline = since + this.bounds.read_timeout.min(left);
                if now >= deadline {
                    this.stalled.store(true, Ordering::SeqCst);
                    this.timer = None;
                    return Poll::Ready(Some(Err(this.stall_error())));
                }
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.stalled.store(true, Ordering::SeqCst);
                    this.timer = None;
                    return Poll::Ready(Some(Err(this.stall_error())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() || self.stalled.load(Ordering::Relaxed)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The body of `request`, bounded by the [`BodyBounds`] its listener put into its
/// extensions (the defaults when there are none). Every route that reads a request body
/// reads it through this, so a stalling client cannot hold a connection.
pub fn timed_body<B>(request: http::Request<B>) -> TimedBody<B> {
    let bounds = body_bounds(&request);
    TimedBody::new(request.into_body(), bounds)
}

/// The [`BodyBounds`] of the listener that received `request` (the defaults when none).
pub(crate) fn body_bounds<B>(request: &http::Request<B>) -> BodyBounds {
    request
        .extensions()
        .get::<BodyBounds>()
        .copied()
        .unwrap_or_default()
}

/// Who the SOAP fault blames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// The request is at fault (`env:Sender`).
    Sender,
    /// This server is at fault or not able to process (`env:Receiver`).
    Receiver,
}

/// The `Content-Type` of a SOAP 1.2 message.
pub(crate) const SOAP12_CONTENT_TYPE: &str = "application/soap+xml; charset=utf-8";

/// A SOAP 1.2 fault envelope with `reason` as its text (escaped).
pub(crate) fn soap_fault(code: FaultCode, reason: &str) -> Bytes {
    let code = match code {
        FaultCode::Sender => "env:Sender",
        FaultCode::Receiver => "env:Receiver",
    };
    let mut escaped = String::with_capacity(reason.len());
    for c in reason.chars() {
        match c {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => escaped.push(' '),
            c => escaped.push(c),
        }
    }
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<env:Envelope xmlns:env=\"http://www.w3.org/2003/05/soap-envelope\"><env:Body><env:Fault>\
<env:Code><env:Value>{code}</env:Value></env:Code>\
<env:Reason><env:Text xml:lang=\"en\">{escaped}</env:Text></env:Reason>\
</env:Fault></env:Body></env:Envelope>"
    ))
}

/// An HTTP response carrying a SOAP 1.2 fault.
pub(crate) fn fault_response(
    status: http::StatusCode,
    code: FaultCode,
    reason: &str,
) -> http::Response<Body> {
    let mut response = http::Response::new(full(soap_fault(code, reason)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(SOAP12_CONTENT_TYPE),
    );
    response
}

/// A plain-text response (ops endpoints, simple errors).
pub fn text_response(status: http::StatusCode, text: impl Into<Bytes>) -> http::Response<Body> {
    let mut response = http::Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_escapes_reason() {
        let xml = soap_fault(FaultCode::Sender, "a <b> & \"c\"\u{1}");
        let xml = std::str::from_utf8(&xml).unwrap();
        assert!(
            xml.contains("a &lt;b&gt; &amp; &quot;c&quot; </env:Text>"),
            "{xml}"
        );
        assert!(xml.contains("<env:Value>env:Sender</env:Value>"));
    }

    /// What a [`ChannelBody`] yields until it ends: its bytes, and the error it ended with.
    async fn drain(mut body: ChannelBody) -> (Vec<u8>, Option<io::Error>) {
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap()),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_written_body_ends_only_when_finished() {
        // Finished: every byte, in order, through small and chunk-sized writes.
        let (mut writer, body) = writer_body();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writing = tokio::task::spawn_blocking(move || {
            writer.write_all(&sent[..10])?;
            writer.write_all(&sent[10..200_000])?;
            for piece in sent[200_000..].chunks(7) {
                writer.write_all(piece)?;
            }
            writer.finish()
        });
        let (got, error) = drain(body).await;
        writing.await.unwrap().unwrap();
        assert!(error.is_none(), "{error:?}");
        assert_eq!(got, expected);

        // Dropped unfinished (what wrote into it failed): the body ends with an error, so
        // the peer never takes the part written for the whole.
        let (mut writer, body) = writer_body();
        let writing = tokio::task::spawn_blocking(move || {
            writer.write_all(b"the first half")?;
            writer.flush()?;
            Err::<(), io::Error>(io::Error::other("a payload became unreadable"))
        });
        let (got, error) = drain(body).await;
        assert!(writing.await.unwrap().is_err());
        assert_eq!(got, b"the first half");
        let error = error.expect("an unfinished body must end with an error");
        assert!(
            error.to_string().contains("not written to its end"),
            "{error}"
        );

        // Dropped anywhere, even on a runtime thread: still an error, never an end.
        let (writer, body) = writer_body();
        drop(writer);
        let (got, error) = drain(body).await;
        assert!(got.is_empty() && error.is_some());

        // A reader whose task dies before the end of its input: an error, never an end.
        struct Dies;
        impl Read for Dies {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("the reader's thread dies");
            }
        }
        let (_, error) = drain(reader_body(Box::new(Dies), None)).await;
        assert!(error.is_some());

        // The body dropped (the request ended): the writer's next write fails at once.
        let (mut writer, body) = writer_body();
        assert!(!writer.is_abandoned());
        drop(body);
        assert!(writer.is_abandoned());
        let failed = tokio::task::spawn_blocking(move || writer.write_all(&[0u8; 100_000]))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn body_reader_from_bytes_reads_all() {
        let mut r = BodyReader::from_bytes(&b"hello"[..]);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bridge_enforces_limit_and_streams() {
        let body = VecBody((0..10u8).map(|i| Bytes::from(vec![i; 1000])).collect());
        let hit = Arc::new(AtomicBool::new(false));
        let (mut reader, pump) = bridge(body, 5500, hit.clone());
        tokio::spawn(pump);
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            let err = reader.read_to_end(&mut buf).unwrap_err();
            (buf.len(), err.to_string())
        })
        .await
        .unwrap();
        assert_eq!(got.0, 5000);
        assert!(got.1.contains("5500 bytes"), "{}", got.1);
        assert!(hit.load(Ordering::SeqCst));
    }

    /// A body that never sends anything.
    struct Silent;
    impl HttpBody for Silent {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Pending
        }
    }

    /// A body that sends `chunk` bytes every `every`, forever.
    struct Trickle {
        chunk: usize,
        timer: Pin<Box<tokio::time::Sleep>>,
        every: std::time::Duration,
    }
    impl HttpBody for Trickle {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + self.every;
            self.timer.as_mut().reset(next);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.chunk])))))
        }
    }

    fn bounds(read_ms: u64, min_rate: u64) -> BodyBounds {
        BodyBounds {
            read_timeout: std::time::Duration::from_millis(read_ms),
            min_rate,
        }
    }

    // Time is paused and driven by tokio (it advances only when every task waits), so the
    // bounds are asserted exactly and no test waits in real time.
    #[tokio::test(start_paused = true)]
    async fn a_silent_body_times_out_after_the_read_timeout() {
        let mut body = TimedBody::new(Silent, bounds(200, 1000));
        let stalled = body.stalled();
        let start = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        let took = start.elapsed();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("body_read_timeout_secs"), "{err}");
        assert_eq!(took, std::time::Duration::from_millis(200));
        assert!(stalled.load(Ordering::SeqCst));
        assert!(body.frame().await.is_none(), "a stalled body ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_below_the_minimum_rate_is_cut_off() {
        // 10 bytes every 50 ms (200 B/s) against a minimum of 1000 B/s: no single pause is
        // long, but the average falls behind within the 300 ms head start plus what arrived.
        let trickle = Trickle {
            chunk: 10,
            timer: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
            every: std::time::Duration::from_millis(50),
        };
        let mut body = TimedBody::new(trickle, bounds(300, 1000));
        let start = tokio::time::Instant::now();
        let mut received = 0;
        let err = loop {
            match body.frame().await.unwrap() {
                Ok(frame) => received += frame.into_data().unwrap().len(),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(received > 0);
        // No pause reached the 300 ms read timeout: the rate, not a pause, cut it off, and
        // soon after the head start.
        let took = start.elapsed();
        assert!(took > std::time::Duration::from_millis(300), "{took:?}");
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_consumer_takes_does_not_count() {
        // The data is always ready; the consumer pauses longer than the read timeout
        // between reads (back-pressure): no timeout.
        let body = VecBody((0..4u8).map(|i| Bytes::from(vec![i; 10])).collect());
        let mut body = TimedBody::new(body, bounds(50, 1));
        let mut received = 0;
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().into_data().unwrap().len();
            tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        }
        assert_eq!(received, 40);
    }

    /// A body of fixed chunks.
    struct VecBody(std::collections::VecDeque<Bytes>);
    impl HttpBody for VecBody {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }
}
