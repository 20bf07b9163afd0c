//! `sql/schema.sql`: every object of the `pgrelay` schema in its current definition, in one
//! file, generated from a freshly migrated database. Migrations are append-only, so the
//! current definition of a function may live in any of them (0005 redefined ten of 0001's);
//! this file is where a reader finds it. The test fails when a migration changes the schema
//! and the file was not regenerated: `PGRELAY_WRITE_SCHEMA=1 cargo test --test suite schema`.
//!
//! The dump is written from the catalog rather than by `pg_dump`, whose output changes with
//! its version: `pg_get_functiondef` and friends give the same text on every supported server.

use crate::common::*;
use tokio_postgres::Client;

/// Where the generated file lives, relative to the crate.
const SCHEMA_FILE: &str = "sql/schema.sql";

const HEADER: &str = "\
-- pgrelay's schema as `pgrelay migrate` leaves it: the current definition of every table,
-- index, trigger, sequence and function in schema `pgrelay`, in one place.
--
-- GENERATED from a freshly migrated database by tests/suite/schema.rs; do not edit. The
-- migrations (sql/NNNN_*.sql) are what databases run, and their comments say why each object
-- is as it is; after adding one, regenerate this file with
-- `PGRELAY_WRITE_SCHEMA=1 cargo test --test suite schema` (the test fails until then).
";

/// The file matches what the migrations produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_file_matches_the_migrations() {
    let db = fresh_database().await;
    let client = connect(&db).await;
    let generated = describe(&client).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_FILE);
    if std::env::var_os("PGRELAY_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{SCHEMA_FILE} is out of date: regenerate it with \
         `PGRELAY_WRITE_SCHEMA=1 cargo test --test suite schema`"
    );
}

/// The schema's definition, section by section.
async fn describe(client: &Client) -> String {
    let mut out = String::from(HEADER);
    for (title, sql) in [
        ("Sequences", SEQUENCES),
        ("Tables", TABLES),
        ("Indexes", INDEXES),
        ("Triggers", TRIGGERS),
        ("Functions", FUNCTIONS),
        ("Functions everyone may execute", PUBLIC_EXECUTE),
    ] {
        out.truncate(out.trim_end().len());
        out.push_str(&format!("\n\n-- {title}\n\n"));
        for row in client.query(sql, &[]).await.unwrap() {
            out.push_str(row.get::<_, &str>(0).trim_end());
            out.push_str("\n\n");
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

const SEQUENCES: &str = "
    SELECT format('CREATE SEQUENCE %s AS %s;', c.oid::regclass, format_type(s.seqtypid, NULL))
      FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
     WHERE c.relnamespace = ANY (ARRAY['pgrelay'::regnamespace, 'pgrelay_order'::regnamespace])
     ORDER BY c.relname";

const TABLES: &str = "
    SELECT format(E'CREATE %sTABLE %s (%s%s\\n);%s',
                  CASE c.relpersistence WHEN 'u' THEN 'UNLOGGED ' ELSE '' END,
                  c.oid::regclass,
                  coalesce((SELECT string_agg(format(E'\\n    %I %s%s%s', a.attname,
                                   format_type(a.atttypid, a.atttypmod),
                                   CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                   coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')),
                                   ',' ORDER BY a.attnum)
                              FROM pg_attribute a
                              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''),
                  coalesce((SELECT string_agg(format(E',\\n    CONSTRAINT %I %s', k.conname,
                                   pg_get_constraintdef(k.oid)), '' ORDER BY k.conname)
                              FROM pg_constraint k WHERE k.conrelid = c.oid), ''),
                  coalesce(E'\\nCOMMENT ON TABLE ' || c.oid::regclass || ' IS '
                           || quote_literal(obj_description(c.oid, 'pg_class')) || ';', ''))
      FROM pg_class c
     WHERE c.relnamespace = ANY (ARRAY['pgrelay'::regnamespace, 'pgrelay_order'::regnamespace]) AND c.relkind = 'r'
     ORDER BY c.relname";

const INDEXES: &str = "
    SELECT pg_get_indexdef(i.indexrelid) || ';'
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE c.relnamespace = ANY (ARRAY['pgrelay'::regnamespace, 'pgrelay_order'::regnamespace])
       AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
     ORDER BY c.relname";

const TRIGGERS: &str = "
    SELECT pg_get_triggerdef(t.oid) || ';'
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace = ANY (ARRAY['pgrelay'::regnamespace, 'pgrelay_order'::regnamespace]) AND NOT t.tgisinternal
     ORDER BY c.relname, t.tgname";

const FUNCTIONS: &str = "
    SELECT pg_get_functiondef(p.oid) || ';'
      FROM pg_proc p
     WHERE p.pronamespace = ANY (ARRAY['pgrelay'::regnamespace, 'pgrelay_order'::regnamespace])
     ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)";

const PUBLIC_EXECUTE: &str = "
    SELECT '-- ' || string_agg(p.oid::regprocedure::text, E'\\n-- '
                               ORDER BY p.proname, pg_get_function_identity_arguments(p.oid))
      FROM pg_proc p
     WHERE p.pronamespace = ANY (ARRAY['pgrelay'::regnamespace, 'pgrelay_order'::regnamespace])
       AND EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) acl
                    WHERE acl.grantee = 0 AND acl.privilege_type = 'EXECUTE')";
