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

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use axum::Router;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Limits on connections, as configured.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most open HTTP connections; streams are connections, so this also caps streams.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// The command line's defaults.
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for open connections
/// to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
