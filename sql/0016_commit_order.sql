-- pgrelay 0016: rows numbered in one pass go in commit order where PostgreSQL records it.
--
-- A pass numbers every pending row that has committed since the last one, and until now it
-- ordered them by each transaction's first insert: PostgreSQL does not tell the order in which
-- those transactions committed. Between passes that is commit order anyway (a row is numbered
-- only once it is visible), but two transactions committing before the same pass could be
-- numbered against it. That broke a promise about membership: a message whose transaction
-- inserted its row before `pgrelay.rooms_changed(p)` but committed after it got the smaller id,
-- so p's streams delivered a message of a room p had been removed from, or dropped one of a
-- room p had just joined (found by an outside review; `tests/suite/live_access.rs`).
--
-- With `track_commit_timestamp = on` (a server setting, applied at restart) PostgreSQL records
-- when each transaction committed, and a pass orders by that first: ids are then in commit
-- order within a pass too. Transactions committed before the setting was on have no
-- timestamp and come first. Without it, ordering is by first insert as before.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE OR REPLACE FUNCTION pgrelay.number_pending_messages(max_rows integer, numbered_at timestamptz)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay, pg_temp
    SET enable_seqscan = off  -- pending rows by index (0012)
    AS $$
DECLARE
    numbered integer;
    by_commit boolean := current_setting('track_commit_timestamp') = 'on';
BEGIN
    -- Placeholders are negated insert counters: descending placeholder is insertion order.
    -- Each transaction's rows stay together (the same commit, the same inserting xid), in
    -- commit order where it is recorded, else in the order of each transaction's first insert.
    WITH numbering AS (
        SELECT pending.id AS placeholder, nextval('pgrelay.message_id_seq') AS id
          FROM (SELECT id FROM (
                    SELECT id, max(id) OVER (PARTITION BY age(xmin)) AS first_insert,
                           CASE WHEN by_commit THEN pg_xact_commit_timestamp(xmin) END
                               AS commit_time
                      FROM pgrelay.messages WHERE id < 0) committed
                 ORDER BY commit_time NULLS FIRST, first_insert DESC, id DESC
                 LIMIT max_rows) pending)
    UPDATE pgrelay.messages m
       SET id = numbering.id, committed_at = number_pending_messages.numbered_at,
           kind = CASE WHEN pgrelay.valid_kind(m.kind) OR m.control THEN m.kind
                       ELSE 'message' END
      FROM numbering
     WHERE m.id = numbering.placeholder;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    RETURN numbered;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (16) ON CONFLICT DO NOTHING;
