-- pgrelay 0022: rows inserted after a SAVEPOINT are numbered with the rest of their
-- transaction.
--
-- Numbering keeps a transaction's rows together and in insert order, and it knew a row's
-- transaction by the row's xmin. But a row inserted inside a savepoint has the xmin of a
-- subtransaction, which PostgreSQL numbers on its own, so its rows formed a group apart: a
-- transaction that inserted 1, then 2 inside a savepoint, then 3 was numbered 1, 3, 2, and the
-- groups could be split by another transaction's rows (found by an outside review;
-- `tests/suite/order.rs`). ORMs open savepoints for nested transaction blocks, so this is
-- common.
--
-- Now each row records its top-level transaction, `pg_current_xact_id()`, in the new column
-- `inserted_by`, set by the insert trigger whatever the writer gave; numbering groups by it
-- (by xmin for rows pending from before this migration, which have none). Adding a nullable
-- column without a default rewrites nothing. A rolled-back savepoint's rows are still never
-- visible, so never numbered; a transaction's commit timestamp is its subtransactions' too.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

ALTER TABLE pgrelay.messages ADD COLUMN IF NOT EXISTS inserted_by xid8;
COMMENT ON COLUMN pgrelay.messages.inserted_by IS
    'The inserting top-level transaction, set by pgrelay: numbering keeps its rows together, savepoints included.';
ALTER TABLE pgrelay.numbering_progress ADD COLUMN IF NOT EXISTS inserted_by xid8;

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
    IF NEW.control AND current_user <> (SELECT pg_get_userbyid(relowner) FROM pg_class
                                         WHERE oid = 'pgrelay.messages'::regclass) THEN
        RAISE EXCEPTION 'control rows (kinds rooms and revoked) are written by pgrelay''s own functions'
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
                           max(id) OVER (PARTITION BY inserted_by,
                                         CASE WHEN inserted_by IS NULL THEN age(xmin) END)
                               AS first_insert,
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

INSERT INTO pgrelay.schema_migrations (version) VALUES (22) ON CONFLICT DO NOTHING;
