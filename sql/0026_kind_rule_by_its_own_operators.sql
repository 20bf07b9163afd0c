-- pgrelay 0026: the kind rule uses PostgreSQL's own operators, whatever a writer's search_path.
--
-- `valid_kind` runs inside the `messages_kind_valid` CHECK, in the writer's session, and its
-- body named `~` and `<>` (through NOT IN) unqualified: a writer with a schema of its own could
-- put its own operators first in its search_path and store a reserved kind such as `presence`
-- (an outside review's finding). Numbering rewrote such a kind to `message` under a fixed
-- search_path before any relay read the row, so nothing was delivered as a reserved event, but
-- the CHECK is the rule and should hold by itself. The operators are now named with their
-- schema. (The function cannot carry `SET search_path` instead: that would cost every row a
-- configuration change.) The rule is the same.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

CREATE OR REPLACE FUNCTION pgrelay.valid_kind(kind text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    AS $$
BEGIN
    RETURN kind OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.:-]{1,64}$'
       AND NOT kind OPERATOR(pg_catalog.=) ANY (ARRAY['oversized', 'position', 'presence',
                                                      'reset', 'revoked', 'rooms',
                                                      'token_expired']);
END $$;

INSERT INTO pgrelay.schema_migrations (version) VALUES (26) ON CONFLICT DO NOTHING;
