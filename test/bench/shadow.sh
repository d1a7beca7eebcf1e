#!/usr/bin/env bash
# Shadow mode, two measurements on one throwaway cluster:
#  1. the user's latency: canary_call at a fixed rate with the old model on a
#     fast local upstream (nginx) and, in stage shadow, a new model that
#     answers in 2 s (the mock LLM server, latency_ms 2000), against the old
#     model alone (stage ramp_1 at percent_new 0), interleaved in one run;
#  2. the worker's shadow throughput: shadow calls per second completed
#     against a fast upstream (nginx for both models), and that no job is
#     lost (canary_shadow_stats(): nothing dropped, rows = dispatched):
#     2. as fast as 4 clients go (the capacity; a full queue drops), then
#     3. paced below it (the steady state: nothing may be dropped).
# Run as postgres with the extension installed (test/bench/run.sh shadow).
# BENCH_SECONDS (default 15) per latency run; BENCH_RATE (default 40) calls/s;
# BENCH_SHADOW_CALLS (default 30000) for the throughput run;
# BENCH_SYNCHRONOUS_COMMIT (default on) to see what the WAL flush costs;
# BENCH_SHADOW_RATE (default 2000) calls/s for the sustained run (3.).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dir=/tmp/llm_canary_bench_shadow; port=55496; nport=55495
secs=${BENCH_SECONDS:-15}; rate=${BENCH_RATE:-40}; ncalls=${BENCH_SHADOW_CALLS:-30000}
conc=${BENCH_SHADOW_CONCURRENCY:-64}
rm -rf "$dir"; mkdir -p "$dir"
. "$top/test/bench/fast_upstream.sh"
fast_upstream_start "$dir" "$nport"
python3 "$top/test/mock_llm.py" --port 0 --port-file "$dir/mock.port" --seed 42 > "$dir/mock.log" 2>&1 &
mock_pid=$!
cleanup() {
    fast_upstream_stop "$dir"
    kill "$mock_pid" 2>/dev/null || true
    bash "$top/test/cluster.sh" stop "$dir/data"
}
trap cleanup EXIT
for _ in $(seq 1 50); do [ -s "$dir/mock.port" ] && break; sleep 0.1; done
mock="http://127.0.0.1:$(cat "$dir/mock.port")"
curl -sf -X PUT -H 'content-type: application/json' -d '{"latency_ms": 2000}' "$mock/_mock/models/slow-new" >/dev/null

bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
cat >> "$dir/data/postgresql.conf" <<CONF
llm_canary.shadow_queue_size = 4096
llm_canary.shadow_concurrency = $conc
llm_canary.check_interval = 0
synchronous_commit = ${BENCH_SYNCHRONOUS_COMMIT:-on}
CONF
pg_ctl -D "$dir/data" -l "$dir/data/server.log" -w restart >/dev/null
flock -u 9 2>/dev/null || true     # the install lock guards the install only
PSQL="psql -h /tmp -p $port -d bench -X -q -v ON_ERROR_STOP=1"
$PSQL -c "SELECT canary_flush('60 seconds')" >/dev/null
$PSQL <<SQL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, timeout_ms, max_retries)
VALUES ('fast-old', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY', 30000, 0),
       ('fast-new', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY', 30000, 0),
       ('slow-new', 'openai', '$mock/v1', 'slow-new', 'LLM_CANARY_TEST_KEY', 30000, 0);
INSERT INTO canary_config (name, stage, percent_new, old_model, new_model, shadow_sample_rate)
VALUES ('default', 'ramp_1', 0, 'fast-old', 'slow-new', 1)
ON CONFLICT (name) DO UPDATE SET stage = excluded.stage, percent_new = excluded.percent_new,
    old_model = excluded.old_model, new_model = excluded.new_model,
    shadow_sample_rate = excluded.shadow_sample_rate;
SQL
$PSQL -At -c "SELECT canary_call('Where is my order?', 'u_1')->>'model'" >/dev/null
echo "SELECT canary_call('Where is my order?', 'u_' || (random() * 100000)::int);" > "$dir/call.pgbench"

# pgbench at a fixed rate, one client; prints "p50 p99" in ms
paced() {
    rm -f "$dir"/pgblog*
    pgbench -h /tmp -p "$port" -n -c 1 -j 1 -R "$rate" -T "$secs" -f "$dir/call.pgbench" \
        -l --log-prefix="$dir/pgblog" bench > "$dir/pgbench.out" 2>&1
    # column 3: latency in us (excludes the schedule lag of -R)
    cat "$dir"/pgblog* | awk '{print $3}' | sort -n |
        awk '{a[NR]=$1} END {printf "%d %.3f %.3f", NR, a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}'
}
set_stage() {	# stage percent
    $PSQL -c "UPDATE canary_config SET stage = '$1', percent_new = $2 WHERE name = 'default'"
}

echo "1. user latency, one client at $rate calls/s for ${secs}s per run, new model answering in 2 s:"
printf '   %-36s | %6s | %7s | %7s\n' configuration calls p50_ms p99_ms
: > "$dir/lat"
for round in 1 2; do
    for cfg in "ramp_1 0 old model alone (ramp_1, percent 0)" "shadow 0 shadow (new model 2 s, sample 1)"; do
        set -- $cfg; stage=$1; pct=$2; shift 2
        set_stage "$stage" "$pct"
        r=$(paced)
        printf '   %-36s | %6s | %7s | %7s\n' "$*" $r
        echo "$stage $r" >> "$dir/lat"
        $PSQL -c "SELECT canary_flush('60 seconds')" >/dev/null
    done
done
awk '{ n[$1]++; s[$1] += $3 } END { printf "   shadow - alone, p50 (mean of the two rounds): %.3f ms\n", s["shadow"]/n["shadow"] - s["ramp_1"]/n["ramp_1"] }' "$dir/lat"
$PSQL -c "SELECT dispatched, in_flight, dropped_queue_full, dropped_no_worker, dropped_memory, rows_written, rows_lost FROM canary_shadow_stats()"
$PSQL -c "SELECT count(*) AS shadow_rows, round(avg(new_latency_ms)) AS new_latency_ms_avg, count(*) FILTER (WHERE new_error IS NOT NULL) AS new_errors FROM canary_shadow"

echo "2. shadow throughput: $ncalls calls in stage shadow, both models on nginx, shadow_concurrency $conc:"
$PSQL -c "UPDATE canary_config SET stage = 'shadow', new_model = 'fast-new' WHERE name = 'default'"
before=$($PSQL -At -F' ' -c "SELECT dispatched, rows_written FROM canary_shadow_stats()")
rows0=$($PSQL -At -c "SELECT count(*) FROM canary_shadow")
start=$(date +%s.%N)
pgbench -h /tmp -p "$port" -n -c 4 -j 2 -t $(( ncalls / 4 )) -f "$dir/call.pgbench" bench > "$dir/pgbench_tp.out" 2>&1
mid=$(date +%s.%N)
$PSQL -c "SELECT canary_flush('120 seconds')" >/dev/null
end=$(date +%s.%N)
after=$($PSQL -At -F' ' -c "SELECT dispatched, rows_written FROM canary_shadow_stats()")
rows1=$($PSQL -At -c "SELECT count(*) FROM canary_shadow")
echo "$before $after $start $mid $end $rows0 $rows1" | awk '{
    d = $3 - $1; w = $4 - $2; printf "   user calls: %.0f/s; shadow rows written: %d of %d dispatched in %.2f s (calls + drain): %.0f shadow calls/s; canary_shadow rows added: %d\n",
        d / ($6 - $5), w, d, $7 - $5, w / ($7 - $5), $9 - $8 }'
$PSQL -c "SELECT dispatched, in_flight, dropped_queue_full, dropped_no_worker, dropped_memory, rows_written, rows_lost FROM canary_shadow_stats()"
$PSQL -c "SELECT count(*) FILTER (WHERE new_error IS NOT NULL) AS new_errors, count(*) FILTER (WHERE old_error IS NOT NULL) AS old_errors FROM canary_shadow"

prate=${BENCH_SHADOW_RATE:-2000}
echo "3. sustained: 4 clients paced at $prate calls/s for ${secs}s in stage shadow, both models on nginx:"
before=$($PSQL -At -F' ' -c "SELECT dispatched, rows_written, dropped_queue_full + dropped_no_worker + dropped_memory, rows_lost FROM canary_shadow_stats()")
start=$(date +%s.%N)
pgbench -h /tmp -p "$port" -n -c 4 -j 2 -R "$prate" -T "$secs" -f "$dir/call.pgbench" bench > "$dir/pgbench_paced.out" 2>&1
$PSQL -c "SELECT canary_flush('120 seconds')" >/dev/null
end=$(date +%s.%N)
after=$($PSQL -At -F' ' -c "SELECT dispatched, rows_written, dropped_queue_full + dropped_no_worker + dropped_memory, rows_lost FROM canary_shadow_stats()")
echo "$before $after $start $end" | awk '{
    printf "   dispatched %d, rows written %d (%.0f shadow calls/s over %.1f s incl. the drain), dropped %d, rows lost %d\n",
        $5 - $1, $6 - $2, ($6 - $2) / ($10 - $9), $10 - $9, $7 - $3, $8 - $4 }'
