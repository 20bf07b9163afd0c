//! Command-line flags and their environment variables, and the [`RelayConfig`] they make.
//!
//! Every flag also reads an environment variable (12-factor), so `fly secrets set` and a
//! `.env` file configure the relay as well as the command line does. The doc comments on
//! the fields are the `--help` text.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pgrelay::auth::{Jwks, JwksTiming, Keys, TokenPolicy};
use pgrelay::config::validate_channel;
use pgrelay::{ConnectionLimits, Error, MetricsToken, RelayConfig, Settings};

/// PostgreSQL as a real-time message broker for browsers.
#[derive(Debug, Parser)]
#[command(name = "pgrelay", version, about, long_about = None)]
pub struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "PGRELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Threads that run the relay's tasks; default, `TOKIO_WORKER_THREADS` when set, else one on
    /// a host of one or two cores, else one per core. On two cores a second worker costs 15%
    /// more CPU per event (every message wakes it) and writes a broadcast to 10,000 streams
    /// 15–50% sooner.
    #[arg(long, env = "PGRELAY_WORKER_THREADS", global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What pgrelay should do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Apply the SQL in sql/ to DATABASE_URL (idempotent; safe from many instances at once).
    Migrate(MigrateArgs),
    /// Print a token signed with the secret.
    Token(TokenArgs),
    /// Subscribe as a participant and print each event's data as one JSON line; a message too
    /// large for the stream (`oversized`) is read whole with GET /v1/messages/{id} and printed
    /// like any other.
    Tail(TailArgs),
    /// Zero-configuration start: a throwaway PostgreSQL, migrated, with the relay serving it.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Connection for queries and the pool; may point at a pooler (PgBouncer transaction mode).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Direct session connection used for LISTEN and for reading new rows [default:
    /// --database-url]. Poolers in transaction mode cannot LISTEN.
    #[arg(long, env = "LISTEN_DATABASE_URL", hide_env_values = true)]
    pub listen_database_url: Option<String>,

    /// A streaming read replica (a hot standby of --database-url, or a pooler in front of
    /// several) that serves catch-ups and `GET /v1/messages` whenever it has replayed what the
    /// read must see, so exactness never depends on its lag: a read it cannot serve yet waits
    /// up to 100 ms for its replay, then goes to the primary. The primary keeps LISTEN, every
    /// write, and the membership and revocation checks [default: none].
    #[arg(long, env = "PGRELAY_REPLICA_URL", hide_env_values = true)]
    pub replica_url: Option<String>,
}

/// Settings of a running relay, shared by `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// HTTP address [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:8080].
    #[arg(long, env = "PGRELAY_BIND")]
    pub bind: Option<SocketAddr>,

    /// A separate address for Prometheus scrapers: `/metrics` is served there only, and the
    /// public address answers it 404 [default: `/metrics` on the public address].
    #[arg(long, env = "PGRELAY_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// A bearer credential `/metrics` wants (`Authorization: Bearer <token>`), wherever it is
    /// served [default: none].
    #[arg(long, env = "PGRELAY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// NOTIFY channel the outbox trigger wakes relays on.
    #[arg(long, env = "PGRELAY_CHANNEL", default_value = "pgrelay")]
    pub channel: String,

    /// Interval of the SSE comment ping that keeps proxies from closing idle streams.
    #[arg(long, env = "PGRELAY_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,

    /// How long messages stay available for catch-up, counted from their commit (when the
    /// relay gave them their ids), never from the writer's `created_at`; one instance at a time
    /// prunes, at start and every tenth of the period (between 10 s and 1 h).
    #[arg(long, env = "PGRELAY_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,

    /// Origins allowed to use the API from a browser: comma-separated, or `*`.
    #[arg(long, env = "PGRELAY_ALLOW_ORIGIN", default_value = "*")]
    pub allow_origin: String,

    /// Largest accepted message payload, in bytes of JSON as sent and as PostgreSQL prints it back.
    #[arg(long, env = "PGRELAY_MAX_PAYLOAD", default_value_t = 64 * 1024)]
    pub max_payload: usize,

    /// Most participants one message may name.
    #[arg(long, env = "PGRELAY_MAX_PARTICIPANTS", default_value_t = 1000)]
    pub max_participants: usize,

    /// How often the relay proves its LISTEN connection with a heartbeat NOTIFY sent from a
    /// pool session; one not heard by the next interval triggers a reconnect. Also how often
    /// it reports new rows of pgrelay.attach_skips, and how long numbering may lag before
    /// /readyz says 503.
    #[arg(long, env = "PGRELAY_HEARTBEAT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Most open HTTP connections (streams included); when all serve requests, one more is
    /// answered 503. At start the relay raises its open-files limit to the hard limit, and
    /// accepts fewer (saying so in the log) if even that cannot hold this many.
    #[arg(long, env = "PGRELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most open streams of one participant (tabs, devices); one more is answered 429.
    #[arg(
        long,
        env = "PGRELAY_MAX_STREAMS_PER_PARTICIPANT",
        default_value_t = 32
    )]
    pub max_streams_per_participant: usize,

    /// One deadline for each request head, from the connection's start (or the previous
    /// answer); a body must then keep arriving. Until its request is whole a connection counts
    /// as waiting: waiting ones hold at most half of --max-connections, the oldest giving way
    /// to a newcomer (defeats slowloris and slot floods).
    #[arg(long, env = "PGRELAY_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// How long a relay's presence rows outlive its last heartbeat: participants of a crashed
    /// instance go offline after this.
    #[arg(long, env = "PGRELAY_PRESENCE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// How long a participant's last stream must stay closed before they count as offline
    /// (absorbs tab reloads and flaky mobile networks).
    #[arg(long, env = "PGRELAY_PRESENCE_DEBOUNCE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub presence_debounce: Duration,

    /// Signals (`POST /v1/signals`) each sender may send per second, sustained.
    #[arg(long, env = "PGRELAY_SIGNAL_RATE", default_value_t = 5.0)]
    pub signal_rate: f64,

    /// Signals each sender may send in a burst.
    #[arg(long, env = "PGRELAY_SIGNAL_BURST", default_value_t = 10.0)]
    pub signal_burst: f64,

    /// Messages (`POST /v1/messages`) each sender may publish per second, sustained; more are
    /// answered 429 with Retry-After. Inserts from SQL are not limited.
    #[arg(long, env = "PGRELAY_PUBLISH_RATE", default_value_t = 20.0)]
    pub publish_rate: f64,

    /// Messages each sender may publish over HTTP in a burst.
    #[arg(long, env = "PGRELAY_PUBLISH_BURST", default_value_t = 50.0)]
    pub publish_burst: f64,

    /// Messages and signals each token with scope `service` (a backend publishing for its
    /// users) may send per second, sustained, counted by the token's `sub` whichever senders it
    /// names; the per-sender limits above do not apply to it.
    #[arg(long, env = "PGRELAY_SERVICE_PUBLISH_RATE", default_value_t = 1000.0)]
    pub service_publish_rate: f64,

    /// Messages and signals each `service` token may send in a burst.
    #[arg(long, env = "PGRELAY_SERVICE_PUBLISH_BURST", default_value_t = 2000.0)]
    pub service_publish_burst: f64,

    /// Most messages one transaction of `POST /v1/messages` commits: requests that arrive
    /// while a commit is in flight share the next one (group commit); 1 commits each alone.
    #[arg(long, env = "PGRELAY_PUBLISH_BATCH", default_value_t = 100)]
    pub publish_batch: usize,

    /// Most `GET /v1/messages` requests one participant may have in flight; more are answered
    /// 429.
    #[arg(long, env = "PGRELAY_MAX_HISTORY_REQUESTS", default_value_t = 4)]
    pub max_history_requests: usize,

    /// A stored message larger than this (its payload's JSON and its participants) reaches
    /// streams and history pages as the stand-in event `oversized` (id, kind, sender,
    /// participants, bytes), never loaded whole; `GET /v1/messages/{id}` reads it. Sizes take
    /// B, KiB, MiB, GiB (or kB, MB, GB).
    #[arg(long, env = "PGRELAY_MAX_EVENT_BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub max_event_bytes: u64,

    /// Most memory this instance holds for catch-up and history pages at once: each page
    /// reserves its worst case (twice 1 MiB and one message of --max-event-bytes) before it
    /// reads, waits its turn while the budget is taken, and gives back what it does not hold
    /// (a page larger than its worst case, by a row naming thousands of long names, takes the
    /// rest).
    #[arg(long, env = "PGRELAY_CATCH_UP_BUDGET", default_value = "32MiB", value_parser = parse_bytes)]
    pub catch_up_budget: u64,

    /// Most memory this instance holds for whole messages (`GET /v1/messages/{id}`) at once;
    /// a read that does not fit now is answered 503 with Retry-After, a message larger than
    /// this 503 `message_too_large`.
    #[arg(long, env = "PGRELAY_FETCH_BUDGET", default_value = "128MiB", value_parser = parse_bytes)]
    pub fetch_budget: u64,

    /// How long a write to a client may stall (the client reads nothing) before the
    /// connection is closed; a stream's client then resumes from its last id.
    #[arg(long, env = "PGRELAY_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Longest token lifetime accepted: tokens whose `exp` is further ahead are refused
    /// (`0s` accepts any).
    #[arg(long, env = "PGRELAY_MAX_TOKEN_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_token_lifetime: Duration,

    /// If set, tokens must carry this `aud` (a string, or an array containing it).
    #[arg(long, env = "PGRELAY_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// If set, tokens must carry this `iss`.
    #[arg(long, env = "PGRELAY_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// An identity provider's JSON Web Key Set whose RS256, ES256 and EdDSA keys verify
    /// tokens, chosen by `kid` and bound to their type (docs/identity-providers.md); fetched
    /// at start, every 5 minutes, and when a token names an unknown `kid` (at most every
    /// 10 s); a failed fetch keeps the last good keys. https, or http to a loopback address.
    #[arg(long, env = "PGRELAY_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// How long shutdown waits for open work before exiting.
    #[arg(long, env = "PGRELAY_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,

    /// Size of the query connection pool.
    #[arg(long, env = "PGRELAY_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
}

impl RelayArgs {
    /// The relay's whole configuration, verifying tokens with `secrets` (if any) and
    /// `--jwks-url` (if set); errors name the flag that is wrong.
    pub fn config(
        &self,
        database: DatabaseArgs,
        secrets: Option<Keys>,
        demo_page: bool,
    ) -> Result<RelayConfig, Error> {
        Ok(RelayConfig {
            listen_database_url: database
                .listen_database_url
                .unwrap_or_else(|| database.database_url.clone()),
            database_url: database.database_url,
            replica_url: database.replica_url,
            pool_size: self.pool_size,
            keys: self.keys(secrets)?.with_policy(self.token_policy()),
            settings: self.settings(demo_page).map_err(Error::setup)?,
            limits: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                header_timeout: self.header_timeout,
                write_timeout: self.write_timeout,
            },
        })
    }

    /// The keys tokens are verified with: the secrets, the key set, or both.
    fn keys(&self, secrets: Option<Keys>) -> Result<Keys, Error> {
        let jwks = self
            .jwks_url
            .as_deref()
            .map(|url| {
                Jwks::new(url, JwksTiming::default())
                    .map_err(|error| Error::setup(format!("--jwks-url: {error}")))
            })
            .transpose()?;
        match (secrets, jwks) {
            (Some(secrets), Some(jwks)) => Ok(secrets.with_jwks(jwks)),
            (Some(secrets), None) => Ok(secrets),
            (None, Some(jwks)) => Ok(Keys::from_jwks(jwks)),
            (None, None) => Err(Error::setup(
                "tokens need keys: set --secret (PGRELAY_SECRET), --jwks-url (PGRELAY_JWKS_URL) \
                 or both",
            )),
        }
    }

    /// What tokens must satisfy beyond their signature and times.
    fn token_policy(&self) -> TokenPolicy {
        TokenPolicy {
            max_lifetime: Some(self.max_token_lifetime),
            audience: self.token_audience.clone(),
            issuer: self.token_issuer.clone(),
        }
    }

    /// The running relay's settings.
    fn settings(&self, demo_page: bool) -> Result<Settings, String> {
        validate_channel(&self.channel)?;
        if self.keepalive.is_zero() || self.heartbeat.is_zero() {
            return Err("--keepalive and --heartbeat must be longer than zero".into());
        }
        let allow_origins = if self.allow_origin.trim() == "*" {
            Vec::new()
        } else {
            self.allow_origin
                .split(',')
                .map(|origin| origin.trim().trim_end_matches('/').to_owned())
                .filter(|origin| !origin.is_empty())
                .collect()
        };
        Ok(Settings {
            channel: self.channel.clone(),
            keepalive: self.keepalive,
            retention: self.retention,
            max_payload: self.max_payload,
            max_participants: self.max_participants,
            allow_origins,
            demo_page,
            heartbeat: self.heartbeat,
            max_streams_per_participant: self.max_streams_per_participant.max(1),
            grace: self.grace,
            presence_ttl: self.presence_ttl.max(Duration::from_secs(1)),
            presence_debounce: self.presence_debounce,
            signal_rate: self.signal_rate,
            signal_burst: self.signal_burst,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            service_publish_rate: self.service_publish_rate,
            service_publish_burst: self.service_publish_burst,
            publish_batch: self.publish_batch.max(1),
            max_history_requests: self.max_history_requests.max(1),
            max_event_bytes: self.max_event_bytes,
            catch_up_budget: self.catch_up_budget,
            fetch_budget: self.fetch_budget,
            metrics_token: self.metrics_token.clone().map(MetricsToken::new),
        })
    }

    /// The HTTP address: `--bind`, else `0.0.0.0:$PORT` (fly.io, Heroku), else loopback:8080.
    pub fn bind_addr(&self) -> Result<SocketAddr, Error> {
        if let Some(addr) = self.bind {
            return Ok(addr);
        }
        match std::env::var("PORT") {
            Ok(port) => port
                .parse::<u16>()
                .map(|port| SocketAddr::from(([0, 0, 0, 0], port)))
                .map_err(|_| Error::setup(format!("PORT={port:?} is not a port number"))),
            Err(_) => Ok(SocketAddr::from(([127, 0, 0, 1], 8080))),
        }
    }
}

/// `pgrelay serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub relay: RelayArgs,

    /// HS256 key(s), comma-separated: the first signs, any one verifies (rotation). Required
    /// unless --jwks-url is set.
    #[arg(long, env = "PGRELAY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Also serve the demo chat page at `/`.
    #[arg(long, env = "PGRELAY_DEMO")]
    pub demo: bool,
}

/// `pgrelay migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Database to migrate.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// NOTIFY channel the outbox trigger should use.
    #[arg(long, env = "PGRELAY_CHANNEL", default_value = "pgrelay")]
    pub channel: String,
}

/// `pgrelay token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The participant the token speaks for.
    #[arg(long)]
    pub sub: String,

    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// Scopes to grant, e.g. `publish` or `broadcast` (repeatable).
    #[arg(long)]
    pub scope: Vec<String>,

    /// Rooms the token's streams receive, e.g. `#general` (repeatable).
    #[arg(long)]
    pub room: Vec<String>,

    /// HS256 key(s); the first one signs.
    #[arg(long, env = "PGRELAY_SECRET", hide_env_values = true)]
    pub secret: String,
}

/// `pgrelay tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The participant to subscribe as.
    #[arg(long)]
    pub sub: String,

    /// Resume after this message id (0 = all retained history) instead of starting live.
    #[arg(long)]
    pub since_id: Option<i64>,

    /// Rooms to follow too, e.g. `#general` (repeatable): the minted token's `rooms` claim,
    /// beside the rooms `pgrelay.member_rooms` gives the participant.
    #[arg(long)]
    pub room: Vec<String>,

    /// The relay's base URL.
    #[arg(long, env = "PGRELAY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// HS256 key(s) to mint the subscription token with; the first one signs.
    #[arg(long, env = "PGRELAY_SECRET", hide_env_values = true)]
    pub secret: String,
}

/// `pgrelay demo`.
#[cfg(feature = "demo")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Use this database instead of a throwaway cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub relay: RelayArgs,

    /// HS256 key(s) [default: a random key for this run].
    #[arg(long, env = "PGRELAY_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// A size in bytes: a whole number, optionally followed by a unit (`B`, `KiB`, `MiB`, `GiB`, or
/// the decimal `kB`, `MB`, `GB`), such as `1MiB` or `512 KiB`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let unit_size: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?}: use B, KiB, MiB or GiB")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit_size))
        .ok_or_else(|| format!("{text:?} is not a size such as 1MiB"))
}

/// The keys of a `--secret` list: the one place the secret is parsed. The error names entries
/// by position, never by content.
pub fn keys(secret_list: &str) -> Result<Keys, Error> {
    Keys::from_secret_list(secret_list).map_err(|error| Error::setup(format!("--secret: {error}")))
}

/// The shortest HS256 secret a relay verifies with: as long as SHA-256's output (RFC 7518
/// §3.2), so that guessing it offline from one token is hopeless.
pub const MIN_SECRET_BYTES: usize = 32;

/// The keys `serve` and `demo` verify with: as [`keys`], refusing any secret of the list that
/// is too short to be safe (minting tools may use any, since the relay decides).
pub fn verifying_keys(secret_list: &str) -> Result<Keys, Error> {
    let short = secret_list
        .split(',')
        .map(str::trim)
        .find(|secret| !secret.is_empty() && secret.len() < MIN_SECRET_BYTES);
    if let Some(short) = short {
        return Err(Error::setup(format!(
            "--secret: a secret of {} bytes is too short to be safe; use at least \
             {MIN_SECRET_BYTES} random bytes, such as the output of `openssl rand -base64 32`",
            short.len()
        )));
    }
    keys(secret_list)
}

/// The configuration reference in docs/configuration.md is generated from these definitions:
/// when a flag changes, this fails and prints the new table; `PGRELAY_WRITE_DOCS=1 cargo test
/// --bin pgrelay` writes it into the page.
#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    const BEGIN: &str = "<!-- generated from `pgrelay serve --help` by src/cli/args.rs: begin -->";
    const END: &str = "<!-- generated from `pgrelay serve --help` by src/cli/args.rs: end -->";

    /// The table of every `pgrelay serve` flag: flag, environment variable, default, meaning.
    fn configuration_table() -> String {
        let mut root = Cli::command();
        root.build();
        let serve = root
            .find_subcommand("serve")
            .expect("pgrelay has a serve subcommand");
        let mut table = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg
                .get_env()
                .map(|env| format!("`{}`", env.to_string_lossy()))
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            let default = if arg.is_required_set() {
                "required".to_owned()
            } else if !defaults.is_empty() && !arg.get_action().takes_values() {
                "off".to_owned()
            } else if defaults.is_empty() {
                "none".to_owned()
            } else {
                format!("`{}`", defaults.join(","))
            };
            let help = arg
                .get_help()
                .map(|help| help.to_string().replace('|', "\\|"))
                .unwrap_or_default();
            table.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
        }
        table
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        use super::parse_bytes;
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1 MiBs").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn configuration_reference_matches_the_command_line() {
        let page = std::fs::read_to_string(PAGE).expect("docs/configuration.md exists");
        let start = page.find(BEGIN).expect("the page has the begin marker") + BEGIN.len();
        let end = page.find(END).expect("the page has the end marker");
        let expected = configuration_table();
        let current = page[start..end].trim();
        if current == expected.trim() {
            return;
        }
        if std::env::var("PGRELAY_WRITE_DOCS").is_ok_and(|value| value == "1") {
            let updated = format!("{}\n{}{}", &page[..start], expected, &page[end..]);
            std::fs::write(PAGE, updated).unwrap();
            return;
        }
        panic!(
            "docs/configuration.md is out of date with `pgrelay serve --help`; run \
             `PGRELAY_WRITE_DOCS=1 cargo test --bin pgrelay`. The table should read:\n{expected}"
        );
    }
}
