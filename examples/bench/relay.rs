//! The relay process.

use super::*;

/// A `pgrelay serve` child process on a free loopback port; killed when dropped.
pub(crate) struct RelayChild {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) spawned: Instant,
    pub(crate) log: PathBuf,
}

impl RelayChild {
    pub(crate) fn spawn(bin: &Path, url: &str, log: PathBuf) -> Res<RelayChild> {
        RelayChild::spawn_with(bin, url, log, &[])
    }

    /// [`RelayChild::spawn`] with more `serve` flags.
    pub(crate) fn spawn_with(
        bin: &Path,
        url: &str,
        log: PathBuf,
        flags: &[&str],
    ) -> Res<RelayChild> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stderr = std::fs::File::create(&log)?;
        let mut command = Command::new(bin);
        // The environment is cleared so the relay runs as configured here, but for the worker
        // count, which runs can compare (`PGRELAY_WORKER_THREADS=1 bench …`).
        command
            .arg("serve")
            .args(["--bind", &addr.to_string()])
            // Room for 10,000 streams plus the odd request.
            .args(["--max-connections", "20000"])
            .args(flags)
            .env_clear()
            .env("DATABASE_URL", url)
            .env("PGRELAY_SECRET", SECRET)
            .env("PGRELAY_LOG", "warn")
            .envs(
                std::env::var("PGRELAY_WORKER_THREADS")
                    .map(|threads| ("PGRELAY_WORKER_THREADS", threads)),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", bin.display()))?;
        Ok(RelayChild {
            child,
            addr,
            spawned,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every millisecond until it answers 200; returns when it did.
    pub(crate) async fn wait_ready(&mut self, patience: Duration) -> Res<Instant> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/readyz", None).await {
                return Ok(Instant::now());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "pgrelay serve exited during start-up ({status}):\n{}",
                    self.log_tail()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pgrelay serve was not ready after {patience:?}:\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Resident set size in KiB, from /proc/<pid>/status.
    pub(crate) fn rss_kib(&self) -> Res<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS in /proc/<pid>/status".into())
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A GET with `Connection: close`; returns the status and the body (read to its
/// Content-Length).
pub(crate) async fn http_get(
    addr: SocketAddr,
    target: &str,
    bearer: Option<&str>,
) -> Res<(u16, Vec<u8>)> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n{authorization}Connection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(64 * 1024);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut expected: Option<usize> = None;
    loop {
        if let Some(head_end) = find(&response, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
            let length = head.lines().find_map(|line| {
                line.strip_prefix("content-length:")
                    .and_then(|value| value.trim().parse::<usize>().ok())
            });
            expected = length.map(|length| head_end + 4 + length);
        }
        if expected.is_some_and(|total| response.len() >= total) {
            break;
        }
        let read = socket.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..read]);
    }
    let head_end = find(&response, b"\r\n\r\n").ok_or("no complete response head")?;
    let status = std::str::from_utf8(&response[..head_end])?
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("a malformed status line")?;
    Ok((status, response[head_end + 4..].to_vec()))
}
