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

mod bin_dir;
mod error;
mod exit;
mod os;
mod process;
pub mod test_server;

pub use bin_dir::find_server_bin_dir;
pub use error::ClusterError;
pub use exit::stop_at_exit;
pub use os::{is_root, signal, signal_group};
use process::{KillGroupOnDrop, ServerUser, Shutdown};

/// Environment variable naming the server binary directory, which overrides the search.
const BIN_DIR_ENV: &str = "PGRELAY_PG_BINDIR";

/// Server settings for a cluster whose data is deleted anyway: durability is traded for speed and
/// disk (WAL is recycled after 128 MB rather than 1 GB: each `CREATE DATABASE` writes its template
/// to WAL, and a test suite creates hundreds), and the connection limit leaves room for load tests.
const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_wal_size", "128MB"),
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
        let mut cluster = TempCluster::empty(settings)?;
        cluster.init_data_dir().await?;
        cluster.launch_on_a_free_port().await?;
        Ok(cluster)
    }

    /// Starts a streaming replica of this cluster: a cluster of its own, in its own temporary
    /// folder and on its own free port, made with `pg_basebackup -R` (which writes
    /// `primary_conninfo` and `standby.signal`, so the copy starts as a hot standby that
    /// follows this server's WAL) and started with this cluster's settings.
    ///
    /// A standby answers reads but cannot LISTEN or write; `pg_wal_replay_pause()` on it stops
    /// replay, which is how tests make it lag. This cluster must keep the defaults that allow
    /// it (`wal_level = replica`, `max_wal_senders` above zero); initdb's `pg_hba.conf` already
    /// trusts local replication connections. Stopping this cluster leaves the replica running,
    /// retrying to connect; dropping the replica stops and removes it like any cluster.
    pub async fn start_replica(&self) -> Result<TempCluster, ClusterError> {
        let settings: Vec<(&str, &str)> = self
            .settings
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let mut replica = TempCluster::empty(&settings)?;
        replica.create_dirs()?;
        let mut backup = replica.server_command("pg_basebackup");
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(replica.data_dir())
            // -R: configured as a standby of this server; a fast checkpoint, no fsync (the copy
            // is as disposable as the original), WAL streamed alongside the copy.
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        let output = run_to_end(backup, "pg_basebackup").await?;
        if !output.status.success() {
            return Err(ClusterError::Tool {
                program: "pg_basebackup",
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        replica.launch_on_a_free_port().await?;
        Ok(replica)
    }

    /// A cluster whose folder exists and nothing else yet; any early return from here on
    /// removes the folder through `Drop`.
    fn empty(settings: &[(&str, &str)]) -> Result<TempCluster, ClusterError> {
        Ok(TempCluster {
            bin_dir: find_server_bin_dir()?,
            server_user: ServerUser::for_this_process()?,
            dir: create_temp_folder()?,
            settings: settings
                .iter()
                .map(|&(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            port: 0,
            postmaster: None,
        })
    }

    /// Launches the server on a free port, trying another when a process takes it first.
    async fn launch_on_a_free_port(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            match self.launch().await {
                Err(ClusterError::PortInUse { port, .. }) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port, "another process took the port first; trying another");
                    attempt += 1;
                }
                result => return result,
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

    /// Creates the data and socket directories for the server user, which must be able to
    /// pass through our folder whatever our umask is.
    fn create_dirs(&self) -> Result<(), ClusterError> {
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
        Ok(())
    }

    /// Creates the directories and runs initdb.
    async fn init_data_dir(&self) -> Result<(), ClusterError> {
        self.create_dirs()?;
        let mut initdb = self.server_command("initdb");
        initdb
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            // The C locale sorts the same everywhere; --no-sync because the data is disposable.
            .args(["--locale=C", "--no-sync"]);
        let output = run_to_end(initdb, "initdb").await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Tool {
                program: "initdb",
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// A command for one of the server binaries, run as the server user with no standard input.
    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.server_binary(program));
        // Our own working directory (say /root) may be closed to the server user.
        command.current_dir(&self.dir).stdin(Stdio::null());
        if let Some(user) = self.server_user {
            // When root sets the uid, std also drops root's supplementary groups.
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// Where one of the server's binaries is: in the binary directory, or beside the real
    /// `postgres` when that directory only links to it (an install that puts `initdb` and
    /// `postgres` on PATH by symbolic link, and not the other tools).
    fn server_binary(&self, program: &str) -> PathBuf {
        let beside = self.bin_dir.join(program);
        if beside.is_file() {
            return beside;
        }
        fs::canonicalize(self.bin_dir.join("postgres"))
            .ok()
            .and_then(|postgres| Some(postgres.parent()?.join(program)))
            .unwrap_or(beside)
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

/// Runs one of the server's tools (initdb, pg_basebackup) to its end, out of reach of the
/// terminal's Ctrl-C like the server, and returns what it printed on stderr with its status.
async fn run_to_end(
    mut command: Command,
    program: &str,
) -> Result<std::process::Output, ClusterError> {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = tokio::process::Command::from(command)
        .spawn()
        .map_err(io_error(format!("run {program}")))?;
    // If `start` is dropped halfway, the tool must die together with what it runs (initdb's
    // `postgres --single`), or they would go on writing into the folder `Drop` is removing.
    let mut group = KillGroupOnDrop(child.id());
    let output = child
        .wait_with_output()
        .await
        .map_err(io_error(format!("run {program}")))?;
    // The tool has been reaped, so its pid (and group id) may now belong to someone else.
    group.0 = None;
    Ok(output)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bin_dir::versioned_dirs;

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

    /// A replica follows its primary's writes, answers reads, refuses writes, and stops
    /// following while its replay is paused.
    #[tokio::test]
    async fn a_replica_follows_its_primary() {
        let primary = TempCluster::start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let replica = primary
            .start_replica()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        assert_ne!(replica.port(), primary.port());
        let (writer, reader) = (connect(&primary).await, connect(&replica).await);
        let in_recovery: bool = reader
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(in_recovery, "a replica is a standby");
        assert!(reader
            .batch_execute("CREATE TABLE t (n int)")
            .await
            .is_err());

        writer
            .batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        wait_for_rows(&reader, 1).await;

        reader
            .batch_execute("SELECT pg_wal_replay_pause()")
            .await
            .unwrap();
        writer
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rows(&reader).await, 1, "paused replay shows nothing new");
        reader
            .batch_execute("SELECT pg_wal_replay_resume()")
            .await
            .unwrap();
        wait_for_rows(&reader, 2).await;
    }

    /// The rows of table `t`, or 0 while it does not exist yet.
    async fn rows(client: &tokio_postgres::Client) -> i64 {
        match client.query_one("SELECT count(*) FROM t", &[]).await {
            Ok(row) => row.get(0),
            Err(_) => 0,
        }
    }

    async fn wait_for_rows(client: &tokio_postgres::Client, expected: i64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while rows(client).await != expected {
            assert!(
                Instant::now() < deadline,
                "the replica never showed {expected} rows"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
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
