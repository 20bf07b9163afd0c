-- pgrelay 0014: the participants index takes each new row's entries at once.
--
-- A GIN index keeps new entries in a pending list by default (fastupdate), and merges them
-- into its tree at the next vacuum or when the list outgrows gin_pending_list_limit (4 MB).
-- Every lookup reads the whole list meanwhile. An outbox is written all the time, so the list
-- is rarely empty: with 20,000 rows pending, a lookup of one participant read 150 pages in
-- 1.7 ms instead of 4 pages in 0.03 ms. That cost fell on every branch of a catch-up page,
-- every history page and every default presence audience (3,000 participants coming online
-- took 9.3 s instead of 3.4 s). What it costs: each new row version's entries go into the
-- tree at once, about 16 µs more per message inserted and numbered (BENCHMARKS.md, "The
-- participants index"), and a writer's insert never pays for merging a 4 MB list.
--
-- Setting the option takes a SHARE UPDATE EXCLUSIVE lock, which writers do not wait for; it
-- does not merge what is already pending, so the list is emptied here once.
--
-- Never edit this file after it has been applied anywhere: add a new numbered file.

ALTER INDEX pgrelay.messages_participants_idx SET (fastupdate = off);
SELECT gin_clean_pending_list('pgrelay.messages_participants_idx'::regclass);

INSERT INTO pgrelay.schema_migrations (version) VALUES (14) ON CONFLICT DO NOTHING;
