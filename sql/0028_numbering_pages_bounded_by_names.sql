-- pgrelay 0028: a numbering page ends at five names a row as well as at its rows.
--
-- Numbering a row changes its indexed id, so PostgreSQL writes the row again and puts every
-- name it holds into the participants index again: about 6 µs a name, 60 ms for a row that
-- names 10,000 participants (the most a message may). A relay's pass numbered up to 10,000
-- rows, whatever they named, under the order lock. A writer that committed a few hundred such
-- rows (an outside review's finding; an honest bulk insert of wide rows does the same) made
-- every pass outlast the relay's patience (two heartbeats): the relay gave up on the session,
-- the pass rolled back, and the next one did the same work again. Nothing was numbered again,
-- for anyone.
--
-- A page of at most `max_rows` rows now also ends before the row that would take it past
-- five names a row, `5 * max_rows` (its first row is always taken): 50,000 names for a
-- relay's pass of 10,000 rows, at most about a third of a second of this work. Pages of rows
-- that name five or fewer each end where they did. A page that ends at its names sends a
-- wake-up, as a writer's commit does, so the relays' next pass goes on at once (a page that
-- ends at its rows says so by its count). The order is the same: a transaction cut by a page
-- is finished first by the next pass (numbering_progress, 0019). `publish_many`'s numbering
-- has no bound on rows, and so none on names.
--
-- The page is read through a cursor, so only the rows numbered (and the one after them) have
-- their names counted.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- Numbers the rows `pending` yields (id, writer, inserted_by, participants), in that order, up
-- to `max_rows` rows and, past the first row, `max_names` names (NULL: no bound). Says how
-- many rows and names it numbered, whether it stopped at a bound before a row, and the last
-- row it numbered.
CREATE OR REPLACE FUNCTION pgrelay.number_page(
        pending refcursor, max_rows integer, max_names bigint, numbered_at timestamptz,
        OUT numbered integer, OUT names bigint, OUT cut boolean,
        OUT last_writer xid, OUT last_transaction xid8, OUT last_placeholder bigint)
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    candidate record;
    page bigint[] := '{}';
BEGIN
    names := 0;
    cut := false;
    LOOP
        FETCH pending INTO candidate;
        EXIT WHEN NOT FOUND;
        IF cardinality(page) = max_rows
           OR (cardinality(page) > 0
               AND names + cardinality(candidate.participants) > max_names) THEN
            cut := true;
            EXIT;
        END IF;
        page := page || candidate.id;
        names := names + cardinality(candidate.participants);
        last_writer := candidate.writer;
        last_transaction := candidate.inserted_by;
        last_placeholder := candidate.id;
    END LOOP;
    CLOSE pending;
    -- Ids are drawn in the page's order.
    WITH numbering AS (
        SELECT p.placeholder, nextval('pgrelay.message_id_seq') AS id
          FROM unnest(page) AS p(placeholder))
    UPDATE pgrelay.messages m
       SET id = numbering.id, committed_at = number_page.numbered_at,
           kind = CASE WHEN pgrelay.valid_kind(m.kind) OR m.control THEN m.kind
                       ELSE 'message' END
      FROM numbering
     WHERE m.id = numbering.placeholder;
    GET DIAGNOSTICS numbered = ROW_COUNT;
END $$;

REVOKE EXECUTE ON FUNCTION pgrelay.number_page(refcursor, integer, bigint, timestamptz)
    FROM PUBLIC;

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
    -- A bound on rows comes with one on names (above).
    max_names bigint := 5::bigint * max_rows;
    unfinished pgrelay.numbering_progress;
    pending refcursor;
    page record;
    continued integer := 0;
BEGIN
    IF max_rows <= 0 THEN
        RETURN 0;  -- no page at all; NULL, no bound, goes on
    END IF;
    SELECT * INTO unfinished FROM pgrelay.numbering_progress;
    IF unfinished.writer IS NOT NULL THEN
        -- Its rest lies below the last placeholder numbered (a later insert has a smaller
        -- one), so the scan starts there, past the entries of the rows already numbered.
        OPEN pending FOR
            SELECT id, xmin AS writer, inserted_by, participants FROM pgrelay.messages
             WHERE id < unfinished.below
               AND inserted_by IS NOT DISTINCT FROM unfinished.inserted_by
               AND (inserted_by IS NOT NULL OR xmin = unfinished.writer)
             ORDER BY id DESC LIMIT max_rows + 1;
        page := pgrelay.number_page(pending, max_rows, max_names, numbered_at);
        IF page.cut THEN
            -- Whatever is left of it is the next pass's.
            UPDATE pgrelay.numbering_progress SET below = page.last_placeholder;
            IF page.numbered < max_rows THEN
                PERFORM pg_notify(pgrelay.channel(), '');
            END IF;
            RETURN page.numbered;
        END IF;
        DELETE FROM pgrelay.numbering_progress;
        continued := page.numbered;
        max_rows := max_rows - continued;
        max_names := max_names - page.names;
        IF max_rows = 0 THEN
            RETURN continued;
        END IF;
    END IF;

    -- Placeholders are negated insert counters: descending placeholder is insertion order.
    -- Each transaction's rows stay together (the same commit, the same `inserted_by`, or for
    -- rows from before 0022 the same inserting xid), in commit order where it is recorded
    -- (0016), else in the order of each transaction's first insert.
    OPEN pending FOR
        SELECT id, writer, inserted_by, participants FROM (
            SELECT id, xmin AS writer, inserted_by, participants,
                   max(id) OVER transaction AS first_insert,
                   -- The transaction's, not each row's: a row updated since has the xmin of
                   -- the update.
                   min(CASE WHEN current_setting('track_commit_timestamp') = 'on'
                            THEN pg_xact_commit_timestamp(xmin) END) OVER transaction
                       AS commit_time
              FROM pgrelay.messages WHERE id < 0
            WINDOW transaction AS (PARTITION BY inserted_by,
                                   CASE WHEN inserted_by IS NULL THEN age(xmin) END)
           ) committed
         ORDER BY commit_time NULLS FIRST, first_insert DESC, id DESC
         LIMIT max_rows + 1;
    page := pgrelay.number_page(pending, max_rows, max_names, numbered_at);
    -- A page that ends inside a transaction: the next pass goes on with its rest.
    IF page.cut AND EXISTS (
           SELECT 1 FROM pgrelay.messages
            WHERE id < page.last_placeholder
              AND inserted_by IS NOT DISTINCT FROM page.last_transaction
              AND (inserted_by IS NOT NULL OR xmin = page.last_writer)) THEN
        INSERT INTO pgrelay.numbering_progress (writer, inserted_by, below)
            VALUES (page.last_writer, page.last_transaction, page.last_placeholder);
    END IF;
    IF page.cut AND page.numbered < max_rows THEN
        PERFORM pg_notify(pgrelay.channel(), '');
    END IF;
    RETURN continued + page.numbered;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (28) ON CONFLICT DO NOTHING;
