-- pgrelay 0029: a deadlock on membership locks ends the transaction that recorded early, not
-- the one that records at its commit.
--
-- A change is recorded under a lock that orders the recordings of each participant (0010), so
-- that a later recording evaluates `member_rooms` after the earlier one committed. The
-- deferred trigger of a watched table takes these locks at commit, all at once and in sorted
-- order, so committing transactions cannot deadlock on them. But `SET CONSTRAINTS ALL
-- IMMEDIATE` makes the trigger fire at each statement's end instead: a writer could take
-- bob's lock, wait until another transaction (committing alice and bob, in order) waited for
-- it, then ask for alice's. PostgreSQL ended the deadlock by failing the transaction that had
-- waited first, the other one: the app's write failed (an outside review's finding;
-- `tests/suite/live_access.rs`). A second `rooms_changed` call in one transaction did the same.
--
-- Now a recording that starts while its transaction already holds membership locks (it is
-- not the transaction's first, so its locks come out of order) never waits in the lock
-- manager: it tries for each lock without waiting, every 10 ms, until it gets it. It ends its
-- own transaction with deadlock_detected (40P01, which apps retry) only when the lock's holder
-- waits, directly or through others, for this transaction (a cycle PostgreSQL would call a
-- deadlock), or after ten seconds (two such recordings waiting for each other, which
-- PostgreSQL cannot see). PostgreSQL's deadlock check never sees it waiting, so a
-- transaction's first recording, which waits as before, is not the one a cycle through these
-- locks fails. (A cycle that also runs through a lock of the app's own, such as a writer that
-- recorded early waiting for a row the other transaction inserted, is still PostgreSQL's to
-- break: docs/sql.md.)
--
-- Never waiting also means never inserting a participant's lock row, which would wait for a
-- transaction inserting the same one. So the locks are now 4,096 rows made here, one per hash
-- bucket of participants (taken in bucket order); two participants that share a bucket share
-- its lock, which only orders their recordings together. `room_versions`, which held a row per
-- participant ever recorded and nothing else, goes.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE TABLE IF NOT EXISTS pgrelay.room_locks (
    bucket integer PRIMARY KEY
);
INSERT INTO pgrelay.room_locks (bucket) SELECT generate_series(0, 4095) ON CONFLICT DO NOTHING;

-- The bucket whose row of room_locks orders `participant`'s recordings.
CREATE OR REPLACE FUNCTION pgrelay.room_lock(participant text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$ SELECT hashtext(participant) & 4095 $$;

-- Whether the holder of `bucket`'s lock waits, directly or through others, for this
-- transaction: a row lock's holder is the transaction in the row's xmax.
CREATE OR REPLACE FUNCTION pgrelay.room_lock_waits_for_me(bucket integer) RETURNS boolean
    LANGUAGE sql VOLATILE
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
WITH RECURSIVE waiting(pid) AS (
    SELECT l.pid FROM pgrelay.room_locks r
      JOIN pg_locks l ON l.locktype = 'transactionid' AND l.transactionid = r.xmax
                     AND l.mode = 'ExclusiveLock' AND l.granted
     WHERE r.bucket = room_lock_waits_for_me.bucket
    UNION
    SELECT unnest(pg_blocking_pids(waiting.pid)) FROM waiting)
SELECT pg_backend_pid() IN (SELECT pid FROM waiting)
$$;

-- Whether this transaction holds membership locks already (a recording started before in
-- it). The table's lock, which every recording takes with its row lock, lasts until the
-- transaction ends, or until the savepoint it was taken under rolls back with the row lock;
-- writers may not lock the table themselves.
CREATE OR REPLACE FUNCTION pgrelay.holds_room_locks() RETURNS boolean
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE pid = pg_backend_pid() AND locktype = 'relation'
                  AND relation = 'pgrelay.room_locks'::regclass)
$$;

DROP FUNCTION IF EXISTS pgrelay.record_rooms(text, regclass);

-- Records `participant`'s membership now: takes its lock (waiting for it only when `may_wait`,
-- see above), then evaluates member_rooms() in a statement of its own (which, in READ
-- COMMITTED, sees every change committed before the lock was granted), and stores the set as
-- a `rooms` row. A member_rooms() that raises must not fail the writer: the set is recorded as
-- empty (the participant's streams lose the member rooms rather than keep rooms they may have
-- lost; a reconnect evaluates it again) and the failure is recorded in pgrelay.attach_skips
-- with `source`. Names that cannot be a participant are ignored.
CREATE OR REPLACE FUNCTION pgrelay.record_rooms(participant text, source regclass,
                                                may_wait boolean)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    rooms text[];
    version bigint;
    deadline timestamptz := clock_timestamp() + interval '10 seconds';
BEGIN
    IF participant IS NULL OR NOT pgrelay.valid_name(participant)
       OR participant LIKE '#%' OR participant = '*' THEN
        RETURN;
    END IF;
    IF may_wait THEN
        PERFORM 1 FROM pgrelay.room_locks WHERE bucket = pgrelay.room_lock(participant)
            FOR UPDATE;
    ELSE
        LOOP
            BEGIN
                PERFORM 1 FROM pgrelay.room_locks WHERE bucket = pgrelay.room_lock(participant)
                    FOR UPDATE NOWAIT;
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                IF pgrelay.room_lock_waits_for_me(pgrelay.room_lock(participant))
                   OR clock_timestamp() >= deadline THEN
                    RAISE EXCEPTION 'pgrelay: this transaction recorded membership changes before (SET CONSTRAINTS ALL IMMEDIATE, or an earlier rooms_changed), and the transaction holding %''s lock waits for it (or it waited ten seconds): it ends, so that the other goes on',
                                    participant
                        USING ERRCODE = 'deadlock_detected';
                END IF;
            END;
            PERFORM pg_sleep(0.01);
        END LOOP;
    END IF;
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
-- take the new rooms at this transaction's position. The participants are locked in bucket
-- order, so two calls naming the same people cannot deadlock.
CREATE OR REPLACE FUNCTION pgrelay.rooms_changed(VARIADIC participants text[])
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    participant text;
    may_wait boolean := NOT pgrelay.holds_room_locks();
BEGIN
    FOR participant IN SELECT p FROM unnest(participants) AS p WHERE p IS NOT NULL
                        GROUP BY p ORDER BY pgrelay.room_lock(p), p LOOP
        PERFORM pgrelay.record_rooms(participant, 'pgrelay.room_locks'::regclass, may_wait);
    END LOOP;
END $$;

-- Records every participant this transaction touched, in bucket order: run at commit by the
-- first deferred trigger of a watched table (the others find nothing left), and right after a
-- TRUNCATE.
CREATE OR REPLACE FUNCTION pgrelay.rooms_record_touched()
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay, pg_temp
    AS $$
DECLARE
    touched record;
    may_wait boolean;
BEGIN
    FOR touched IN
        WITH gone AS (DELETE FROM pgrelay.rooms_touched
                       WHERE xid = pg_current_xact_id() RETURNING participant, source)
        SELECT participant, min(source::oid)::regclass AS source FROM gone
         GROUP BY participant ORDER BY pgrelay.room_lock(participant), participant
    LOOP
        -- Asked once there is something to record: reading pg_locks costs what every
        -- session's locks do, and all but the first deferred trigger find nothing.
        IF may_wait IS NULL THEN
            may_wait := NOT pgrelay.holds_room_locks();
        END IF;
        PERFORM pgrelay.record_rooms(touched.participant, touched.source, may_wait);
    END LOOP;
END $$;

DROP TABLE IF EXISTS pgrelay.room_versions;

REVOKE EXECUTE ON FUNCTION pgrelay.record_rooms(text, regclass, boolean),
    pgrelay.holds_room_locks(), pgrelay.room_lock(text), pgrelay.room_lock_waits_for_me(integer)
    FROM PUBLIC;

INSERT INTO pgrelay.schema_migrations (version) VALUES (29) ON CONFLICT DO NOTHING;
