//! The `pgrelay` binary: parses the command line and runs one subcommand.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use pgrelay::auth::Keys;
use pgrelay::config::{Cli, Command, LogFormat, MigrateArgs, ServeArgs, TokenArgs};
use pgrelay::{demo, migrate, shutdown, tail, RelayConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate_database(args).await,
        Command::Token(args) => print_token(args),
        Command::Tail(args) => tail::tail(args).await,
        Command::Demo(args) => demo::demo(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgrelay: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let mut settings = args.relay.settings()?;
    settings.demo_page = args.demo;
    let keys = Keys::from_secret_list(&args.secret)
        .map_err(|error| format!("--secret: {error}"))?
        .with_policy(args.relay.token_policy());
    let addr = args.relay.bind_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
    tracing::info!(%addr, "listening for HTTP");
    let config = RelayConfig {
        listen_database_url: args
            .database
            .listen_database_url
            .unwrap_or_else(|| args.database.database_url.clone()),
        database_url: args.database.database_url,
        pool_size: args.relay.pool_size,
        keys,
        settings,
        limits: args.relay.limits(),
    };
    pgrelay::run(config, listener, shutdown::signal()).await
}

async fn migrate_database(args: MigrateArgs) -> Result<(), BoxError> {
    pgrelay::config::validate_channel(&args.channel)?;
    let applied = migrate::migrate(&args.database_url, &args.channel).await?;
    println!("migrated: {} migration(s) applied", applied.len());
    Ok(())
}

fn print_token(args: TokenArgs) -> Result<(), BoxError> {
    let keys =
        Keys::from_secret_list(&args.secret).map_err(|error| format!("--secret: {error}"))?;
    let scopes: Vec<&str> = args.scope.iter().map(String::as_str).collect();
    println!("{}", keys.mint(&args.sub, args.ttl, &scopes));
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PGRELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: escape codes in a log file or collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
