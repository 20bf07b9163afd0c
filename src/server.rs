//! The accept loop: bounded connections, timeouts against slow clients, graceful shutdown.
//!
//! axum's `serve` has no connection limit and no header timeout, and a relay holds long-lived
//! connections by design, so it gets its own loop over hyper: a semaphore caps open
//! connections (one over the cap is answered 503 and closed), the header read timeout drops
//! clients that trickle their request in (slowloris), and hyper's graceful shutdown closes
//! idle keep-alive connections while the open streams end on the shared shutdown token.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
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

/// The answer to a connection over the limit: written raw, since no request was read.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\nretry-after: 5\r\ncontent-length: 78\r\n\r\n\
{\"error\":\"over_capacity\",\"message\":\"too many connections; retry in a moment\"}";

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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());

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
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "connection refused: over the connection limit");
            tokio::spawn(refuse(socket));
            continue;
        };
        let _ = socket.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(socket), service);
        let connection = graceful.watch(connection.into_owned());
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

async fn refuse(mut socket: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(OVER_CAPACITY)).await;
    let _ = socket.shutdown().await;
}
