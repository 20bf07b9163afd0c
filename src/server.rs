//! The accept loop: bounded connections, timeouts against slow clients, graceful shutdown.
//!
//! axum's `serve` has no connection limit and no header timeout, and a relay holds long-lived
//! connections by design, so it gets its own loop over hyper: a semaphore caps open
//! connections (one over the cap is answered 503 JSON and closed), the header read timeout
//! drops clients that trickle their request in (slowloris) or send nothing at all, and hyper's
//! graceful shutdown closes idle keep-alive connections while the open streams end on the
//! shared shutdown token.
//!
//! The relay speaks HTTP/1.1 only. Browsers should reach it through an HTTP/2 front (Fly's
//! edge, nginx, a CDN), which is what lifts HTTP/1.1's six-streams-per-origin limit; cleartext
//! HTTP/2 to the relay itself would add nothing but connections that no header timeout covers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use axum::Router;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ConnectionLimits;

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for open connections
/// to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let max_connections = fit_open_files(limits.max_connections);
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Request heads beyond 128 KiB are refused (431, by hyper, without a JSON body).
        // Below that the relay answers everything itself, even a 100 KB token (401 JSON).
        .max_buf_size(128 * 1024);

    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors, say: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = socket.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "connection refused: over the connection limit");
            tokio::spawn(refuse(builder.clone(), socket));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let socket = StallTimeout::new(socket, limits.write_timeout);
        let connection = builder.serve_connection(TokioIo::new(socket), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers one request on a connection over the limit with 503 JSON, then closes it. The
/// request is read first: clients (hyper, browsers) reject an answer to a request they have
/// not sent yet.
async fn refuse(mut builder: http1::Builder, socket: TcpStream) {
    let service = service_fn(|_request| async {
        let body =
            r#"{"error":"over_capacity","message":"too many connections; retry in a moment"}"#;
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::RETRY_AFTER, "5")
            .body(Body::from(body))
    });
    let connection = builder
        .keep_alive(false)
        .serve_connection(TokioIo::new(socket), service);
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
}

/// File descriptors kept for everything but client connections: the pool, the LISTEN
/// connection, the listening socket, logs, and the connections being refused.
const RESERVED_FILES: u64 = 256;

/// Raises the soft open-files limit to the hard one, and returns how many client connections
/// fit: `max_connections`, or fewer (with a warning) when even the hard limit is too low.
/// Services often start with a soft limit of 1,024, and past it `accept` fails while valid
/// clients wait.
fn fit_open_files(max_connections: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return max_connections;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            debug!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "raised the open-files limit"
            );
            limit = raised;
        }
    }
    let fits = limit.rlim_cur.saturating_sub(RESERVED_FILES).max(1);
    if (max_connections as u64) <= fits {
        return max_connections;
    }
    warn!(
        max_connections,
        open_files_limit = limit.rlim_cur,
        effective = fits,
        "--max-connections does not fit the open-files limit; accepting at most {fits} \
         connections (raise the hard limit, e.g. LimitNOFILE= in systemd)"
    );
    fits as usize
}

/// A connection whose writes may stall for at most `timeout`: a client that stops reading
/// would otherwise pin its response (or stream) buffers forever. A stalled write fails with
/// `TimedOut`, which ends the connection. The timer exists only while a write is stalled.
struct StallTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallTimeout<S> {
    fn new(inner: S, timeout: Duration) -> StallTimeout<S> {
        StallTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome through, arming the timer when it is pending and failing
    /// once the timer has run out.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client has not read for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
