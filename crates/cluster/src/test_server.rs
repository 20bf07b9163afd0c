//! One PostgreSQL server for a whole test binary, and a fresh database in it for each test.
//!
//! The server is `DATABASE_URL` when set (each test still gets its own database in it), else one
//! throwaway [`TempCluster`], stopped when the binary exits. pgrelay's integration suite and its
//! unit tests that need a database both make their databases here.
//!
//! Test databases are dropped when the test that made them ends, so a run leaves the server no
//! fuller than it found it: each one is a copy of `template1` (7.5 MB), and the suite makes
//! hundreds, which filled small CI disks. libtest runs each test on a thread of its own, so a
//! database is registered with the thread that made it, and when that thread exits (after the
//! test's runtime, and every relay in it, has stopped) it goes to one reaper thread that drops
//! it. With `--test-threads=1` tests run on the main thread and their databases last until the
//! run ends.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_postgres::NoTls;

use crate::{stop_at_exit, TempCluster};

/// A URL of the test server with `{db}` where the database name goes.
pub fn url_template() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return with_database(&url, "{db}");
        }
        // Started on its own runtime: each #[tokio::test] has a runtime that ends with the test.
        let cluster = std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("a runtime to start the test server on")
                .block_on(TempCluster::start())
        })
        .join()
        .expect("the thread starting the test server panicked")
        .unwrap_or_else(|error| panic!("cannot start a throwaway PostgreSQL: {error}"));
        let template = cluster.url("{db}");
        stop_at_exit(cluster);
        template
    })
}

/// Replaces the database name in a postgres:// URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map(|i| scheme_end + i);
    let host = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(query) => format!("{host}/{database}?{query}"),
        None => format!("{host}/{database}"),
    }
}

/// The URL of a new, empty database on the test server, dropped when the calling thread (the
/// test) ends.
pub async fn empty_database() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "pgrelay_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let template = url_template();
    let admin = connect(&template.replace("{db}", "postgres")).await;
    // Two statements: CREATE DATABASE refuses to run in the transaction of a multi-statement
    // query.
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .unwrap_or_else(|error| panic!("cannot create a test database: {error}"));
    }
    drop_database_when_thread_exits(name.clone());
    template.replace("{db}", &name)
}

/// A plain connection to `url` on the test server, driven in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test server: {error}"));
    tokio::spawn(connection);
    client
}

/// Drops the database `name` of the test server once the current thread exits.
fn drop_database_when_thread_exits(name: String) {
    // Started now rather than in a thread's exit, where spawning the reaper could fail.
    reaper();
    MADE_BY_THIS_THREAD.with(|made| made.borrow_mut().0.push(name));
}

/// The databases the current thread made; dropping it hands them to the reaper.
struct MadeByThisThread(Vec<String>);

impl Drop for MadeByThisThread {
    fn drop(&mut self) {
        for name in self.0.drain(..) {
            // The reaper only stops with the process, when nothing is left to clean.
            let _ = reaper().send(name);
        }
    }
}

thread_local! {
    static MADE_BY_THIS_THREAD: RefCell<MadeByThisThread> =
        const { RefCell::new(MadeByThisThread(Vec::new())) };
}

/// The reaper thread's inbox, started on first use.
fn reaper() -> &'static UnboundedSender<String> {
    static REAPER: OnceLock<UnboundedSender<String>> = OnceLock::new();
    REAPER.get_or_init(|| {
        let (sender, names) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("drop-test-databases".to_owned())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the database reaper")
                    .block_on(drop_databases(names));
            })
            .expect("a thread for the database reaper");
        sender
    })
}

/// Drops each database it is sent, cutting off whatever still uses it (a relay process that
/// outlived its test, PgBouncer's pooled connections). A failure is only reported: the database
/// is left behind, which costs disk, not correctness.
async fn drop_databases(mut names: mpsc::UnboundedReceiver<String>) {
    let admin_url = url_template().replace("{db}", "postgres");
    while let Some(name) = names.recv().await {
        let dropped = async {
            let (admin, connection) = tokio_postgres::connect(&admin_url, NoTls).await?;
            let connection = tokio::spawn(connection);
            let dropped = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            drop(admin);
            let _ = connection.await;
            dropped
        };
        if let Err(error) = dropped.await {
            eprintln!("note: test database {name} is left behind: {error:?}");
        }
    }
}
