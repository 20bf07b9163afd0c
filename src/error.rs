//! The crate's error type: what went wrong, with accessors that say what kind of failure it
//! was, so callers decide on facts (a SQLSTATE class) instead of matching message text.

use std::fmt;

use tokio_postgres::error::SqlState;

/// A failure of the relay: a query, the pool, a connection, or a setting that cannot work.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// PostgreSQL answered with an error, or the connection to it failed.
    Database(tokio_postgres::Error),
    /// No pool connection could be had.
    Pool(deadpool_postgres::PoolError),
    /// The relay cannot work as configured (a bad URL, a missing schema, …).
    Setup(String),
    /// A connection stopped working as it must (a timeout, a heartbeat that never came back).
    Connection(String),
    /// Reading or writing a local resource failed.
    Io(std::io::Error),
    /// A row's JSON could not be rendered.
    Json(serde_json::Error),
}

impl Error {
    /// The relay cannot work as configured; `message` says what to change.
    pub fn setup(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Setup(message.into()),
        }
    }

    /// A connection stopped working as it must; `message` says how.
    pub fn connection(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Connection(message.into()),
        }
    }

    /// The SQLSTATE PostgreSQL answered with, if this is an error PostgreSQL reported.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match &self.kind {
            Kind::Database(error) => error.code(),
            _ => None,
        }
    }

    /// Whether PostgreSQL refused the data itself (SQLSTATE classes 22, 23 and 54: a `\u0000`
    /// in a payload, a name the trigger rejects, JSON nested too deep), so retrying the same
    /// data cannot help. A unique violation is not among them: see [`Error::is_id_conflict`].
    pub fn is_refused_data(&self) -> bool {
        self.sqlstate().is_some_and(|state| {
            let code = state.code();
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
                && !self.is_id_conflict()
        })
    }

    /// Whether the data was refused as too large once stored (SQLSTATE 54000, raised by
    /// `pgrelay.signal()` for payloads over its limit).
    pub fn is_too_large(&self) -> bool {
        self.sqlstate() == Some(&SqlState::PROGRAM_LIMIT_EXCEEDED)
    }

    /// This failure to reach the database `to`, said as a person can act on it: where and as
    /// whom the connection was tried, the cause, and what to check (`migrate` and `serve` both
    /// say it the same way). Other failures are returned as they are.
    pub fn while_connecting(self, to: &tokio_postgres::Config) -> Error {
        let database = match &self.kind {
            Kind::Database(error) => error,
            Kind::Pool(deadpool_postgres::PoolError::Backend(error)) => error,
            _ => return self,
        };
        let hint = match (database.code(), refused_connection(database)) {
            (
                Some(&SqlState::INVALID_PASSWORD | &SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
                _,
            ) => "; check the user and password in the database URL",
            (Some(&SqlState::INVALID_CATALOG_NAME), _) => {
                "; create that database, or fix the database name in the URL"
            }
            (None, true) => "; is PostgreSQL running there, and are the host and port right?",
            _ => "",
        };
        let hosts: Vec<String> = to
            .get_hosts()
            .iter()
            .zip(to.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(folder) => {
                    format!("{}/.s.PGSQL.{port}", folder.display())
                }
            })
            .collect();
        let user = to.get_user().unwrap_or("(the default user)");
        Error::setup(format!(
            "cannot use PostgreSQL at {} as {user}: {self}{hint}",
            hosts.join(", ")
        ))
    }

    /// Whether the server could not be reached or the session broke (no pool connection, a
    /// closed connection, an I/O failure), rather than PostgreSQL answering with an error.
    pub fn is_unreachable(&self) -> bool {
        match &self.kind {
            Kind::Pool(_) | Kind::Connection(_) => true,
            Kind::Database(error) => error.is_closed() || error.code().is_none(),
            _ => false,
        }
    }

    /// Whether a message id was already taken (SQLSTATE 23505): ids are drawn by pgrelay, so
    /// this means someone inserted ids by hand.
    pub fn is_id_conflict(&self) -> bool {
        self.sqlstate() == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Database(error) => database_error(f, error),
            Kind::Pool(deadpool_postgres::PoolError::Backend(error)) => database_error(f, error),
            Kind::Pool(error) => write!(f, "no database connection: {error}"),
            Kind::Setup(message) | Kind::Connection(message) => f.write_str(message),
            Kind::Io(error) => write!(f, "{error}"),
            Kind::Json(error) => write!(f, "rendering JSON failed: {error}"),
        }
    }
}

/// A driver error with its cause: the server's own message (and detail), not just "db error",
/// or "error connecting to server" followed by why ("Connection refused").
fn database_error(f: &mut fmt::Formatter<'_>, error: &tokio_postgres::Error) -> fmt::Result {
    if let Some(db) = error.as_db_error() {
        return write!(f, "{db}");
    }
    write!(f, "{error}")?;
    match std::error::Error::source(error) {
        Some(cause) => write!(f, ": {cause}"),
        None => Ok(()),
    }
}

/// Whether nothing accepted the connection (no server at that host and port).
fn refused_connection(error: &tokio_postgres::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Database(error) => Some(error),
            Kind::Pool(error) => Some(error),
            Kind::Io(error) => Some(error),
            Kind::Json(error) => Some(error),
            Kind::Setup(_) | Kind::Connection(_) => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Error {
        Error {
            kind: Kind::Database(error),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(error: deadpool_postgres::PoolError) -> Error {
        Error {
            kind: Kind::Pool(error),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Error {
        Error {
            kind: Kind::Io(error),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error {
            kind: Kind::Json(error),
        }
    }
}
