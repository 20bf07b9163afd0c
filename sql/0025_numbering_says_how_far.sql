-- pgrelay 0025: the wake-up `pgrelay.sequence()` sends after numbering says how far it numbered,
-- so a relay that has already read that far need not read again.
--
-- Every relay hears every writer's commit and makes a pass; one of them numbers the new rows,
-- and the others wait for the order lock and then read them. The wake-up the numbering relay
-- sends at its commit (for a relay whose own numbering failed) then reached every other relay
-- after its pass had read those rows, and each made a second pass that found nothing: about
-- two passes a message per instance in a fleet (BENCHMARKS.md, "The fleet"). The wake-up's
-- payload is now `numbered <message id> <signal id>`, the highest ids this call numbered (0
-- for none of a kind). A relay skips it when its last pass numbered and read through both;
-- one whose numbering failed, or that has not read that far, reads as before. Any login may
-- send such a payload: it can cause a pass, never prevent one.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

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
    IF messages_numbered > 0 THEN
        -- Ids are drawn in ascending order: the last one drawn is the highest.
        highest_message := currval('pgrelay.message_id_seq');
    END IF;

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
        -- Wakes the relays that did not number these rows, unless they have read them.
        PERFORM pg_notify(pgrelay.channel(),
                          format('numbered %s %s', highest_message, highest_signal));
    END IF;
    RETURN messages_numbered + signals_numbered;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (25) ON CONFLICT DO NOTHING;
