-- pgrelay 0023: with commit timestamps recorded, a transaction is ordered by its commit even
-- when one of its pending rows was updated since.
--
-- 0016 orders the transactions a pass numbers by commit time when `track_commit_timestamp` is
-- on, and took each row's commit time from the row's xmin. A row updated while pending (the
-- owner mending a kind, say) has the update's xmin, so its transaction, grouped by
-- `inserted_by` (0022), got two commit times and was split around any transaction that
-- committed between the two: t1, w, t2 instead of t1, t2, w (found by an outside review;
-- `tests/suite/order.rs`). A transaction's commit time is now the earliest of its rows'. Its
-- rows are committed by then, and an update commits after the insert it changes.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE OR REPLACE FUNCTION pgrelay.number_pending_messages(max_rows integer, numbered_at timestamptz)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay, pg_temp
    SET enable_seqscan = off  -- pending rows by index (0012)
    -- An unfinished transaction's next rows are read in index order from where the last pass
    -- stopped; planned for its parameters, a bitmap scan read the whole pending range to sort it.
    SET enable_bitmapscan = off
    AS $$
DECLARE
    numbered integer := 0;
    sorted integer;
    unfinished pgrelay.numbering_progress;
    last_writer xid;
    last_transaction xid8;
    last_placeholder bigint;
BEGIN
    IF max_rows <= 0 THEN
        RETURN 0;  -- no page at all; NULL, no bound, goes on
    END IF;
    SELECT * INTO unfinished FROM pgrelay.numbering_progress;
    IF unfinished.writer IS NOT NULL THEN
        -- Its rest lies below the last placeholder numbered (a later insert has a smaller
        -- one), so the scan starts there, past the entries of the rows already numbered.
        WITH numbering AS (
            SELECT pending.id AS placeholder, nextval('pgrelay.message_id_seq') AS id
              FROM (SELECT id FROM pgrelay.messages
                     WHERE id < unfinished.below
                       AND inserted_by IS NOT DISTINCT FROM unfinished.inserted_by
                       AND (inserted_by IS NOT NULL OR xmin = unfinished.writer)
                     ORDER BY id DESC LIMIT max_rows) pending),
        done AS (
            UPDATE pgrelay.messages m
               SET id = numbering.id, committed_at = number_pending_messages.numbered_at,
                   kind = CASE WHEN pgrelay.valid_kind(m.kind) OR m.control THEN m.kind
                               ELSE 'message' END
              FROM numbering
             WHERE m.id = numbering.placeholder
            RETURNING numbering.placeholder)
        SELECT count(*), min(done.placeholder) INTO numbered, last_placeholder FROM done;
        IF numbered = max_rows THEN
            -- The page is full: whatever is left of it is the next pass's.
            UPDATE pgrelay.numbering_progress SET below = last_placeholder;
            RETURN numbered;
        END IF;
        DELETE FROM pgrelay.numbering_progress;
    END IF;

    -- Placeholders are negated insert counters: descending placeholder is insertion order.
    -- Each transaction's rows stay together (the same commit, the same `inserted_by`, or for
    -- rows from before 0022 the same inserting xid), in commit order where it is recorded
    -- (0016), else in the order of each transaction's first insert.
    WITH numbering AS (
        SELECT pending.id AS placeholder, pending.writer, pending.inserted_by,
               nextval('pgrelay.message_id_seq') AS id
          FROM (SELECT id, writer, inserted_by FROM (
                    SELECT id, xmin AS writer, inserted_by,
                           max(id) OVER transaction AS first_insert,
                           -- The transaction's, not each row's: a row updated since has the
                           -- xmin of the update.
                           min(CASE WHEN current_setting('track_commit_timestamp') = 'on'
                                    THEN pg_xact_commit_timestamp(xmin) END) OVER transaction
                               AS commit_time
                      FROM pgrelay.messages WHERE id < 0
                    WINDOW transaction AS (PARTITION BY inserted_by,
                                           CASE WHEN inserted_by IS NULL THEN age(xmin) END)
                   ) committed
                 ORDER BY commit_time NULLS FIRST, first_insert DESC, id DESC
                 LIMIT max_rows - numbered) pending),
    done AS (
        UPDATE pgrelay.messages m
           SET id = numbering.id, committed_at = number_pending_messages.numbered_at,
               kind = CASE WHEN pgrelay.valid_kind(m.kind) OR m.control THEN m.kind
                           ELSE 'message' END
          FROM numbering
         WHERE m.id = numbering.placeholder
        RETURNING numbering.id, numbering.placeholder, numbering.writer, numbering.inserted_by)
    SELECT count(*), (array_agg(done.writer ORDER BY done.id DESC))[1],
           (array_agg(done.inserted_by ORDER BY done.id DESC))[1],
           (array_agg(done.placeholder ORDER BY done.id DESC))[1]
      INTO sorted, last_writer, last_transaction, last_placeholder
      FROM done;
    numbered := numbered + sorted;
    -- A full page that ends inside a transaction: the next pass goes on with its rest.
    IF numbered = max_rows AND EXISTS (
           SELECT 1 FROM pgrelay.messages
            WHERE id < last_placeholder
              AND inserted_by IS NOT DISTINCT FROM last_transaction
              AND (inserted_by IS NOT NULL OR xmin = last_writer)) THEN
        INSERT INTO pgrelay.numbering_progress (writer, inserted_by, below)
            VALUES (last_writer, last_transaction, last_placeholder);
    END IF;
    RETURN numbered;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (23) ON CONFLICT DO NOTHING;
