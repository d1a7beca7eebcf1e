#!/usr/bin/env bash
# Signals for the regression tests, sent from a second session.  Connects
# like the psql that runs the test (PGHOST and PGPORT are set by pg_regress).
#
#   signal_backend.sh cancel <application_name>
#       Wait until a backend with that application_name has been running a
#       statement for 200 ms, then pg_cancel_backend it.  Start it in the
#       background from psql ("\! bash test/signal_backend.sh cancel x &");
#       prints nothing, gives up after about 5 seconds.
#
#   signal_backend.sh terminate-probe <model>
#       Run canary_probe(<model>, 'Hi') in a session of its own, and
#       pg_terminate_backend that session once the call has run for 200 ms.
#       Prints the session's FATAL line (with its SQLSTATE) and psql's exit
#       status.
set -u
db=contrib_regression

signal_when_busy() {	# signal_when_busy <function> <application_name>
    for _ in $(seq 1 50); do
        n=$(psql -X -q -t -A -d "$db" -c "
            SELECT count(*) FILTER (WHERE $1(pid))
              FROM pg_stat_activity
             WHERE application_name = '$2' AND state = 'active'
               AND now() - query_start > interval '200 ms'" 2>/dev/null)
        [ "${n:-0}" -ge 1 ] 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

case "$1" in
    cancel)
        signal_when_busy pg_cancel_backend "$2" >/dev/null 2>&1
        ;;
    terminate-probe)
        out=$(mktemp)
        PGAPPNAME=probe_terminated psql -X -q -d "$db" -v VERBOSITY=sqlstate \
            -c "SET statement_timeout = '5s'" \
            -c "SELECT canary_probe('$2', 'Hi')" > "$out" 2>&1 &
        victim=$!
        signal_when_busy pg_terminate_backend probe_terminated || echo "nothing to terminate"
        wait "$victim"
        echo "psql exit status: $?"
        grep -E '^(FATAL|ERROR)' "$out"
        rm -f "$out"
        ;;
    *)
        echo "usage: signal_backend.sh cancel <application_name> | terminate-probe <model>" >&2
        exit 2
        ;;
esac
