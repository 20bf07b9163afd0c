-- pgrelay 0012: numbering reads the pending rows by index, whatever the statistics say.
--
-- The numbering statements (0009) touch only the pending rows, `id < 0`: a handful at a time,
-- next to the whole log. But an ANALYZE that sampled the table while many rows were pending
-- leaves statistics by which a large share of ids is negative, and by them reading the whole
-- table looked cheaper than the primary key's negative range: every numbering pass then read
-- every row (1.4 ms a pass on 20,000 rows at 1,000 messages/s, growing with the log, against
-- 0.2 ms by the index). Reading the whole table is never the right plan here, so these
-- functions plan without it. (Numbered 0012 because 0010 and 0011 were taken when this was
-- found; migrations apply in number order, so it also covers any redefinition in them.)
ALTER FUNCTION pgrelay.number_pending_messages(integer, timestamptz) SET enable_seqscan = off;
ALTER FUNCTION pgrelay.sequence(integer) SET enable_seqscan = off;
ALTER FUNCTION pgrelay.publish_many(jsonb) SET enable_seqscan = off;

INSERT INTO pgrelay.schema_migrations (version) VALUES (12) ON CONFLICT DO NOTHING;
