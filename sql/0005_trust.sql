-- pgrelay 0005: the trust boundary. Other logins of the database can neither read, forge nor
-- lose a message.
--
-- PostgreSQL gives channels and advisory locks no privileges: any login may LISTEN to and
-- NOTIFY on any channel, and may take any advisory lock. So, from this file on:
--
-- * A notification is an empty wake-up. It carries no id, participant, sender or payload; the
--   relay reads what is new from the tables (ids are commit-ordered, so "id > the last one
--   read" is exact), with its own role. A forged NOTIFY costs one query that finds nothing.
-- * Signals and presence changes are rows of pgrelay.signals, an UNLOGGED table with a short
--   life that only the schema owner can read or write; pgrelay.signal() writes them.
-- * Commit order is kept by locking tables only the schema owner may lock, not by advisory
--   locks that any login could take (and hold forever, stalling every writer).
-- * An explicit message id can only come from pgrelay.publish() (running as the schema
--   owner), and only the id it has just drawn.
-- * Participant and sender names follow one rule (no control or Unicode format characters, at
--   most 256 bytes), the same the relay applies to tokens and HTTP requests; the insert
--   trigger refuses any other.
-- * Functions that write are not executable by PUBLIC; the README lists the grants.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- The locks. Locking a table needs UPDATE, DELETE or TRUNCATE on it, which only the owner has.
CREATE TABLE IF NOT EXISTS pgrelay.id_order ();
CREATE TABLE IF NOT EXISTS pgrelay.signal_order ();
CREATE TABLE IF NOT EXISTS pgrelay.presence_order ();
COMMENT ON TABLE pgrelay.id_order IS 'Never holds rows: locking it orders message commits.';
COMMENT ON TABLE pgrelay.signal_order IS 'Never holds rows: locking it orders signal commits.';
COMMENT ON TABLE pgrelay.presence_order IS 'Never holds rows: locking it serialises presence changes.';

-- The commit time, for the relay's commit-to-send latency histogram (it used to travel in the
-- NOTIFY payload).
ALTER TABLE pgrelay.messages ADD COLUMN IF NOT EXISTS committed_at timestamptz;

-- `position` names the stream's opening event (the relay writes it so that every common SSE
-- library records the stream's position), so it is reserved like the other control events.
CREATE OR REPLACE FUNCTION pgrelay.valid_kind(kind text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT kind ~ '^[A-Za-z0-9_.:-]{1,64}$'
                 AND kind NOT IN ('presence', 'position', 'reset', 'token_expired') $$;

-- One rule for names: participants, senders and token subjects.
CREATE OR REPLACE FUNCTION pgrelay.valid_name(name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT octet_length(name) BETWEEN 1 AND 256
                 AND name !~ '[\x01-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]' $$;

-- PL/pgSQL, not SQL: an SQL function with an aggregate cannot be inlined and starts an
-- executor of its own on every call.
CREATE OR REPLACE FUNCTION pgrelay.valid_names(names text[]) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    AS $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY coalesce(names, '{}') LOOP
        IF NOT pgrelay.valid_name(name) THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END $$;

-- A placeholder key for a row inserted but not yet committed. Runs as the owner, so writers
-- need no privilege on the sequence.
CREATE OR REPLACE FUNCTION pgrelay.pending_key() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$ SELECT -nextval('pgrelay.pending_key_seq') $$;

-- BEFORE INSERT on messages. Deliberately not SECURITY DEFINER (0001 made it one; CREATE OR
-- REPLACE resets that): `current_user` here is the writer, or the schema owner inside
-- pgrelay.publish(). An explicit id is accepted only from the owner and only if it is the id
-- this session has just drawn (publish holds the order lock from drawing it until commit);
-- anything else could commit out of order, or far ahead, and make `id > since_id` catch-up
-- lose messages.
--
-- It also applies the name rule to participants and sender. Here rather than in a CHECK
-- constraint: PostgreSQL evaluates CHECKs again on the commit-time UPDATE that assigns the id,
-- and measured with pgbench (8 clients, one row per transaction) a CHECK cost 39% of the
-- commit rate against 12% here. Every insert runs this trigger (attached tables included);
-- only the owner may update rows.
CREATE OR REPLACE FUNCTION pgrelay.before_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    IF NOT pgrelay.valid_names(NEW.participants)
       OR NOT coalesce(pgrelay.valid_name(NEW.sender), true) THEN
        RAISE EXCEPTION 'participant and sender names must be 1 to 256 bytes with no control or format characters'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id IS NULL THEN
        NEW.id := pgrelay.pending_key();
        RETURN NEW;
    END IF;
    -- currval fails (and so refuses the row) when this session has drawn no id at all. No
    -- exception block: that would start a subtransaction for every published message.
    IF NEW.id > 0 AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                                        WHERE oid = 'pgrelay.messages'::regclass)
       AND NEW.id = currval('pgrelay.message_id_seq') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'pgrelay.messages.id is assigned at commit; leave it out of the INSERT'
        USING ERRCODE = 'check_violation';
END $$;

-- The deferred constraint trigger (see 0001 for why this orders commits): lock, draw the id,
-- record the commit time, wake the relays with an empty notification.
CREATE OR REPLACE FUNCTION pgrelay.assign_id() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    IF NEW.id < 0 THEN
        LOCK TABLE pgrelay.id_order IN SHARE ROW EXCLUSIVE MODE;
        -- The row may have been deleted later in the transaction.
        UPDATE pgrelay.messages
           SET id = nextval('pgrelay.message_id_seq'), committed_at = clock_timestamp()
         WHERE id = NEW.id;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    -- Identical payloads in one transaction are delivered once: one wake-up per commit.
    PERFORM pg_notify(pgrelay.channel(), '');
    RETURN NULL;
END $$;

-- Publishes one message and returns its id (a plain INSERT cannot: the id is assigned at
-- commit). Holds the order lock until commit, so call it in a short transaction of its own.
CREATE OR REPLACE FUNCTION pgrelay.publish(
    participants text[], payload jsonb, kind text DEFAULT 'message', sender text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    new_id bigint;
BEGIN
    LOCK TABLE pgrelay.id_order IN SHARE ROW EXCLUSIVE MODE;
    new_id := nextval('pgrelay.message_id_seq');
    INSERT INTO pgrelay.messages (id, participants, kind, sender, payload, committed_at)
        VALUES (new_id, publish.participants, publish.kind, publish.sender, publish.payload,
                clock_timestamp());
    RETURN new_id;
END $$;

-- Signals: live-only rows, read by the relays right after they commit and deleted a minute
-- later. Ids are commit-ordered like message ids, so a relay reading "id > the last one" misses
-- none; they are never served to clients, who see signals without an `id:`.
CREATE SEQUENCE IF NOT EXISTS pgrelay.signal_id_seq AS bigint;
CREATE UNLOGGED TABLE IF NOT EXISTS pgrelay.signals (
    id           bigint      PRIMARY KEY,
    participants text[]      NOT NULL,
    kind         text        NOT NULL,
    sender       text        NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION pgrelay.assign_signal_id() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    new_id bigint;
BEGIN
    LOCK TABLE pgrelay.signal_order IN SHARE ROW EXCLUSIVE MODE;
    new_id := nextval('pgrelay.signal_id_seq');
    UPDATE pgrelay.signals SET id = new_id WHERE id = NEW.id;
    -- Every thousandth signal sweeps the ones no relay needs any more.
    IF new_id % 1000 = 0 THEN
        DELETE FROM pgrelay.signals WHERE created_at < now() - interval '1 minute';
    END IF;
    PERFORM pg_notify(pgrelay.channel(), '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS signals_assign_id ON pgrelay.signals;
CREATE CONSTRAINT TRIGGER signals_assign_id
    AFTER INSERT ON pgrelay.signals
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pgrelay.assign_signal_id();

-- Sends a signal of any kind, the relay's reserved ones included (presence).
CREATE OR REPLACE FUNCTION pgrelay.send_signal(
    participants text[], kind text, payload jsonb, sender text)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    IF participants IS NULL OR cardinality(participants) = 0
       OR array_position(participants, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'a signal needs at least one participant' USING ERRCODE = 'check_violation';
    END IF;
    IF NOT pgrelay.valid_names(participants) OR NOT coalesce(pgrelay.valid_name(sender), true) THEN
        RAISE EXCEPTION 'participant and sender names must be 1 to 256 bytes with no control or format characters'
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO pgrelay.signals (id, participants, kind, sender, payload)
        VALUES (pgrelay.pending_key(), participants, kind, sender, coalesce(payload, 'null'));
END $$;

-- pgrelay.signal() keeps its signature and checks (0003), but an oversized payload is now
-- `program_limit_exceeded` (the relay answers 413), and it runs as the owner so that it may
-- call send_signal, which PUBLIC may not.
CREATE OR REPLACE FUNCTION pgrelay.signal(
    participants text[], kind text, payload jsonb DEFAULT 'null', sender text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    IF NOT pgrelay.valid_kind(kind) THEN
        RAISE EXCEPTION 'invalid signal kind %: it must match [A-Za-z0-9_.:-]{1,64} and not be reserved', kind
            USING ERRCODE = 'check_violation';
    END IF;
    IF octet_length(payload::text) > 1024 THEN
        RAISE EXCEPTION 'a signal payload is at most 1024 bytes'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    PERFORM pgrelay.send_signal(participants, kind, payload, sender);
END $$;

-- Presence: one signal row per change, whatever the audience's size.
CREATE OR REPLACE FUNCTION pgrelay.announce_presence(participant text, online boolean)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    audience text[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT member), '{}') INTO audience
      FROM unnest(pgrelay.presence_audience(participant)) AS member
     WHERE member IS NOT NULL AND member <> participant AND pgrelay.valid_name(member);
    IF cardinality(audience) > 0 THEN
        PERFORM pgrelay.send_signal(audience, 'presence', jsonb_build_object(
            'participant', participant,
            'online', online,
            'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')), NULL);
    END IF;
END $$;

-- Presence changes are serialised by a table lock (formerly per-participant advisory locks,
-- which any login could hold to stop presence for everyone).
CREATE OR REPLACE FUNCTION pgrelay.presence_update(
    relay_instance text, joined text[], left_ text[], ttl interval)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    who text;
    was_online boolean;
BEGIN
    LOCK TABLE pgrelay.presence_order IN SHARE ROW EXCLUSIVE MODE;
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

CREATE OR REPLACE FUNCTION pgrelay.presence_expire(ttl interval)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    who text;
    gone integer := 0;
BEGIN
    LOCK TABLE pgrelay.presence_order IN SHARE ROW EXCLUSIVE MODE;
    FOR who IN
        WITH stale AS (
            DELETE FROM pgrelay.presence WHERE heartbeat_at <= now() - ttl RETURNING participant)
        SELECT DISTINCT participant FROM stale ORDER BY participant
    LOOP
        IF NOT pgrelay.presence_online(who, ttl) THEN
            INSERT INTO pgrelay.presence_last_seen VALUES (who, now())
                ON CONFLICT (participant) DO UPDATE SET last_seen = excluded.last_seen;
            PERFORM pgrelay.announce_presence(who, false);
            gone := gone + 1;
        END IF;
    END LOOP;
    RETURN gone;
END $$;

-- Presence needs consent. The old default audience (everyone who shares a retained message)
-- let anyone with `publish` follow anyone by sending them one message. The new default: q is
-- in p's audience when p sent q a message, or the application wrote one to both (no sender).
-- An application's own presence_audience is left alone.
--
-- pgrelay.presence_visible(p, viewer) answers "is viewer in presence_audience(p)?". For the
-- default audience it probes the index instead of computing the audience, so that refusing a
-- stranger costs one lookup; for an application's own audience (its source differs from the
-- default's) it asks that function.
DO $migration$
DECLARE
    old_default text := $old$
            SELECT coalesce(array_agg(DISTINCT other), '{}')
              FROM pgrelay.messages m, unnest(m.participants) AS other
             WHERE m.participants @> ARRAY[participant] AND m.id > 0 AND other <> participant
            $old$;
    consent text := $new$
    SELECT coalesce(array_agg(DISTINCT other), '{}')
      FROM pgrelay.messages m, unnest(m.participants) AS other
     WHERE m.participants @> ARRAY[participant] AND m.id > 0 AND other <> participant
       AND (m.sender = participant OR m.sender IS NULL)
$new$;
    current_source text := (SELECT prosrc FROM pg_proc
                             WHERE oid = to_regprocedure('pgrelay.presence_audience(text)'));
BEGIN
    IF current_source IS NULL OR current_source = old_default THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION pgrelay.presence_audience(participant text)
                            RETURNS text[] LANGUAGE sql STABLE AS %L', consent);
    END IF;
    EXECUTE format($function$
        CREATE OR REPLACE FUNCTION pgrelay.presence_visible(participant text, viewer text)
            RETURNS boolean
            LANGUAGE plpgsql STABLE
            AS $body$
        BEGIN
            IF (SELECT prosrc FROM pg_proc
                 WHERE oid = 'pgrelay.presence_audience(text)'::regprocedure) = %L THEN
                RETURN participant <> viewer AND EXISTS (
                    SELECT 1 FROM pgrelay.messages m
                     WHERE m.participants @> ARRAY[participant, viewer] AND m.id > 0
                       AND (m.sender = participant OR m.sender IS NULL));
            END IF;
            RETURN viewer = ANY(coalesce(pgrelay.presence_audience(participant), '{}'));
        END $body$
        $function$, consent);
END $migration$;

-- The advisory lock of 0001 no longer orders anything.
DROP FUNCTION IF EXISTS pgrelay.order_lock_key();

-- Only the schema owner, and the roles it grants (README: "Security model"), may call what
-- writes. The name and kind checks stay executable by everyone: the kind's CHECK constraint
-- and the insert trigger call them with the inserting role's rights.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgrelay FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgrelay.valid_kind(text), pgrelay.valid_name(text),
    pgrelay.valid_names(text[]), pgrelay.channel(), pgrelay.pending_key() TO PUBLIC;

INSERT INTO pgrelay.schema_migrations (version) VALUES (5) ON CONFLICT DO NOTHING;
