//! Test databases are dropped when the test that made them ends, so a run leaves the server (the
//! throwaway cluster, or the developer's own `DATABASE_URL`) no fuller than it found it: each one
//! is a copy of `template1` (7.5 MB), and the suite makes hundreds, which filled small CI disks.
//!
//! libtest runs each test on a thread of its own, so a database is registered with the thread that
//! made it, and when that thread exits (after the test's runtime, and every relay in it, has
//! stopped) it goes to one reaper thread that drops it. With `--test-threads=1` tests run on the
//! main thread and their databases last until the run ends.

use std::cell::RefCell;
use std::sync::OnceLock;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_postgres::NoTls;

/// Drops the database `name` of the test server once the current thread exits.
pub fn drop_database_when_thread_exits(name: String) {
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
    let admin_url = super::server_url_template().replace("{db}", "postgres");
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
