#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster with llm_canary (and pg_cron) preloaded,
# for the demo and the benchmarks.  Run as the postgres user.
#   test/cluster.sh start DIR PORT [DBNAME]   initdb if needed, start, create DB + extensions
#   test/cluster.sh stop DIR
set -euo pipefail
BIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?start|stop}; dir=${2:?data directory}
case "$cmd" in
start)
    port=${3:?port}; db=${4:-canary}
    if [ ! -f "$dir/PG_VERSION" ]; then
        "$BIN/initdb" -D "$dir" -A trust -U postgres >/dev/null
        cat >> "$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '/tmp'
shared_preload_libraries = 'pg_cron,llm_canary'
cron.database_name = '$db'
llm_canary.database_name = '$db'
max_worker_processes = 16
max_connections = 100
# the test keys are not named LLM_CANARY_KEY_*: a superuser allows them
llm_canary.api_key_env_names = 'LLM_CANARY_TEST_KEY, DEMO_LLM_KEY'
CONF
    fi
    "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w start >/dev/null
    "$BIN/psql" -h /tmp -p "$port" -U postgres -d postgres -qAt \
        -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
        "$BIN/createdb" -h /tmp -p "$port" -U postgres "$db"
    "$BIN/psql" -h /tmp -p "$port" -U postgres -d "$db" -q \
        -c "CREATE EXTENSION IF NOT EXISTS llm_canary" \
        -c "CREATE EXTENSION IF NOT EXISTS pgcrypto" \
        -c "SELECT canary_flush('60 seconds')" >/dev/null   # waits for the worker to serve the new database
    ;;
stop)
    "$BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
*)
    echo "usage: $0 start DIR PORT [DB] | stop DIR" >&2; exit 2 ;;
esac
