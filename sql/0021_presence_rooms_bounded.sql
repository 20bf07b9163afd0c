-- pgrelay 0021: a presence change writes at most 1 MiB of rooms and names not online, and a
-- numbering pass of no rows leaves the record of an unfinished transaction as it was.
--
-- 0020 wrote every room of an audience, as it writes every name online. But nothing knows
-- whether a stream listens on a room, and the default audience takes the participants of every
-- message the application wrote without a sender: a role that may only INSERT padded alice's
-- audience with 199,800 made-up rooms, and each of her changes then wrote 8 MB in 259 rows and
-- held the presence lock 1.25 s (found by an outside review; `tests/suite/presence.rs`). Now
-- only names online now are written whatever their size; rooms and `*` come first among the
-- rest, which share the 1 MiB bound. So padding can crowd rooms out of a change only with more
-- than 1 MiB of rooms, sorting before them, in messages that name its participant.
--
-- And `pgrelay.sequence(0)` (by hand: the relay numbers 10,000 at a time) while a transaction
-- was left unfinished tried to record that it stopped at no placeholder, and failed: a pass
-- of no rows now numbers nothing and leaves the record as it was.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE OR REPLACE FUNCTION pgrelay.announce_presence(participant text, online boolean)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    chunk text[];
    change jsonb := jsonb_build_object(
        'participant', participant,
        'online', online,
        'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
BEGIN
    FOR chunk IN
        WITH audience AS (
            SELECT DISTINCT member
              FROM unnest(pgrelay.presence_audience(announce_presence.participant)) AS member
             WHERE member IS NOT NULL AND member <> announce_presence.participant
               AND pgrelay.valid_name(member)),
        ranked AS (
            SELECT a.member,
                   -- Names online now, all of them; then, within the bound, rooms and `*`
                   -- (streams may listen on them), names seen online before, names never seen.
                   CASE WHEN a.member = '*' OR left(a.member, 1) = '#' THEN 1
                        WHEN online_now.participant IS NOT NULL THEN 0
                        WHEN seen.participant IS NOT NULL THEN 2
                        ELSE 3 END AS tier,
                   -- A name's bytes in an array's text, quoted and escaped as needed, with
                   -- the comma after it.
                   octet_length(ARRAY[a.member]::text) - 1 AS size
              FROM audience a
              LEFT JOIN (SELECT DISTINCT p.participant FROM pgrelay.presence p) online_now
                     ON online_now.participant = a.member
              LEFT JOIN pgrelay.presence_last_seen seen ON seen.participant = a.member),
        kept AS (
            SELECT member, tier, size
              FROM (SELECT member, tier, size,
                           sum(size) FILTER (WHERE tier >= 1)
                               OVER (ORDER BY tier, member) AS bounded_upto
                      FROM ranked) r
             WHERE tier = 0 OR bounded_upto <= 1047552),  -- 1 MiB of rooms and names not online
        placed AS (
            SELECT member, sum(size) OVER (ORDER BY tier, member) - size AS starts_at
              FROM kept)
        SELECT array_agg(member ORDER BY member)
          FROM placed
         GROUP BY starts_at / 31744
         ORDER BY starts_at / 31744
    LOOP
        PERFORM pgrelay.send_signal(chunk, 'presence', change, NULL);
    END LOOP;
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

INSERT INTO pgrelay.schema_migrations (version) VALUES (21) ON CONFLICT DO NOTHING;
