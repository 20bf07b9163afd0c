//! Why a throwaway cluster could not start or stop.

use super::*;

/// Why a throwaway cluster could not start or stop.
///
/// Its `Display` is a complete one-paragraph explanation, meant to be shown to a person as is:
/// where binaries were looked for and how to install them, or the end of the server's log.
#[derive(Debug)]
pub enum ClusterError {
    /// No directory holding both `initdb` and `postgres` was found.
    BinariesNotFound {
        /// Every directory examined, in search order.
        searched: Vec<PathBuf>,
    },
    /// `PGRELAY_PG_BINDIR` names a directory that lacks `initdb` or `postgres`.
    InvalidBinDirEnv {
        /// The directory the variable names.
        dir: PathBuf,
    },
    /// We are root, which the server refuses to run as, and there is no `postgres` user to use.
    NoServerUser,
    /// A file or process operation failed.
    Io {
        /// What we were doing, such as "run initdb".
        action: String,
        /// The underlying error, already part of the message.
        source: io::Error,
    },
    /// One of the server's tools (initdb, pg_basebackup) failed.
    Tool {
        /// Which tool.
        program: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The server exited before accepting connections.
    ServerExited {
        /// How the server exited.
        status: ExitStatus,
        /// The end of the server log.
        log_tail: String,
    },
    /// Another process holds the port (on every port tried, for [`TempCluster::start`]).
    PortInUse {
        /// The port that was taken.
        port: u16,
        /// The end of the server log.
        log_tail: String,
    },
    /// The server did not accept connections in time.
    StartTimeout {
        /// How long we waited.
        waited: Duration,
        /// The end of the server log.
        log_tail: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::BinariesNotFound { searched } => {
                write!(
                    f,
                    "could not find the PostgreSQL server binaries (a directory holding both \
                     `initdb` and `postgres`); looked on PATH, in `pg_config --bindir` and in the \
                     usual install locations:"
                )?;
                for (i, dir) in searched.iter().enumerate() {
                    let separator = if i == 0 { " " } else { ", " };
                    write!(f, "{separator}{}", dir.display())?;
                }
                write!(
                    f,
                    ". Install the server (Debian/Ubuntu: `apt-get install postgresql`; macOS: \
                     `brew install postgresql`), then put its bin directory on PATH or name it in \
                     {BIN_DIR_ENV} (Debian keeps it off PATH, in /usr/lib/postgresql/VERSION/bin)."
                )
            }
            ClusterError::InvalidBinDirEnv { dir } => write!(
                f,
                "{BIN_DIR_ENV} is set to {}, but that directory does not hold both `initdb` and \
                 `postgres`; point it at the server's bin directory (such as the output of \
                 `pg_config --bindir`), or unset it to search PATH and the usual install locations",
                dir.display()
            ),
            ClusterError::NoServerUser => write!(
                f,
                "running as root, which PostgreSQL refuses to run as, and there is no `postgres` \
                 OS user to run the server as instead; create one (`useradd --system \
                 --user-group postgres`) or run as an ordinary user"
            ),
            ClusterError::Io { action, source } => write!(f, "could not {action}: {source}"),
            ClusterError::Tool {
                program,
                status,
                stderr,
            } => write!(f, "{program} failed ({status}): {stderr}"),
            ClusterError::ServerExited { status, log_tail } => write!(
                f,
                "postgres exited while starting ({status}); the end of its log:\n{log_tail}"
            ),
            ClusterError::PortInUse { port, log_tail } => write!(
                f,
                "another process took port {port} on 127.0.0.1, so postgres could not listen on \
                 it; the end of its log:\n{log_tail}"
            ),
            ClusterError::StartTimeout { waited, log_tail } => write!(
                f,
                "postgres did not accept connections within {} s; the end of its log:\n{log_tail}",
                waited.as_secs()
            ),
        }
    }
}

// `source` stays `None`: the only wrapped error is already part of the message, and reporting it
// twice would repeat it in error chains.
impl std::error::Error for ClusterError {}
