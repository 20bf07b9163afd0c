//! The npm package `@pgrelay/client` (clients/js) as people get it: the committed build
//! (clients/js/dist, which the relay compiles in and serves at `/v1/client.js`) is what
//! `npm run build` makes from `src/`; the file a browser loads fits its size budget; and the
//! tarball `npm pack` makes passes the package's own tests against a relay and, installed into
//! a fresh project (tests/npm-project), works from Node ESM, Node CommonJS and `tsc --strict`.
//!
//! All but the size budget need Node.js 18+, npm and the npm registry (esbuild, TypeScript):
//! plain `cargo test` reports them as ignored, `.ci/run` runs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common::external::ScratchDir;
use crate::common::*;

/// The package's folder in this repository.
const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");

/// The file a browser loads (the relay's `/v1/client.js`): minified, one ES module.
const BROWSER_FILE: &str = "dist/pgrelay-client.min.js";

/// The browser file's budget, gzipped (`gzip -c`, level 6, as a server compresses it).
const GZIP_BUDGET: usize = 8192;

/// The file a browser loads stays small: at most [`GZIP_BUDGET`] bytes gzipped. Runs in plain
/// `cargo test`: it needs only `gzip`, which every system with PostgreSQL's server has.
#[test]
fn the_browser_file_fits_its_gzipped_size_budget() {
    let file = Path::new(PACKAGE).join(BROWSER_FILE);
    assert!(
        file.is_file(),
        "{} is missing: run `npm run build` in clients/js",
        file.display()
    );
    let gzipped = run(Command::new("gzip").arg("-c").arg(&file));
    eprintln!("{BROWSER_FILE}: {} bytes gzipped", gzipped.len());
    assert!(
        gzipped.len() <= GZIP_BUDGET,
        "{BROWSER_FILE} is {} bytes gzipped, over its budget of {GZIP_BUDGET}",
        gzipped.len()
    );
}

/// Nobody edits `src/` and forgets to rebuild: the committed `dist/` is byte for byte what
/// `npm run build` makes (with the locked esbuild) from the committed sources.
#[test]
#[ignore = "needs Node.js and npm: run .ci/run, or cargo test -- --include-ignored once installed"]
fn the_committed_build_is_what_npm_run_build_makes() {
    let packed = Packed::new("build");
    let committed = files_in(&Path::new(PACKAGE).join("dist"));
    let built = files_in(&packed.source.join("dist"));
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        built.keys().collect::<Vec<_>>(),
        "clients/js/dist holds other files than `npm run build` makes: run it and commit dist/"
    );
    for (name, bytes) in &committed {
        assert!(
            built[name] == *bytes,
            "clients/js/dist/{name} is not what `npm run build` makes from src/: run it and \
             commit dist/"
        );
    }
}

/// The package's own tests (clients/js/test) pass on the unpacked tarball against a relay.
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
    let packed = Packed::new("tests");
    run(Command::new("tar")
        .arg("xzf")
        .arg(&packed.tarball)
        .current_dir(&packed.scratch.0));
    let unpacked = packed.scratch.0.join("package");
    for file in [
        "src/index.js",
        "index.d.ts",
        "README.md",
        "package.json",
        BROWSER_FILE,
    ] {
        assert!(unpacked.join(file).exists(), "the package lacks {file}");
    }
    let report = tokio::task::spawn_blocking(move || {
        text(run(Command::new("node")
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
            .env("PGRELAY_SECRET", SECRET)))
    })
    .await
    .unwrap();
    let summary: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("# ") && !line.starts_with("# Subtest"))
        .collect();
    eprintln!("node --test on the packed package: {}", summary.join(", "));
}

/// The tarball installed into a fresh project (tests/npm-project, with TypeScript from the
/// registry) works as people use it: Node ESM `import`, CommonJS `require` and the browser
/// build each receive a message from a real relay and get a `PgRelayError` for a refused
/// token, and `tsc --strict` accepts the project's typed use of it (generic payloads, the
/// error class) and rejects its mistakes, under module nodenext (ESM and CommonJS files) and
/// moduleResolution bundler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and npm: run .ci/run, or cargo test -- --include-ignored once installed"]
async fn a_fresh_project_uses_the_packed_client_from_esm_commonjs_and_typescript() {
    let db = fresh_database().await;
    let relay = RelayProcess::start(&db, &[], None).await;
    let packed = Packed::new("fresh-project");
    let project = ScratchDir::new("npm-project");
    copy_folder(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/npm-project"),
        &project.0,
    );
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .arg(&packed.tarball)
        .current_dir(&project.0));

    let participant = "alice";
    let stranger_keys =
        pgrelay::auth::Keys::from_secret_list("not-the-relay-secret-0123456789-0123").unwrap();
    let node = |script: &str| -> Value {
        let out = text(run(Command::new("node")
            .arg(script)
            .current_dir(&project.0)
            .env("RELAY_URL", &relay.base)
            .env("PARTICIPANT", participant)
            .env("TOKEN", relay.token(participant, &["publish"]))
            .env(
                "WRONG_TOKEN",
                stranger_keys.mint(
                    participant,
                    std::time::Duration::from_secs(600),
                    &["publish"],
                ),
            )));
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{script} printed {out}"))
    };
    let refusal = json!({
        "instance": true, "name": "PgRelayError", "status": 401, "code": "bad_signature",
        "final": true,
    });
    for (script, entry) in [
        ("esm.mjs", "/src/index.js"),
        ("cjs.cjs", "/dist/index.cjs"),
        ("browser.mjs", "/dist/pgrelay-client.min.js"),
    ] {
        // The relay is a process of its own: nothing in this runtime needs to run meanwhile.
        let mut report = tokio::task::block_in_place(|| node(script));
        let resolved = report["entry"].take();
        assert!(
            resolved.as_str().is_some_and(|path| path.ends_with(entry)),
            "{script} loaded {resolved}, not the package's {entry}"
        );
        assert_eq!(
            report,
            json!({"entry": null, "received": {"text": "hello"}, "request": refusal, "stream": refusal}),
            "{script}"
        );
    }

    let tsc = project.0.join("node_modules/.bin/tsc");
    for config in ["tsconfig.nodenext.json", "tsconfig.bundler.json"] {
        run(Command::new(&tsc)
            .args(["-p", config])
            .current_dir(&project.0));
    }
}

/// The package as `npm pack` makes it, from a copy of clients/js (its sources and lock file,
/// without `node_modules` or `dist/`) where `npm ci` installed the locked esbuild: packing
/// runs `prepack`, so the copy's `dist/` is a fresh build.
struct Packed {
    /// The folder holding the tarball and the copy; removed on drop.
    scratch: ScratchDir,
    /// The copy of clients/js, built.
    source: PathBuf,
    tarball: PathBuf,
}

impl Packed {
    fn new(label: &str) -> Packed {
        let scratch = ScratchDir::new(&format!("js-client-{label}"));
        let source = scratch.0.join("source");
        copy_folder(Path::new(PACKAGE), &source);
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&source));
        let name = text(run(Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&scratch.0)
            .current_dir(&source)));
        let tarball = scratch
            .0
            .join(name.lines().last().unwrap_or_default().trim());
        assert!(tarball.is_file(), "npm pack made no {}", tarball.display());
        Packed {
            scratch,
            source,
            tarball,
        }
    }
}

/// Copies the files under `from` to `to`, leaving out what a build or install makes there
/// (`node_modules`, `dist`).
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "node_modules" || name == "dist" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The files directly in `folder` by name, with their bytes.
fn files_in(folder: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(folder)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", folder.display()))
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// Runs `command`, failing the test with its output unless it succeeds; its stdout.
fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap_or_else(|error| {
        panic!(
            "cannot run {:?} ({error}); .ci/run installs node and npm",
            command.get_program()
        )
    });
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("the output is UTF-8")
}
