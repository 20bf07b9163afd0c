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

    /// Whether a message id was already taken (SQLSTATE 23505): ids are drawn by pgrelay, so
    /// this means someone inserted ids by hand.
    pub fn is_id_conflict(&self) -> bool {
        self.sqlstate() == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Database(error) => match error.as_db_error() {
                // The server's own message (and detail), not just "db error".
                Some(db) => write!(f, "{db}"),
                None => write!(f, "{error}"),
            },
            Kind::Pool(error) => write!(f, "no database connection: {error}"),
            Kind::Setup(message) | Kind::Connection(message) => f.write_str(message),
            Kind::Io(error) => write!(f, "{error}"),
            Kind::Json(error) => write!(f, "rendering JSON failed: {error}"),
        }
    }
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
