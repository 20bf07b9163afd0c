-- pgrelay 0032: pending rows that no pass would ever look at are adopted and numbered.
--
-- Since 0031 a pass finds committed pending rows only by the transaction that stamped them
-- (`inserted_by`), among the transactions that ended since this session's last look. The
-- insert trigger stamps every row with its writer's, but rows copied in with the triggers
-- off keep whatever the copy carries: `pg_restore` loads the data before it creates the
-- triggers (or disables them), and a logical subscriber applies with
-- `session_replication_role = replica`. Such a row, committed and pending, stamped with no
-- transaction, with one this cluster has not reached (another cluster's), or with one the
-- session's last look saw ended, stayed pending for good; before 0031 `id < 0` found it.
--
-- So now and then (once a minute in each session that numbers, or as the session's
-- `pgrelay.stray_check_interval` says) a pass that has done its work looks at every pending
-- row, and takes up to a page of the strays it finds into its own transaction; the next pass
-- numbers them, after the wake-up this one sends. The look reads every pending row's index
-- entry, an open transaction's included: the cost 0031 took out of every pass, paid once a
-- minute, without the order lock. It comes last, so a pass that fails (at the order lock's
-- timeout, say) has not paid for it, and whatever goes wrong in it (a copied row that breaks
-- a rule, a lock it cannot get) fails the look alone, never the numbering (both an outside
-- review's findings, against a first version that looked first).
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- Whether a committed pending row is one no pass would look at: it names no transaction, or
-- one that has not ended in `now` (a committed row whose stamp is not its writer's) other
-- than this one, or one `through` (this session's last look) saw ended: every row such a
-- transaction wrote was numbered by that look, so this one was stamped elsewhere. Rows the
-- triggers stamp are never strays.
CREATE OR REPLACE FUNCTION pgrelay.is_stray(inserted_by xid8, now pg_snapshot, through pg_snapshot)
    RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    SELECT inserted_by IS NULL
        OR (NOT pg_visible_in_snapshot(inserted_by, now)
            AND inserted_by IS DISTINCT FROM pg_current_xact_id_if_assigned())
        OR coalesce(pg_visible_in_snapshot(inserted_by, through), false)
$$;

-- Takes up to `max_rows` pending messages and as many signals that no pass would look at into
-- this transaction, for the next pass to number; says how many of the more numerous it took.
CREATE OR REPLACE FUNCTION pgrelay.adopt_strays(max_rows integer)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay, pg_temp
    SET enable_seqscan = off  -- pending rows by index (0012)
    -- The look waits briefly for the order lock, or for a row someone else locked while it
    -- holds the order lock, and else fails (alone) until the next minute: a peer's pass comes
    -- first (an outside review saw it wait the caller's whole lock_timeout, holding the lock).
    SET lock_timeout = '100ms'
    AS $$
DECLARE
    through pg_snapshot := pgrelay.numbered_through();
    messages bigint[];
    signals bigint[];
    messages_adopted integer;
    signals_adopted integer;
BEGIN
    -- Looked for without the order lock: this reads every pending row's index entry. Rows
    -- from before 0009 are numbered and have no `committed_at` either: only negative ids are
    -- pending (tested on what the scan returns: named in its conditions, `id < 0` may be
    -- planned on the primary key, as 0031 says). The earliest inserted first.
    SELECT ARRAY(SELECT id FROM (
                    SELECT m.id FROM pgrelay.messages m, pg_current_snapshot() AS now
                     WHERE m.committed_at IS NULL
                       AND pgrelay.is_stray(m.inserted_by, now, through)
                    OFFSET 0) pending
                  WHERE id < 0 ORDER BY id DESC LIMIT max_rows),
           ARRAY(SELECT id FROM (
                    SELECT s.id FROM pgrelay.signals s, pg_current_snapshot() AS now
                     WHERE s.numbered_at IS NULL
                       AND pgrelay.is_stray(s.inserted_by, now, through)
                    OFFSET 0) pending
                  WHERE id < 0 ORDER BY id DESC LIMIT max_rows)
      INTO messages, signals;
    IF cardinality(messages) + cardinality(signals) = 0 THEN
        RETURN 0;
    END IF;
    -- Adopted under the order lock: a pass numbering one of them meanwhile (a session that
    -- still looks at its stamp) would wait for this row lock while holding the order lock. A
    -- copied row may break the kind rule, which an UPDATE checks (it was added NOT VALID,
    -- after the data): such a row becomes a plain `message`.
    -- Held until this transaction ends, as a numbering pass holds it (0009).
    PERFORM set_config('idle_in_transaction_session_timeout', '10s', true);
    LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE;
    UPDATE pgrelay.messages m
       SET inserted_by = pg_current_xact_id(),
           (kind, control) = (
               SELECT CASE WHEN allowed THEN m.kind ELSE 'message' END, m.control AND allowed
                 FROM (SELECT pgrelay.valid_kind(m.kind)
                              OR (m.control AND m.kind = ANY ('{rooms,revoked}'))) AS rule(allowed))
      FROM pg_current_snapshot() AS now
     WHERE m.id = ANY (messages) AND m.committed_at IS NULL
       AND pgrelay.is_stray(m.inserted_by, now, through);
    GET DIAGNOSTICS messages_adopted = ROW_COUNT;
    UPDATE pgrelay.signals s SET inserted_by = pg_current_xact_id()
      FROM pg_current_snapshot() AS now
     WHERE s.id = ANY (signals) AND s.numbered_at IS NULL
       AND pgrelay.is_stray(s.inserted_by, now, through);
    GET DIAGNOSTICS signals_adopted = ROW_COUNT;
    RAISE LOG 'pgrelay: adopted % messages and % signals pending with no transaction a pass looks at',
        messages_adopted, signals_adopted;
    -- What this look took (another session's may have taken some first).
    RETURN greatest(messages_adopted, signals_adopted);
END $$;

-- A time as the text `pgrelay.stray_look_due` holds: whole seconds since the epoch, twelve
-- digits, so that the pass compares texts and no setting can make it fail, and no DateStyle or
-- TimeZone changes what it reads back (an outside review saw a time's text read three hours
-- off).
CREATE OR REPLACE FUNCTION pgrelay.stray_clock(at timestamptz)
    RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT lpad(floor(extract(epoch FROM at))::bigint::text, 12, '0') $$;

-- The end of a pass whose look for strays is due: sets the next look, and looks, and if that
-- fails says so in the log and lets the pass commit what it numbered.
CREATE OR REPLACE FUNCTION pgrelay.look_for_strays(max_rows integer)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    page integer := least(coalesce(max_rows, 10000), 10000);  -- NULL, no bound, numbers all
    next_look timestamptz;
    adopted integer := 0;
BEGIN
    BEGIN
        next_look := clock_timestamp()
            + greatest(coalesce(nullif(current_setting('pgrelay.stray_check_interval', true),
                                       ''), '1 minute')::interval,
                       '0');
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgrelay.stray_check_interval is not a usable interval: looking once a minute';
        next_look := clock_timestamp() + interval '1 minute';
    END;
    PERFORM set_config('pgrelay.stray_look_due', pgrelay.stray_clock(next_look), false);
    IF page <= 0 THEN
        RETURN;
    END IF;
    BEGIN
        adopted := pgrelay.adopt_strays(page);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgrelay: adopting rows copied in with the triggers off failed: %', SQLERRM;
    END;
    IF adopted = page THEN
        PERFORM set_config('pgrelay.stray_look_due', '', false);  -- more: look again next time
    END IF;
    IF adopted > 0 THEN
        PERFORM pg_notify(pgrelay.channel(), '');
    END IF;
END $$;

REVOKE EXECUTE ON FUNCTION pgrelay.is_stray(xid8, pg_snapshot, pg_snapshot), pgrelay.adopt_strays(integer),
    pgrelay.look_for_strays(integer), pgrelay.stray_clock(timestamptz)
    FROM PUBLIC;

-- 0031's pass, which ends with a look for strays when one is due.
CREATE OR REPLACE FUNCTION pgrelay.sequence(max_rows integer DEFAULT 10000)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pgrelay', 'pg_temp'
 SET enable_seqscan TO 'off'
 -- Statements that read by the ranges take them as parameters, and the planner would plan
 -- each again at every call for its values (measured: about 300 µs a pass).
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
DECLARE
    messages_numbered integer := 0;
    signals_numbered integer := 0;
    now_numbered timestamptz;
    highest_message bigint := 0;
    highest_signal bigint := 0;
    messages_pending boolean;
    signals_pending boolean;
    messages_finished boolean := true;
    looked pg_snapshot;
    above xid8[];
    below xid8[];
BEGIN
    -- Rows that commit after this look are the next pass's: their writers' wake-ups ask for it.
    SELECT ended.above, ended.below, pg_current_snapshot() INTO above, below, looked
      FROM pgrelay.ended_transactions(pgrelay.numbered_through()) AS ended;
    SELECT EXISTS (SELECT 1 FROM pgrelay.pending_messages(above, below)),
           EXISTS (SELECT 1 FROM pgrelay.pending_signals(above, below))
      INTO messages_pending, signals_pending;
    IF NOT (messages_pending OR signals_pending) THEN
        PERFORM pgrelay.record_numbered_through(looked);
    ELSE
        -- Under REPEATABLE READ the statements below would not see what the previous holder of
        -- the lock committed: the relay reading in the same transaction would skip those ids.
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'pgrelay.sequence() must run in a READ COMMITTED transaction';
        END IF;
        PERFORM set_config('idle_in_transaction_session_timeout', '10s', true);
        LOCK TABLE pgrelay_order.id_order IN SHARE ROW EXCLUSIVE MODE;
        now_numbered := clock_timestamp();
        -- Looked at again under the lock: what committed while it was awaited is numbered in
        -- this pass, in order with the rest, as before 0031. Of either table: the pass records
        -- this look as done with everything it saw.
        SELECT ended.above, ended.below, pg_current_snapshot() INTO above, below, looked
          FROM pgrelay.ended_transactions(pgrelay.numbered_through()) AS ended;
        SELECT EXISTS (SELECT 1 FROM pgrelay.pending_messages(above, below)),
               EXISTS (SELECT 1 FROM pgrelay.pending_signals(above, below))
          INTO messages_pending, signals_pending;
        IF messages_pending THEN
            SELECT numbered, finished INTO messages_numbered, messages_finished
              FROM pgrelay.number_pending_messages(max_rows, now_numbered, above, below);
        END IF;
        IF messages_numbered > 0 THEN
            -- Ids are drawn in ascending order: the last one drawn is the highest.
            highest_message := currval('pgrelay.message_id_seq');
        END IF;

        IF signals_pending THEN
            WITH numbering AS (
                SELECT pending.id AS placeholder, nextval('pgrelay.signal_id_seq') AS id
                  FROM (SELECT id FROM pgrelay.pending_signals(above, below)
                         ORDER BY id DESC LIMIT max_rows) pending)
            UPDATE pgrelay.signals s
               SET id = numbering.id, numbered_at = now_numbered
              FROM numbering
             WHERE s.id = numbering.placeholder;
            GET DIAGNOSTICS signals_numbered = ROW_COUNT;
        END IF;
        IF messages_finished AND signals_numbered < max_rows THEN
            -- All the second look saw ended is numbered: the next pass starts from it.
            PERFORM pgrelay.record_numbered_through(looked);
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
    END IF;
    -- When it is due (a setting, read in microseconds at every pass; compared as text, so that
    -- no value of it can fail the pass). A pass that numbered holds the order lock, and the
    -- look would read every pending row under it (2.9 s behind 600,000 dead entries, in an
    -- outside review): such a pass looks only a minute late, when no pass without the lock
    -- has (under steady load every pass numbers).
    IF pgrelay.stray_clock(clock_timestamp()
                           - CASE WHEN messages_pending OR signals_pending
                                  THEN interval '1 minute' ELSE interval '0' END)
       >= coalesce(current_setting('pgrelay.stray_look_due', true), '') COLLATE "C" THEN
        PERFORM pgrelay.look_for_strays(max_rows);
    END IF;
    RETURN messages_numbered + signals_numbered;
END $function$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (32) ON CONFLICT DO NOTHING;
