//! pgrelay's integration tests against a real PostgreSQL: one test binary (the crate is
//! linked once), one module per behaviour, and the harness in `common`.
//!
//! Run one module with `cargo test --test suite faults::`, one test by its name. Tests that
//! need programs beyond Rust and PostgreSQL are ignored with the reason; `.ci/run` installs
//! them and runs everything.

mod common;

mod architecture;
mod attach;
mod auth;
mod browser;
mod cli;
mod faults;
mod framing;
mod group_commit;
mod http_errors;
mod http_wire;
mod instances;
mod js_client;
mod jsonb;
mod jwks;
mod limits;
mod live_access;
mod metrics_access;
mod openapi;
mod order;
mod oversized;
mod presence;
mod proxies;
mod relay;
mod replicas;
mod resume;
mod rooms;
mod schema;
mod service;
mod signals;
mod sql;
mod sse_libraries;
mod storm;
mod stream_wire;
mod tls;
mod trust;
mod tutorial;
mod writers;
