//! Finding the server binaries, even where (as on Debian) they are not on `PATH`.

use super::*;

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

pub(crate) fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "postgres"]
        .iter()
        .all(|binary| dir.join(binary).is_file())
}

/// What `pg_config --bindir` prints, if pg_config is installed. On Debian it names the server's
/// directory although the server binaries themselves are kept off PATH.
pub(crate) fn pg_config_bindir() -> Option<PathBuf> {
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
pub(crate) fn versioned_dirs(parent: impl AsRef<Path>, prefix: &str) -> Vec<PathBuf> {
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
