-- Group commit for HTTP publishers: many messages in one call, one lock, one transaction.
--
-- `pgrelay.publish_many('[{"participants": [...], "payload": ..., "kind": ..., "sender": ...}, …]')`
-- stores each message of the array, in order, and returns their ids in that order (ascending:
-- they are drawn one after another under the order lock, which is held until commit, as
-- `pgrelay.publish` does). The relay calls it with the `POST /v1/messages` requests that
-- arrived while its previous commit was in flight. Like `publish`, it runs as the schema owner;
-- grant EXECUTE to the relay's role.
CREATE OR REPLACE FUNCTION pgrelay.publish_many(messages jsonb)
    RETURNS SETOF bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pgrelay
    AS $$
BEGIN
    LOCK TABLE pgrelay.id_order IN SHARE ROW EXCLUSIVE MODE;
    RETURN QUERY
    INSERT INTO pgrelay.messages (id, participants, kind, sender, payload, committed_at)
    SELECT nextval('pgrelay.message_id_seq'),
           ARRAY(SELECT jsonb_array_elements_text(m -> 'participants')),
           coalesce(m ->> 'kind', 'message'), m ->> 'sender', m -> 'payload', clock_timestamp()
      FROM jsonb_array_elements(messages) AS m
    RETURNING id;
END $$;

REVOKE EXECUTE ON FUNCTION pgrelay.publish_many(jsonb) FROM PUBLIC;

INSERT INTO pgrelay.schema_migrations (version) VALUES (7) ON CONFLICT DO NOTHING;
