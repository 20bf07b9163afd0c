//! TLS to PostgreSQL, with libpq's `sslmode` meanings: hosted databases require it.

use std::process::Command;

use crate::common::external::{self_signed_certificate, ScratchDir};
use crate::common::*;
use pgrelay_cluster::TempCluster;
use serde_json::json;

/// A cluster with TLS on, using a fresh self-signed certificate.
async fn tls_cluster(dir: &ScratchDir) -> TempCluster {
    let (key, cert) = self_signed_certificate(&dir.0);
    // PostgreSQL insists that only its own account can read the key.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if pgrelay_cluster::is_root() {
        let owner = Command::new("chown")
            .arg("postgres")
            .arg(&key)
            .status()
            .unwrap();
        assert!(owner.success());
    }
    let (key, cert) = (key.display().to_string(), cert.display().to_string());
    TempCluster::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert),
        ("ssl_key_file", &key),
    ])
    .await
    .unwrap()
}

/// With `sslmode=require` every relay connection is encrypted, the self-signed certificate is
/// accepted as libpq would, and messages flow; `verify-full` refuses that certificate.
#[ignore = "needs openssl: run .ci/run, or cargo test -- --include-ignored once installed"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_and_verify_full_checks_the_certificate() {
    let dir = ScratchDir::new("tls");
    let cluster = tls_cluster(&dir).await;
    let url = format!("{}?sslmode=require", cluster.url("postgres"));
    pgrelay::migrate::migrate(&url, "pgrelay").await.unwrap();

    let relay = RelayProcess::start(&url, &[], None).await;
    let mut alice = relay.subscribe("alice", "", None).await;
    alice.opening_position().await;
    let client = connect(&cluster.url("postgres")).await;
    insert(&client, &["alice"], json!({"over": "tls"})).await;
    assert_eq!(alice.next_message().await.2["payload"]["over"], "tls");

    let rows = client
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name IN ('pgrelay', 'pgrelay-listen')",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    assert!(names.contains(&"pgrelay-listen".to_owned()), "{names:?}");
    assert!(names.contains(&"pgrelay".to_owned()), "{names:?}");
    assert!(
        rows.iter().all(|row| row.get::<_, bool>(1)),
        "a relay connection is not encrypted"
    );

    let strict = format!("{}?sslmode=verify-full", cluster.url("postgres"));
    let error = pgrelay::migrate::migrate(&strict, "pgrelay")
        .await
        .unwrap_err();
    let chain = format!("{error:?}");
    assert!(chain.to_lowercase().contains("certificate"), "{chain}");
}
