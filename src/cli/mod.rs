//! The subcommands of the `pgrelay` binary. `serve` and `migrate` run the relay's library;
//! `token`, `tail` and `demo` are tools around it for trying pgrelay out and scripting it.

pub mod args;
#[cfg(feature = "demo")]
mod demo;
mod shutdown;
mod tail;

use pgrelay::{migrate, Error};

use args::{Command, MigrateArgs, ServeArgs, TokenArgs};

/// Runs one subcommand to its end.
pub async fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate_database(args).await,
        Command::Token(args) => print_token(args),
        Command::Tail(args) => tail::tail(args).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::demo(args).await,
    }
}

/// `pgrelay serve`: the relay, until SIGTERM or Ctrl-C.
async fn serve(args: ServeArgs) -> Result<(), Error> {
    let secrets = args
        .secret
        .as_deref()
        .map(args::verifying_keys)
        .transpose()?;
    let config = args.relay.config(args.database, secrets, args.demo)?;
    let listeners = bind(&args.relay).await?;
    pgrelay::run(config, listeners, shutdown::signal()).await
}

/// Listens for HTTP where `relay` says: the public address, and the metrics one if it is
/// set apart.
async fn bind(relay: &args::RelayArgs) -> Result<pgrelay::Listeners, Error> {
    let metrics = match relay.metrics_bind {
        Some(addr) => Some(listen(addr, "metrics").await?),
        None => None,
    };
    Ok(pgrelay::Listeners {
        public: listen(relay.bind_addr()?, "HTTP").await?,
        metrics,
    })
}

/// Connections the kernel may queue for the accept loop: a reconnect storm brings thousands
/// at once, and with the usual 1,024 the rest have their SYNs dropped and retry after 1, 3, 7,
/// 15 s (measured with `bench --storm`: the slowest of 12,000 streams resumed after 28 s). The
/// kernel caps it at `net.core.somaxconn` (4,096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 16 * 1024;

/// Listens on `addr`, which serves `what`.
async fn listen(addr: std::net::SocketAddr, what: &str) -> Result<tokio::net::TcpListener, Error> {
    let bound = || {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As std's TcpListener::bind does: a restarted relay binds at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let listener =
        bound().map_err(|error| Error::setup(format!("cannot listen on {addr}: {error}")))?;
    tracing::info!(%addr, "listening for {what}");
    Ok(listener)
}

/// `pgrelay migrate`: applies sql/ and points the trigger at the channel.
async fn migrate_database(args: MigrateArgs) -> Result<(), Error> {
    pgrelay::config::validate_channel(&args.channel).map_err(Error::setup)?;
    let applied = migrate::migrate(&args.database_url, &args.channel).await?;
    println!("migrated: {} migration(s) applied", applied.len());
    Ok(())
}

/// `pgrelay token`: prints a signed token.
fn print_token(args: TokenArgs) -> Result<(), Error> {
    let keys = args::keys(&args.secret)?;
    let scopes: Vec<&str> = args.scope.iter().map(String::as_str).collect();
    let rooms: Vec<&str> = args.room.iter().map(String::as_str).collect();
    println!(
        "{}",
        keys.mint_with_rooms(&args.sub, args.ttl, &scopes, &rooms)
    );
    Ok(())
}
