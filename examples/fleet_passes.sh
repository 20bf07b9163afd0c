#!/bin/bash
# How many passes each relay of a fleet makes per message.
#
#   bash examples/fleet_passes.sh [path/to/pgrelay] [relays] [messages per second] [seconds]
#
# On a throwaway cluster (examples/support/cluster.sh) with pg_stat_statements: `relays`
# relays (2 by default) on one database and two pgbench writers inserting single-row
# transactions at the given rate (100 by default) for `seconds` (10). Prints the messages,
# the passes all relays made (calls of the pass, from pg_stat_statements) and the passes per
# message and relay. Needs pgbench.
set -euo pipefail
BIN=${1:-target/release/pgrelay}
RELAYS=${2:-2}
RATE=${3:-100}
SECONDS_MEASURED=${4:-10}
PGPORT=55610
source "$(dirname "$0")/support/cluster.sh"
start_counting_cluster "$PGPORT" "$BIN"
for n in $(seq 1 "$RELAYS"); do
    start_relay $((18620 + 2 * n)) --secret 0123456789abcdef0123456789abcdef
done

cat > "$DIR/insert.sql" <<'SQL'
\set a random(1, 10000)
INSERT INTO pgrelay.messages (participants, payload) VALUES (ARRAY['u' || :a, 'bob', 'carol'], '{"text":"hi"}');
SQL
query "SELECT pg_stat_statements_reset()" > /dev/null
BEFORE=$(query "SELECT coalesce(max(id), 0) FROM pgrelay.messages")
pgbench -n -h 127.0.0.1 -p "$PGPORT" -U postgres -c 2 -j 2 -R "$RATE" -T "$SECONDS_MEASURED" \
    -f "$DIR/insert.sql" postgres > "$DIR/pgbench.log" 2>&1
sleep 1
MESSAGES=$(( $(query "SELECT coalesce(max(id), 0) FROM pgrelay.messages") - BEFORE ))
PASSES=$(query "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '%pgrelay_pass(%'")
awk -v r="$RELAYS" -v rate="$RATE" -v m="$MESSAGES" -v p="$PASSES" 'BEGIN {
    printf "%d relays, %d messages/s: %d messages, %d passes, %.2f per message and relay\n",
           r, rate, m, p, p / m / r }'
