//! Serving HTTP on a bound socket: HTTP/1.1 and HTTP/2 (h2c, or h2 over
//! TLS), optional TLS, bounds on every client resource, graceful shutdown.
//!
//! Invariants:
//! - a connection from a source the listener does not admit never takes
//!   a connection slot, so refused sources cannot crowd out allowed ones:
//!   once its first bytes arrive (or after `REFUSAL_WAIT` without any) it
//!   gets a fixed 403 `source_not_allowed` (no request is parsed), what it
//!   sent is read and dropped, all within `REFUSAL_TIME`, and it is closed;
//!   at most `MAX_REFUSALS` are answered
//!   at once, and past that (or on a TLS listener, where an answer would
//!   need a handshake) a refused connection is closed unanswered;
//! - at most `max_connections` connections are served at once (a semaphore;
//!   the rest wait in the kernel's accept queue);
//! - a connection that sends nothing within `header_read_timeout` of being
//!   accepted, does not finish its TLS handshake within it, or sends no
//!   complete request head within it, is closed; so is one on which nothing
//!   moves for `idle_timeout`;
//! - a request head with more than `max_headers` fields or more than
//!   `max_header_bytes` bytes gets 431 and the connection is closed;
//! - on shutdown the socket stops accepting, every open connection finishes
//!   its current request, and `serve` returns once they have all closed or
//!   the grace period has passed.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::server::tls::ReloadableTls;
use crate::shutdown::stopped;

/// The smallest `ingest.max_header_bytes`: HTTP/1 parsing needs one 8 KiB
/// buffer at least.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Most concurrent HTTP/2 streams on one connection.
const MAX_H2_STREAMS: u32 = 64;

/// Most refused connections being answered at once (each holds a socket
/// for at most `REFUSAL_TIME`); past it, refused connections are closed
/// unanswered.
const MAX_REFUSALS: usize = 64;

/// How long a refused connection is given to take its 403: the answer is
/// written, then what the client sent is read and dropped (at most
/// `REFUSAL_DRAIN` bytes), so that closing the socket does not reset the
/// connection before the client has read the answer.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
const REFUSAL_DRAIN: usize = 64 * 1024;
/// How long a refused connection's answer waits for the client's request.
const REFUSAL_WAIT: Duration = Duration::from_millis(200);

/// Limits applied to every connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Time to the first byte, to the end of the TLS handshake, and to the
    /// end of each request head.
    pub header_read_timeout: Duration,
    /// Most header fields in one request (over it: 431).
    pub max_headers: usize,
    /// Most bytes of one request head (over it: 431); at least 8192.
    pub max_header_bytes: usize,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long open connections get to finish at shutdown.
    pub shutdown_grace: Duration,
}

/// The HTTP server settings every connection of a listener shares.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves `handler` on `listener` until `shutdown` turns true. A
/// connection whose peer address `admits` refuses gets a fixed 403 and is
/// closed, without a connection slot (see [`refuse`]). With
/// `tls`, every connection starts with a TLS handshake using the
/// configuration current when it was accepted.
pub async fn serve<H, F, A>(
    listener: TcpListener,
    handler: H,
    admits: A,
    limits: Limits,
    tls: Option<Arc<ReloadableTls>>,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    A: Fn(IpAddr) -> bool + Send + 'static,
{
    let builder = Arc::new(http_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));

    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        if !admits(peer.ip()) {
            refuse(stream, peer, &refusals, tls.is_some());
            continue;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = stopped(&mut shutdown) => break,
        };
        // The semaphore is never closed, so acquiring only fails if it were.
        let Ok(permit) = permit else { break };
        let _ = stream.set_nodelay(true);
        let io = Watched::new(stream, limits.header_read_timeout, limits.idle_timeout);
        let (handler, builder, shutdown) = (handler.clone(), builder.clone(), shutdown.clone());
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(io, peer, handler, &builder, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            serve_connection(tls, peer, handler, &builder, shutdown).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "no TLS handshake in time"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the end of the grace period were closed");
    }
}

/// Answers a connection from a source the listener does not admit with a
/// fixed 403 and closes it, in a task of its own that holds one of the
/// `refusals` permits; when none is free, or on a TLS listener, the
/// connection is closed at once, unanswered.
fn refuse(stream: TcpStream, peer: SocketAddr, refusals: &Arc<Semaphore>, tls: bool) {
    if tls {
        return;
    }
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, answer_refused(stream, peer)).await;
        drop(permit);
    });
}

async fn answer_refused(mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let body = serde_json::json!({"error": {
        "code": "source_not_allowed",
        "message": format!("source {} may not use this listener", peer.ip()),
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The answer goes after the client's first bytes, or `REFUSAL_WAIT`
    // without any: an HTTP client takes a response that comes before its
    // request for a broken connection.
    let mut buf = [0u8; 4096];
    let mut read = match tokio::time::timeout(REFUSAL_WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) => return Ok(()),
        Ok(n) => n?,
        Err(_) => 0,
    };
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    while read < REFUSAL_DRAIN {
        match stream.read(&mut buf).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}

/// Serves one connection until the client closes it, a limit closes it, or
/// shutdown lets its current request finish. CONNECT upgrades are allowed;
/// the handler decides whether to grant one.
pub async fn serve_connection<I, H, F>(
    io: I,
    peer: SocketAddr,
    handler: H,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req, peer);
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    let stopping = stopped(&mut shutdown);
    tokio::pin!(stopping);
    let early = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = &mut stopping => None,
    };
    let result = match early {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

// === impl Watched ===

/// A connection's stream with a deadline: `first` to receive the first byte,
/// then `idle` after the last byte moved either way. Past it, reads fail
/// with `TimedOut` and hyper closes the connection.
pub struct Watched<S> {
    inner: S,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
}

impl<S> Watched<S> {
    pub fn new(inner: S, first: Duration, idle: Duration) -> Watched<S> {
        Watched {
            inner,
            deadline: Box::pin(tokio::time::sleep(first)),
            idle,
        }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
