//! pgrelay turns PostgreSQL into a real-time message broker for browsers.
//!
//! Applications insert rows into the outbox table `pgrelay.messages` (or attach their own
//! table to it); each relay instance keeps one `LISTEN` connection and streams every message
//! to its participants over Server-Sent Events. Ids are assigned in commit order, so a client
//! that resumes with the last id it saw gets exactly what it missed, from any instance: the
//! database is the only broker.
//!
//! # Layers
//!
//! Each module belongs to one layer and imports only from its own layer or the layers below
//! it; arrows only point down, and there are no cycles (`tests/suite/architecture.rs` fails
//! the build otherwise). docs/architecture.md draws the same picture.
//!
//! 1. **Entry** (the binary, `src/main.rs` and `src/cli/`): the command line and the
//!    subcommands `serve`, `migrate`, `token`, `tail` and `demo`.
//! 2. **Composition**: `app` — [`run`] builds every part from a [`RelayConfig`], starts
//!    the tasks, serves, and stops them in order.
//! 3. **HTTP**: `http` (the router, one module per route family, the token extractor and
//!    the JSON errors) and `server` (the relay's own HTTP/1.1: connection slots that waiting
//!    connections give up under pressure, one deadline per request head, every request parsed
//!    once and answered straight on its socket, graceful shutdown).
//! 4. **Tasks**: `stream` (one subscriber's SSE stream: catch-up, live, keepalive, expiry),
//!    `listener` (the LISTEN connection: reconnects, wake-ups, dispatch), `presence` (who
//!    is online, across instances), `retention` (pruning, one instance at a time),
//!    `attach_skips` (telling operators about attached rows that were not published),
//!    `publisher` (group commit for `POST /v1/messages`), `catch_up` (streams that catch up
//!    at once share reads of the log's recent tail, routed in memory) and `open_reads`
//!    (openings that come at once read their access and position bounds in one statement).
//!    Each gets a narrow handle with just what it uses.
//! 5. **Routing and storage**: `registry` (participant → open streams, each with a bounded
//!    inbox), `store` (the query pool and every query), `replica` (catch-up and history
//!    reads on a read replica whenever its replay makes them exact), [`migrate`] (the SQL in
//!    `sql/`), `tls` (`sslmode` as libpq means it, and [`connect`]), `frame` (the SSE wire
//!    format), `limits` (per-client rate and concurrency limits), `budget` (the bytes an
//!    instance holds for readers at once), `metrics` (Prometheus counters) and [`open_files`]
//!    (the process's open-files limit).
//! 6. **Domain**: `message` (what a [`Message`] and a [`Signal`] are, the naming rules, the JSON
//!    a client sees), `access` (whom a stream hears, and how membership changes and
//!    revocations change that at their positions), `jsonb` (the JSON PostgreSQL's `jsonb`
//!    refuses), [`auth`] (HS256 tokens, and an identity provider's key set, kept fresh),
//!    [`config`] (what a relay is configured to do), [`Error`] (the crate's error type) and
//!    [`sse`] (an event-stream parser for clients: `pgrelay tail` and the tests).
//!
//! # What is public
//!
//! What the `pgrelay` binary and a program embedding the relay use: [`run`] and its
//! configuration, [`auth`] (minting and checking tokens), [`migrate`], [`sse`], [`connect`] and
//! [`open_files`]. Everything else is the relay's own; its tests are `#[cfg(test)]` modules
//! beside it (those that need PostgreSQL get a database from `testing`), and the benchmark
//! reads the relay's statements through the `internals` feature.
//!
//! # Data flow
//!
//! `INSERT INTO pgrelay.messages` stores the row pending, and its COMMIT sends an empty
//! `NOTIFY pgrelay` (sql/) → the listener numbers every committed pending row in commit order
//! (`pgrelay.sequence()`, in a short transaction of its own) and reads every message and
//! signal after the last ones it read, from the tables, with its own role (one round trip per
//! batch of wake-ups, on the LISTEN connection itself) → the registry
//! pushes each row that has local subscribers into the inboxes of its participants' streams
//! → each stream drops ids it already sent and writes the rest as SSE events. A row of a
//! participant's access (`rooms`, `revoked`) is applied where it stands in that order: the
//! registry re-files that participant's streams before it routes the next row, and each
//! stream applies it to its own addresses when it reaches it, live or in a catch-up. A stream
//! whose inbox overflowed, or that may have missed notifications while the listener
//! reconnected, reads the table from its cursor instead (`replica`: on a read replica when
//! its replay has reached the WAL position the listener recorded before routing, else on the
//! primary). A notification is only a hint: any
//! login may send one, so nothing in it is read.

mod access;
mod app;
mod attach_skips;
pub mod auth;
mod budget;
mod catch_up;
pub mod config;
mod error;
mod frame;
mod http;
mod jsonb;
mod limits;
mod listener;
mod message;
mod metrics;
pub mod migrate;
pub mod open_files;
mod open_reads;
mod presence;
mod publisher;
mod registry;
mod replica;
mod retention;
mod server;
pub mod sse;
mod store;
mod stream;
#[cfg(test)]
mod testing;
mod tls;

pub use app::{run, Listeners};
pub use config::{ConnectionLimits, MetricsToken, RelayConfig, Settings};
pub use error::Error;
pub use message::{
    valid_kind, valid_name, valid_room, Message, Signal, MAX_NAME_LEN, REFUSED_IN_NAMES,
};
pub use tls::connect;

/// The relay's own statements, public only with the `internals` feature, for the benchmark
/// (`examples/bench`) to time and `EXPLAIN` exactly what the relay runs. Not part of the
/// library's interface: nothing here is kept stable, and the tests use `#[cfg(test)]` instead.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::store::{
        explain_messages_for, news, news_position, prepare_news, NewsPosition, PassLimits,
    };
}
