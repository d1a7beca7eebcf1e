#!/usr/bin/env bash
# canary_call overhead: pgbench calling canary_call against a fast local
# upstream (nginx answering a fixed chat-completions body), side by side with
# wrk sending the same POST straight to nginx, and pgbench running a bare
# SELECT (the client/server round trip alone), for 1, 8 and 32 clients.
# Then one backend's memory over 100,000 calls and the metric drops.
# Run as postgres with the extension installed (test/bench/run.sh call does).
# BENCH_SECONDS (default 10) per measurement, BENCH_MEM_CALLS (default 100000).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dir=/tmp/llm_canary_bench_call; port=55498; nport=55497
secs=${BENCH_SECONDS:-10}; memcalls=${BENCH_MEM_CALLS:-100000}
rm -rf "$dir"; mkdir -p "$dir"
. "$top/test/bench/fast_upstream.sh"
fast_upstream_start "$dir" "$nport"
cleanup() {
    fast_upstream_stop "$dir"
    bash "$top/test/cluster.sh" stop "$dir/data"
}
trap cleanup EXIT
bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
flock -u 9 2>/dev/null || true     # the install lock guards the install only
PSQL="psql -h /tmp -p $port -d bench -X -q -v ON_ERROR_STOP=1"
fast_upstream_rollout "$nport" | $PSQL
# a call must succeed before anything is timed
$PSQL -At -c "SELECT canary_call('Where is my order?', 'u_1')->>'model'" >/dev/null
echo "SELECT canary_call('Where is my order?', 'u_' || (random() * 100000)::int);" > "$dir/call.pgbench"
echo "SELECT 'Where is my order?', 'u_' || (random() * 100000)::int;" > "$dir/select.pgbench"
cat > "$dir/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body   = '{"model":"fast","messages":[{"role":"user","content":"Where is my order?"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
LUA

# wrk prints 812.00us / 1.20ms / 1.02s: in ms
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000;
    printf "%.3f", n }'; }
# pgbench per-transaction log (-l): column 3 is the latency in us
pgb() {	# pgb clients script label
    local c=$1 f=$2 label=$3 threads=$(( $1 < 2 ? 1 : 2 )) tps lat
    rm -f "$dir"/pgblog*
    pgbench -h /tmp -p "$port" -n -c "$c" -j "$threads" -T "$secs" -f "$f" \
        -l --log-prefix="$dir/pgblog" bench > "$dir/pgbench.out" 2>&1
    tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$dir/pgbench.out")
    lat=$(cat "$dir"/pgblog* | awk '{print $3}' | sort -n |
          awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
    printf '%-7s | %-24s | %9s | %7s | %7s\n' "$c" "$label" "$tps" $lat
    echo "$c $label $tps $lat" >> "$dir/results"
}
: > "$dir/results"
printf '%-7s | %-24s | %9s | %7s | %7s\n' clients tool calls/s p50_ms p99_ms
for c in 1 8 32; do
    threads=$(( c < 2 ? 1 : 2 ))
    w=$(wrk -t$threads -c$c -d${secs}s --latency -s "$dir/post.lua" "http://127.0.0.1:$nport/v1/chat/completions")
    wr=$(echo "$w" | awk '/Requests\/sec/ {printf "%.0f", $2}')
    wp50=$(to_ms "$(echo "$w" | awk '$1=="50%" {print $2}')")
    wp99=$(to_ms "$(echo "$w" | awk '$1=="99%" {print $2}')")
    printf '%-7s | %-24s | %9s | %7s | %7s\n' "$c" "wrk -> nginx" "$wr" "$wp50" "$wp99"
    echo "$c direct $wr $wp50 $wp99" >> "$dir/results"
    pgb "$c" "$dir/select.pgbench" "pgbench SELECT (no call)"
    $PSQL -c "SELECT canary_flush('60 seconds')" >/dev/null
    pgb "$c" "$dir/call.pgbench" "pgbench canary_call"
    $PSQL -c "SELECT canary_flush('60 seconds')" >/dev/null
done
echo
echo "added p50 per call (canary_call - direct; in brackets: canary_call - bare SELECT), ms:"
sed -e 's/ pgbench SELECT (no call) / select /' -e 's/ pgbench canary_call / call /' "$dir/results" |
    awk '{ k[$1 " " $2] = $4 } END { for (c = 1; c <= 32; c *= (c == 1 ? 8 : 4))
        printf "  %2d clients: %.3f  (%.3f)\n", c, k[c " call"] - k[c " direct"], k[c " call"] - k[c " select"] }'

# one backend, many calls: memory before and after (VmRSS counts the shared
# buffers the backend touched too; RssAnon is its private memory)
echo
seq 1 "$memcalls" | awk '{ printf "SELECT canary_call(%c%s%c, %cu_%d%c) \\g /dev/null\n", 39, "Where is my order?", 39, 39, $1 % 100000, 39 }' > "$dir/mem_calls.sql"
{
    echo "\\set QUIET on"
    head -1000 "$dir/mem_calls.sql"                 # warm-up: caches, connections
    echo "CREATE TEMP TABLE mem AS SELECT 'before'::text AS at, pg_read_file('/proc/' || pg_backend_pid() || '/status') AS status;"
    head -$(( memcalls / 2 )) "$dir/mem_calls.sql"
    echo "INSERT INTO mem SELECT 'half way', pg_read_file('/proc/' || pg_backend_pid() || '/status');"
    tail -n +$(( memcalls / 2 + 1 )) "$dir/mem_calls.sql"
    echo "INSERT INTO mem SELECT 'after', pg_read_file('/proc/' || pg_backend_pid() || '/status');"
    echo "SELECT at, (regexp_match(status, 'VmRSS:\\s+(\\d+)'))[1]::int AS vmrss_kb,"
    echo "       (regexp_match(status, 'RssAnon:\\s+(\\d+)'))[1]::int AS rssanon_kb,"
    echo "       (regexp_match(status, 'RssShmem:\\s+(\\d+)'))[1]::int AS rssshmem_kb,"
    echo "       (regexp_match(status, 'RssFile:\\s+(\\d+)'))[1]::int AS rssfile_kb FROM mem;"

} > "$dir/mem.sql"
echo "one backend, $memcalls canary_call statements after 1000 warm-up calls:"
start=$(date +%s.%N)
$PSQL -f "$dir/mem.sql"
echo "  ($(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s)"
$PSQL -c "SELECT canary_flush('60 seconds')" >/dev/null
$PSQL -c "SELECT enqueued, dropped, written, write_errors FROM canary_stats()"
$PSQL -c "SELECT outcome, count(*) FROM canary_requests GROUP BY 1"
