# Sourced by the example scripts: a throwaway PostgreSQL cluster with pgrelay's schema.
#
#   start_cluster PORT BIN   sets DIR (a temporary directory, the cluster's data in it) and URL,
#                            runs `BIN migrate`, and stops and removes it all when the script
#                            exits, after killing the script's background jobs. Lines in
#                            CLUSTER_CONF, if set, are added to postgresql.conf first.
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
    "$bin" migrate --database-url "$URL" > "$DIR/migrate.log" 2>&1
}
