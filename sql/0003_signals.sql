-- pgrelay 0003: signals, live-only events that are never stored.
--
--   SELECT pgrelay.signal('{alice,bob}', 'typing', '{"conversation": 7}');
--
-- A signal travels only as a NOTIFY: relays hand it to the participants' open streams, as an
-- SSE event without an `id:` line, so it never moves a client's resume position, and a client
-- that is offline simply misses it. Typing indicators are the main use.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- Sends a signal of any kind, the relay's reserved ones included (presence). Not for
-- applications: use pgrelay.signal().
CREATE OR REPLACE FUNCTION pgrelay.send_signal(
    participants text[], kind text, payload jsonb, sender text)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    wakeup text;
BEGIN
    IF participants IS NULL OR cardinality(participants) = 0
       OR array_position(participants, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'a signal needs at least one participant' USING ERRCODE = 'check_violation';
    END IF;
    wakeup := json_build_object('signal', json_build_object(
        'kind', kind, 'sender', sender, 'participants', participants, 'payload', payload))::text;
    IF octet_length(wakeup) > 7900 THEN
        RAISE EXCEPTION 'the signal is too large for NOTIFY (% bytes; keep payload and participants small)',
            octet_length(wakeup) USING ERRCODE = 'program_limit_exceeded';
    END IF;
    PERFORM pg_notify(pgrelay.channel(), wakeup);
END $$;

-- Sends a signal to the participants' open streams on every relay. Payloads are limited to
-- 1 KiB: signals are for small, frequent, forgettable things.
CREATE OR REPLACE FUNCTION pgrelay.signal(
    participants text[], kind text, payload jsonb DEFAULT 'null', sender text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NOT pgrelay.valid_kind(kind) THEN
        RAISE EXCEPTION 'invalid signal kind %: it must match [A-Za-z0-9_.:-]{1,64} and not be reserved', kind
            USING ERRCODE = 'check_violation';
    END IF;
    IF octet_length(payload::text) > 1024 THEN
        RAISE EXCEPTION 'a signal payload is at most 1024 bytes' USING ERRCODE = 'check_violation';
    END IF;
    PERFORM pgrelay.send_signal(participants, kind, payload, sender);
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (3) ON CONFLICT DO NOTHING;
