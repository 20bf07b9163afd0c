-- pgrelay 0017: a signal's participants take at most 32 KiB, as its payload takes at most 1 KiB.
--
-- pgrelay.signal() bounded a signal's payload (1 KiB) but not its participants, and every
-- relay reads a signal row whole and writes its participants into each recipient's event. A
-- role with only the writer's grants sent one signal to bob and 5,000 made-up 200-byte names:
-- bob's stream got one 1 MB event, past `--max-event-bytes`, and six signals of 80,000 names
-- grew a relay from 20 to 440 MiB (found by an outside review; `tests/suite/signals.rs`).
-- A message that large becomes an `oversized` stand-in; a signal has none, so it is bounded
-- where it is written instead: 32 KiB is a room, a conversation, or some hundred full names.
-- `POST /v1/signals` already bounded its participants (`--max-participants`).
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE OR REPLACE FUNCTION pgrelay.signal(participants text[], kind text,
                                          payload jsonb DEFAULT 'null', sender text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
BEGIN
    IF NOT pgrelay.valid_kind(kind) THEN
        RAISE EXCEPTION 'invalid signal kind %: it must match [A-Za-z0-9_.:-]{1,64} and not be reserved', kind
            USING ERRCODE = 'check_violation';
    END IF;
    IF octet_length(payload::text) > 1024 THEN
        RAISE EXCEPTION 'a signal payload is at most 1024 bytes'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    IF octet_length(participants::text) > 32768 THEN
        RAISE EXCEPTION 'a signal''s participants take at most 32768 bytes'
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    PERFORM pgrelay.send_signal(participants, kind, payload, sender);
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (17) ON CONFLICT DO NOTHING;
