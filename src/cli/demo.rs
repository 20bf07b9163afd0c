//! `pgrelay demo`: the zero-configuration start.
//!
//! Without `DATABASE_URL` it runs a private throwaway PostgreSQL (the same code the tests use),
//! migrates it, serves the relay, and prints commands to try it with from other terminals.
//! Ctrl-C or SIGTERM stops the relay, then the cluster, and removes the cluster's folder.

use std::io::Read;
use std::time::Duration;

use pgrelay::auth::Keys;
use pgrelay::{migrate, Error};
use pgrelay_cluster::TempCluster;
use tokio_postgres::types::Type;

use super::args::{self, DatabaseArgs, DemoArgs};
use super::{bind, shutdown};

/// The room alice and bob are members of, through their tokens.
const DEMO_ROOMS: &[&str] = &["#general"];

/// How long the printed tokens stay valid.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs the demo until interrupted.
pub async fn demo(args: DemoArgs) -> Result<(), Error> {
    let secret = match args.secret {
        Some(secret) => secret,
        None => random_secret()?,
    };
    let keys = args::verifying_keys(&secret)?;

    let cluster = match args.database_url {
        Some(_) => None,
        None => {
            eprintln!("pgrelay demo: starting a throwaway PostgreSQL…");
            Some(TempCluster::start().await.map_err(cluster_failed)?)
        }
    };
    let database_url = match (&args.database_url, &cluster) {
        (Some(url), _) => url.clone(),
        (None, Some(cluster)) => cluster.url("postgres"),
        (None, None) => unreachable!("a cluster is started when no URL is given"),
    };
    let database = DatabaseArgs {
        database_url: database_url.clone(),
        listen_database_url: None,
        replica_url: None,
    };
    let config = args.relay.config(database, Some(keys.clone()), true)?;
    migrate::migrate(&database_url, &config.settings.channel).await?;
    seed_conversation(&database_url).await?;

    let listeners = bind(&args.relay).await?;
    // Links must be clickable: a wildcard bind address is reached through loopback.
    let mut local = listeners.public.local_addr()?;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let base = format!("http://{local}");
    print_instructions(&base, &secret, &keys, &database_url);

    let served = pgrelay::run(config, listeners, shutdown::signal()).await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await.map_err(cluster_failed)?;
        eprintln!("pgrelay demo: throwaway PostgreSQL stopped and removed");
    }
    served
}

/// The conversation the demo starts with, oldest first: (sender, text).
///
/// Presence needs consent (`pgrelay.presence_audience`: someone's presence is shown only to
/// those they have written to), so on an empty database two fresh users could not see each
/// other until both had written. Having already written to each other, alice and bob see each
/// other's presence from the moment their pages open, as a new user of a chat expects.
const SEEDED_CONVERSATION: &[(&str, &str)] = &[
    (
        "alice",
        "Hi bob! This conversation was written by pgrelay demo when it started.",
    ),
    (
        "bob",
        "Hi alice! Having written to each other, we see each other's presence (online, last seen).",
    ),
];

/// Writes [`SEEDED_CONVERSATION`] between alice and bob, unless they already share a message
/// (a demo started again on the same database, or its own conversation), in one transaction
/// so its rows keep their order.
async fn seed_conversation(database_url: &str) -> Result<(), Error> {
    let mut client = pgrelay::connect(database_url).await?;
    let transaction = client.transaction().await?;
    let already: bool = transaction
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pgrelay.messages WHERE participants @> '{alice,bob}')",
            &[],
        )
        .await?
        .get(0);
    if !already {
        for (sender, text) in SEEDED_CONVERSATION {
            transaction
                .execute_typed(
                    "INSERT INTO pgrelay.messages (participants, sender, payload) \
                     VALUES ('{alice,bob}', $1, jsonb_build_object('text', $2::text))",
                    &[(sender, Type::TEXT), (text, Type::TEXT)],
                )
                .await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// A 256-bit random key, hex-encoded, for this run only.
fn random_secret() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn print_instructions(base: &str, secret: &str, keys: &Keys, database_url: &str) {
    let exe = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "pgrelay".into());
    let alice = keys.mint_with_rooms("alice", DEMO_TOKEN_TTL, &["publish"], DEMO_ROOMS);
    let bob = keys.mint_with_rooms("bob", DEMO_TOKEN_TTL, &["publish"], DEMO_ROOMS);
    println!(
        r#"
pgrelay demo is running at {base}

Open the chat in a browser, one window per user (they have already written to each other,
so each sees the other's presence):
  alice: {base}/?token={alice}
  bob:   {base}/?token={bob}

Watch bob's messages (in another terminal):
  PGRELAY_SECRET={secret} {exe} tail --sub bob --room '#general' --url {base}

or with curl:
  curl -N -H 'Authorization: Bearer {bob}' {base}/v1/stream

Send from psql (to bob and alice; to the room #general; to everyone, as a banner):
  psql '{database_url}' -c "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{{alice,bob}}', '{{\"text\":\"hi bob\"}}')"
  psql '{database_url}' -c "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{{#general}}', '{{\"text\":\"hi room\"}}')"
  psql '{database_url}' -c "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{{*}}', '{{\"text\":\"maintenance at 22:00\"}}')"

Send over HTTP as alice:
  curl -H 'Authorization: Bearer {alice}' -H 'Content-Type: application/json' \
       -d '{{"participants":["bob"],"payload":{{"text":"hello from alice"}}}}' {base}/v1/messages

Read alice's history:
  curl -H 'Authorization: Bearer {alice}' '{base}/v1/messages?since_id=0'

Tokens (valid 24 h, scope publish, members of #general):
  alice: {alice}
  bob:   {bob}

Press Ctrl-C to stop; the throwaway database is removed.
"#
    );
}

fn cluster_failed(error: pgrelay_cluster::ClusterError) -> Error {
    Error::setup(format!("the throwaway PostgreSQL: {error}"))
}
