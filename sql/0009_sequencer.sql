-- pgrelay 0009: ids are assigned after commit, by the relays, in transactions no writer can hold.
--
-- Until now a deferred constraint trigger drew each message's id inside the writer's COMMIT,
-- under a table lock held until that commit ended. That ordered commits, but a writer could
-- fire the trigger early (`SET CONSTRAINTS ALL IMMEDIATE`, or by calling pgrelay.publish or
-- pgrelay.signal, which took the lock at once) and then keep its transaction open: every other
-- message, signal and presence change in the database waited for it. PostgreSQL does not tell a
-- deferred trigger whether it fires at COMMIT, and a SECURITY DEFINER function still runs in its
-- caller's transaction, so no lock a writer's transaction takes can be safe.
--
-- From this file on:
--
-- * A writer's row is stored *pending*: it keeps its negative placeholder id (drawn at insert)
--   and wakes the relays with an empty NOTIFY, which PostgreSQL sends at commit. The writer
--   takes no lock but its own row's.
-- * pgrelay.sequence(), run by the relays (never by a writer), numbers the pending rows that
--   have committed — rows of a transaction still open are invisible to it, so they cannot hold
--   it up — in a short transaction of the relay's own that locks pgrelay.id_order, draws the ids
--   in insertion order, records when it did (`committed_at`) and commits. The lock is held
--   until that transaction is visible, so once id n is visible every smaller id that will ever
--   be visible already is: `id > since_id` stays an exact catch-up.
-- * pgrelay.publish_many() (the relay's POST /v1/messages) keeps drawing ids under the same
--   lock inside the relay's own short transaction (the relay is trusted, and its commits need
--   no second transaction), after numbering what is pending, so cause comes before effect.
-- * pgrelay.publish() can no longer return the id (the row is numbered after its transaction
--   commits). It returns the row's pending id (negative); pgrelay.message_id(pending_id) gives
--   the id once a relay has assigned it.
-- * Signals are numbered the same way; pgrelay.signal() takes no lock either.
-- * `committed_at` is set only by the numbering (never by the writer), so retention counts from
--   the moment a message's id was assigned, at or after its writer's commit.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- The pending id pgrelay.publish() returned for a row, kept so pgrelay.message_id() can find
-- the row after numbering. Only rows stored by publish() carry one, so the index costs plain
-- inserts nothing.
ALTER TABLE pgrelay.messages ADD COLUMN IF NOT EXISTS pending_id bigint;
CREATE UNIQUE INDEX IF NOT EXISTS messages_pending_id_idx
    ON pgrelay.messages (pending_id) WHERE pending_id IS NOT NULL;

-- When a signal was numbered: the sweep deletes signals a minute after that (relays read them
-- at once), whatever the writer's transaction start (`created_at`) says.
ALTER TABLE pgrelay.signals ADD COLUMN IF NOT EXISTS numbered_at timestamptz;

-- BEFORE INSERT on messages (not SECURITY DEFINER: `current_user` is the writer, or the schema
-- owner inside publish() and publish_many()). Applies the name rule and the participants' bound
-- (pgrelay.max_participants(), 0008), and leaves a writer's
-- row pending: the placeholder id, no pending_id, no committed_at, whatever the INSERT said.
-- Explicit ids come only from the owner: a pending one from publish(), or from publish_many()
-- the id it has just drawn under the order lock (anything else could commit out of order).
CREATE OR REPLACE FUNCTION pgrelay.before_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    IF cardinality(NEW.participants) > pgrelay.max_participants() THEN
        RAISE EXCEPTION 'a message names at most % participants', pgrelay.max_participants()
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF NOT pgrelay.valid_names(NEW.participants)
       OR NOT coalesce(pgrelay.valid_name(NEW.sender), true) THEN
        RAISE EXCEPTION 'participant and sender names must be 1 to 256 bytes with no control or format characters'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id IS NULL THEN
        NEW.id := pgrelay.pending_key();
        NEW.pending_id := NULL;
        NEW.committed_at := NULL;
        RETURN NEW;
    END IF;
    IF current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class
                        WHERE oid = 'pgrelay.messages'::regclass) THEN
        IF NEW.id < 0 AND NEW.pending_id = NEW.id THEN
            NEW.committed_at := NULL;
            RETURN NEW;
        END IF;
        -- currval fails (and so refuses the row) when this session has drawn no id at all.
        IF NEW.id > 0 AND NEW.id = currval('pgrelay.message_id_seq') THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'pgrelay.messages.id is assigned after commit; leave it out of the INSERT'
        USING ERRCODE = 'check_violation';
END $$;

-- AFTER INSERT, once per statement, on messages and signals: an empty wake-up, which
-- PostgreSQL delivers when (and only if) the transaction commits, and once per transaction
-- however many statements send it. It takes no lock of pgrelay's.
CREATE OR REPLACE FUNCTION pgrelay.wake_relays() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    PERFORM pg_notify(pgrelay.channel(), '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS messages_assign_id ON pgrelay.messages;
DROP TRIGGER IF EXISTS messages_wake_relays ON pgrelay.messages;
CREATE TRIGGER messages_wake_relays
    AFTER INSERT ON pgrelay.messages
    FOR EACH STATEMENT EXECUTE FUNCTION pgrelay.wake_relays();

DROP TRIGGER IF EXISTS signals_assign_id ON pgrelay.signals;
DROP TRIGGER IF EXISTS signals_wake_relays ON pgrelay.signals;
CREATE TRIGGER signals_wake_relays
    AFTER INSERT ON pgrelay.signals
    FOR EACH STATEMENT EXECUTE FUNCTION pgrelay.wake_relays();

DROP FUNCTION IF EXISTS pgrelay.assign_id();
DROP FUNCTION IF EXISTS pgrelay.assign_signal_id();

-- One lock now orders the numbering of messages and of signals.
DROP TABLE IF EXISTS pgrelay.signal_order;
COMMENT ON TABLE pgrelay.id_order IS
    'Never holds rows: locking it orders the numbering of messages and signals.';

-- Gives the committed pending messages (at most `max_rows` of them, NULL for all) their ids,
-- one transaction's rows after another, all with the same `committed_at`; returns how many. Only for callers that
-- hold the order lock (sequence() and publish_many()).
CREATE OR REPLACE FUNCTION pgrelay.number_pending_messages(max_rows integer, numbered_at timestamptz)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    numbered integer;
BEGIN
    -- Placeholders are negated insert counters: descending placeholder is insertion order.
    -- Each transaction's rows stay together (same inserting xid, hence the same age), in the
    -- order of each transaction's first insert.
    WITH numbering AS (
        SELECT pending.id AS placeholder, nextval('pgrelay.message_id_seq') AS id
          FROM (SELECT id FROM (
                    SELECT id, max(id) OVER (PARTITION BY age(xmin)) AS first_insert
                      FROM pgrelay.messages WHERE id < 0) committed
                 ORDER BY first_insert DESC, id DESC LIMIT max_rows) pending)
    -- The UPDATE checks the row's constraints again: a kind reserved since the row was
    -- inserted (0008) would fail it, and one such row would stop numbering for everyone. It
    -- becomes `message`, as the relay serves such rows anyway.
    UPDATE pgrelay.messages m
       SET id = numbering.id, committed_at = number_pending_messages.numbered_at,
           kind = CASE WHEN pgrelay.valid_kind(m.kind) THEN m.kind ELSE 'message' END
      FROM numbering
     WHERE m.id = numbering.placeholder;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    RETURN numbered;
END $$;

-- Numbers the committed pending messages and signals (at most `max_rows` of each, oldest
-- insert first) and returns how many it numbered. Run by the relays on every wake-up, in a
-- READ COMMITTED transaction of their own that they commit at once; the schema owner may run it
-- from psql too. When nothing is pending it takes no lock and writes nothing.
--
-- Why the order holds: the lock on pgrelay.id_order is taken before the statement that reads
-- the pending rows and draws their ids (so that statement sees everything committed by the
-- previous holder), and it is released only after this transaction is visible. Only trusted
-- roles can take it (locking a table needs UPDATE, DELETE or TRUNCATE on it), and they hold it
-- for one short transaction: the relay bounds its wait for a peer that stalls with
-- `SET LOCAL lock_timeout`, and `idle_in_transaction_session_timeout` ends a relay's
-- transaction that its client abandoned.
CREATE OR REPLACE FUNCTION pgrelay.sequence(max_rows integer DEFAULT 10000)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    messages_numbered integer := 0;
    signals_numbered integer := 0;
    now_numbered timestamptz;
    highest_signal bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgrelay.messages WHERE id < 0)
       AND NOT EXISTS (SELECT 1 FROM pgrelay.signals WHERE id < 0) THEN
        RETURN 0;
    END IF;
    -- Under REPEATABLE READ the statements below would not see what the previous holder of
    -- the lock committed: the relay reading in the same transaction would skip those ids.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgrelay.sequence() must run in a READ COMMITTED transaction';
    END IF;
    PERFORM set_config('idle_in_transaction_session_timeout', '10s', true);
    LOCK TABLE pgrelay.id_order IN SHARE ROW EXCLUSIVE MODE;
    now_numbered := clock_timestamp();
    messages_numbered := pgrelay.number_pending_messages(max_rows, now_numbered);

    WITH numbering AS (
        SELECT pending.id AS placeholder, nextval('pgrelay.signal_id_seq') AS id
          FROM (SELECT id FROM pgrelay.signals WHERE id < 0
                 ORDER BY id DESC LIMIT max_rows) pending)
    UPDATE pgrelay.signals s
       SET id = numbering.id, numbered_at = now_numbered
      FROM numbering
     WHERE s.id = numbering.placeholder;
    GET DIAGNOSTICS signals_numbered = ROW_COUNT;

    IF signals_numbered > 0 THEN
        -- Now and then, sweep the signals every relay has long read.
        highest_signal := currval('pgrelay.signal_id_seq');
        IF highest_signal / 1000 <> (highest_signal - signals_numbered) / 1000 THEN
            DELETE FROM pgrelay.signals
             WHERE id > 0 AND numbered_at < now_numbered - interval '1 minute';
        END IF;
    END IF;
    IF messages_numbered + signals_numbered > 0 THEN
        -- Wakes the relays that did not number these rows.
        PERFORM pg_notify(pgrelay.channel(), '');
    END IF;
    RETURN messages_numbered + signals_numbered;
END $$;

-- Group commit for the relay's POST /v1/messages (0007), with two changes. It first numbers
-- every pending message that has committed, so that ids keep cause before effect: a message an
-- app inserted and committed before it asked the relay to publish another gets the smaller id.
-- And it bounds the lock: the relay holds it for this short transaction only, and a relay that
-- stalls inside it must not hold everyone up for long.
CREATE OR REPLACE FUNCTION pgrelay.publish_many(messages jsonb)
    RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    SET lock_timeout = '5s'
    AS $$
BEGIN
    PERFORM set_config('idle_in_transaction_session_timeout', '10s', true);
    LOCK TABLE pgrelay.id_order IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM pgrelay.messages WHERE id < 0) THEN
        PERFORM pgrelay.number_pending_messages(NULL, clock_timestamp());
    END IF;
    RETURN QUERY
    INSERT INTO pgrelay.messages (id, participants, kind, sender, payload, committed_at)
    SELECT nextval('pgrelay.message_id_seq'),
           ARRAY(SELECT jsonb_array_elements_text(m -> 'participants')),
           coalesce(m ->> 'kind', 'message'), m ->> 'sender', m -> 'payload', clock_timestamp()
      FROM jsonb_array_elements(messages) AS m
    RETURNING id;
END $$;

-- Stores one message, pending like any insert, and returns its pending id (negative). It takes
-- no lock, so it is safe in any transaction. The id is assigned after the transaction commits:
-- pgrelay.message_id(pending_id) returns it then.
CREATE OR REPLACE FUNCTION pgrelay.publish(
    participants text[], payload jsonb, kind text DEFAULT 'message', sender text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    pending bigint := pgrelay.pending_key();
BEGIN
    INSERT INTO pgrelay.messages (id, pending_id, participants, kind, sender, payload)
        VALUES (pending, pending, publish.participants, publish.kind, publish.sender,
                publish.payload);
    RETURN pending;
END $$;

-- The id of the message pgrelay.publish() stored as `pending_id`, once a relay has numbered it;
-- NULL until then (or if its transaction rolled back). With `wait`, waits up to that long (at
-- most 10 seconds) for the numbering. Call it after the publishing transaction has committed:
-- inside it, the row cannot be numbered yet, and this says so.
CREATE OR REPLACE FUNCTION pgrelay.message_id(pending_id bigint, wait interval DEFAULT '0')
    RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + least(greatest(wait, '0'), interval '10 s');
    found_id bigint;
    own_row boolean;
BEGIN
    LOOP
        SELECT m.id, m.xmin = pg_current_xact_id_if_assigned()::xid INTO found_id, own_row
          FROM pgrelay.messages m WHERE m.pending_id = message_id.pending_id;
        IF found_id > 0 THEN
            RETURN found_id;
        END IF;
        IF own_row THEN
            RAISE EXCEPTION 'message % is not numbered before its transaction commits', pending_id
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        EXIT WHEN clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.005);
    END LOOP;
    RETURN NULL;
END $$;

-- Only the roles the owner grants (docs/security.md) may number or look ids up.
REVOKE EXECUTE ON FUNCTION pgrelay.sequence(integer), pgrelay.message_id(bigint, interval),
    pgrelay.number_pending_messages(integer, timestamptz), pgrelay.wake_relays() FROM PUBLIC;

INSERT INTO pgrelay.schema_migrations (version) VALUES (9) ON CONFLICT DO NOTHING;
