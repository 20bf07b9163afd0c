#!/bin/bash
# How long a publish holds the order lock behind many committed pending names: ROWS rows of
# 10,000 participants each are committed pending, then a publish of one message is called as
# the relay calls it (again while it answers `numbering_behind`, each call its own
# transaction), and 0.3 s in a relay's pass starts. Prints each call's time, how long the pass
# took (most of it waiting for the lock), and the publish's total.
#
#   bash examples/publish_behind_wide_rows.sh [path/to/pgrelay] [ROWS] [port offset]
#
# On a throwaway cluster (examples/support/cluster.sh), with the schema the binary migrates to.
set -euo pipefail
BIN=${1:-target/release/pgrelay}
ROWS=${2:-90}
OFFSET=${3:-0}
source "$(dirname "$0")/support/cluster.sh"
start_cluster $((55950 + OFFSET)) "$BIN"
query "INSERT INTO pgrelay.messages (participants, payload)
       SELECT ARRAY(SELECT 'v' || g || '-' || r FROM generate_series(1, 10000) g), '{}'
         FROM generate_series(1, $ROWS) r" > /dev/null
seconds_since() { echo "$(date +%s.%N) - $1" | bc; }
began=$(date +%s.%N)
( sleep 0.3; start=$(date +%s.%N); query "SELECT pgrelay.sequence()" > /dev/null
  printf 'a pass started 0.3 s in took %.2f s\n' "$(seconds_since "$start")" ) &
calls=0
while :; do
    calls=$((calls + 1))
    start=$(date +%s.%N)
    answer=$(query "SELECT coalesce(id::text, '') || ' ' || outcome FROM pgrelay.publish_many(
                        '[{\"participants\":[\"bob\"],\"payload\":{}}]')")
    printf 'call %d: %.2f s, %s\n' "$calls" "$(seconds_since "$start")" "$answer"
    [[ $answer == *numbering_behind* ]] || break
done
wait
printf 'published after %.2f s\n' "$(seconds_since "$began")"
