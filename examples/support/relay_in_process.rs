//! A relay running inside the example's own process (`pgrelay::run`), for examples that need
//! no separate binary.

use std::time::Duration;

use pgrelay::auth::Keys;
use pgrelay::{ConnectionLimits, RelayConfig, Settings};
use tokio::sync::oneshot;

/// A relay in this process; `stop` shuts it down gracefully.
pub struct Relay {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts a relay on `url` (reading `replica` too, if given) with tokens signed by
    /// `secret`, room for 15,000 connections, and waits until it is ready.
    pub async fn start(
        url: &str,
        replica: Option<&str>,
        secret: &str,
    ) -> Result<Relay, Box<dyn std::error::Error + Send + Sync>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let config = RelayConfig {
            database_url: url.to_owned(),
            listen_database_url: url.to_owned(),
            replica_url: replica.map(str::to_owned),
            pool_size: 16,
            keys: Keys::from_secret_list(secret)?,
            settings: Settings::default(),
            limits: ConnectionLimits {
                max_connections: 15_000,
                ..Default::default()
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = pgrelay::run(config, listener, shutdown).await {
                eprintln!("relay failed: {error}");
            }
        });
        for _ in 0..500 {
            if let Ok(response) = reqwest::get(format!("{base}/readyz")).await {
                if response.status() == 200 {
                    return Ok(Relay { base, stop, task });
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err("relay never became ready".into())
    }

    /// Stops the relay and waits for it to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
