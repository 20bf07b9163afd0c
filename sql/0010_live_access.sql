-- pgrelay 0010: access that changes while a stream is open (live rooms, revocation).
--
-- Until now a stream's rooms were decided when it opened and kept for the token's life, and a
-- token stayed good until it expired. From this file on, a change is recorded as a row of
-- pgrelay.messages, in the writer's own transaction, so the sequencer (0009) gives it its
-- place in the one order every message has, and every relay applies it there:
--
-- * `rooms`: the participant's membership changed. The row holds what member_rooms() answers
--   after the change (the full set) and a version; the relays replace a stream's member rooms
--   with it at the row's position, if its version is newer than the one the stream has.
-- * `revoked`: pgrelay.revoke_tokens() ran. The row holds the cutoff; the relays end the
--   participant's streams whose token was issued before it, and refuse such tokens from then
--   on (the cutoff is also kept in pgrelay.revocations, for requests).
--
-- Both are rows of kinds reserved for the relay, addressed to the one participant, marked
-- `control`, and written only by the SECURITY DEFINER functions below: before_insert refuses
-- `control` from anyone but the schema owner, and the kind rule refuses the kinds on any row
-- that is not `control`. (`control` tells these rows from rows an older database already
-- stored with these kinds, before 0008 reserved them, which the relay still serves as
-- `message`.)
--
-- Why full sets and not deltas ("#a removed"): a delta taken from one row does not commute
-- with another transaction's. Two transactions that change one participant's membership at
-- once (T1 removes #a, T2 adds #b) each see the membership without the other's change, and
-- the sequencer numbers one transaction's rows by its first insert, which may come before a
-- lock it waited for, so rows need not come in the order the changes were made. So:
--
-- * the change is recorded under a per-participant row lock (pgrelay.room_versions), taken
--   before member_rooms() is evaluated in a statement of its own: in READ COMMITTED (the
--   default) the second transaction waits for the first and then sees its change, so the
--   later set contains both;
-- * the version is drawn under that lock, so a larger version is a set that saw every change
--   of a smaller one, and the relay applies a set only if its version is newer than the one a
--   stream holds, whatever order the rows are numbered in;
-- * a stream that opens reads member_rooms() and the newest version recorded for its
--   participant in one statement, so it ignores the changes its set already shows.
--
-- What the lock lets a writer delay: only changes of that one participant's membership (the
-- lock is that participant's row, and the relays never wait for it: they read versions from
-- rows already written). A writer that records a change and keeps its transaction open makes
-- the next change of the same participant's membership wait for it, as any row lock would.
-- Watched tables take the lock when the transaction commits (a deferred trigger), for all the
-- participants it touched at once, in sorted order, so two transactions cannot deadlock on it.
--
-- A REPEATABLE READ or SERIALIZABLE writer evaluates member_rooms() in its own snapshot: its
-- set cannot see a change another transaction committed after that snapshot. Exactness needs
-- READ COMMITTED writers (docs/sql.md says so).
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

ALTER TABLE pgrelay.messages ADD COLUMN IF NOT EXISTS control boolean NOT NULL DEFAULT false;

-- Rows already stored are not checked again (NOT VALID): a row of a kind reserved since it was
-- stored stays as it is and is served as `message`, as before.
ALTER TABLE pgrelay.messages DROP CONSTRAINT IF EXISTS messages_kind_valid;
ALTER TABLE pgrelay.messages ADD CONSTRAINT messages_kind_valid
    CHECK (pgrelay.valid_kind(kind) OR (control AND kind IN ('rooms', 'revoked'))) NOT VALID;

-- The relay finds a participant's control rows by this (when a stream opens: the newest
-- version); it holds control rows only, so it costs other messages nothing.
CREATE INDEX IF NOT EXISTS messages_control_idx
    ON pgrelay.messages ((participants[1]), id) WHERE control;

-- 0009's before_insert, plus: only the schema owner (inside pgrelay's SECURITY DEFINER
-- functions, or from psql) may store a `control` row.
CREATE OR REPLACE FUNCTION pgrelay.before_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
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

-- 0009's numbering, except that a control row keeps its reserved kind.
CREATE OR REPLACE FUNCTION pgrelay.number_pending_messages(max_rows integer, numbered_at timestamptz)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pgrelay
    SET enable_seqscan = off  -- pending rows by index (0012)
    AS $$
DECLARE
    numbered integer;
BEGIN
    WITH numbering AS (
        SELECT pending.id AS placeholder, nextval('pgrelay.message_id_seq') AS id
          FROM (SELECT id FROM (
                    SELECT id, max(id) OVER (PARTITION BY age(xmin)) AS first_insert
                      FROM pgrelay.messages WHERE id < 0) committed
                 ORDER BY first_insert DESC, id DESC LIMIT max_rows) pending)
    UPDATE pgrelay.messages m
       SET id = numbering.id, committed_at = number_pending_messages.numbered_at,
           kind = CASE WHEN pgrelay.valid_kind(m.kind) OR m.control THEN m.kind
                       ELSE 'message' END
      FROM numbering
     WHERE m.id = numbering.placeholder;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    RETURN numbered;
END $$;

-- One row per participant whose membership changes were ever recorded: the lock that orders
-- them (see above). Rows are never deleted (a few dozen bytes per participant); nothing reads
-- them but the recording itself.
CREATE TABLE IF NOT EXISTS pgrelay.room_versions (
    participant text PRIMARY KEY
);

-- Versions of recorded sets: drawn under the participant's lock, so increasing per
-- participant in the order the sets were evaluated.
CREATE SEQUENCE IF NOT EXISTS pgrelay.room_version_seq;

-- Records `participant`'s membership now: takes its lock, then evaluates member_rooms() in a
-- statement of its own (which, in READ COMMITTED, sees every change committed before the lock
-- was granted), and stores the set as a `rooms` row. A member_rooms() that raises must not
-- fail the writer: the set is recorded as empty (the participant's streams lose the member
-- rooms rather than keep rooms they may have lost; a reconnect evaluates it again) and the
-- failure is recorded in pgrelay.attach_skips with `source`. Names that cannot be a
-- participant are ignored.
CREATE OR REPLACE FUNCTION pgrelay.record_rooms(participant text, source regclass)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    rooms text[];
    version bigint;
BEGIN
    IF participant IS NULL OR NOT pgrelay.valid_name(participant)
       OR participant LIKE '#%' OR participant = '*' THEN
        RETURN;
    END IF;
    INSERT INTO pgrelay.room_versions AS v (participant) VALUES (record_rooms.participant)
        ON CONFLICT ON CONSTRAINT room_versions_pkey DO NOTHING;
    PERFORM 1 FROM pgrelay.room_versions v WHERE v.participant = record_rooms.participant
        FOR UPDATE;
    version := nextval('pgrelay.room_version_seq');
    BEGIN
        rooms := ARRAY(SELECT DISTINCT r FROM unnest(pgrelay.member_rooms(participant)) AS r
                        WHERE r LIKE '#%' AND pgrelay.valid_name(r) ORDER BY r);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgrelay.attach_skip(source, 'member_rooms_failed', SQLSTATE || ': ' || SQLERRM);
        rooms := '{}';
    END;
    INSERT INTO pgrelay.messages (participants, kind, payload, control)
        VALUES (ARRAY[participant], 'rooms',
                jsonb_build_object('version', version, 'rooms', to_jsonb(rooms)), true);
END $$;

-- The app says these participants' membership changed: their open streams, on every relay,
-- take the new rooms at this transaction's position. The participants are locked in sorted
-- order, so two calls naming the same people cannot deadlock.
CREATE OR REPLACE FUNCTION pgrelay.rooms_changed(VARIADIC participants text[])
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    participant text;
BEGIN
    FOR participant IN SELECT DISTINCT p FROM unnest(participants) AS p WHERE p IS NOT NULL
                        ORDER BY p LOOP
        PERFORM pgrelay.record_rooms(participant, 'pgrelay.room_versions'::regclass);
    END LOOP;
END $$;

-- The participants a watched table's writes touched in the open transactions, recorded when
-- each commits (see watch_membership). Unlogged: a row lives only inside its transaction.
CREATE UNLOGGED TABLE IF NOT EXISTS pgrelay.rooms_touched (
    xid         xid8     NOT NULL DEFAULT pg_current_xact_id(),
    participant text     NOT NULL,
    source      regclass NOT NULL,
    PRIMARY KEY (xid, participant)
);

-- Notes that `participant`'s membership changed in this transaction (once per participant).
CREATE OR REPLACE FUNCTION pgrelay.rooms_touch(participant text, source regclass)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    IF participant IS NOT NULL THEN
        INSERT INTO pgrelay.rooms_touched (participant, source)
            VALUES (participant, source) ON CONFLICT DO NOTHING;
    END IF;
END $$;

-- Records every participant this transaction touched, in sorted order: run at commit by the
-- first deferred trigger of a watched table (the others find nothing left), and right after a
-- TRUNCATE.
CREATE OR REPLACE FUNCTION pgrelay.rooms_record_touched()
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    touched record;
BEGIN
    FOR touched IN
        WITH gone AS (DELETE FROM pgrelay.rooms_touched
                       WHERE xid = pg_current_xact_id() RETURNING participant, source)
        SELECT participant, min(source::oid)::regclass AS source FROM gone
         GROUP BY participant ORDER BY participant
    LOOP
        PERFORM pgrelay.record_rooms(touched.participant, touched.source);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION pgrelay.rooms_record_trigger() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    PERFORM pgrelay.rooms_record_touched();
    RETURN NULL;
END $$;

-- What watch_membership() was told, per watched table.
CREATE TABLE IF NOT EXISTS pgrelay.watched (
    source      regclass    PRIMARY KEY,
    participant text        NOT NULL,
    room        text,
    search_path text        NOT NULL,
    watched_at  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION pgrelay.watched_function_name(source regclass) RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT format('pgrelay.%I', 'watch_' || source::oid) $$;

-- Lets every INSERT, UPDATE, DELETE and TRUNCATE of `source` count as a membership change of
-- the participant `participant` (an expression over NEW) names; an UPDATE counts for the old
-- and the new participant. With `room` (an expression over NEW naming the room a row grants),
-- an UPDATE that changes neither the participant nor the room counts for nobody, so updating
-- other columns of a membership row costs nothing. What is recorded is always member_rooms()'s
-- full answer (see the top of this file for why not the row's room).
--
-- Like attach(): the expressions are checked now; at a write they are evaluated in a block
-- that records a failure in pgrelay.attach_skips instead of failing the app's write; the
-- generated function runs as its creator with the search_path the expressions were checked
-- under. The recording happens when the writing transaction commits (a deferred constraint
-- trigger), under the participants' locks, in sorted order.
CREATE OR REPLACE FUNCTION pgrelay.watch_membership(
    source regclass, participant text, room text DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    AS $watch$
DECLARE
    path text := current_setting('search_path') || ', pg_temp';
    function_name text := pgrelay.watched_function_name(source);
    body text;
    unchanged text := 'false';
BEGIN
    IF participant IS NULL THEN
        RAISE EXCEPTION 'pgrelay.watch_membership: participant must not be NULL';
    END IF;
    IF NOT has_function_privilege('pgrelay.rooms_touch(text, regclass)', 'EXECUTE')
       OR NOT has_function_privilege('pgrelay.attach_skip(regclass, text, text)', 'EXECUTE') THEN
        RAISE EXCEPTION 'pgrelay.watch_membership: % may not record membership changes (it needs EXECUTE on pgrelay.rooms_touch and pgrelay.attach_skip)',
            current_user USING ERRCODE = 'insufficient_privilege';
    END IF;
    BEGIN
        EXECUTE format('SELECT (%s)::text, (%s)::text FROM (SELECT (NULL::%s).*) AS new LIMIT 0',
                       participant, coalesce(room, 'NULL'), source);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgrelay.watch_membership(%): an expression is invalid: %', source, SQLERRM
            USING ERRCODE = SQLSTATE;
    END;
    IF room IS NOT NULL THEN
        unchanged := format('TG_OP = ''UPDATE'' AND (%1$s)::text IS NOT DISTINCT FROM old_participant '
                            'AND (%2$s)::text IS NOT DISTINCT FROM old_room',
                            participant, room);
    END IF;
    -- NEW is the row written, or for a DELETE the row deleted; for an UPDATE the expressions
    -- are evaluated over OLD too (by swapping it in), so they are written once, over NEW.
    body := format($body$
#variable_conflict use_column
DECLARE
    old_participant text;
    old_room text;
    new_participant text;
    truncated text[];
BEGIN
    -- Only evaluated here: the block is a subtransaction, and one that writes nothing never
    -- gets an xid of its own (see install_attached in 0008).
    BEGIN
        IF TG_OP = 'TRUNCATE' THEN
            EXECUTE format('SELECT array_agg(DISTINCT (%%s)::text) FROM %%s AS new', %1$L, TG_RELID::regclass)
                INTO truncated;
        ELSE
            IF TG_OP = 'DELETE' THEN
                NEW := OLD;
                old_participant := (%1$s)::text;
            ELSIF TG_OP = 'UPDATE' THEN
                DECLARE
                    written record := NEW;
                BEGIN
                    NEW := OLD;
                    old_participant := (%1$s)::text;
                    old_room := (%2$s)::text;
                    NEW := written;
                END;
            END IF;
            IF %3$s THEN
                RETURN NULL;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                new_participant := (%1$s)::text;
            END IF;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgrelay.attach_skip(TG_RELID, 'expression_failed', SQLSTATE || ': ' || SQLERRM);
        RETURN NULL;
    END;
    PERFORM pgrelay.rooms_touch(p, TG_RELID)
       FROM unnest(coalesce(truncated, '{}') || ARRAY[old_participant, new_participant]) AS p;
    RETURN NULL;
END
$body$, participant, coalesce(room, 'NULL'), unchanged);
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = %s AS %L',
        function_name, path, body);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s() FROM PUBLIC', function_name);

    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership ON %s', source);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership_truncate ON %s', source);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership_record ON %s', source);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership_truncated ON %s', source);
    EXECUTE format(
        'CREATE TRIGGER pgrelay_membership AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s()',
        source, function_name);
    -- Before: the rows are still there to say whom the TRUNCATE removes.
    EXECUTE format(
        'CREATE TRIGGER pgrelay_membership_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
        source, function_name);
    EXECUTE format(
        'CREATE CONSTRAINT TRIGGER pgrelay_membership_record AFTER INSERT OR UPDATE OR DELETE ON %s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgrelay.rooms_record_trigger()',
        source);
    -- A TRUNCATE cannot have a deferred trigger: its participants are recorded right after it.
    EXECUTE format(
        'CREATE TRIGGER pgrelay_membership_truncated AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgrelay.rooms_record_trigger()',
        source);

    INSERT INTO pgrelay.watched AS w (source, participant, room, search_path)
        VALUES (source, participant, room, path)
        ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE
           SET participant = excluded.participant, room = excluded.room,
               search_path = excluded.search_path, watched_at = now();
END $watch$;

CREATE OR REPLACE FUNCTION pgrelay.unwatch_membership(source regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership ON %s', source);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership_truncate ON %s', source);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership_record ON %s', source);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_membership_truncated ON %s', source);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', pgrelay.watched_function_name(source));
    DELETE FROM pgrelay.watched w WHERE w.source = unwatch_membership.source;
END $$;

-- The latest revocation of each participant: tokens of `participant` issued before
-- `issued_before` (or without `iat`) are refused. Kept until the owner deletes the row: a
-- token's `exp` may lie at most --max-token-lifetime ahead *when it is checked*, so a token
-- issued before the cutoff with a far `exp` could become acceptable later; one small row per
-- revoked participant, read by primary key when a stream opens.
CREATE TABLE IF NOT EXISTS pgrelay.revocations (
    participant   text        PRIMARY KEY,
    issued_before timestamptz NOT NULL,
    revoked_at    timestamptz NOT NULL DEFAULT now()
);

-- Ends `participant`'s open streams whose token was issued before `issued_before`, on every
-- relay, at this transaction's position, and refuses such tokens from then on. A cutoff
-- earlier than one already recorded changes nothing (the latest cutoff wins).
CREATE OR REPLACE FUNCTION pgrelay.revoke_tokens(
    participant text, issued_before timestamptz DEFAULT now())
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    cutoff timestamptz;
BEGIN
    IF participant IS NULL OR NOT pgrelay.valid_name(participant)
       OR participant LIKE '#%' OR participant = '*' THEN
        RAISE EXCEPTION 'pgrelay.revoke_tokens: % is not a participant', quote_nullable(participant)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF issued_before IS NULL THEN
        RAISE EXCEPTION 'pgrelay.revoke_tokens: issued_before must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgrelay.revocations AS r (participant, issued_before)
        VALUES (revoke_tokens.participant, revoke_tokens.issued_before)
        ON CONFLICT ON CONSTRAINT revocations_pkey DO UPDATE
           SET issued_before = greatest(r.issued_before, excluded.issued_before),
               revoked_at = now()
        RETURNING r.issued_before INTO cutoff;
    INSERT INTO pgrelay.messages (participants, kind, payload, control)
        VALUES (ARRAY[participant], 'revoked',
                jsonb_build_object('issued_before', extract(epoch FROM cutoff)), true);
END $$;

-- The relays read revocations when a stream opens: every role that may read the messages (the
-- relays' roles, granted as docs/security.md says) may read them too, so that upgrading needs
-- no new grant. Who was revoked is less than what such a role reads already.
DO $grant$
DECLARE
    reader text;
BEGIN
    FOR reader IN
        SELECT quote_ident(rolname) FROM pg_roles
         WHERE NOT rolsuper AND rolname <> current_user AND rolname !~ '^pg_'
           AND has_table_privilege(oid, 'pgrelay.messages', 'SELECT')
    LOOP
        EXECUTE format('GRANT SELECT ON pgrelay.revocations TO %s', reader);
    END LOOP;
END $grant$;

-- Revoking is the owner's, and of the roles it grants (docs/security.md); recording membership
-- changes is for the app roles it grants; the internals are nobody else's.
REVOKE EXECUTE ON FUNCTION pgrelay.revoke_tokens(text, timestamptz),
    pgrelay.rooms_changed(text[]), pgrelay.record_rooms(text, regclass),
    pgrelay.rooms_touch(text, regclass), pgrelay.rooms_record_touched(),
    pgrelay.rooms_record_trigger(), pgrelay.watch_membership(regclass, text, text),
    pgrelay.unwatch_membership(regclass) FROM PUBLIC;

INSERT INTO pgrelay.schema_migrations (version) VALUES (10) ON CONFLICT DO NOTHING;
