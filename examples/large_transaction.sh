#!/bin/bash
# One writer's very large transaction, and how long numbering it takes.
#
#   bash examples/large_transaction.sh [path/to/pgrelay] [rows] [port offset]
#
# On a throwaway cluster (examples/support/cluster.sh), with no relay: one INSERT of `rows`
# messages (200,000 by default) and then a second writer's message, then
# `pgrelay.sequence(10000)`, the relay's numbering pass, each in its own transaction until
# nothing is left. Prints each pass's milliseconds, their count and
# sum, and the id the second writer's message got.
set -euo pipefail
BIN=${1:-target/release/pgrelay}
ROWS=${2:-200000}
OFFSET=${3:-0}
PGPORT=$((55590 + OFFSET))
source "$(dirname "$0")/support/cluster.sh"
start_cluster "$PGPORT" "$BIN"

psql -qAt "$URL" <<SQL
INSERT INTO pgrelay.messages (participants, payload)
  SELECT ARRAY['alice', 'bob'], jsonb_build_object('n', n) FROM generate_series(1, $ROWS) n;
INSERT INTO pgrelay.messages (participants, payload) VALUES ('{carol}', '{"after": true}');
SQL
psql -qAt "$URL" <<'SQL'
CREATE TEMP TABLE passes (n int, ms float8, numbered int);
DO $$
DECLARE
    started timestamptz;
    got int;
    pass int := 0;
BEGIN
    LOOP
        started := clock_timestamp();
        got := pgrelay.sequence(10000);
        pass := pass + 1;
        INSERT INTO passes VALUES (pass, extract(epoch FROM clock_timestamp() - started) * 1000, got);
        EXIT WHEN got = 0;
        COMMIT;
    END LOOP;
END $$;
SELECT 'ms per pass: ' || string_agg(round(ms::numeric)::text, ' ' ORDER BY n)
  FROM passes WHERE numbered > 0;
SELECT format('%s passes, %s ms in all; per pass min %s / median %s / max %s ms',
              count(*), round(sum(ms)::numeric), round(min(ms)::numeric, 1),
              round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 1),
              round(max(ms)::numeric, 1))
  FROM passes WHERE numbered > 0;
SELECT format('the second writer''s message got id %s, after all %s', id,
              (SELECT count(*) FROM pgrelay.messages) - 1)
  FROM pgrelay.messages WHERE participants = '{carol}';
SQL
