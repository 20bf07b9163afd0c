//! Real PgBouncer and nginx processes for the tests that put them in front of the relay.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;

/// Finds `name` on PATH or in /usr/sbin; a missing tool fails the test with what to install.
pub fn require_binary(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed; install it (Debian: apt-get install {package}) — .ci/run does")
    })
}

/// A private folder that the `postgres` OS user can read, removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pgrelay-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
pub struct Daemon {
    child: Child,
    pub port: u16,
    dir: ScratchDir,
}

impl Daemon {
    /// The text of a file the daemon wrote in its scratch folder (a log, say), or "".
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(name)).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on `port`.
async fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up: {status}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} never listened on port {port}");
}

/// PgBouncer in transaction mode in front of the PostgreSQL server on `pg_port`.
pub async fn pgbouncer(pg_port: u16) -> Daemon {
    let binary = require_binary("pgbouncer", "pgbouncer");
    let dir = ScratchDir::new("pgbouncer");
    let port = free_port();
    let config = format!(
        "[databases]\n* = host=127.0.0.1 port={pg_port}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
         unix_socket_dir =\nauth_type = trust\nauth_file = {dir}/users.txt\n\
         pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 10\n\
         logfile = {dir}/pgbouncer.log\n",
        dir = dir.0.display()
    );
    std::fs::write(dir.0.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
    std::fs::write(dir.0.join("pgbouncer.ini"), config).unwrap();
    let mut command = Command::new(binary);
    // PgBouncer refuses to run as root; -u drops to the postgres user.
    if pgrelay_cluster::is_root() {
        command.args(["-u", "postgres"]);
    }
    let mut child = command
        .arg(dir.0.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "pgbouncer").await;
    Daemon { child, port, dir }
}

/// nginx proxying to the relay at `relay_port`, configured with deploy/nginx-location.conf,
/// with nginx's default access log (the `combined` format) written to `access.log`.
pub async fn nginx(relay_port: u16) -> Daemon {
    let location = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx-location.conf");
    nginx_with(|_, port| {
        format!(
            "upstream pgrelay {{ server 127.0.0.1:{relay_port}; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    include {location};\n  }}\n"
        )
    })
    .await
}

/// nginx with TLS and HTTP/2 on its port, proxying to the relay at `relay_port`, configured
/// with deploy/nginx-http2-server.conf (which includes deploy/nginx-location.conf): the
/// file's port, certificate, relay address and include path become the test's.
pub async fn nginx_http2(relay_port: u16) -> Daemon {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let server = std::fs::read_to_string(format!("{deploy}/nginx-http2-server.conf")).unwrap();
    nginx_with(|dir, port| {
        let (key, cert) = self_signed_certificate(&dir.0);
        [
            ("127.0.0.1:8080", format!("127.0.0.1:{relay_port}")),
            ("listen 443 ssl", format!("listen 127.0.0.1:{port} ssl")),
            (
                "/etc/ssl/certs/relay.example.com.pem",
                cert.display().to_string(),
            ),
            (
                "/etc/ssl/private/relay.example.com.key",
                key.display().to_string(),
            ),
            (
                "/etc/nginx/pgrelay-location.conf",
                format!("{deploy}/nginx-location.conf"),
            ),
        ]
        .into_iter()
        .fold(server, |server, (theirs, ours)| {
            assert!(
                server.contains(theirs),
                "nginx-http2-server.conf lost {theirs:?}"
            );
            server.replace(theirs, &ours)
        })
    })
    .await
}

/// nginx on a free port, with `http` (given nginx's folder and that port) inside its `http`
/// block.
async fn nginx_with(http: impl FnOnce(&ScratchDir, u16) -> String) -> Daemon {
    let binary = require_binary("nginx", "nginx-light");
    let dir = ScratchDir::new("nginx");
    let port = free_port();
    let config = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {dir}/access.log;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           {http}}}\n",
        dir = dir.0.display(),
        http = http(&dir, port),
    );
    std::fs::write(dir.0.join("nginx.conf"), config).unwrap();
    let mut child = Command::new(binary)
        .args(["-e", &format!("{}/error.log", dir.0.display())])
        .arg("-c")
        .arg(dir.0.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "nginx").await;
    Daemon { child, port, dir }
}

/// A fresh self-signed certificate for `localhost` in `dir`: (key, certificate).
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.join("server.key"), dir.join("server.crt"));
    let made = Command::new(require_binary("openssl", "openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    (key, cert)
}
