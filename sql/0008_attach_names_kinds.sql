-- pgrelay 0008: attach() never fails the application's statement; names refuse everything
-- that could hide or pass for something else; three more kinds are the relay's own.
--
-- * An attached table's own writes never fail because of pgrelay. The trigger attach()
--   generates evaluates the expressions where an error is caught, leaves out addresses that
--   are NULL or break the name rule, and publishes only what pgrelay.messages accepts. A row
--   that leaves nothing to publish still commits in the application's table; it is recorded in
--   pgrelay.attach_skips (the newest 1000 kept), which the relay reports as a log line and the
--   metric pgrelay_attach_skips_total. attach() records its arguments in pgrelay.attached, and
--   this file regenerates the triggers of tables attached before it.
-- * The name rule (participants, senders, rooms, token subjects) also refuses line and
--   paragraph separators, spaces other than U+0020, default-ignorable code points and U+2800.
-- * The kinds `oversized`, `rooms` and `revoked` are reserved. Only the function behind the
--   kind's CHECK constraint changes, and PostgreSQL does not check stored rows again when that
--   happens, so a database whose rows already use these kinds migrates; the relay serves such
--   a row as kind `message`. (An UPDATE of such a row is checked, so it must change the kind.)
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- Kinds become the SSE `event:` field: framing-safe, and never one of the relay's own events
-- (the stream's opening `position`, `presence`, `reset`, `token_expired`, the stand-in
-- `oversized`, a stream's `rooms` change and `revoked`). src/message.rs has the same list.
CREATE OR REPLACE FUNCTION pgrelay.valid_kind(kind text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT kind ~ '^[A-Za-z0-9_.:-]{1,64}$'
                 AND kind NOT IN ('oversized', 'position', 'presence', 'reset', 'revoked',
                                  'rooms', 'token_expired') $$;

-- Most addresses one message may name (HTTP's own limit, --max-participants, is lower): with
-- names of at most 256 bytes, a message's participants stay within 2.5 MiB, and a stand-in for
-- an oversized message, which carries them, stays bounded too.
CREATE OR REPLACE FUNCTION pgrelay.max_participants() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT 10000 $$;

-- One rule for names: 1 to 256 bytes, none of them a control (Cc) or format (Cf) character, a
-- line or paragraph separator (U+2028, U+2029), a space other than U+0020 (Zs), a
-- Default_Ignorable_Code_Point (Unicode 16's DerivedCoreProperties.txt: among others U+034F,
-- the Hangul fillers U+115F, U+1160, U+3164, U+FFA0, the variation selectors and the reserved
-- ignorable ranges) or U+2800 BRAILLE PATTERN BLANK, which renders blank. The ranges are those
-- of REFUSED_IN_NAMES in src/message.rs; tests/suite/trust.rs compares the two rules on every
-- code point. (PostgreSQL text cannot hold U+0000, so the class starts at U+0001.)
CREATE OR REPLACE FUNCTION pgrelay.valid_name(name text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT octet_length(name) BETWEEN 1 AND 256
                 AND name !~ '[\x01-\x1f\x7f-\xa0\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]' $$;

-- What attach() was told, per attached table: the expressions (and the search_path they were
-- checked under), so that a later migration can generate the table's trigger again.
CREATE TABLE IF NOT EXISTS pgrelay.attached (
    source       regclass    PRIMARY KEY,
    participants text        NOT NULL,
    kind         text        NOT NULL,
    payload      text        NOT NULL,
    sender       text        NOT NULL,
    search_path  text        NOT NULL,
    attached_at  timestamptz NOT NULL DEFAULT now()
);

-- Rows of attached tables that were committed but not published, newest 1000 kept. `reason`:
-- expression_failed (an expression raised; `detail` has the error), no_participants (NULL or
-- empty), participants_refused (every address NULL or against the name rule), payload_null,
-- kind_invalid, sender_invalid. The relay marks rows `reported` as it logs and counts them.
CREATE TABLE IF NOT EXISTS pgrelay.attach_skips (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    skipped_at timestamptz NOT NULL DEFAULT now(),
    source     regclass    NOT NULL,
    reason     text        NOT NULL,
    detail     text,
    reported   boolean     NOT NULL DEFAULT false
);

-- Records one skip. Runs as the owner so that whoever attached a table needs only EXECUTE.
-- Every hundredth skip also deletes what lies more than 1000 skips back, except rows another
-- transaction holds (SKIP LOCKED): an application's insert never waits for another's.
CREATE OR REPLACE FUNCTION pgrelay.attach_skip(source regclass, reason text, detail text)
    RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
DECLARE
    skip_id bigint;
BEGIN
    INSERT INTO pgrelay.attach_skips (source, reason, detail)
        VALUES (source, reason, left(detail, 500))
        RETURNING id INTO skip_id;
    IF skip_id % 100 = 0 THEN
        DELETE FROM pgrelay.attach_skips WHERE id IN (
            SELECT id FROM pgrelay.attach_skips WHERE id <= skip_id - 1000
               FOR UPDATE SKIP LOCKED);
    END IF;
END $$;

-- Publishes one row of an attached table, from the values its expressions gave, or records
-- why not. Everything pgrelay.messages would refuse is filtered here first, so the INSERT
-- cannot fail on it: NULL addresses and addresses against the name rule are left out, and a
-- NULL payload, a kind outside the kind rule or a sender against the name rule skip the row.
-- (A sender is not dropped to NULL: a message without sender counts as the application's own,
-- which the default presence_audience takes as consent between all its participants.)
-- Runs with the rights of the generated trigger, that is of whoever attached the table.
--
-- The loop is written out rather than calling pgrelay.valid_names: that function runs under
-- the insert trigger's search_path too, and PL/pgSQL plans an expression again whenever the
-- search_path differs from the previous call's, which made every attached row cost a second
-- plan (measured: 100 µs per row on this machine).
CREATE OR REPLACE FUNCTION pgrelay.attached_publish(
    source regclass, participants text[], kind text, payload jsonb, sender text)
    RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    addresses text[] := participants;
    address text;
BEGIN
    IF participants IS NULL OR cardinality(participants) = 0 THEN
        PERFORM pgrelay.attach_skip(source, 'no_participants', NULL);
        RETURN;
    END IF;
    IF cardinality(participants) > pgrelay.max_participants() THEN
        PERFORM pgrelay.attach_skip(source, 'participants_too_many',
                                    cardinality(participants)::text);
        RETURN;
    END IF;
    FOREACH address IN ARRAY participants LOOP
        IF address IS NULL OR NOT pgrelay.valid_name(address) THEN
            addresses := NULL;
            EXIT;
        END IF;
    END LOOP;
    IF addresses IS NULL OR array_ndims(addresses) > 1 THEN
        addresses := ARRAY(SELECT a FROM unnest(participants) WITH ORDINALITY AS u(a, n)
                            WHERE pgrelay.valid_name(a) ORDER BY n);
        IF cardinality(addresses) = 0 THEN
            PERFORM pgrelay.attach_skip(source, 'participants_refused', participants::text);
            RETURN;
        END IF;
    END IF;
    IF payload IS NULL THEN
        PERFORM pgrelay.attach_skip(source, 'payload_null', NULL);
    ELSIF kind IS NULL OR NOT pgrelay.valid_kind(kind) THEN
        PERFORM pgrelay.attach_skip(source, 'kind_invalid', quote_nullable(left(kind, 100)));
    ELSIF sender IS NOT NULL AND NOT pgrelay.valid_name(sender) THEN
        PERFORM pgrelay.attach_skip(source, 'sender_invalid', quote_literal(left(sender, 100)));
    ELSE
        INSERT INTO pgrelay.messages (participants, kind, payload, sender)
            VALUES (addresses, kind, payload, sender);
    END IF;
END $$;

-- Generates (or replaces) the trigger function of an attached table and records its arguments.
-- `kind` is a kind name (taken literally) or an expression, as attach() documents.
--
-- The function runs as its owner, whoever called this (SECURITY DEFINER), with the search_path
-- the expressions were checked under and pg_temp last: the expressions are evaluated with the
-- rights and names they were checked with, the application's writers need no privilege in
-- schema pgrelay, and none of them can shadow a table the expressions read with a temporary
-- one. PUBLIC may not execute it, so nobody else can put it on a table of their own.
--
-- The expressions are evaluated in a block with an exception handler, which PostgreSQL runs as
-- a subtransaction. It writes nothing there (unless an expression itself writes), so the
-- subtransaction never gets an xid of its own, and a transaction inserting any number of rows
-- never overflows the 64 subtransaction ids a snapshot can hold. The row is published, or the
-- skip recorded, after the block.
CREATE OR REPLACE FUNCTION pgrelay.install_attached(
    source regclass, participants text, kind text, payload text, sender text)
    RETURNS void
    LANGUAGE plpgsql
    AS $install$
DECLARE
    kind_expression text;
    path text := current_setting('search_path') || ', pg_temp';
    body text;
BEGIN
    IF participants IS NULL OR kind IS NULL OR payload IS NULL OR sender IS NULL THEN
        RAISE EXCEPTION 'pgrelay.attach: participants, kind, payload and sender must not be NULL';
    END IF;
    IF kind ~ '^[A-Za-z0-9_.:-]{1,64}$' AND kind !~* '^new\.' THEN
        kind_expression := quote_literal(kind);
    ELSE
        kind_expression := kind;
    END IF;

    -- Plan the expressions against the table's row type, with NEW bound to a row of that
    -- type: unknown columns, syntax errors, impossible casts and missing privileges fail here.
    BEGIN
        EXECUTE format(
            'SELECT (%s)::text[], (%s)::text, (%s)::jsonb, (%s)::text FROM (SELECT (NULL::%s).*) AS new LIMIT 0',
            participants, kind_expression, payload, sender, source);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgrelay.attach(%): an expression is invalid: %', source, SQLERRM
            USING ERRCODE = SQLSTATE;
    END;

    -- use_column: a column an expression names is never mistaken for a variable here.
    body := format($body$
#variable_conflict use_column
DECLARE
    event_participants text[];
    event_kind text;
    event_payload jsonb;
    event_sender text;
BEGIN
    BEGIN
        event_participants := (%s)::text[];
        event_kind := (%s)::text;
        event_payload := (%s)::jsonb;
        event_sender := (%s)::text;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pgrelay.attach_skip(TG_RELID, 'expression_failed', SQLSTATE || ': ' || SQLERRM);
        RETURN NULL;
    END;
    PERFORM pgrelay.attached_publish(
        TG_RELID, event_participants, event_kind, event_payload, event_sender);
    RETURN NULL;
END
$body$, participants, kind_expression, payload, sender);
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = %s AS %L',
        pgrelay.attached_function_name(source), path, body);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s() FROM PUBLIC',
        pgrelay.attached_function_name(source));

    INSERT INTO pgrelay.attached AS a (source, participants, kind, payload, sender, search_path)
        VALUES (source, participants, kind, payload, sender, path)
        ON CONFLICT ON CONSTRAINT attached_pkey DO UPDATE
           SET participants = excluded.participants, kind = excluded.kind,
               payload = excluded.payload, sender = excluded.sender,
               search_path = excluded.search_path, attached_at = now();
END $install$;

CREATE OR REPLACE FUNCTION pgrelay.attach(
    source       regclass,
    participants text,
    kind         text DEFAULT 'message',
    payload      text DEFAULT 'to_jsonb(NEW)',
    sender       text DEFAULT 'NULL')
    RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- The trigger publishes with its creator's rights: check them now, not at an insert.
    IF NOT has_table_privilege('pgrelay.messages', 'INSERT')
       OR NOT has_function_privilege(
           'pgrelay.attached_publish(regclass, text[], text, jsonb, text)', 'EXECUTE')
       OR NOT has_function_privilege('pgrelay.attach_skip(regclass, text, text)', 'EXECUTE') THEN
        RAISE EXCEPTION 'pgrelay.attach: % may not publish (it needs INSERT on pgrelay.messages and EXECUTE on pgrelay.attached_publish and pgrelay.attach_skip)',
            current_user USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF kind ~ '^[A-Za-z0-9_.:-]{1,64}$' AND kind !~* '^new\.' AND NOT pgrelay.valid_kind(kind) THEN
        RAISE EXCEPTION 'pgrelay.attach: kind % is reserved for the relay', kind;
    END IF;
    PERFORM pgrelay.install_attached(source, participants, kind, payload, sender);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_outbox ON %s', source);
    EXECUTE format(
        'CREATE TRIGGER pgrelay_outbox AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s()',
        source, pgrelay.attached_function_name(source));
END $$;

CREATE OR REPLACE FUNCTION pgrelay.detach(source regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_outbox ON %s', source);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', pgrelay.attached_function_name(source));
    DELETE FROM pgrelay.attached a WHERE a.source = detach.source;
END $$;

-- Writers (attach_skip, attached_publish) and what generates code are the owner's, and the
-- roles it grants; valid_kind and valid_name stay executable by everyone (CREATE OR REPLACE
-- keeps their grants), since the CHECK constraint and the insert trigger call them.
REVOKE EXECUTE ON FUNCTION pgrelay.attach_skip(regclass, text, text),
    pgrelay.attached_publish(regclass, text[], text, jsonb, text),
    pgrelay.install_attached(regclass, text, text, text, text) FROM PUBLIC;

-- Tables attached before this file: their trigger functions (0002's) fail the application's
-- insert on a NULL or refused address. Read each one's expressions back from its source, which
-- 0002 generated from a fixed template (a split is accepted only if it rebuilds the source
-- exactly), and generate it again, under this migration's search_path. The new function runs
-- with its owner's rights, so it is generated only for an owner that may publish (as attach()
-- checks for its caller); a function that cannot be read or replaced, or whose owner may not
-- publish, is left as it was, with a warning: running pgrelay.attach() on the table again, as
-- the schema owner, upgrades it.
DO $upgrade$
DECLARE
    template text := E'\n        DECLARE\n            recipients text[] := (%s)::text[];\n        BEGIN\n'
        || E'            IF cardinality(recipients) > 0 THEN\n'
        || E'                INSERT INTO pgrelay.messages (participants, kind, payload, sender)\n'
        || E'                VALUES (recipients, (%s)::text, (%s)::jsonb, (%s)::text);\n'
        || E'            END IF;\n            RETURN NULL;\n        END ';
    pattern text;
    legacy record;
    parts text[];
BEGIN
    pattern := '^' || replace(regexp_replace(template, '([][(){}.*+?^$|\\])', '\\\1', 'g'),
                              '%s', '(.*)') || '$';
    FOR legacy IN
        SELECT t.tgrelid::regclass AS source, p.prosrc, p.proowner AS owner
          FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE t.tgname = 'pgrelay_outbox'
           AND p.pronamespace = 'pgrelay'::regnamespace
           AND p.proname = 'attached_' || t.tgrelid::oid
           AND NOT EXISTS (SELECT 1 FROM pgrelay.attached a WHERE a.source = t.tgrelid)
    LOOP
        parts := regexp_match(legacy.prosrc, pattern);
        IF parts IS NULL
           OR format(template, parts[1], parts[2], parts[3], parts[4]) <> legacy.prosrc THEN
            RAISE WARNING 'pgrelay: the trigger on % was not made by pgrelay.attach(); run pgrelay.attach() on it again',
                legacy.source;
            CONTINUE;
        END IF;
        IF NOT (has_table_privilege(legacy.owner, 'pgrelay.messages', 'INSERT')
                AND has_function_privilege(legacy.owner,
                    'pgrelay.attached_publish(regclass, text[], text, jsonb, text)', 'EXECUTE')
                AND has_function_privilege(legacy.owner,
                    'pgrelay.attach_skip(regclass, text, text)', 'EXECUTE')) THEN
            RAISE WARNING 'pgrelay: the trigger on % belongs to %, who may not publish; run pgrelay.attach() on it again as the schema owner',
                legacy.source, legacy.owner::regrole;
            CONTINUE;
        END IF;
        -- 0002 quoted a literal kind name; attach() takes it unquoted.
        IF parts[2] ~ '^''[A-Za-z0-9_.:-]{1,64}''$' AND parts[2] !~* '^''new\.' THEN
            parts[2] := substr(parts[2], 2, length(parts[2]) - 2);
        END IF;
        BEGIN
            PERFORM pgrelay.install_attached(legacy.source, parts[1], parts[2], parts[3], parts[4]);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgrelay: the trigger on % could not be upgraded (%); run pgrelay.attach() on it again as its owner',
                legacy.source, SQLERRM;
        END;
    END LOOP;
END $upgrade$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (8) ON CONFLICT DO NOTHING;
