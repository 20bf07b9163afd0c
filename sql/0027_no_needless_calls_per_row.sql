-- pgrelay 0027: no function call that cannot change the outcome, per row or per pass.
--
-- The database's work per message is the largest share of a delivery's cost (BENCHMARKS.md,
-- "The database's share"), and three calls in it never changed what happened:
--
-- - `forbid_id_change`, a SECURITY DEFINER function with its own `search_path`, ran for every
--   row a relay numbered, only to find a pending placeholder (`OLD.id < 0`), which may be
--   numbered. The trigger's WHEN clause now asks the same question without the call: about
--   a third of numbering's CPU per row.
-- - The insert trigger planned and ran its check that a control row comes from the owner (a
--   query of `pg_class`) for every row, control or not. It now looks only at control rows.
-- - `pgrelay.sequence()` ran the numbering of messages and of signals whenever either had a
--   pending row; it now runs each only for its own table's.
--
-- The rules are the same.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

DROP TRIGGER IF EXISTS messages_forbid_id_change ON pgrelay.messages;
CREATE TRIGGER messages_forbid_id_change
    BEFORE UPDATE OF id ON pgrelay.messages
    FOR EACH ROW WHEN (OLD.id > 0 AND NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION pgrelay.forbid_id_change();

CREATE OR REPLACE FUNCTION pgrelay.before_insert()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
BEGIN
    -- Whatever the writer set: the numbering groups a transaction's rows by it.
    NEW.inserted_by := pg_current_xact_id();
    IF cardinality(NEW.participants) > pgrelay.max_participants() THEN
        RAISE EXCEPTION 'a message names at most % participants', pgrelay.max_participants()
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF NOT pgrelay.valid_names(NEW.participants)
       OR NOT coalesce(pgrelay.valid_name(NEW.sender), true) THEN
        RAISE EXCEPTION 'participant and sender names must be 1 to 256 bytes with no control or format characters'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.control THEN
        IF current_user <> (SELECT pg_get_userbyid(relowner) FROM pg_class
                             WHERE oid = 'pgrelay.messages'::regclass) THEN
            RAISE EXCEPTION 'control rows (kinds rooms and revoked) are written by pgrelay''s own functions'
                USING ERRCODE = 'check_violation';
        END IF;
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

CREATE OR REPLACE FUNCTION pgrelay.sequence(max_rows integer DEFAULT 10000)
    RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    SET enable_seqscan = off  -- pending rows by index (0012)
    AS $$
DECLARE
    messages_numbered integer := 0;
    signals_numbered integer := 0;
    now_numbered timestamptz;
    highest_message bigint := 0;
    highest_signal bigint := 0;
    messages_pending boolean;
    signals_pending boolean;
BEGIN
    -- Rows that commit after this look are the next pass's: their writers' wake-ups ask for it.
    SELECT EXISTS (SELECT 1 FROM pgrelay.messages WHERE id < 0),
           EXISTS (SELECT 1 FROM pgrelay.signals WHERE id < 0)
      INTO messages_pending, signals_pending;
    IF NOT (messages_pending OR signals_pending) THEN
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
    IF messages_pending THEN
        messages_numbered := pgrelay.number_pending_messages(max_rows, now_numbered);
    END IF;
    IF messages_numbered > 0 THEN
        -- Ids are drawn in ascending order: the last one drawn is the highest.
        highest_message := currval('pgrelay.message_id_seq');
    END IF;

    IF signals_pending THEN
        WITH numbering AS (
            SELECT pending.id AS placeholder, nextval('pgrelay.signal_id_seq') AS id
              FROM (SELECT id FROM pgrelay.signals WHERE id < 0
                     ORDER BY id DESC LIMIT max_rows) pending)
        UPDATE pgrelay.signals s
           SET id = numbering.id, numbered_at = now_numbered
          FROM numbering
         WHERE s.id = numbering.placeholder;
        GET DIAGNOSTICS signals_numbered = ROW_COUNT;
    END IF;

    IF signals_numbered > 0 THEN
        -- Now and then, sweep the signals every relay has long read.
        highest_signal := currval('pgrelay.signal_id_seq');
        IF highest_signal / 1000 <> (highest_signal - signals_numbered) / 1000 THEN
            DELETE FROM pgrelay.signals
             WHERE id > 0 AND numbered_at < now_numbered - interval '1 minute';
        END IF;
    END IF;
    IF messages_numbered + signals_numbered > 0 THEN
        -- Wakes the relays that did not number these rows, unless they have read them.
        PERFORM pg_notify(pgrelay.channel(),
                          format('numbered %s %s', highest_message, highest_signal));
    END IF;
    RETURN messages_numbered + signals_numbered;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (27) ON CONFLICT DO NOTHING;
