//! The HTTP/1.1 server: the accept loop, its connection slots, and the relay's own reading of
//! requests and writing of answers.
//!
//! axum's `serve` has no connection limit and no header timeout, and a relay holds long-lived
//! connections by design, so it has a server of its own. A connection holds one of
//! `--max-connections` slots; until it has sent a whole request, and while any answer but a
//! stream is written, it counts as waiting, and the waiting ones hold at most half the slots,
//! the oldest giving way to a newcomer (`waiting`), so sockets that send a byte and nothing
//! more, or never read what they asked for, cannot lock genuine clients out. A connection
//! accepted while every slot serves a request is answered 503 JSON. Each request head has one
//! deadline, `--header-timeout`; shutdown closes waiting connections at once, answers the
//! requests in flight with `connection: close`, and ends streams through their bodies.
//!
//! # Why not hyper
//!
//! The relay used to hand connections to hyper, after reading a stream's first head itself.
//! That left three things it could not fix from outside: hyper answers malformed heads itself
//! (empty 400 and 431 bodies, with no hook to make them JSON); hyper starts its own header
//! timer when it takes a connection over, so a trickled head had two deadlines; and hyper
//! keeps two 8 KiB buffers for every connection's whole life (three quarters of an idle
//! stream's memory, BENCHMARKS.md). A pre-parser in front of hyper would have to be at least
//! as strict as hyper on every head and find where every request ends, bodies included, to
//! see the next head of a kept-alive connection: a second parser of the same bytes, which is
//! how request smuggling happens when two parsers disagree. So the relay parses every request
//! itself, and only once: httparse finds the head's fields (`head`), the body is read whole by
//! its length or its chunks (`body`), the request goes to the axum router as a tower
//! `Service`, and the answer is written straight to the socket (`writer`). What it supports is
//! what a relay's clients use: HTTP/1.1 with keep-alive and pipelining (requests are answered
//! in order), `Expect: 100-continue`, `HEAD`, `Connection: close`, and HTTP/1.0 (one request
//! per connection). Upgrades and HTTP/2 are not served: browsers reach the relay through an
//! HTTP/2 front (Fly's edge, nginx, a CDN), which is what lifts HTTP/1.1's six-streams-per-
//! origin limit.

mod body;
mod connection;
mod head;
mod input;
mod refusal;
mod waiting;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::config::ConnectionLimits;
use crate::open_files;
use connection::Server;
use waiting::Waiting;

/// Most connections answered 503 at once; more are closed unanswered. Their files come out
/// of [`RESERVED_FILES`].
const MOST_REFUSALS: usize = 64;

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits for open connections
/// to finish (the caller bounds that wait). No request body may be larger than `max_body`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    max_body: usize,
    shutdown: CancellationToken,
) {
    let max_connections = fit_open_files(limits.max_connections);
    let refusals = Arc::new(Semaphore::new(MOST_REFUSALS));
    let connections = TaskTracker::new();
    let server = Arc::new(Server {
        app,
        limits,
        max_body,
        waiting: Waiting::new(max_connections, waiting::MOST_WAITING_BYTES),
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
        if let Some(ticket) = server.waiting.admit() {
            connections.spawn(Arc::clone(&server).serve(socket, ticket));
            // Let the new connection read what it has before the next one is accepted (tokio
            // runs the task spawned last first): a genuine client's head is usually there
            // already, and read at once it leaves the waiting set before a flood of newer
            // connections could make it give way.
            tokio::task::yield_now().await;
            continue;
        }
        debug!(%peer, "connection refused: every slot serves a request");
        if let Ok(refusing) = Arc::clone(&refusals).try_acquire_owned() {
            let server = Arc::clone(&server);
            connections.spawn(async move {
                server.refuse(socket).await;
                drop(refusing);
            });
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// File descriptors kept for everything but client connections: the pool, the LISTEN
/// connection, the listening socket, logs, and the connections being refused.
const RESERVED_FILES: u64 = 256;

/// Raises the soft open-files limit to the hard one, and returns how many client connections
/// fit: `max_connections`, or fewer (with a warning) when even the hard limit is too low.
/// Services often start with a soft limit of 1,024, and past it `accept` fails while valid
/// clients wait.
fn fit_open_files(max_connections: usize) -> usize {
    let limit = match open_files::raise_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            warn!(%error, "could not read or raise the open-files limit");
            return max_connections;
        }
    };
    debug!(open_files_limit = limit, "open-files limit");
    let fits = limit.saturating_sub(RESERVED_FILES).max(1);
    if (max_connections as u64) <= fits {
        return max_connections;
    }
    warn!(
        max_connections,
        open_files_limit = limit,
        effective = fits,
        "--max-connections does not fit the open-files limit; accepting at most {fits} \
         connections (raise the hard limit, e.g. LimitNOFILE= in systemd)"
    );
    fits as usize
}
