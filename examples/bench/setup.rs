//! Setup: the relay binary, file limits, databases.

use super::*;

/// `target/release/pgrelay`, next to this example's `target/release/examples/bench`; built first
/// unless `--no-build`.
pub(crate) fn relay_binary(build: bool) -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("pgrelay"))
        .ok_or("cannot find the target directory from this executable's path")?;
    if build {
        progress("cargo build --release --bin pgrelay…");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--bin", "pgrelay"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map_err(|error| format!("cannot run cargo: {error}"))?;
        if !status.success() {
            return Err(format!("cargo build --release --bin pgrelay failed: {status}").into());
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "{} does not exist: run `cargo build --release` first",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// Raises the open-files limit so 10,000 streams fit; the relay child inherits it. Returns the
/// new soft limit.
pub(crate) fn raise_open_file_limit() -> Res<u64> {
    let soft = pgrelay::open_files::raise_limit(WANTED_FILES)?;
    if soft < NEEDED_FILES {
        return Err(format!(
            "the open-file limit is {soft} and cannot be raised to {NEEDED_FILES}; \
             raise it (ulimit -n) and run again"
        )
        .into());
    }
    Ok(soft)
}

/// A plain connection, driven in the background, named for `pg_stat_activity`.
pub(crate) async fn connect(url: &str, application_name: &str) -> Res<Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates and migrates a database; returns its URL.
pub(crate) async fn create_database(
    cluster: &TempCluster,
    admin: &Client,
    name: &str,
) -> Res<String> {
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = cluster.url(name);
    pgrelay::migrate::migrate(&url, "pgrelay").await?;
    Ok(url)
}

/// Where the relays' stderr goes; removed after a successful run.
pub(crate) struct LogDir {
    pub(crate) path: PathBuf,
}

impl LogDir {
    pub(crate) fn create() -> Res<LogDir> {
        let path = std::env::temp_dir().join(format!("pgrelay-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(LogDir { path })
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(crate) fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub(crate) fn progress(message: impl std::fmt::Display) {
    eprintln!("bench: {message}");
}
