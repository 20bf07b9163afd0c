-- pgrelay 0019: a transaction larger than one numbering pass is numbered in time linear in its
-- size.
--
-- A pass numbers at most `max_rows` (10,000) committed pending rows, and to choose them it
-- sorted every committed pending row by transaction. After one writer's INSERT of 200,000
-- rows that made 20 passes of 245 ms each, 5 s in all, through which every message committed
-- behind it waited, and the cost grew with the square of the transaction's size (found by an
-- outside review; BENCHMARKS.md, "The database side under attack").
--
-- Now a pass whose page ends inside a transaction records it in pgrelay.numbering_progress,
-- and the next pass goes on with that transaction's rest first, reading its next rows from the
-- primary key's pending range in insert order instead of sorting every pending row again.
-- It is the order the sort would give (the transaction was first, and anything it had not seen
-- committed after it), except that a transaction is never split around one whose first insert
-- was later: its ids stay in one run. Passes take turns under the order lock, so they share
-- the record; an HTTP publish, which numbers everything pending, clears it.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE TABLE IF NOT EXISTS pgrelay.numbering_progress (
    writer xid NOT NULL,
    below bigint NOT NULL
);
COMMENT ON TABLE pgrelay.numbering_progress IS
    'The transaction (its xmin) whose rows the last numbering pass left part of, and the placeholder its rest lies below: the next pass goes on with it.';
CREATE UNIQUE INDEX IF NOT EXISTS numbering_progress_one_row ON pgrelay.numbering_progress ((true));

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
    last_placeholder bigint;
BEGIN
    SELECT * INTO unfinished FROM pgrelay.numbering_progress;
    IF unfinished.writer IS NOT NULL THEN
        -- Its rest lies below the last placeholder numbered (a later insert has a smaller
        -- one), so the scan starts there, past the entries of the rows already numbered.
        WITH numbering AS (
            SELECT pending.id AS placeholder, nextval('pgrelay.message_id_seq') AS id
              FROM (SELECT id FROM pgrelay.messages
                     WHERE id < unfinished.below AND xmin = unfinished.writer
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
    -- Each transaction's rows stay together (the same commit, the same inserting xid), in
    -- commit order where it is recorded (0016), else in the order of each transaction's first
    -- insert.
    WITH numbering AS (
        SELECT pending.id AS placeholder, pending.writer,
               nextval('pgrelay.message_id_seq') AS id
          FROM (SELECT id, writer FROM (
                    SELECT id, xmin AS writer,
                           max(id) OVER (PARTITION BY age(xmin)) AS first_insert,
                           CASE WHEN current_setting('track_commit_timestamp') = 'on'
                                THEN pg_xact_commit_timestamp(xmin) END AS commit_time
                      FROM pgrelay.messages WHERE id < 0) committed
                 ORDER BY commit_time NULLS FIRST, first_insert DESC, id DESC
                 LIMIT max_rows - numbered) pending),
    done AS (
        UPDATE pgrelay.messages m
           SET id = numbering.id, committed_at = number_pending_messages.numbered_at,
               kind = CASE WHEN pgrelay.valid_kind(m.kind) OR m.control THEN m.kind
                           ELSE 'message' END
          FROM numbering
         WHERE m.id = numbering.placeholder
        RETURNING numbering.id, numbering.placeholder, numbering.writer)
    SELECT count(*), (array_agg(done.writer ORDER BY done.id DESC))[1],
           (array_agg(done.placeholder ORDER BY done.id DESC))[1]
      INTO sorted, last_writer, last_placeholder
      FROM done;
    numbered := numbered + sorted;
    -- A full page that ends inside a transaction: the next pass goes on with its rest.
    IF numbered = max_rows AND EXISTS (
           SELECT 1 FROM pgrelay.messages
            WHERE id < last_placeholder AND xmin = last_writer) THEN
        INSERT INTO pgrelay.numbering_progress (writer, below)
            VALUES (last_writer, last_placeholder);
    END IF;
    RETURN numbered;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (19) ON CONFLICT DO NOTHING;
