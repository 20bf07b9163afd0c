-- pgrelay 0001: the outbox table, commit-ordered ids and the NOTIFY wake-up.
--
-- Apply with `pgrelay migrate` (recommended: it serialises concurrent runs and records the
-- version) or with `psql -v ON_ERROR_STOP=1 -1 -f sql/0001_outbox.sql`. The file is safe to
-- apply more than once. Never edit it after it has been applied anywhere: add 0002_….sql.

CREATE SCHEMA IF NOT EXISTS pgrelay;

CREATE TABLE IF NOT EXISTS pgrelay.schema_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Message ids: drawn at commit time (see pgrelay.assign_id below), never at insert time.
CREATE SEQUENCE IF NOT EXISTS pgrelay.message_id_seq AS bigint;

-- Placeholder keys for rows that are inserted but not yet committed. A row carries
-- `id = -nextval(pending_key_seq)` until its transaction commits; negative ids are never
-- served, so a row that somehow kept one (triggers disabled) stays invisible instead of
-- breaking the order.
CREATE SEQUENCE IF NOT EXISTS pgrelay.pending_key_seq AS bigint;

-- Which NOTIFY channel the trigger wakes relays on. `pgrelay migrate --channel X` replaces
-- this function; `pgrelay serve` refuses to start when its --channel differs, because a relay
-- listening on another channel would never hear anything.
CREATE OR REPLACE FUNCTION pgrelay.channel() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 'pgrelay'::text $$;

-- Kinds become the SSE `event:` field, so they must not be able to break the framing;
-- `presence`, `reset` and `token_expired` are reserved for the relay's own events.
CREATE OR REPLACE FUNCTION pgrelay.valid_kind(kind text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT kind ~ '^[A-Za-z0-9_.:-]{1,64}$'
                 AND kind NOT IN ('presence', 'reset', 'token_expired') $$;

CREATE TABLE IF NOT EXISTS pgrelay.messages (
    id           bigint      PRIMARY KEY,
    participants text[]      NOT NULL,
    kind         text        NOT NULL DEFAULT 'message',
    sender       text        NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_participants_nonempty
        CHECK (cardinality(participants) > 0 AND array_position(participants, NULL) IS NULL),
    CONSTRAINT messages_kind_valid CHECK (pgrelay.valid_kind(kind))
);

-- "Messages for participant P with id > N": the GIN index finds P's rows, the primary key
-- serves "everything after N" when N is recent. The planner picks per query.
CREATE INDEX IF NOT EXISTS messages_participants_idx
    ON pgrelay.messages USING gin (participants);

-- The highest id removed by retention pruning; a resume point below it gets `reset`.
CREATE TABLE IF NOT EXISTS pgrelay.retention (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint  NOT NULL DEFAULT 0
);
INSERT INTO pgrelay.retention DEFAULT VALUES ON CONFLICT DO NOTHING;

-- The lock that orders commits. Any constant works as long as every writer uses the same one.
CREATE OR REPLACE FUNCTION pgrelay.order_lock_key() RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 7395514830127704945::bigint $$;

-- BEFORE INSERT: give the row a placeholder key. An explicit id is refused unless the
-- writer holds the order lock (pgrelay.publish does), because an id chosen outside the
-- lock could commit out of order and make `id > since_id` catch-up lose messages.
CREATE OR REPLACE FUNCTION pgrelay.before_insert() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.id IS NULL THEN
        NEW.id := -nextval('pgrelay.pending_key_seq');
    ELSIF NOT EXISTS (
        SELECT 1 FROM pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
           AND classid = (pgrelay.order_lock_key() >> 32)::oid
           AND objid = (pgrelay.order_lock_key() & 4294967295)::oid
           AND objsubid = 1) THEN
        RAISE EXCEPTION 'pgrelay.messages.id is assigned at commit; leave it out of the INSERT'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- Commit-ordered ids: why this works.
--
-- A `bigserial` id is drawn at INSERT time, so a transaction holding id 10 can commit after
-- the one holding id 11; a reader that saw 11 and resumes with `id > 11` loses 10 forever.
-- Instead this trigger is a DEFERRABLE INITIALLY DEFERRED constraint trigger, so it runs
-- inside COMMIT. PostgreSQL's CommitTransaction fires deferred triggers first, then
-- PreCommit_Notify, then writes and flushes the commit record, then makes the transaction
-- visible, and only then releases its locks. The trigger takes a transaction-scoped advisory
-- lock and only then draws the id, so the next writer can draw its id only after this
-- transaction is visible: once id n is visible, every smaller id that will ever be visible
-- already is. An aborted commit leaves a harmless gap.
--
-- The lock is cheap in practice: NOTIFY already serialises every notifying commit in the
-- cluster under its own lock, and the lock is held only for the commit itself. Writers that
-- insert many rows should batch them in one transaction.
--
-- The notification is a wake-up, not the message: it carries the id, the commit time and, when they fit in
-- NOTIFY's 8000-byte limit, the participants (so a relay with no subscriber among them can
-- skip the row). Relays read the row itself from the table, so messages of any size arrive.
CREATE OR REPLACE FUNCTION pgrelay.assign_id() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    new_id bigint := NEW.id;
    recipients text[] := NEW.participants;
    at_us bigint;
    wakeup text;
BEGIN
    IF new_id < 0 THEN
        PERFORM pg_advisory_xact_lock(pgrelay.order_lock_key());
        new_id := nextval('pgrelay.message_id_seq');
        -- RETURNING: the row may have been updated or deleted later in the transaction.
        UPDATE pgrelay.messages SET id = new_id WHERE id = NEW.id
            RETURNING participants INTO recipients;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    -- `at`: the commit's wall-clock time in microseconds, for the relay's latency histogram.
    at_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    wakeup := json_build_object('id', new_id, 'at', at_us, 'participants', recipients)::text;
    IF octet_length(wakeup) > 7900 THEN
        wakeup := json_build_object('id', new_id, 'at', at_us)::text;
    END IF;
    PERFORM pg_notify(pgrelay.channel(), wakeup);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS messages_before_insert ON pgrelay.messages;
CREATE TRIGGER messages_before_insert
    BEFORE INSERT ON pgrelay.messages
    FOR EACH ROW EXECUTE FUNCTION pgrelay.before_insert();

DROP TRIGGER IF EXISTS messages_assign_id ON pgrelay.messages;
CREATE CONSTRAINT TRIGGER messages_assign_id
    AFTER INSERT ON pgrelay.messages
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pgrelay.assign_id();

-- Ids are the relay's; an UPDATE that moves one would break resume positions.
CREATE OR REPLACE FUNCTION pgrelay.forbid_id_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.id > 0 AND NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'pgrelay.messages.id cannot be changed' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS messages_forbid_id_change ON pgrelay.messages;
CREATE TRIGGER messages_forbid_id_change
    BEFORE UPDATE OF id ON pgrelay.messages
    FOR EACH ROW EXECUTE FUNCTION pgrelay.forbid_id_change();

-- Publishes one message and returns its id, for callers that need the id back (the relay's
-- POST /v1/messages). A plain INSERT cannot return it, because the id is assigned at commit.
-- Taking the order lock before drawing the id keeps commit order; call it in its own short
-- transaction, since the lock is held until commit and serialises other writers meanwhile.
CREATE OR REPLACE FUNCTION pgrelay.publish(
    participants text[], payload jsonb, kind text DEFAULT 'message', sender text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(pgrelay.order_lock_key());
    new_id := nextval('pgrelay.message_id_seq');
    INSERT INTO pgrelay.messages (id, participants, kind, sender, payload)
        VALUES (new_id, publish.participants, publish.kind, publish.sender, publish.payload);
    RETURN new_id;
END $$;

-- The trigger functions run with their owner's rights, so an application role needs only
-- INSERT on pgrelay.messages (not the sequences, nor UPDATE). A trigger function cannot be
-- called directly, so this grants nothing else; search_path is pinned against hijacking.
ALTER FUNCTION pgrelay.before_insert() SECURITY DEFINER SET search_path = pg_catalog, pgrelay;
ALTER FUNCTION pgrelay.assign_id() SECURITY DEFINER SET search_path = pg_catalog, pgrelay;
ALTER FUNCTION pgrelay.forbid_id_change() SECURITY DEFINER SET search_path = pg_catalog, pgrelay;

INSERT INTO pgrelay.schema_migrations (version) VALUES (1) ON CONFLICT DO NOTHING;
