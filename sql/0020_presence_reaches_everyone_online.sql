-- pgrelay 0020: a presence change reaches every name in its audience that is online, and the
-- 1 MiB bound of 0018 counts only the names that are not.
--
-- 0018 bounded what one change writes to 1 MiB of names, rooms first, then names online now,
-- then the rest. An audience of 40,000 members online (40-byte names) then reached 25,550 of
-- them, and the others never heard the change, while INTERFACE.md promises the audience does
-- (found by an outside review; `tests/suite/presence.rs`). Names online now are bounded by the
-- streams the fleet holds, not by what a sender writes, so they are all written, whatever
-- their size; the bound applies to names not online now, which only a stream opened in the
-- last moments could be (it is recorded within a quarter second, later in a mass reconnect),
-- so padding an audience with made-up names still costs at most 1 MiB a change.
--
-- Writing is bounded; reading the audience is not: with 200,000 made-up names of 32 bytes, one
-- announcement took 1.0-1.1 s under the presence lock (as with 0018), 0.26 s of it the default
-- pgrelay.presence_audience itself, which reads every retained message its participant sent.
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
                   -- Who can hear it now: rooms and `*`, which streams listen on, and names
                   -- online; then names seen online before, then names never seen.
                   CASE WHEN a.member = '*' OR left(a.member, 1) = '#' THEN 0
                        WHEN online_now.participant IS NOT NULL THEN 1
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
                           sum(size) FILTER (WHERE tier >= 2)
                               OVER (ORDER BY tier, member) AS offline_upto
                      FROM ranked) r
             WHERE tier < 2 OR offline_upto <= 1047552),  -- 1 MiB of names not online
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

INSERT INTO pgrelay.schema_migrations (version) VALUES (20) ON CONFLICT DO NOTHING;
