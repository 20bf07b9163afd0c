//! The `pgrelay` binary: parses the command line and runs one subcommand (see `cli`).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::args::{Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads(cli.worker_threads) {
        runtime.worker_threads(threads);
    }
    let outcome = match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(cli::run(cli.command)),
        Err(error) => Err(error.into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgrelay: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime's worker threads: as asked, else one on a host of one or two cores, else
/// tokio's default (`TOKIO_WORKER_THREADS`, or one per core). Each message wakes the tasks of
/// its recipients; with a second worker idle, every such wake-up also wakes that worker to
/// take a share, and on two cores that hand-off cost more than the second worker gave
/// (BENCHMARKS.md, "One worker on small hosts": 3.3 context switches per message against 2.0,
/// and 15% more CPU per event).
fn worker_threads(asked: Option<u16>) -> Option<usize> {
    if let Some(threads) = asked {
        return Some(threads.into());
    }
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    (cores <= 2).then_some(1)
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
