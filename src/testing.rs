//! What unit tests that need PostgreSQL share: a fresh database on the test server
//! (`pgrelay_cluster::test_server`, as the integration suite uses), migrated, and a connection.

pub use pgrelay_cluster::test_server::connect;

/// A fresh database with pgrelay's schema, dropped when the test ends.
pub async fn fresh_database() -> String {
    let url = pgrelay_cluster::test_server::empty_database().await;
    crate::migrate::migrate(&url, "pgrelay")
        .await
        .expect("migrating a test database");
    url
}
