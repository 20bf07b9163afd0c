//! A TCP proxy on 127.0.0.1 in front of a PostgreSQL server, for connection faults and for a
//! server replaced behind the same address.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections accepted from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewConnections {
    /// Forward bytes both ways.
    Forward,
    /// Accept, then never forward a byte (a server that takes the TCP connection and hangs).
    StallAtAccept,
    /// Forward the client's first packet (the startup message) and the server's answers,
    /// then nothing more from the client (the connection dies right after it opened).
    StallAfterStartup,
}

/// A TCP proxy on 127.0.0.1 in front of a server's port.
pub struct Proxy {
    pub port: u16,
    /// Where new connections go.
    upstream: Arc<AtomicU16>,
    /// Bumped to blackhole every connection open at that moment.
    generation: watch::Sender<u64>,
    new_connections: Arc<Mutex<NewConnections>>,
}

impl Proxy {
    /// A proxy forwarding to `upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, generations) = watch::channel(0u64);
        let new_connections = Arc::new(Mutex::new(NewConnections::Forward));
        let upstream = Arc::new(AtomicU16::new(upstream));
        let modes = Arc::clone(&new_connections);
        let target = Arc::clone(&upstream);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mode = *modes.lock().unwrap();
                tokio::spawn(proxy_connection(
                    inbound,
                    target.load(Ordering::SeqCst),
                    mode,
                    generations.clone(),
                ));
            }
        });
        Proxy {
            port,
            upstream,
            generation,
            new_connections,
        }
    }

    /// Stops forwarding bytes, both ways, on every connection open now, keeping the sockets
    /// open: a half-open TCP connection. Later connections are not affected.
    pub fn blackhole_open_connections(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    pub fn set_new_connections(&self, mode: NewConnections) {
        *self.new_connections.lock().unwrap() = mode;
    }

    /// Sends connections accepted from now on to `upstream` (open ones keep theirs): another
    /// server behind the same address.
    pub fn set_upstream(&self, upstream: u16) {
        self.upstream.store(upstream, Ordering::SeqCst);
    }
}

async fn proxy_connection(
    mut inbound: TcpStream,
    upstream: u16,
    mode: NewConnections,
    mut generations: watch::Receiver<u64>,
) {
    let born = *generations.borrow();
    if mode == NewConnections::StallAtAccept {
        // Hold the socket open and silent.
        return std::future::pending::<()>().await;
    }
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let forward = async {
        match mode {
            NewConnections::StallAfterStartup => {
                let (mut inbound_read, mut inbound_write) = inbound.split();
                let (mut outbound_read, mut outbound_write) = outbound.split();
                let startup = async {
                    let mut buffer = vec![0u8; 8192];
                    let n = inbound_read.read(&mut buffer).await?;
                    outbound_write.write_all(&buffer[..n]).await?;
                    // Nothing the client sends after its startup packet gets through.
                    std::future::pending::<std::io::Result<()>>().await
                };
                let answers = tokio::io::copy(&mut outbound_read, &mut inbound_write);
                let _ = tokio::join!(startup, answers);
            }
            _ => {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        }
    };
    let blackholed = tokio::select! {
        _ = forward => false,
        _ = generations.wait_for(|&g| g > born) => true,
    };
    if blackholed {
        // Hold both sockets open and silent: a half-open connection.
        std::future::pending::<()>().await;
    }
}
