#!/bin/bash
# What one message costs the database and the relay, at 1,000 single-row transactions a second.
#
#   bash examples/database_share.sh [path/to/pgrelay] [seconds] [port offset]
#
# On a throwaway cluster (examples/support/cluster.sh) with pg_stat_statements, one relay and
# four pgbench writers, each message an INSERT of 3 participants in its own transaction (sent
# as psql sends it). After a warm-up, for `seconds` (10 by default), prints the CPU time per
# message of the relay and of its LISTEN session's backend (from /proc, in 10 ms ticks), and
# the database's time per call of the INSERT (its triggers included) and of the relay's pass
# (pg_stat_statements). Needs pgbench.
set -euo pipefail
BIN=${1:-target/release/pgrelay}
SECONDS_MEASURED=${2:-10}
OFFSET=${3:-0}
PGPORT=$((55600 + OFFSET))
RELAY_PORT=$((18600 + OFFSET))
source "$(dirname "$0")/support/cluster.sh"
start_counting_cluster "$PGPORT" "$BIN"
start_relay "$RELAY_PORT" --secret 0123456789abcdef0123456789abcdef

cat > "$DIR/insert.sql" <<'SQL'
\set a random(1, 10000)
\set b random(1, 10000)
\set c random(1, 10000)
INSERT INTO pgrelay.messages (participants, payload) VALUES (ARRAY['u' || :a, 'u' || :b, 'u' || :c], '{"text":"a message of about the size examples/compare sends: a few hundred bytes of JSON ................................................................................................................................................"}');
SQL
pgbench -n -h 127.0.0.1 -p "$PGPORT" -U postgres -c 4 -j 2 -R 1000 -T $((SECONDS_MEASURED + 6)) \
    -f "$DIR/insert.sql" postgres > "$DIR/pgbench.log" 2>&1 &
sleep 4
LISTEN_PID=$(query "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgrelay-listen'")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
query "SELECT pg_stat_statements_reset()" > /dev/null
R0=$(ticks "$RELAY"); L0=$(ticks "$LISTEN_PID")
M0=$(query "SELECT last_value FROM pgrelay.message_id_seq")
sleep "$SECONDS_MEASURED"
R1=$(ticks "$RELAY"); L1=$(ticks "$LISTEN_PID")
M1=$(query "SELECT last_value FROM pgrelay.message_id_seq")
N=$((M1 - M0))
echo "$N messages in ${SECONDS_MEASURED} s"
echo "relay CPU per message:          $(( (R1 - R0) * 10000 / N )) µs"
echo "LISTEN backend CPU per message: $(( (L1 - L0) * 10000 / N )) µs"
query "SELECT CASE WHEN query LIKE 'INSERT%' THEN 'INSERT, per call:              '
                   ELSE 'pass, per call:                ' END
              || round((total_exec_time / calls * 1000)::numeric) || ' µs'
         FROM pg_stat_statements
        WHERE query LIKE 'INSERT INTO pgrelay.messages%' OR query LIKE '%pgrelay_pass(%'
        ORDER BY query"
wait %2 2> /dev/null || true
