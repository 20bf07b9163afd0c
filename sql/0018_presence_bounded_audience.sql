-- pgrelay 0018: a presence change reaches its audience in rows of at most 32 KiB, and at
-- most 1 MiB of names, those who can hear it first.
--
-- A token holder decides much of her own default audience: every name on a message she sent.
-- eve wrote to 200,000 made-up names (200 messages, about 8 s at the default rates), and each
-- of her online changes then wrote one signal row of 50 MB of participants, which every relay
-- read whole (one grew from 23 to 130 MiB; found by an outside review, `tests/suite/
-- presence.rs`).
--
-- Now a change is written in rows of at most 32 KiB of names, the bound of any signal (0017),
-- which relays read a page at a time, and reaches at most 1 MiB of names (some 30,000). When
-- an audience is larger, who is kept goes by who can hear it: rooms and `*` first (a stream
-- listens on them; a sender addresses only rooms she is a member of), then names online now,
-- then names seen online before, then names pgrelay has never seen, each tier in name order.
-- So padding her audience costs eve only her own announcements, and an app with an audience
-- that large should name a room in it. Names never seen are kept rather than dropped because a
-- stream counts as online only once its instance's presence task has recorded it, up to a
-- quarter second after it opened.
--
-- presence_update also records everyone who joins in one call before it announces any of
-- them, so two participants who come online together always hear each other.
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
            SELECT member,
                   CASE WHEN member = '*' OR left(member, 1) = '#' THEN 0
                        WHEN EXISTS (SELECT 1 FROM pgrelay.presence p
                                      WHERE p.participant = member) THEN 1
                        WHEN EXISTS (SELECT 1 FROM pgrelay.presence_last_seen s
                                      WHERE s.participant = member) THEN 2
                        ELSE 3 END AS tier,
                   -- A name's bytes in an array's text, quoted and escaped as needed, with
                   -- the comma after it.
                   octet_length(ARRAY[member]::text) - 1 AS size
              FROM audience),
        placed AS (
            SELECT member, size, sum(size) OVER (ORDER BY tier, member) - size AS starts_at
              FROM ranked)
        SELECT array_agg(member ORDER BY member)
          FROM placed
         WHERE starts_at + size <= 1047552  -- 1 MiB with room for each row's braces
         GROUP BY starts_at / 31744
         ORDER BY starts_at / 31744
    LOOP
        PERFORM pgrelay.send_signal(chunk, 'presence', change, NULL);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION pgrelay.presence_update(
    relay_instance text, joined text[], left_ text[], ttl interval)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    who text;
    came_online text[] := '{}';
BEGIN
    LOCK TABLE pgrelay.presence_order IN SHARE ROW EXCLUSIVE MODE;
    FOR who IN SELECT DISTINCT p FROM unnest(joined) AS p LOOP
        IF NOT pgrelay.presence_online(who, ttl) THEN
            came_online := came_online || who;
        END IF;
        INSERT INTO pgrelay.presence AS p (participant, instance) VALUES (who, relay_instance)
            ON CONFLICT (participant, instance) DO UPDATE SET heartbeat_at = now();
    END LOOP;
    FOREACH who IN ARRAY came_online LOOP
        PERFORM pgrelay.announce_presence(who, true);
    END LOOP;
    FOR who IN SELECT DISTINCT p FROM unnest(left_) AS p LOOP
        DELETE FROM pgrelay.presence p WHERE p.participant = who AND p.instance = relay_instance;
        IF NOT pgrelay.presence_online(who, ttl) THEN
            INSERT INTO pgrelay.presence_last_seen VALUES (who, now())
                ON CONFLICT (participant) DO UPDATE SET last_seen = excluded.last_seen;
            PERFORM pgrelay.announce_presence(who, false);
        END IF;
    END LOOP;
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (18) ON CONFLICT DO NOTHING;
