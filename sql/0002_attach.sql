-- pgrelay 0002: attaching an application's existing table to the outbox.
--
--   SELECT pgrelay.attach('public.chat_messages'::regclass,
--                         participants => 'ARRAY[NEW.sender, NEW.recipient]',
--                         kind         => 'chat',
--                         payload      => 'to_jsonb(NEW)',
--                         sender       => 'NEW.sender');
--   SELECT pgrelay.detach('public.chat_messages'::regclass);
--
-- attach() installs an AFTER INSERT trigger on the table that copies each new row into
-- pgrelay.messages in the same transaction, so the application's row and the event commit or
-- roll back together, and the event gets a commit-ordered id like any other message.
--
-- `participants`, `payload` and `sender` are SQL expressions over the new row NEW. `kind` is
-- a kind name such as 'chat' (taken literally), or an SQL expression such as 'NEW.type'
-- (anything that is not a plain kind name, or that starts with "NEW."). attach() compiles the
-- expressions against the table's row type before installing anything, so a wrong expression
-- fails here and not at the application's next insert. Rows whose participants come out NULL
-- or empty are not relayed (nobody would receive them); the application's insert still succeeds.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

-- The trigger function attach() creates for a table: one per table, named after its oid so
-- that renaming the table does not orphan it.
CREATE OR REPLACE FUNCTION pgrelay.attached_function_name(source regclass) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT format('pgrelay.%I', 'attached_' || source::oid) $$;

CREATE OR REPLACE FUNCTION pgrelay.attach(
    source       regclass,
    participants text,
    kind         text DEFAULT 'message',
    payload      text DEFAULT 'to_jsonb(NEW)',
    sender       text DEFAULT 'NULL')
    RETURNS void
    LANGUAGE plpgsql
    AS $attach$
DECLARE
    function_name text := pgrelay.attached_function_name(source);
    kind_expression text;
BEGIN
    IF participants IS NULL OR kind IS NULL OR payload IS NULL OR sender IS NULL THEN
        RAISE EXCEPTION 'pgrelay.attach: participants, kind, payload and sender must not be NULL';
    END IF;
    IF kind ~ '^[A-Za-z0-9_.:-]{1,64}$' AND kind !~* '^new\.' THEN
        IF NOT pgrelay.valid_kind(kind) THEN
            RAISE EXCEPTION 'pgrelay.attach: kind % is reserved for the relay', kind;
        END IF;
        kind_expression := quote_literal(kind);
    ELSE
        kind_expression := kind;
    END IF;

    -- Validation: plan the expressions against the table's row type, with NEW bound to a row
    -- of that type. Unknown columns, syntax errors and impossible casts fail here.
    BEGIN
        EXECUTE format(
            'SELECT (%s)::text[], (%s)::text, (%s)::jsonb, (%s)::text FROM (SELECT (NULL::%s).*) AS new LIMIT 0',
            participants, kind_expression, payload, sender, source);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'pgrelay.attach(%): an expression is invalid: %', source, SQLERRM
            USING ERRCODE = SQLSTATE;
    END;

    EXECUTE format($function$
        CREATE OR REPLACE FUNCTION %s() RETURNS trigger
            LANGUAGE plpgsql
            AS $body$
        DECLARE
            recipients text[] := (%s)::text[];
        BEGIN
            IF cardinality(recipients) > 0 THEN
                INSERT INTO pgrelay.messages (participants, kind, payload, sender)
                VALUES (recipients, (%s)::text, (%s)::jsonb, (%s)::text);
            END IF;
            RETURN NULL;
        END $body$
        $function$, function_name, participants, kind_expression, payload, sender);
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_outbox ON %s', source);
    EXECUTE format(
        'CREATE TRIGGER pgrelay_outbox AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s()',
        source, function_name);
END $attach$;

CREATE OR REPLACE FUNCTION pgrelay.detach(source regclass) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pgrelay_outbox ON %s', source);
    EXECUTE format('DROP FUNCTION IF EXISTS %s()', pgrelay.attached_function_name(source));
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (2) ON CONFLICT DO NOTHING;
