-- pgrelay 0015: every function's search_path names pg_temp, last.
--
-- A search_path that does not name pg_temp still searches it, first, for tables and types
-- (only functions and operators skip it). pgrelay's functions set `pg_catalog, pgrelay`, so an
-- unqualified table name in them could be a temporary table of the caller's session. The
-- insert triggers decide whether the current user owns pgrelay.messages by reading pg_class:
-- a writer that made a temporary table named pg_class passed for the owner, and could write
-- control rows (`rooms` changes that put anyone in any room, revocations that end anyone's
-- streams), keep another participant's idempotency key on its row (swallowing that
-- participant's next publish with the key), and choose its own placeholder ids (taking the
-- next ones in an open transaction made every other insert wait for it and then fail).
-- Found by an outside review; PostgreSQL's manual ("Writing SECURITY DEFINER Functions
-- Safely") gives this remedy: name pg_temp last.
--
-- The functions that attach() and watch_membership() generate name pg_temp already (0008,
-- 0010). A later file that re-creates a function repeats its SET clauses, pg_temp included
-- (`tests/suite/sql.rs` checks).
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

DO $$
DECLARE
    found record;
BEGIN
    FOR found IN
        SELECT p.oid::regprocedure AS signature,
               substr(setting, length('search_path=') + 1) AS path
          FROM pg_proc p, unnest(p.proconfig) setting
         WHERE p.pronamespace = 'pgrelay'::regnamespace
           AND setting LIKE 'search\_path=%'
           AND setting NOT LIKE '%pg\_temp'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %s, pg_temp',
                       found.signature, found.path);
    END LOOP;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (15) ON CONFLICT DO NOTHING;
