# Sourced by the example scripts: a throwaway PostgreSQL cluster with pgrelay's schema.
#
#   start_cluster PORT BIN   sets DIR (a temporary directory, the cluster's data in it) and URL,
#                            runs `BIN migrate`, and stops and removes it all when the script
#                            exits, after killing the script's background jobs. Lines in
#                            CLUSTER_CONF, if set, are added to postgresql.conf first.
#   start_counting_cluster PORT BIN
#                            the same, without fsync, with pg_stat_statements counting every
#                            statement (nested ones too).
#   start_relay HTTP [OPTION...]
#                            runs `BIN serve` on the cluster with OPTIONs, HTTP on port HTTP
#                            and metrics on HTTP + 1, sets RELAY to its pid, and waits until it
#                            is ready (20 s at most).
#   query SQL                one statement's rows, unaligned.
#
# The server binaries come from `pg_config --bindir`; as root, they run as `postgres`.
start_cluster() {
    local port=$1 bin=$2
    BINDIR=$(pg_config --bindir)
    DIR=$(mktemp -d)
    AS=()
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; AS=(runuser -u postgres --); fi
    "${AS[@]}" "$BINDIR/initdb" -D "$DIR/data" -A trust -U postgres > /dev/null
    echo "${CLUSTER_CONF:-}" >> "$DIR/data/postgresql.conf"
    "${AS[@]}" "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/log" \
        -o "-p $port -k $DIR -c listen_addresses=127.0.0.1" start > /dev/null
    trap 'kill $(jobs -p) 2> /dev/null || true; "${AS[@]}" "$BINDIR/pg_ctl" -D "$DIR/data" stop -m fast > /dev/null; rm -rf "$DIR"' EXIT
    URL="postgres://postgres@127.0.0.1:$port/postgres"
    CLUSTER_BIN=$bin
    "$bin" migrate --database-url "$URL" > "$DIR/migrate.log" 2>&1
}

start_counting_cluster() {
    CLUSTER_CONF="shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
fsync = off
synchronous_commit = off"
    start_cluster "$@"
    query "CREATE EXTENSION pg_stat_statements" > /dev/null
}

start_relay() {
    local http=$1
    shift
    "$CLUSTER_BIN" serve --database-url "$URL" --bind "127.0.0.1:$http" \
        --metrics-bind "127.0.0.1:$((http + 1))" "$@" > "$DIR/relay-$http.log" 2>&1 &
    RELAY=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$http/readyz" > /dev/null && return
        sleep 0.2
    done
    echo "the relay on port $http was not ready within 20 s:" >&2
    cat "$DIR/relay-$http.log" >&2
    return 1
}

query() {
    psql -qAtX "$URL" -c "$1"
}
