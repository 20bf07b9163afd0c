//! Throwaway PostgreSQL clusters for `pgrelay demo` and pgrelay's tests and benchmarks.
//!
//! pgrelay is a thin layer over PostgreSQL's own machinery (an outbox table and LISTEN/NOTIFY), so
//! a mocked database would test nothing worth testing. Instead the demo and the tests each get a
//! private server: [`TempCluster::start`] runs `initdb` into a fresh temporary folder and launches
//! `postgres` on a free loopback port, tuned for speed rather than durability, and dropping the
//! [`TempCluster`] stops the server and deletes the folder.
//!
//! Nothing here needs a running system service, a password or a container: only the server
//! binaries, which [`find_server_bin_dir`] finds even where (as on Debian) they are not on `PATH`.
//! `initdb` and `postgres` refuse to run as root, so when we are root they run as the `postgres`
//! OS user instead.
//!
//! The server is a plain [`std::process::Child`] rather than a Tokio one, because a cluster must be
//! stoppable from a synchronous `Drop` and from a process-exit hook, outside of any runtime.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, iter, thread};

use tokio_postgres::NoTls;

/// Environment variable naming the server binary directory, which overrides the search.
const BIN_DIR_ENV: &str = "PGRELAY_PG_BINDIR";

/// Server settings for a cluster whose data is deleted anyway: durability is traded for speed, and
/// the connection limit leaves room for load tests.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "500"),
    ("shared_buffers", "128MB"),
];

/// How many ports `start_with` tries when another process takes the chosen port first.
const PORT_ATTEMPTS: u32 = 5;

/// How long a freshly launched server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often we check whether the server has come up or gone down.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one readiness probe may take. A listener that is not postgres (one that took our port)
/// may accept the connection and never answer, and we must get back to checking on the server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The signals that stop the postmaster, each with the time it gets before the next, harsher one:
/// fast shutdown (disconnect clients, checkpoint), then immediate shutdown (the postmaster kills
/// its backends itself, so none is orphaned), then SIGKILL as a last resort.
const STOP_SIGNALS: [(libc::c_int, Duration); 3] = [
    (libc::SIGINT, Duration::from_secs(5)),
    (libc::SIGQUIT, Duration::from_secs(5)),
    (libc::SIGKILL, Duration::from_secs(5)),
];

/// How many lines of the server log an error message quotes.
const LOG_TAIL_LINES: usize = 30;

/// A private PostgreSQL server in a temporary folder, stopped and removed on drop.
///
/// The superuser is `postgres` and every local connection is trusted, so [`TempCluster::url`] needs
/// no password. Dropping the cluster blocks for as long as the server takes to stop (normally well
/// under a second); [`TempCluster::shutdown`] does the same without blocking.
#[derive(Debug)]
pub struct TempCluster {
    /// The temporary folder holding `data/`, `sock/` and `postgres.log`.
    dir: PathBuf,
    /// Where `initdb` and `postgres` are.
    bin_dir: PathBuf,
    /// Whom the server runs as, when that is not us.
    server_user: Option<ServerUser>,
    /// The caller's extra server settings, kept so that a restart applies them again.
    settings: Vec<(String, String)>,
    port: u16,
    /// The running postmaster; `None` once it has stopped.
    postmaster: Option<Child>,
}

impl TempCluster {
    /// Finds the server binaries, runs initdb, starts postgres on a free 127.0.0.1 port and waits
    /// until it accepts connections.
    pub async fn start() -> Result<TempCluster, ClusterError> {
        TempCluster::start_with(&[]).await
    }

    /// Like [`TempCluster::start`], with extra server settings such as `("max_wal_senders", "0")`.
    ///
    /// They are passed as `-c name=value` after the defaults, so they can also override those.
    pub async fn start_with(settings: &[(&str, &str)]) -> Result<TempCluster, ClusterError> {
        let bin_dir = find_server_bin_dir()?;
        let server_user = ServerUser::for_this_process()?;
        // From here on the folder exists, and any early return removes it through `Drop`.
        let mut cluster = TempCluster {
            dir: create_temp_folder()?,
            bin_dir,
            server_user,
            settings: settings
                .iter()
                .map(|&(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            port: 0,
            postmaster: None,
        };
        cluster.init_data_dir().await?;

        let mut attempt = 1;
        loop {
            cluster.port = free_port()?;
            match cluster.launch().await {
                Err(ClusterError::PortInUse { port, .. }) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port, "another process took the port first; trying another");
                    attempt += 1;
                }
                result => return result.map(|()| cluster),
            }
        }
    }

    /// The URL of the given database, as the superuser `postgres` (no password needed), such as
    /// `postgres://postgres@127.0.0.1:PORT/DBNAME`. The name is inserted as is, so keep it plain.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port the server listens on, on 127.0.0.1; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: SIGINT, which also disconnects clients) and waits for it to
    /// exit; the data stays, so [`TempCluster::restart`] can start it again on the same port.
    ///
    /// Meant for fault tests that take the database away from pgrelay. Stopping a stopped cluster
    /// does nothing.
    pub async fn stop(&mut self) -> Result<(), ClusterError> {
        let mut shutdown = Shutdown::new();
        while let Some(postmaster) = &mut self.postmaster {
            let exited = shutdown
                .poll(postmaster)
                .map_err(io_error("stop postgres"))?;
            if exited.is_some() {
                self.postmaster = None;
            } else {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        Ok(())
    }

    /// Starts the server again on the same port, stopping it first if it is still running, and
    /// waits until it accepts connections.
    ///
    /// Unlike [`TempCluster::start`] this cannot move to another port, so it fails with
    /// [`ClusterError::PortInUse`] if another process has taken the port in the meantime.
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.stop().await?;
        self.launch().await
    }

    /// Stops the server and removes the folder: what dropping the cluster does, but without
    /// blocking the runtime and with errors reported rather than logged.
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        self.stop().await?;
        let removed = tokio::fs::remove_dir_all(&self.dir).await;
        // `Drop` runs next and finds nothing left to do.
        match removed {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(ClusterError::Io {
                action: format!("remove {}", self.dir.display()),
                source: error,
            }),
            _ => Ok(()),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Creates the data and socket directories for the server user and runs initdb.
    async fn init_data_dir(&self) -> Result<(), ClusterError> {
        // The server user must be able to pass through our folder whatever our umask is.
        fs::set_permissions(&self.dir, Permissions::from_mode(0o755))
            .map_err(io_error(format!("make {} traversable", self.dir.display())))?;
        for dir in [self.data_dir(), self.socket_dir()] {
            // postgres refuses a data directory that others can read.
            DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_error(format!("create {}", dir.display())))?;
            if let Some(user) = self.server_user {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).map_err(
                    io_error(format!("hand {} to the postgres user", dir.display())),
                )?;
            }
        }

        let mut initdb = self.server_command("initdb");
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            // The C locale sorts the same everywhere; --no-sync because the data is disposable.
            .args(["--locale=C", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Like the server, out of reach of the terminal's Ctrl-C.
            .process_group(0);
        let initdb = tokio::process::Command::from(initdb)
            .spawn()
            .map_err(io_error("run initdb"))?;
        // If `start` is dropped halfway, initdb must die together with the `postgres --single` it
        // runs, or they would go on writing into the folder that `Drop` is removing.
        let mut group = KillGroupOnDrop(initdb.id());
        let output = initdb
            .wait_with_output()
            .await
            .map_err(io_error("run initdb"))?;
        // initdb has been reaped, so its pid (and group id) may now belong to someone else.
        group.0 = None;
        if output.status.success() {
            Ok(())
        } else {
            Err(ClusterError::InitDb {
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// A command for one of the server binaries, run as the server user with no standard input.
    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        // Our own working directory (say /root) may be closed to the server user.
        command.current_dir(&self.dir).stdin(Stdio::null());
        if let Some(user) = self.server_user {
            // When root sets the uid, std also drops root's supplementary groups.
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// Starts the postmaster on `self.port` and waits until it serves connections, stopping it
    /// again if it does not.
    async fn launch(&mut self) -> Result<(), ClusterError> {
        // Only what this launch logs can explain why it failed.
        let log_start = fs::metadata(self.log_path()).map_or(0, |log| log.len());
        self.postmaster = Some(self.spawn_postmaster()?);
        let ready = self.wait_until_ready(log_start).await;
        match &ready {
            Ok(()) => {
                let dir = self.dir.display();
                tracing::debug!(port = self.port, %dir, "throwaway PostgreSQL is up");
            }
            // A server that came up late or lost its port to another process must not linger.
            Err(_) => {
                if let Err(error) = self.stop().await {
                    tracing::warn!(%error, "could not stop a server that failed to start");
                }
            }
        }
        ready
    }

    fn spawn_postmaster(&self) -> Result<Child, ClusterError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io_error(format!("open {}", self.log_path().display())))?;
        let log_for_stderr = log
            .try_clone()
            .map_err(io_error("duplicate the log file handle"))?;

        let mut postgres = self.server_command("postgres");
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            // A private socket directory, so clusters never collide over /var/run/postgresql.
            .arg("-k")
            .arg(self.socket_dir());
        let extra = self.settings.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        for (name, value) in DEFAULT_SETTINGS.iter().copied().chain(extra) {
            postgres.arg("-c").arg(format!("{name}={value}"));
        }
        postgres
            .stdout(log)
            .stderr(log_for_stderr)
            // Its own process group keeps the terminal's Ctrl-C from reaching the server directly:
            // it reaches pgrelay alone, which then stops the server in an orderly way.
            .process_group(0);
        postgres.spawn().map_err(io_error("start postgres"))
    }

    /// Polls until the server answers on our port, it exits, or [`READY_TIMEOUT`] passes.
    async fn wait_until_ready(&mut self, log_start: u64) -> Result<(), ClusterError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.reap_postmaster()? {
                let log_tail = self.log_tail(log_start);
                return Err(if log_tail.contains("Address already in use") {
                    ClusterError::PortInUse {
                        port: self.port,
                        log_tail,
                    }
                } else {
                    ClusterError::ServerExited { status, log_tail }
                });
            }

            let remaining = READY_TIMEOUT.saturating_sub(started.elapsed());
            let probe_time = remaining.min(PROBE_TIMEOUT);
            match tokio::time::timeout(probe_time, self.served_data_dir()).await {
                Ok(Some(dir)) if dir == self.data_dir() => return Ok(()),
                Ok(Some(_)) => {
                    return Err(ClusterError::PortInUse {
                        port: self.port,
                        log_tail: self.log_tail(log_start),
                    })
                }
                // Not accepting connections yet.
                Ok(None) | Err(_) => {}
            }

            if started.elapsed() >= READY_TIMEOUT {
                return Err(ClusterError::StartTimeout {
                    waited: READY_TIMEOUT,
                    log_tail: self.log_tail(log_start),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Forgets the postmaster and returns its exit status if it has exited on its own.
    fn reap_postmaster(&mut self) -> Result<Option<ExitStatus>, ClusterError> {
        let Some(postmaster) = &mut self.postmaster else {
            return Ok(None);
        };
        let status = postmaster
            .try_wait()
            .map_err(io_error("check on postgres"))?;
        if status.is_some() {
            self.postmaster = None;
        }
        Ok(status)
    }

    /// Asks whichever server answers on our port for its data directory, or `None` if none answers.
    ///
    /// The answer tells our server apart from one another process started on the same port after
    /// we picked it.
    async fn served_data_dir(&self) -> Option<PathBuf> {
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .ok()?;
        let connection = tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_setting('data_directory')", &[])
            .await;
        // Dropping the client ends the session politely, which keeps the server log free of noise.
        drop(client);
        let _ = connection.await;
        row.ok().map(|row| PathBuf::from(row.get::<_, String>(0)))
    }

    /// The last lines the server logged since byte `start`, for error messages: the log itself is
    /// deleted along with the folder.
    fn log_tail(&self, start: u64) -> String {
        let mut bytes = Vec::new();
        let read = fs::File::open(self.log_path()).and_then(|mut log| {
            log.seek(SeekFrom::Start(start))?;
            log.read_to_end(&mut bytes)
        });
        if let Err(error) = read {
            return format!("(could not read {}: {error})", self.log_path().display());
        }
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if let Some(mut postmaster) = self.postmaster.take() {
            let mut shutdown = Shutdown::new();
            loop {
                match shutdown.poll(&mut postmaster) {
                    Ok(Some(_)) => break,
                    Ok(None) => thread::sleep(POLL_INTERVAL),
                    Err(error) => {
                        let port = self.port;
                        tracing::warn!(%error, port, "could not stop a throwaway PostgreSQL");
                        break;
                    }
                }
            }
        }
        // After a cancelled start, processes killed a moment ago may still be adding files, which
        // makes removal fail with "directory not empty"; they are gone within a few retries.
        let mut retries = 20;
        loop {
            match fs::remove_dir_all(&self.dir) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                Err(_) if retries > 0 => {
                    retries -= 1;
                    thread::sleep(POLL_INTERVAL);
                }
                Err(error) => {
                    let dir = self.dir.display();
                    tracing::warn!(%error, %dir, "could not remove a throwaway cluster's folder");
                    break;
                }
                Ok(()) => break,
            }
        }
    }
}

/// An escalating stop of a postmaster, shared by the async [`TempCluster::stop`] and the blocking
/// `Drop`, which differ only in how they wait between polls.
struct Shutdown {
    /// Index into [`STOP_SIGNALS`] of the signal to send when `deadline` passes.
    next_signal: usize,
    deadline: Instant,
}

impl Shutdown {
    fn new() -> Shutdown {
        // A deadline that has already passed makes the first poll send the first signal.
        Shutdown {
            next_signal: 0,
            deadline: Instant::now(),
        }
    }

    /// Returns the exit status once the postmaster has exited; until then sends it the next signal
    /// whenever the current one's grace period is over.
    fn poll(&mut self, postmaster: &mut Child) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = postmaster.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= self.deadline {
            let (signal, grace) = STOP_SIGNALS[self.next_signal.min(STOP_SIGNALS.len() - 1)];
            if self.next_signal > 0 {
                tracing::warn!(
                    pid = postmaster.id(),
                    signal,
                    "PostgreSQL is slow to stop; sending a harsher signal"
                );
            }
            // SAFETY: kill has no memory-safety preconditions. The pid is still ours: try_wait has
            // just seen the child unreaped, and an unreaped child's pid cannot be reused.
            if unsafe { libc::kill(postmaster.id() as libc::pid_t, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
            self.next_signal += 1;
            self.deadline = Instant::now() + grace;
        }
        Ok(None)
    }
}

/// Kills a process group when dropped, unless its id has been taken out first.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // SAFETY: kill has no memory-safety preconditions; a negative pid names a group.
            unsafe { libc::kill(-(group as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// The OS account that runs the server binaries when that cannot be us.
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl ServerUser {
    /// `None` unless we are root. initdb and postgres refuse to run as root (a compromised server
    /// would own the machine), so root hands them to the `postgres` account that packages create.
    fn for_this_process() -> Result<Option<ServerUser>, ClusterError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        // getpwnam_r rather than getpwnam: tests start clusters from several threads at once.
        // SAFETY: `passwd` is plain integers and pointers, for which all zeroes is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0; 16 * 1024];
        let mut found = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call, and the buffer's true
        // length is passed along with it.
        let code = unsafe {
            libc::getpwnam_r(
                c"postgres".as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if code != 0 {
            return Err(ClusterError::Io {
                action: "look up the postgres OS user".to_owned(),
                source: io::Error::from_raw_os_error(code),
            });
        }
        if found.is_null() {
            return Err(ClusterError::NoServerUser);
        }
        Ok(Some(ServerUser {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }))
    }
}

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
    /// initdb failed.
    InitDb {
        /// How initdb exited.
        status: ExitStatus,
        /// What initdb printed on stderr.
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
            ClusterError::InitDb { status, stderr } => {
                write!(f, "initdb failed ({status}): {stderr}")
            }
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

/// Where the server binaries are: the directory holding `initdb` and `postgres`.
///
/// Looks, in order, at `PGRELAY_PG_BINDIR` (which, when set, must be right), on `PATH`, at
/// `pg_config --bindir`, then in the usual install locations, newest version first.
pub fn find_server_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV).filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::InvalidBinDirEnv { dir })
        };
    }

    let path = env::var_os("PATH").unwrap_or_default();
    let candidates = env::split_paths(&path)
        // Lazily, so that pg_config only runs when PATH has no server.
        .chain(iter::once_with(pg_config_bindir).flatten())
        .chain(versioned_dirs("/usr/lib/postgresql", ""))
        .chain(iter::once(PathBuf::from("/usr/local/pgsql/bin")))
        .chain(versioned_dirs("/opt/homebrew/opt", "postgresql"))
        .chain(versioned_dirs("/usr/local/opt", "postgresql"));
    let mut searched = Vec::new();
    for dir in candidates {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        searched.push(dir);
    }
    Err(ClusterError::BinariesNotFound { searched })
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "postgres"]
        .iter()
        .all(|binary| dir.join(binary).is_file())
}

/// What `pg_config --bindir` prints, if pg_config is installed. On Debian it names the server's
/// directory although the server binaries themselves are kept off PATH.
fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    output.status.success().then(|| PathBuf::from(dir.trim()))
}

/// `PARENT/NAME/bin` for each `NAME` in `parent` that starts with `prefix`, highest version first
/// (`16` before `9.6`, `postgresql@16` before `postgresql@15`), an order a shell glob cannot give.
/// Names without a version come last.
fn versioned_dirs(parent: impl AsRef<Path>, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = OsStr::to_str(&name)?
                .strip_prefix(prefix)?
                .trim_start_matches('@')
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()
                .unwrap_or_default();
            Some((version, entry.path().join("bin")))
        })
        .collect();
    dirs.sort_by(|a, b| b.cmp(a));
    dirs.into_iter().map(|(_, dir)| dir).collect()
}

/// Asks the kernel for a free port. Between our releasing it and postgres binding it another
/// process may take it; `start_with` then tries again with a new one.
fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(io_error("find a free port"))
}

/// Creates a new folder under the system's temporary directory, named so that clusters of
/// concurrent processes, of one process, and of a process reusing an old pid never clash.
fn create_temp_folder() -> Result<PathBuf, ClusterError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let name = format!(
        "pgrelay-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let dir = env::temp_dir().join(name);
    fs::create_dir(&dir).map_err(io_error(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// Wraps an I/O error with what we were doing, for `map_err`.
fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let action = action.into();
    move |source| ClusterError::Io { action, source }
}

/// Clusters handed to [`stop_at_exit`]; the exit hook drops them.
static EXIT_CLUSTERS: Mutex<Vec<TempCluster>> = Mutex::new(Vec::new());

/// Registers a process-exit hook (`atexit`) that stops the cluster and removes its folder; for
/// clusters kept in statics, which are never dropped.
///
/// Test binaries typically start one shared cluster, keep its URL in a static and hand the cluster
/// itself to this function. The hook runs when the process exits normally (as test binaries do,
/// pass or fail); nothing runs if the process is killed by a signal.
pub fn stop_at_exit(cluster: TempCluster) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the hook is a plain `extern "C" fn` that catches nothing and cannot unwind
        // (a panic in it would abort, as for any `extern "C" fn`).
        if unsafe { libc::atexit(stop_exit_clusters) } != 0 {
            tracing::warn!(
                "could not register an exit hook; shared clusters will outlive the process"
            );
        }
    });
    EXIT_CLUSTERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(cluster);
}

extern "C" fn stop_exit_clusters() {
    let clusters =
        std::mem::take(&mut *EXIT_CLUSTERS.lock().unwrap_or_else(PoisonError::into_inner));
    // Dropping each cluster stops its server and removes its folder.
    drop(clusters);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(cluster: &TempCluster) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&cluster.url("postgres"), NoTls)
            .await
            .expect("connect to the throwaway cluster");
        tokio::spawn(connection);
        client
    }

    async fn select_one(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
        Ok(client.query_one("SELECT 1", &[]).await?.get(0))
    }

    #[tokio::test]
    async fn starts_stops_restarts_and_cleans_up() {
        let mut cluster = TempCluster::start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let (port, dir) = (cluster.port(), cluster.dir.clone());
        let client = connect(&cluster).await;
        assert_eq!(select_one(&client).await.unwrap(), 1);

        // Fast shutdown must not wait for the open session.
        cluster.stop().await.unwrap();
        assert!(select_one(&client).await.is_err());

        cluster.restart().await.unwrap();
        assert_eq!(cluster.port(), port);
        assert_eq!(select_one(&connect(&cluster).await).await.unwrap(), 1);

        cluster.shutdown().await.unwrap();
        assert!(!dir.exists(), "{} should be gone", dir.display());
    }

    #[test]
    fn versioned_dirs_put_the_newest_first() {
        let parent = create_temp_folder().unwrap();
        for name in ["9.6", "15", "postgresql", "postgresql@16", "16", "other"] {
            fs::create_dir(parent.join(name)).unwrap();
        }
        let names = |prefix| -> Vec<String> {
            versioned_dirs(&parent, prefix)
                .iter()
                .map(|dir| {
                    dir.parent()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        assert_eq!(names("postgresql"), ["postgresql@16", "postgresql"]);
        assert_eq!(names("")[..3], ["16", "15", "9.6"]);
        fs::remove_dir_all(parent).unwrap();
    }
}
