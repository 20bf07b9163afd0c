-- pgrelay 0024: single-row writes and the relays' passes no longer parse SQL function bodies
-- at every statement.
--
-- `perf` on a writer's backend and on the LISTEN session's, at 1,000 single-row transactions
-- a second (BENCHMARKS.md, "The database's share"), found two functions parsed again and again:
--
-- - `valid_kind`, an SQL function, is inlined into the `messages_kind_valid` CHECK, and
--   PostgreSQL prepares CHECK expressions once per statement: every INSERT and every numbering
--   UPDATE parsed the function's text again (8–10% of either backend).
-- - `pending_key`, a SECURITY DEFINER SQL function, cannot be inlined; the insert trigger's
--   call parsed and planned its statement again in every transaction (6% of a writer).
--
-- In PL/pgSQL both are parsed once per session. The rules are the same; a statement of many
-- rows, which parsed them once, is as fast as before (100-row INSERTs: 65–67 µs a row either
-- way).
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE OR REPLACE FUNCTION pgrelay.valid_kind(kind text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    AS $$
BEGIN
    RETURN kind ~ '^[A-Za-z0-9_.:-]{1,64}$'
       AND kind NOT IN ('oversized', 'position', 'presence', 'reset', 'revoked', 'rooms',
                        'token_expired');
END $$;

-- Runs as the owner, so writers need no privilege on the sequence.
CREATE OR REPLACE FUNCTION pgrelay.pending_key() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
BEGIN
    RETURN -nextval('pgrelay.pending_key_seq');
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (24) ON CONFLICT DO NOTHING;
