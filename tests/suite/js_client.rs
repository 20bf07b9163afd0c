//! The npm package `@pgrelay/client` (clients/js), packed with `npm pack` as it would be
//! published, passes its own tests in Node against a real relay.
//!
//! Needs Node.js 18+ and npm; plain `cargo test` reports it as ignored, `.ci/run` runs it.

use std::path::Path;
use std::process::Command;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and npm: run .ci/run, or cargo test -- --include-ignored once installed"]
async fn the_packed_client_passes_its_tests_against_a_relay() {
    let db = fresh_database().await;
    // The join desk: a `join` message (payload `{room}`) makes its sender a member of the
    // room, through a watched membership table, so the package's test can change a stream's
    // rooms with nothing but the relay's HTTP API.
    connect(&db)
        .await
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.members (member text, room text, PRIMARY KEY (member, room));
             CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
                 SELECT coalesce(array_agg(room), '{}') FROM app.members
                  WHERE member = participant $$;
             SELECT pgrelay.watch_membership('app.members'::regclass,
                                             participant => 'NEW.member', room => 'NEW.room');
             CREATE FUNCTION app.join() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO app.members VALUES (NEW.sender, NEW.payload ->> 'room')
                     ON CONFLICT DO NOTHING;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER app_join AFTER INSERT ON pgrelay.messages
                 FOR EACH ROW WHEN (NEW.kind = 'join') EXECUTE FUNCTION app.join();",
        )
        .await
        .unwrap();
    // Small, so the package's test can publish a message the relay streams as a stand-in.
    let relay = RelayProcess::start(&db, &["--max-event-bytes", "4096"], None).await;
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let scratch = tempdir();
    let run = |command: &mut Command| {
        let output = command
            .output()
            .expect("cannot run node or npm; .ci/run installs them");
        assert!(
            output.status.success(),
            "{command:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let tarball = run(Command::new("npm")
        .args(["pack", "--silent", "--pack-destination"])
        .arg(&scratch)
        .current_dir(&package));
    run(Command::new("tar")
        .arg("xzf")
        .arg(scratch.join(tarball.trim()))
        .current_dir(&scratch));
    let unpacked = scratch.join("package");
    for file in ["src/index.js", "index.d.ts", "README.md", "package.json"] {
        assert!(unpacked.join(file).exists(), "the package lacks {file}");
    }
    let report = tokio::task::spawn_blocking(move || {
        run(Command::new("node")
            // A failing test must not leave a reconnecting client keeping Node alive.
            .args([
                "--test",
                "--test-force-exit",
                "--test-timeout=60000",
                "test/",
            ])
            .current_dir(&unpacked)
            .env("RELAY_URL", &relay.base)
            .env("RELAY_MAX_EVENT_BYTES", "4096")
            .env("RELAY_JOIN_KIND", "join")
            .env("PGRELAY_SECRET", SECRET))
    })
    .await
    .unwrap();
    let summary: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("# ") && !line.starts_with("# Subtest"))
        .collect();
    eprintln!("node --test on the packed package: {}", summary.join(", "));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A fresh folder for the packed package.
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgrelay-js-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
