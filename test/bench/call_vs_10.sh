#!/usr/bin/env bash
# canary_call of this tree against release 1.0, side by side in one run.
#
#   sudo bash test/bench/call_vs_10.sh [COMMIT]
#
# COMMIT (default bab41f8, the code 1.0 users run: the release commit
# c20ab12 froze sql/llm_canary--1.0.sql from it and changed no C) is
# exported with git archive and built next to this tree, each into its own
# private copy of PostgreSQL (test/pgroot.sh), so the two builds run from
# two clusters on the same machine at the same time.  Both clusters point
# both models of a ramp_25 rollout at one nginx on loopback (the fast
# upstream of test/bench/call.sh) and pgbench runs
# SELECT canary_call('Where is my order?', 'u_' || (random() * 100000)::int)
# for BENCH_CLIENTS clients (default "1 8 32").
#
# The machine is shared and noisy, so the builds are measured side by side
# in BENCH_ROUNDS rounds (default 6) of BENCH_SECONDS (default 10) per
# measurement, two ways in each round and for each client count:
#   interleaved  one build, then the other (new first on odd rounds, 1.0
#                first on even ones);
#   together     both builds at the same time, each with that many clients
#                (both see the same outside load at the same moment; they
#                also share the machine with each other, so this compares
#                their cost per call rather than their speed alone).
# After each measurement canary_flush waits until the worker has written the
# metric records, so no backlog spills into the next one.  Printed: every
# measurement, then per mode, build and client count the median over the
# rounds of calls/s, average and p99 latency (from pgbench -l logs) and the
# CPU the cluster spent per call, in the backends and in the worker and the
# other server processes (from /proc; pgbench and nginx are not counted),
# the ratios new / 1.0, and the median of the per-round ratios of calls/s.
#
# Each build is configured as a user of that version would: 1.0 reads any
# environment variable named in canary_models.api_key_env; 1.1 reads only
# those allowed by its key policy, so its cluster allows LLM_CANARY_TEST_KEY
# by name (llm_canary.api_key_env_names, as test/tap.conf does).  Rollups
# (1.1) are on, their default.
#
# BENCH_NEW_SRC=DIR measures another checkout (a local change of this tree)
# as "new", BENCH_OLD_SRC=DIR another one in place of 1.0 ("1.0" is then
# that checkout, and BENCH_CONF must allow its key); BENCH_CONF="LINES" is
# added to the postgresql.conf of both clusters (the diagnosis in
# BENCHMARKS.md used these).  BENCH_PERF=1 then profiles the backends of
# each build with perf, as root (BENCH_PERF_CLIENTS clients, default 1, both
# builds at the same time, BENCH_SECONDS; reports in
# /tmp/llm_canary_vs10_perf.*).
#
# Everything listens on loopback; every run is bounded by BENCH_SECONDS.
# The clusters, nginx and the 1.0 build are removed at the end (BENCH_KEEP=1
# keeps the 1.0 build's PostgreSQL copy for a re-run).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
old=${1:-bab41f8}
dir=/tmp/llm_canary_bench_vs10
nport=55480; port_new=55481; port_old=55482
if [ "$(id -u)" -eq 0 ]; then
    command -v nginx >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    . "$top/test/pgroot.sh"
    rm -rf "$dir"; mkdir -p "$dir/src10"
    if [ -n "${BENCH_OLD_SRC:-}" ]; then rsync -a --exclude .git "$BENCH_OLD_SRC"/ "$dir/src10"/; old=$BENCH_OLD_SRC
    else git -C "$top" archive "$old" | tar -x -C "$dir/src10"; fi
    # BENCH_NEW_SRC: another checkout (a local change of this tree) as "new"
    new_src=${BENCH_NEW_SRC:-$top}
    if [ "$new_src" = "$top" ]; then root_new="/tmp/llm_canary_pgroot.$(basename "$top")"
    else root_new=/tmp/llm_canary_pgroot.vs10new; fi
    pg_new=$(pgroot_prepare "$root_new")
    pg_old=$(pgroot_prepare /tmp/llm_canary_pgroot.vs10)
    for b in "$new_src:$pg_new" "$dir/src10:$pg_old"; do
        src=${b%%:*}; pgc=${b#*:}
        make -s -C "$src" PG_CONFIG="$pgc" 2>&1 | grep -v '^gcc' || true
        make -s -C "$src" PG_CONFIG="$pgc" install >/dev/null
    done
    chmod -R a+rX "$top/test"
    chown -R postgres:postgres "$dir"
    # BENCH_PERF=1: the postgres side asks for a profile of a backend by
    # writing "PID OUTPUT SECONDS" to $dir/perf.req; perf runs as root so
    # that it samples the kernel side (poll, send, recv) too
    if [ -n "${BENCH_PERF:-}" ]; then
        ( while [ ! -e "$dir/done" ] && [ -d "$dir" ]; do
              if [ -e "$dir/perf.req" ]; then
                  read -r psecs pid1 out1 pid2 out2 < "$dir/perf.req"
                  for x in "$pid1:$out1" "$pid2:$out2"; do
                      timeout $(( psecs + 30 )) perf record -q -g -F 999 -p "${x%%:*}" -o "${x#*:}" \
                          -- sleep "$psecs" >/dev/null 2>&1 &
                  done
                  wait
                  for o in "$out1" "$out2"; do
                      perf report -i "$o" --stdio --no-children --sort dso,symbol -g none 2>/dev/null |
                          grep -v '^$' > "$o.txt" || true
                      perf report -i "$o" --stdio --children --sort symbol -g none 2>/dev/null |
                          grep -v '^$' > "$o.children.txt" || true
                      chmod a+r "$o" "$o.txt" "$o.children.txt" 2>/dev/null || true
                  done
                  mv "$dir/perf.req" "$dir/perf.ack"
              fi
              sleep 0.2
          done ) &
    fi
    rc=0
    runuser -u postgres -- env PATH="/usr/sbin:/usr/bin:/bin" \
        BIN_NEW="$(dirname "$pg_new")" BIN_OLD="$(dirname "$pg_old")" OLD_COMMIT="$old" \
        NEW_SRC="$new_src" BENCH_SECONDS="${BENCH_SECONDS:-10}" BENCH_ROUNDS="${BENCH_ROUNDS:-6}" \
        BENCH_CLIENTS="${BENCH_CLIENTS:-1 8 32}" BENCH_PERF="${BENCH_PERF:-}" \
        BENCH_PERF_CLIENTS="${BENCH_PERF_CLIENTS:-1}" BENCH_CONF="${BENCH_CONF:-}" \
        bash "$top/test/bench/call_vs_10.sh" "$old" || rc=$?
    touch "$dir/done"; wait
    [ -n "${BENCH_KEEP:-}" ] || rm -rf /tmp/llm_canary_pgroot.vs10 /tmp/llm_canary_pgroot.vs10new
    rm -rf "$dir"
    exit $rc
fi

secs=${BENCH_SECONDS:-10}; rounds=${BENCH_ROUNDS:-6}
export LLM_CANARY_TEST_KEY=sk-bench-not-a-real-key
. "$top/test/bench/fast_upstream.sh"
fast_upstream_start "$dir" "$nport"
cleanup() {
    fast_upstream_stop "$dir"
    "$BIN_NEW/pg_ctl" -D "$dir/data_new" -m fast -w stop >/dev/null 2>&1 || true
    "$BIN_OLD/pg_ctl" -D "$dir/data_old" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start BUILD BIN PORT: a cluster of that build with the extension and the rollout
start() {
    local b=$1 bin=$2 port=$3 data="$dir/data_$1"
    "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
    cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '/tmp'
shared_preload_libraries = 'pg_cron,llm_canary'
cron.database_name = 'bench'
llm_canary.database_name = 'bench'
max_worker_processes = 16
max_connections = 100
CONF
    # 1.1's key policy: the bench key is not named LLM_CANARY_KEY_*
    [ "$b" = old ] || echo "llm_canary.api_key_env_names = 'LLM_CANARY_TEST_KEY'" >> "$data/postgresql.conf"
    echo "$BENCH_CONF" >> "$data/postgresql.conf"
    "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
    "$bin/createdb" -h /tmp -p "$port" -U postgres bench
    { echo "CREATE EXTENSION llm_canary;"
      echo "SELECT canary_flush('60 seconds');"
      fast_upstream_rollout "$nport"
    } | "$bin/psql" -h /tmp -p "$port" -U postgres -d bench -X -q -v ON_ERROR_STOP=1 >/dev/null
    echo "$b: $("$bin/psql" -h /tmp -p "$port" -U postgres -d bench -XAt -c \
        "SELECT 'llm_canary ' || extversion FROM pg_extension WHERE extname = 'llm_canary'") on port $port," \
        "a call answers from model $("$bin/psql" -h /tmp -p "$port" -U postgres -d bench -XAt -c \
        "SELECT canary_call('Where is my order?', 'u_1')->>'model'")"
}
start new "$BIN_NEW" "$port_new"
start old "$BIN_OLD" "$port_old"
echo "SELECT canary_call('Where is my order?', 'u_' || (random() * 100000)::int);" > "$dir/call.pgbench"

# cpu BUILD: clock ticks of CPU the cluster has used so far, as "BACKENDS
# OTHERS": the backends that have exited (the postmaster's reaped
# children), and the live processes (the worker, the checkpointer, ...)
cpu() {
    local pm
    pm=$(head -1 "$dir/data_$1/postmaster.pid")
    echo "$(awk '{print $16 + $17}' "/proc/$pm/stat")" \
        "$(for p in $(ps --ppid "$pm" -o pid=); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || true; done |
           awk '{s += $1} END {print s + 0}')"
}
# backends BUILD: the number of client backends still running
backends() {
    ps --ppid "$(head -1 "$dir/data_$1/postmaster.pid")" -o args= | grep -c '^postgres: postgres bench' || true
}
port_of() { if [ "$1" = new ]; then echo "$port_new"; else echo "$port_old"; fi; }
bin_of() { if [ "$1" = new ]; then echo "$BIN_NEW"; else echo "$BIN_OLD"; fi; }

# launch BUILD CLIENTS SECONDS: start pgbench on that build in the background
launch() {
    local b=$1 c=$2 s=$3 threads=$(( $2 < 2 ? 1 : 2 ))
    rm -f "$dir"/pgblog."$b".*
    echo "$(cpu "$b")" > "$dir/cpu0.$b"
    "$(bin_of "$b")/pgbench" -h /tmp -p "$(port_of "$b")" -U postgres -n -c "$c" -j "$threads" -T "$s" \
        -f "$dir/call.pgbench" -l --log-prefix="$dir/pgblog.$b" bench > "$dir/pgbench.$b.out" 2>&1 &
}
# collect MODE BUILD CLIENTS ROUND: after pgbench ended, one line of results:
# "MODE BUILD CLIENTS ROUND calls/s avg_ms p99_ms backend_us other_us"
collect() {
    local m=$1 b=$2 c=$3 r=$4 tps stats cpu n
    # the worker writes the run's metric records (counted in its CPU)
    "$(bin_of "$b")/psql" -h /tmp -p "$(port_of "$b")" -U postgres -d bench -XAtq \
        -c "SELECT canary_flush('60 seconds')" >/dev/null
    for _ in $(seq 1 50); do [ "$(backends "$b")" = 0 ] && break; sleep 0.1; done
    tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$dir/pgbench.$b.out")
    n=$(cat "$dir"/pgblog."$b".* | wc -l)
    # pgbench -l: column 3 is the latency in us
    stats=$(cat "$dir"/pgblog."$b".* | awk '{print $3}' | sort -n |
        awk '{a[NR] = $1; s += $1} END {printf "%.3f %.3f", s / NR / 1000, a[int(NR * 0.99)] / 1000}')
    cpu=$(echo "$(cat "$dir/cpu0.$b") $(cpu "$b")" | awk -v hz="$(getconf CLK_TCK)" -v n="$n" \
        '{printf "%.1f %.1f", ($3 - $1) * 1e6 / hz / n, ($4 - $2) * 1e6 / hz / n}')
    [ "$r" = 0 ] && return 0
    printf '%-11s | %5s | %-4s | %7s | %8s | %7s %7s | %7s %7s | %s\n' "$m" "$r" "$b" "$c" "$tps" \
        $stats $cpu "$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$m $b $c $r $tps $stats $cpu" >> "$dir/results"
}
# interleaved CLIENTS ROUND SECONDS ORDER...: one build after the other
interleaved() {
    local c=$1 r=$2 s=$3 b; shift 3
    for b in "$@"; do launch "$b" "$c" "$s"; wait; collect interleaved "$b" "$c" "$r"; done
}
# together CLIENTS ROUND SECONDS: both builds at the same time
together() {
    launch new "$1" "$3"; launch old "$1" "$3"; wait
    collect together new "$1" "$2"; collect together old "$1" "$2"
}

echo "machine: $(nproc) cores; load at the start:$(uptime | sed 's/.*load average://')"
# warm-up (not counted): connections, caches, the metrics ring
interleaved 8 0 3 new old
: > "$dir/results"
printf '%-11s | %5s | %-4s | %7s | %8s | %7s %7s | %7s %7s | %s\n' mode round b clients calls/s \
    avg_ms p99_ms "be us" "oth us" loadavg
for r in $(seq 1 "$rounds"); do
    for c in $BENCH_CLIENTS; do
        if [ $(( r % 2 )) = 1 ]; then interleaved "$c" "$r" "$secs" new old
        else interleaved "$c" "$r" "$secs" old new; fi
        together "$c" "$r" "$secs"
    done
done
echo "load at the end:$(uptime | sed 's/.*load average://')"

med() {	# the median of the numbers on stdin
    sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
col() {	# col MODE BUILD CLIENTS COLUMN: the median of that column
    awk -v m="$1" -v b="$2" -v c="$3" -v k="$4" '$1 == m && $2 == b && $3 == c {print $k}' "$dir/results" | med
}
for m in interleaved together; do
    [ "$rounds" -gt 0 ] || break
    echo
    echo "$m: medians over $rounds rounds (new = $NEW_SRC, 1.0 = $OLD_COMMIT); ratio = new / 1.0;"
    echo "cpu: microseconds of CPU per call in the backends (be) and in the worker and other server processes (oth);"
    echo "paired: the median of the per-round ratios of calls/s"
    printf '%7s | %7s %7s %6s %6s | %7s %7s %6s | %7s %7s %6s | %6s %6s %6s | %6s %6s %6s\n' clients \
        "calls/s" "1.0" ratio paired "avg ms" "1.0" ratio "p99 ms" "1.0" ratio "be us" "1.0" ratio "oth us" "1.0" ratio
    for c in $BENCH_CLIENTS; do
        paired=$(awk -v m="$m" -v c="$c" '$1 == m && $3 == c {t[$2 " " $4] = $5; r[$4] = 1}
            END {for (i in r) if (t["old " i] > 0) print t["new " i] / t["old " i]}' "$dir/results" | med)
        line="$c $paired"
        for k in 5 6 7 8 9; do line="$line $(col "$m" new "$c" "$k") $(col "$m" old "$c" "$k")"; done
        echo "$line" | awk '{printf "%7s | %7.0f %7.0f %6.3f %6.3f | %7.3f %7.3f %6.3f | %7.3f %7.3f %6.3f | %6.1f %6.1f %6.3f | %6.1f %6.1f %6.3f\n",
            $1, $3, $4, $3 / $4, $2, $5, $6, $5 / $6, $7, $8, $7 / $8, $9, $10, $9 / $10, $11, $12, $11 / $12}'
    done
done

# BENCH_PERF: one client on each build (both at once), a profile of each
# backend (perf runs as root); the reports are left in
# /tmp/llm_canary_vs10_perf.*
if [ -n "$BENCH_PERF" ]; then
    echo
    pc=${BENCH_PERF_CLIENTS:-1}
    launch new "$pc" "$(( secs + 4 ))"; launch old "$pc" "$(( secs + 4 ))"
    sleep 2
    req=
    for b in new old; do
        req="$req $("$(bin_of "$b")/psql" -h /tmp -p "$(port_of "$b")" -U postgres -d bench -XAt -c \
            "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name = 'pgbench'") $dir/perf.$b.data"
    done
    echo "$secs$req" > "$dir/perf.req.tmp"; mv "$dir/perf.req.tmp" "$dir/perf.req"
    for _ in $(seq 1 $(( (secs + 60) * 5 ))); do [ -e "$dir/perf.ack" ] && break; sleep 0.2; done
    wait
    for b in new old; do
        collect perf "$b" "$pc" 0
        out=/tmp/llm_canary_vs10_perf.$b
        cp "$dir/perf.$b.data.txt" "$out.txt"; cp "$dir/perf.$b.data.children.txt" "$out.children.txt"
        cp "$dir/perf.$b.data" "$out.data"
        echo "profile of the $b backends, $pc clients, $(awk '/^tps/ {printf "%.0f", $3}' "$dir/pgbench.$b.out") calls/s: $out.txt"
    done
fi
echo
echo "metric records (enqueued, dropped, written, write_errors) and the outcomes in canary_requests:"
echo "  new: $("$BIN_NEW/psql" -h /tmp -p "$port_new" -U postgres -d bench -XAt -c "SELECT enqueued, dropped, written, write_errors FROM canary_stats()") " \
    $("$BIN_NEW/psql" -h /tmp -p "$port_new" -U postgres -d bench -XAt -c "SELECT outcome, count(*) FROM canary_requests GROUP BY 1")
echo "  1.0: $("$BIN_OLD/psql" -h /tmp -p "$port_old" -U postgres -d bench -XAt -c "SELECT enqueued, dropped, written, write_errors FROM canary_stats()") " \
    $("$BIN_OLD/psql" -h /tmp -p "$port_old" -U postgres -d bench -XAt -c "SELECT outcome, count(*) FROM canary_requests GROUP BY 1")
