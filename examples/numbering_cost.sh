#!/bin/bash
# What the database's backends spend on CPU per message: per one-row INSERT a writer sends,
# and per row a relay's `pgrelay.sequence()` numbers.
#
#   bash examples/numbering_cost.sh [path/to/pgrelay] [port offset]
#
# On a throwaway cluster (examples/support/cluster.sh): one session sends 5,000 one-row
# INSERTs, each its own transaction, as psql sends them (parsed, planned and committed each);
# then 100 transactions of 100 rows are numbered by one `sequence()` call. Each session reads
# its own CPU time from /proc/self/schedstat (in nanoseconds) before and after, so other work
# on the machine moves the figures far less than it moves wall-clock times.
set -euo pipefail
BIN=${1:-target/release/pgrelay}
OFFSET=${2:-0}
source "$(dirname "$0")/support/cluster.sh"
start_cluster $((55800 + OFFSET)) "$BIN"
CPU_NS="SELECT 'cpu ' || split_part(pg_read_file('/proc/self/schedstat'), ' ', 1);"
INSERT="INSERT INTO pgrelay.messages (participants, payload) VALUES (ARRAY['u1', 'v2', 'w3'], '{\"text\":\"a message of about the size examples/compare sends: a few hundred bytes of JSON ..............................................................\"}');"
BULK="BEGIN; INSERT INTO pgrelay.messages (participants, payload) SELECT ARRAY['u' || g % 1000, 'v' || g % 777, 'w' || g % 555], jsonb_build_object('text', repeat('x', 200)) FROM generate_series(1, 100) g; COMMIT;"
# Prints the CPU time between the two readings of a session's file, in µs per $2.
per() {
    psql -qAtX "$URL" -f "$1" | awk -v n="$2" '$1 == "cpu" { t[++k] = $2 } END { printf "%.1f", (t[2] - t[1]) / n / 1000 }'
}
{ echo "$CPU_NS"; for _ in $(seq 5000); do echo "$INSERT"; done; echo "$CPU_NS"; } > "$DIR/insert.sql"
for _ in $(seq 100); do echo "$BULK"; done > "$DIR/bulk.sql"
# One session numbers a first 10,000 rows (planning and compiling what it runs), then the
# measured 10,000.
{ cat "$DIR/bulk.sql"; echo "SELECT pgrelay.sequence(10000);"; cat "$DIR/bulk.sql"
  echo "$CPU_NS"; echo "SELECT pgrelay.sequence(10000);"; echo "$CPU_NS"; } > "$DIR/number.sql"
# A first round of INSERTs plans and compiles what the measured ones use.
per "$DIR/insert.sql" 5000 > /dev/null
for round in 1 2 3; do
    query "TRUNCATE pgrelay.messages" > /dev/null
    inserted=$(per "$DIR/insert.sql" 5000)
    query "TRUNCATE pgrelay.messages" > /dev/null
    numbered=$(per "$DIR/number.sql" 10000)
    echo "round $round: one-row INSERT ${inserted} µs CPU; numbering ${numbered} µs CPU per row"
done
