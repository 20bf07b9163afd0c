#!/bin/bash
# What a writer's open transaction full of pending rows costs everyone else: the time of a
# one-row write followed by a numbering pass, and of a relay's publish of one message, with
# nothing held open and then while one transaction holds N messages and N/10 signals.
#
#   bash examples/open_transaction_cost.sh [path/to/pgrelay] [N] [port offset]
#
# On a throwaway cluster (examples/support/cluster.sh), each figure is pgbench's average over
# 10 s from one session (the first 2 s, which plan and compile, are not counted).
set -euo pipefail
BIN=${1:-target/release/pgrelay}
N=${2:-300000}
OFFSET=${3:-0}
source "$(dirname "$0")/support/cluster.sh"
start_cluster $((55900 + OFFSET)) "$BIN"
query "CREATE ROLE holder LOGIN; GRANT USAGE ON SCHEMA pgrelay TO holder;
       GRANT INSERT ON pgrelay.messages TO holder;
       GRANT EXECUTE ON FUNCTION pgrelay.signal(text[], text, jsonb, text) TO holder" > /dev/null
echo "INSERT INTO pgrelay.messages (participants, payload) VALUES ('{bob}', '{}');
SELECT pgrelay.sequence();" > "$DIR/write_and_pass.sql"
echo "SELECT * FROM pgrelay.publish_many('[{\"participants\":[\"bob\"],\"payload\":{}}]');" \
    > "$DIR/publish.sql"
# Prints pgbench's average latency in ms for one script.
latency() {
    pgbench -n -c 1 -T 2 -f "$1" "$URL" > /dev/null 2>&1
    pgbench -n -c 1 -T 10 -f "$1" "$URL" 2>&1 | awk '/latency average/ { print $4 }'
}
report() {
    echo "$1: write and pass $(latency "$DIR/write_and_pass.sql") ms, publish $(latency "$DIR/publish.sql") ms"
}
report "nothing held open"
psql -qAtX "${URL/postgres@/holder@}" -c "BEGIN" \
    -c "INSERT INTO pgrelay.messages (participants, payload) SELECT '{w}', '{}' FROM generate_series(1, $N)" \
    -c "SELECT pgrelay.signal('{w}', 'typing') FROM generate_series(1, $N / 10)" \
    -c "SELECT 'holding'" -c "SELECT pg_sleep(600)" > "$DIR/holder.out" 2>&1 &
for _ in $(seq 300); do grep -q holding "$DIR/holder.out" && break; sleep 1; done
report "$N messages and $((N / 10)) signals held open"
query "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'holder'" > /dev/null
