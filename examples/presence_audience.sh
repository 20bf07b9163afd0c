#!/bin/bash
# A padded presence audience against one relay: what eve's online changes cost it.
#
#   bash examples/presence_audience.sh [path/to/pgrelay] [port offset]
#
# eve has sent 200 messages to 1,000 made-up names of 250 bytes each, and one to bob, so her
# default audience (`pgrelay.presence_audience`) is 200,001 names, 50 MB. On a throwaway cluster
# (examples/support/cluster.sh), one relay runs with a 300 ms presence debounce; bob holds a
# stream while eve opens and closes hers three times. Prints the relay's RSS and peak RSS
# (VmHWM) before and after each flap, how many of eve's changes bob heard, and the presence
# signal rows the changes wrote (33 a change).
set -euo pipefail
BIN=${1:-target/release/pgrelay}
OFFSET=${2:-0}
PGPORT=$((55490 + OFFSET))
HTTP=$((8790 + OFFSET))
SECRET=presence-audience-secret-of-32-bytes
source "$(dirname "$0")/support/cluster.sh"
start_cluster "$PGPORT" "$BIN"
start_relay "$HTTP" --secret "$SECRET" --presence-debounce 300ms

# bob is on one message of eve's only: on all 200 his stream would be catching up on 50 MB of
# them when eve first comes online, and a stream drops live-only signals while it catches up.
psql -q "$URL" -c "INSERT INTO pgrelay.messages (participants, sender, payload)
  SELECT ARRAY['eve'] || ARRAY(SELECT repeat('x', 240) || lpad((m * 1000 + n)::text, 10, '0')
                                 FROM generate_series(1, 1000) n), 'eve', '{}'::jsonb
    FROM generate_series(0, 199) m
  UNION ALL SELECT '{eve,bob}', 'eve', '{}'"
sleep 2
BOB=$("$BIN" token --sub bob --secret "$SECRET")
EVE=$("$BIN" token --sub eve --secret "$SECRET")
curl -sN -H "Authorization: Bearer $BOB" "http://127.0.0.1:$HTTP/v1/stream" > "$DIR/bob.txt" &
sleep 1
rss() { grep -E 'VmRSS|VmHWM' "/proc/$RELAY/status" | tr -s ' \t' ' ' | tr '\n' ' '; }
echo "before: $(rss)"
for flap in 1 2 3; do
    curl -sN -H "Authorization: Bearer $EVE" "http://127.0.0.1:$HTTP/v1/stream" > /dev/null &
    EVE_STREAM=$!
    sleep 3
    kill "$EVE_STREAM"
    sleep 2
    echo "after flap $flap: $(rss)"
done
# Each padded announcement takes the database about a second, so the last may still be on its
# way: wait for it, up to 20 s.
heard() { grep -c '"participant": "eve"' "$DIR/bob.txt" || true; }
for _ in $(seq 40); do [ "$(heard)" -ge 6 ] && break; sleep 0.5; done
echo "bob heard $(heard) of eve's 6 changes"
psql -qAt "$URL" -F ', ' -c "SELECT count(*), max(octet_length(participants::text)),
                                    sum(octet_length(participants::text))
                               FROM pgrelay.signals WHERE kind = 'presence'" \
    | sed 's/^/presence signal rows, the largest and all (bytes): /'
