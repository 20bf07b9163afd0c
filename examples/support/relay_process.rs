//! A `pgrelay serve` child process for the examples that measure a given binary: started on a
//! free loopback port, ready once `/readyz` says so, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Any error, for examples.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
