-- Rooms and broadcast.
--
-- A message's `participants` holds addresses: a person (`alice`), a room (`#general`) or
-- everyone (`*`). A stream's addresses are its participant, the rooms its token grants, the
-- rooms `pgrelay.member_rooms` returns for it, and `*`; it receives a message when the two
-- sets meet. The existing GIN index on `participants` answers `participants && addresses`,
-- so catch-up over the union stays one index scan, however many rooms a member has.

-- The rooms `participant` belongs to, asked by the relay when a stream opens and on every
-- other request. The default: none. An app replaces it (it is the schema owner's to replace)
-- with a query on its own membership table, typically SECURITY DEFINER so that the relay's
-- role needs no privilege on that table, and grants EXECUTE to the relay's role:
--
--   CREATE OR REPLACE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
--   LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
--       SELECT coalesce(array_agg('#' || room), '{}') FROM app.memberships
--        WHERE member = participant $$;
--
-- Only names that start with `#` and follow the name rule count as rooms; anything else the
-- function returns is ignored.
DO $$
BEGIN
    IF to_regprocedure('pgrelay.member_rooms(text)') IS NULL THEN
        CREATE FUNCTION pgrelay.member_rooms(participant text) RETURNS text[]
        LANGUAGE sql STABLE PARALLEL SAFE AS 'SELECT ''{}''::text[]';
    END IF;
END
$$;

-- Membership is the app's business: only roles it grants may ask.
REVOKE EXECUTE ON FUNCTION pgrelay.member_rooms(text) FROM PUBLIC;

INSERT INTO pgrelay.schema_migrations (version) VALUES (6) ON CONFLICT DO NOTHING;
