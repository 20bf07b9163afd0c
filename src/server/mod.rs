//! The accept loop: bounded connections, timeouts against slow clients, graceful shutdown.
//!
//! axum's `serve` has no connection limit and no header timeout, and a relay holds long-lived
//! connections by design, so it gets its own loop over hyper: a semaphore caps open
//! connections (one over the cap is answered 503 JSON and closed), the header read timeout
//! drops clients that trickle their request in (slowloris) or send nothing at all, and hyper's
//! graceful shutdown closes idle keep-alive connections while the open streams end on the
//! shared shutdown token.
//!
//! A connection whose first request opens a stream is not given to hyper at all: the relay
//! reads that head itself (`first_request`) and writes the stream straight to the socket
//! (`stream_writer`), which keeps hyper's two 8 KiB buffers out of every idle stream.
//!
//! The relay speaks HTTP/1.1 only. Browsers should reach it through an HTTP/2 front (Fly's
//! edge, nginx, a CDN), which is what lifts HTTP/1.1's six-streams-per-origin limit; cleartext
//! HTTP/2 to the relay itself would add nothing but connections that no header timeout covers.

mod first_request;
mod io;
mod stream_writer;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use axum::Router;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::ConnectionLimits;
use first_request::FirstRequest;
use io::{Replayed, StallTimeout};

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
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Request heads beyond 128 KiB are refused (431, by hyper, without a JSON body).
        // Below that the relay answers everything itself, even a 100 KB token (401 JSON).
        .max_buf_size(128 * 1024);
    let shared = Arc::new(Connection {
        app,
        http1: builder,
        limits,
        shutdown: shutdown.clone(),
    });

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
            connections.spawn(refuse(shared.http1.clone(), socket));
            continue;
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            if let Err(error) = shared.serve(socket).await {
                debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// What every connection is served with, shared: a stream holds one pointer to it for its
/// whole life, not copies.
struct Connection {
    app: Router,
    http1: http1::Builder,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
}

impl Connection {
    /// Serves a first request that opens a stream with the relay's own writer, and anything
    /// else with hyper. At shutdown an open stream ends (its body watches the same token) and
    /// hyper closes the connection once the request in flight is answered.
    async fn serve(
        self: Arc<Self>,
        mut socket: TcpStream,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let first = first_request::read(&mut socket, self.limits.header_timeout, &self.shutdown);
        match first.await {
            FirstRequest::Gone => Ok(()),
            FirstRequest::Stream(request) => {
                let write_timeout = self.limits.write_timeout;
                stream_writer::respond(socket, self.app.clone(), *request, write_timeout).await?;
                Ok(())
            }
            FirstRequest::Other(read_before) => {
                let socket = Replayed::new(read_before, socket);
                let socket = StallTimeout::new(socket, self.limits.write_timeout);
                let service = TowerToHyperService::new(self.app.clone());
                // Boxed: inline, hyper's connection state would size every stream's task too.
                let mut connection =
                    Box::pin(self.http1.serve_connection(TokioIo::new(socket), service));
                tokio::select! {
                    result = connection.as_mut() => result?,
                    _ = self.shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await?;
                    }
                }
                Ok(())
            }
        }
    }
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
