//! What the examples that measure a given `pgrelay` binary share: the binary named on their
//! command line, a migrated throwaway PostgreSQL, and `pgrelay serve` as a child process
//! (started on a free loopback port, ready once `/readyz` says so, killed when dropped).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgrelay_cluster::TempCluster;
use tokio_postgres::NoTls;

/// Any error, for examples.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a measuring example starts.
pub struct Setup {
    /// The `pgrelay` binary under test.
    pub binary: String,
    /// Kept for its life: the cluster stops when this is dropped.
    pub _cluster: TempCluster,
    /// The migrated database.
    pub url: String,
    /// A connection to it, as the schema owner.
    pub db: tokio_postgres::Client,
}

/// Reads the binary from the command line of `example`, starts and migrates a throwaway
/// cluster and connects to it.
pub async fn setup(example: &str) -> Result<Setup, BoxError> {
    let binary = std::env::args().nth(1).ok_or_else(|| {
        format!("usage: cargo run --release --example {example} -- PATH/TO/pgrelay")
    })?;
    let cluster = TempCluster::start().await?;
    let url = cluster.url("postgres");
    pgrelay::migrate::migrate(&url, "pgrelay").await?;
    let (db, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(connection);
    Ok(Setup {
        binary,
        _cluster: cluster,
        url,
        db,
    })
}

/// The relay under test; killed when dropped.
pub struct Relay {
    pub child: Child,
    pub base: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Starts `binary serve` on `database_url`, verifying tokens with `secret`.
    pub async fn start(binary: &str, database_url: &str, secret: &str) -> Result<Relay, BoxError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("PGRELAY_SECRET", secret)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let relay = Relay {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..500 {
            if let Ok(response) = reqwest::get(format!("{}/readyz", relay.base)).await {
                if response.status() == 200 {
                    return Ok(relay);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("the relay never became ready".into())
    }

    /// The relay's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }
}

/// The resident set size of process `pid` in KiB (0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
