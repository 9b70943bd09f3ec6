//! Serving the router over TCP, one HTTP/1.1 connection (hyper) per task,
//! with the three deadlines `axum::serve` lacks: a request's headers must
//! arrive within `header_read_timeout`, its body within `body_read_timeout`
//! of its headers, and a keep-alive connection may wait for its next request
//! no longer than `idle_timeout`. Without them, clients that trickle headers,
//! declare a body they never send or hold idle sockets keep file descriptors
//! until the process runs out and stops accepting anyone.
//!
//! hyper's own `header_read_timeout` is not used: its clock starts as soon as
//! a connection waits for a request, so it would also close idle keep-alive
//! connections after the (short) header timeout, and workers that heartbeat
//! every few seconds would keep racing a closing socket. Here, as in Go's
//! `http.Server`, the header clock starts at a request's first byte, and the
//! idle clock runs only between requests: from when the last answer's body
//! has been produced and the socket last took some of it, so an event stream
//! is never idle and a large answer read slowly is not cut off. A request
//! being answered (a long-poll included) has no deadline once its body has
//! arrived.
//!
//! A late header or idle connection is closed without a word: no request
//! was made. A late body is answered: the body being read fails with
//! [`BodyTimedOut`] at its deadline, which ends whatever was reading it;
//! the connection answers the request a JSON 408 (`request_timeout`) in
//! place of what that reader made of the failure, and closes once it is
//! sent (the rest of the body would be read as the next request). A connection whose
//! body is neither read nor let go of (no route holds one) is closed a little
//! later, `UNREAD_BODY_GRACE` past the deadline. Once the server shuts
//! down, a request still arriving has `SHUTDOWN_READ_GRACE` to arrive, and
//! an answer still being sent `SHUTDOWN_SEND_GRACE` to be read.
//!
//! A connection whose last request was answered before its body all arrived
//! (a 413 read from the headers, a route that takes no body, a late body's
//! 408) closes lingering, as Apache and nginx do: closing a socket with
//! bytes still coming in makes the kernel send a reset, and a reset that
//! reaches the client before it has read the answer throws the answer away.
//! So the answer's side is shut first (the client reads the answer, then
//! the end), and what still arrives is read and thrown away until the
//! client closes its side or `LINGER_LIMIT` passes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpSettings;
use crate::error::ApiError;

/// How long past its body's deadline a connection is kept when nothing has
/// read the body to fail it: room for the 408 of a body that failed at its
/// deadline to be sent before the connection's own deadline closes it.
const UNREAD_BODY_GRACE: Duration = Duration::from_secs(5);

/// How long, once the server is shutting down, a request still arriving
/// (its headers or its body) has to arrive before its connection is closed.
const SHUTDOWN_READ_GRACE: Duration = Duration::from_secs(1);

/// How long, once the server is shutting down, a client has to read what is
/// left of an answer already made before its connection is closed: a client
/// that stopped reading cannot hold the shutdown up for the idle timeout.
const SHUTDOWN_SEND_GRACE: Duration = Duration::from_secs(5);

/// How long a connection closing with a request body left unread goes on
/// reading (and discarding) what the client still sends, so that the
/// client can read the answer before the socket is closed.
const LINGER_LIMIT: Duration = Duration::from_secs(5);

/// How much a lingering close reads from the socket at once.
const LINGER_READ_BYTES: usize = 16 * 1024;

/// How many reads a lingering close makes before letting other tasks run
/// (a client sending at loopback speed always has more).
const LINGER_READS_PER_POLL: usize = 64;

/// The error of a request body that did not all arrive within
/// `body_read_timeout` of its headers.
#[derive(Debug)]
struct BodyTimedOut {
    /// The timeout it missed.
    after: Duration,
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms",
            self.after.as_millis()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// Accepts connections until `shutdown` fires, then stops accepting, asks
/// every connection to close once its request in flight is answered, and
/// returns when all are closed.
pub(crate) async fn serve_connections(
    mut listener: TcpListener,
    app: Router,
    settings: HttpSettings,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        // axum's accept logs an error such as EMFILE (too many open files)
        // and sleeps a second before trying again, rather than spinning.
        let (stream, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = shutdown.cancelled() => break,
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            settings.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Where a connection is in its life, which decides its deadline.
#[derive(Clone, Copy)]
enum Phase {
    /// The last answer's body has been produced; since this instant the
    /// socket has taken none of it (it may all have been sent), and no byte
    /// of a next request has come.
    Idle(Instant),
    /// A request started arriving at this instant; its headers are not complete.
    ReadingHeaders(Instant),
    /// A request's headers arrived at this instant; its body has not all
    /// arrived, and nothing has let go of it unread.
    ReadingBody(Instant),
    /// A request is being answered, its answer's body included: no deadline.
    Answering,
}

/// A connection's phase, moved by its socket reads and its requests, and
/// watched by the task serving it.
struct ConnectionClock {
    phase: Mutex<Phase>,
    /// Tells the serving task the deadline moved (a stored permit, so no
    /// change is missed between two looks).
    moved: Notify,
    /// The request's body missed its deadline: its answer is a 408 that
    /// closes the connection.
    body_timed_out: AtomicBool,
    /// The request's body was let go of before it all arrived: if the
    /// connection closes now, it closes lingering.
    body_left_unread: AtomicBool,
}

impl ConnectionClock {
    fn new() -> Self {
        ConnectionClock {
            // A new connection owes its first request's headers at once.
            phase: Mutex::new(Phase::ReadingHeaders(Instant::now())),
            moved: Notify::new(),
            body_timed_out: AtomicBool::new(false),
            body_left_unread: AtomicBool::new(false),
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.moved.notify_one();
    }

    /// Bytes came in: if the connection was idle, a request has begun.
    fn bytes_arrived(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Idle(_) = *phase {
            *phase = Phase::ReadingHeaders(Instant::now());
            self.moved.notify_one();
        }
    }

    /// The socket took bytes of an answer: a connection still sending the
    /// last one is not idle. (The deadline only moves later, which the
    /// serving task sees when the old one passes.)
    fn bytes_sent(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Idle(Instant::now());
        }
    }

    /// The request's body has all arrived, or its handler let go of it: what
    /// is left of the request has no deadline.
    fn body_done(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::ReadingBody(_) = *phase {
            *phase = Phase::Answering;
            self.moved.notify_one();
        }
    }

    /// The request's body missed its deadline and has failed: it is being
    /// answered (a 408), which the connection's deadline must not cut off.
    fn body_timed_out(&self) {
        self.body_timed_out.store(true, Ordering::Relaxed);
        self.body_done();
    }

    /// Whether the request's body missed its deadline (asked once per answer).
    fn take_body_timed_out(&self) -> bool {
        self.body_timed_out.swap(false, Ordering::Relaxed)
    }

    /// When the connection is closed unless its phase moves on; once the
    /// server is `closing` (since that instant), a request still arriving
    /// has [`SHUTDOWN_READ_GRACE`] at most and an answer still being sent
    /// [`SHUTDOWN_SEND_GRACE`], so a slow client cannot hold the shutdown up
    /// for its whole header, body or idle timeout. (A connection with
    /// nothing left to send is closed at once by the graceful shutdown.)
    fn deadline(&self, settings: &HttpSettings, closing: Option<Instant>) -> Option<Instant> {
        let (at, grace) = match *self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Idle(since) => (since + settings.idle_timeout(), SHUTDOWN_SEND_GRACE),
            Phase::ReadingHeaders(since) => {
                (since + settings.header_read_timeout(), SHUTDOWN_READ_GRACE)
            }
            Phase::ReadingBody(since) => (
                since + settings.body_read_timeout() + UNREAD_BODY_GRACE,
                SHUTDOWN_READ_GRACE,
            ),
            Phase::Answering => return None,
        };
        Some(match closing {
            Some(since) => at.min(since + grace),
            None => at,
        })
    }
}

/// A request's body, which tells the clock when it has all been read or is
/// dropped unread (a handler that takes no body drops it before it runs),
/// and fails with [`BodyTimedOut`] when it is read past its deadline.
struct ClockedRequestBody {
    body: Incoming,
    clock: Arc<ConnectionClock>,
    /// When the body must have arrived, while it has not; `None` once it
    /// has, or has failed.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    /// Whether the body has all been read.
    arrived: bool,
}

impl Body for ClockedRequestBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.body.is_end_stream() {
            this.deadline = None;
            this.arrived = true;
            this.clock.body_done();
        }
        if polled.is_pending() {
            if let Some(deadline) = &mut this.deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    this.deadline = None;
                    this.clock.body_timed_out();
                    let late = BodyTimedOut {
                        after: this.timeout,
                    };
                    return Poll::Ready(Some(Err(late.into())));
                }
            }
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ClockedRequestBody {
    fn drop(&mut self) {
        if !self.arrived && !self.body.is_end_stream() {
            self.clock.body_left_unread.store(true, Ordering::Relaxed);
        }
        self.clock.body_done();
    }
}

/// An answer's body, whose end (hyper drops it once it has taken all of it,
/// or the connection is gone) starts the idle clock: until then the
/// connection is answering, however long a stream's body takes. What hyper
/// has taken may still be on its way to the socket: the clock starts over
/// each time the socket takes some (`ClockedStream`).
struct ClockedResponseBody {
    body: axum::body::Body,
    clock: Arc<ConnectionClock>,
}

impl Body for ClockedResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ClockedResponseBody {
    fn drop(&mut self) {
        self.clock.set(Phase::Idle(Instant::now()));
    }
}

/// A socket that reports the bytes it takes in and sends out to its
/// connection's clock, and closes lingering when a request's body was left
/// unread (see the module doc).
struct ClockedStream {
    stream: TcpStream,
    clock: Arc<ConnectionClock>,
    /// Once the answer's side is shut: until when the close lingers.
    lingering_until: Option<Pin<Box<Sleep>>>,
}

impl ClockedStream {
    /// Reads and throws away what the client still sends, until it closes
    /// its side (or the socket fails), the linger's time is up, or nothing
    /// is waiting to be read of a connection whose requests were all read
    /// whole (nothing more is owed, so there is nothing to wait for).
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut body_left_unread = self.clock.body_left_unread.load(Ordering::Relaxed);
        let mut scratch = [0; LINGER_READ_BYTES];
        let mut drained = false;
        for _ in 0..LINGER_READS_PER_POLL {
            let mut buffer = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buffer) {
                Poll::Ready(Ok(())) if buffer.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    // The client is still sending: wait for its end.
                    body_left_unread = true;
                    self.clock.body_left_unread.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending if !body_left_unread => return Poll::Ready(()),
                Poll::Pending => {
                    drained = true;
                    break;
                }
            }
        }
        let Some(until) = &mut self.lingering_until else {
            return Poll::Ready(());
        };
        if until.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !drained {
            // More may already be waiting: come back once others have run.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl AsyncRead for ClockedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for ClockedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.bytes_sent();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.bytes_sent();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering_until.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.lingering_until = Some(Box::pin(tokio::time::sleep(LINGER_LIMIT)));
        }
        this.poll_linger(cx).map(Ok)
    }
}

/// Serves one connection until the client closes it, a deadline passes, or
/// shutdown has let its request in flight finish.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: HttpSettings,
    shutdown: CancellationToken,
) {
    let clock = Arc::new(ConnectionClock::new());
    let io = TokioIo::new(ClockedStream {
        stream,
        clock: clock.clone(),
        lingering_until: None,
    });
    let request_clock = clock.clone();
    let body_timeout = settings.body_read_timeout();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let headers_in = Instant::now();
        request_clock
            .body_left_unread
            .store(false, Ordering::Relaxed);
        let deadline = if request.body().is_end_stream() {
            request_clock.set(Phase::Answering);
            None
        } else {
            request_clock.set(Phase::ReadingBody(headers_in));
            Some(Box::pin(tokio::time::sleep_until(
                headers_in + body_timeout,
            )))
        };
        let clock = request_clock.clone();
        let mut request = request.map(|body| ClockedRequestBody {
            body,
            clock: clock.clone(),
            deadline,
            timeout: body_timeout,
            arrived: false,
        });
        // Who is asking, for the wrong-token throttle (as `axum::serve` with
        // connect info would attach it).
        request.extensions_mut().insert(ConnectInfo(peer));
        let answered = app.clone().oneshot(request);
        async move {
            let mut response = answered.await?;
            if clock.take_body_timed_out() {
                // The reader of the body saw only a failed read.
                response = ApiError::request_timeout(body_timeout).into_response();
                // What is left of the body would be read as the next request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(
                response.map(|body| ClockedResponseBody { body, clock }),
            )
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // Off: its clock would also run between requests (see the module doc).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing: Option<Instant> = None;
    loop {
        let deadline = clock.deadline(&settings, closing);
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = clock.moved.notified() => {}
            () = expired => {
                if clock.deadline(&settings, closing).is_some_and(|at| at <= Instant::now()) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                closing = Some(Instant::now());
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
