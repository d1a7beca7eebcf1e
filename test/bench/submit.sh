#!/usr/bin/env bash
# canary_submit: pgbench submitting as fast as it can for BENCH_SECONDS
# (default 20) against a fast upstream (nginx answering a fixed
# chat-completions body), then waiting until the worker has answered every
# submission.  Reports the submission rate, the worker's completion rate,
# and lost / failed / timed-out submissions (all must be 0).
# Run as postgres with the extension installed (test/bench/run.sh submit does).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dir=/tmp/llm_canary_bench_submit; port=55491; nport=55490
secs=${BENCH_SECONDS:-20}; clients=${BENCH_CLIENTS:-8}
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
$PSQL <<SQL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, timeout_ms)
VALUES ('fast', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY', 5000);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('bench', 'full', 'fast', 'fast');
SQL
echo "SELECT canary_submit('Where is my order?', 'u_' || (random() * 100000)::int, 'bench');" > "$dir/submit.pgbench"
t0=$(date +%s.%N)
pgbench -h /tmp -p "$port" -n -c "$clients" -j 2 -T "$secs" -f "$dir/submit.pgbench" bench > "$dir/pgbench.out" 2>&1
t1=$(date +%s.%N)
submitted=$($PSQL -At -c "SELECT count(*) FROM canary_submissions")
tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$dir/pgbench.out")
# wait (at most 120 s) until nothing is pending or running
for _ in $(seq 1 1200); do
    open=$($PSQL -At -c "SELECT count(*) FROM canary_submissions WHERE state IN ('pending', 'running')")
    [ "$open" = 0 ] && break; sleep 0.1
done
t2=$(date +%s.%N)
read -r done failed timeouts span <<<"$($PSQL -At -F ' ' -c "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
    count(*) FILTER (WHERE error LIKE '%within%' OR (result->>'outcome') = 'timeout'),
    round(extract(epoch FROM max(finished_at) - min(submitted_at))::numeric, 2) FROM canary_submissions")"
$PSQL -At -c "SELECT canary_flush()" >/dev/null
recorded=$($PSQL -At -c "SELECT count(*) FROM canary_requests")
echo "pgbench output:"; grep -E "^(tps|number of transactions|latency average)" "$dir/pgbench.out"
printf 'submissions: %s in %s s by %s clients: %s/s (pgbench tps %s)\n' "$submitted" "$secs" "$clients" \
    "$(echo "$submitted / $secs" | bc)" "$tps"
printf 'answered: %s done, %s failed (%s timeouts), lost %s; first submission to last answer %s s (%s/s); drained %.1f s after the last submission\n' \
    "$done" "$failed" "$timeouts" "$(( submitted - done - failed ))" "$span" "$(echo "$done / $span" | bc)" "$(echo "$t2 - $t1" | bc -l)"
printf 'attempts recorded in canary_requests: %s\n' "$recorded"
