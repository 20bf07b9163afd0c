-- pgrelay 0004: presence, with PostgreSQL as the only broker.
--
-- A participant is online while any relay instance has a live row for them in
-- pgrelay.presence. Instances refresh their rows' heartbeat_at; rows of an instance that
-- crashed simply stop being refreshed and count as gone after the relay's presence TTL, with
-- nobody cleaning up (pgrelay.presence_expire deletes them later and signals the change).
-- The table is UNLOGGED: it is rebuilt within one heartbeat after a crash anyway.
--
-- Changes reach the participant's audience, pgrelay.presence_audience(participant), as the
-- signal `presence` with data {"participant":…,"online":…,"at":…}. Applications replace
-- presence_audience with their own model (workspace members, contacts):
--
--   CREATE OR REPLACE FUNCTION pgrelay.presence_audience(participant text) RETURNS text[]
--       LANGUAGE sql STABLE AS $$ SELECT array_agg(member) FROM workspace_members … $$;
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE UNLOGGED TABLE IF NOT EXISTS pgrelay.presence (
    participant  text        NOT NULL,
    instance     text        NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (participant, instance)
);
CREATE INDEX IF NOT EXISTS presence_instance_idx ON pgrelay.presence (instance);

CREATE TABLE IF NOT EXISTS pgrelay.presence_last_seen (
    participant text PRIMARY KEY,
    last_seen   timestamptz NOT NULL
);

-- The default audience: everyone who shares a retained message with the participant.
-- Created only if missing, so re-applying this file never replaces an application's version.
DO $$
BEGIN
    IF to_regprocedure('pgrelay.presence_audience(text)') IS NULL THEN
        CREATE FUNCTION pgrelay.presence_audience(participant text) RETURNS text[]
            LANGUAGE sql STABLE
            AS $body$
            SELECT coalesce(array_agg(DISTINCT other), '{}')
              FROM pgrelay.messages m, unnest(m.participants) AS other
             WHERE m.participants @> ARRAY[participant] AND m.id > 0 AND other <> participant
            $body$;
    END IF;
END $$;

-- Sends one presence change to the participant's audience, split into notifications that fit
-- NOTIFY's payload limit however large the audience is.
CREATE OR REPLACE FUNCTION pgrelay.announce_presence(participant text, online boolean)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    payload jsonb := jsonb_build_object(
        'participant', participant,
        'online', online,
        'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
    chunk text[] := '{}';
    chunk_bytes integer := 0;
    member text;
BEGIN
    FOREACH member IN ARRAY coalesce(pgrelay.presence_audience(participant), '{}') LOOP
        CONTINUE WHEN member IS NULL OR member = participant;
        IF chunk_bytes + octet_length(member) > 6000 THEN
            PERFORM pgrelay.send_signal(chunk, 'presence', payload, NULL);
            chunk := '{}';
            chunk_bytes := 0;
        END IF;
        chunk := chunk || member;
        chunk_bytes := chunk_bytes + octet_length(member) + 3;
    END LOOP;
    IF cardinality(chunk) > 0 THEN
        PERFORM pgrelay.send_signal(chunk, 'presence', payload, NULL);
    END IF;
END $$;

-- Whether the participant has a row that is still alive.
CREATE OR REPLACE FUNCTION pgrelay.presence_online(participant text, ttl interval)
    RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    SELECT EXISTS (SELECT 1 FROM pgrelay.presence p
                    WHERE p.participant = presence_online.participant
                      AND p.heartbeat_at > now() - ttl)
$$;

-- One instance's batch of changes: participants whose first stream opened there (`joined`)
-- and whose last stream there closed (`left`). A change is announced only when it changes the
-- participant's state across all instances; a per-participant lock makes two instances
-- joining at once announce it once.
CREATE OR REPLACE FUNCTION pgrelay.presence_update(
    relay_instance text, joined text[], left_ text[], ttl interval)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    who text;
    was_online boolean;
BEGIN
    FOR who IN SELECT DISTINCT p FROM unnest(joined || left_) AS p ORDER BY p LOOP
        PERFORM pg_advisory_xact_lock(hashtext('pgrelay.presence'), hashtext(who));
    END LOOP;
    FOR who IN SELECT DISTINCT p FROM unnest(joined) AS p LOOP
        was_online := pgrelay.presence_online(who, ttl);
        INSERT INTO pgrelay.presence AS p (participant, instance) VALUES (who, relay_instance)
            ON CONFLICT (participant, instance) DO UPDATE SET heartbeat_at = now();
        IF NOT was_online THEN
            PERFORM pgrelay.announce_presence(who, true);
        END IF;
    END LOOP;
    FOR who IN SELECT DISTINCT p FROM unnest(left_) AS p LOOP
        DELETE FROM pgrelay.presence p WHERE p.participant = who AND p.instance = relay_instance;
        IF NOT pgrelay.presence_online(who, ttl) THEN
            INSERT INTO pgrelay.presence_last_seen VALUES (who, now())
                ON CONFLICT (participant) DO UPDATE SET last_seen = excluded.last_seen;
            PERFORM pgrelay.announce_presence(who, false);
        END IF;
    END LOOP;
END $$;

-- Removes rows not refreshed within `ttl` (their instance died) and announces the
-- participants that went offline with them. One instance at a time; returns how many.
CREATE OR REPLACE FUNCTION pgrelay.presence_expire(ttl interval)
    RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    who text;
    gone integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('pgrelay.presence_expire')) THEN
        RETURN 0;
    END IF;
    FOR who IN
        WITH stale AS (
            DELETE FROM pgrelay.presence WHERE heartbeat_at <= now() - ttl RETURNING participant)
        SELECT DISTINCT participant FROM stale ORDER BY participant
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('pgrelay.presence'), hashtext(who));
        IF NOT pgrelay.presence_online(who, ttl) THEN
            INSERT INTO pgrelay.presence_last_seen VALUES (who, now())
                ON CONFLICT (participant) DO UPDATE SET last_seen = excluded.last_seen;
            PERFORM pgrelay.announce_presence(who, false);
            gone := gone + 1;
        END IF;
    END LOOP;
    RETURN gone;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (4) ON CONFLICT DO NOTHING;
