#!/usr/bin/env bash
# canary_batch: 1,000 requests against a model answering in 200 ms (the mock
# LLM server, latency_ms 200), concurrency 64, side by side with the same
# requests made one after the other by canary_call (20 of them, timed, and
# the rate extrapolated to 1,000), and the count of recorded attempts.
# Run as postgres with the extension installed (test/bench/run.sh batch does).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dir=/tmp/llm_canary_bench_batch; port=55492
n=${BENCH_BATCH_N:-1000}; conc=${BENCH_BATCH_CONCURRENCY:-64}
rm -rf "$dir"; mkdir -p "$dir"
python3 "$top/test/mock_llm.py" --port 0 --port-file "$dir/mock.port" --seed 1 > "$dir/mock.log" 2>&1 &
mock_pid=$!
cleanup() {
    kill "$mock_pid" 2>/dev/null || true
    bash "$top/test/cluster.sh" stop "$dir/data"
}
trap cleanup EXIT
for _ in $(seq 1 50); do [ -s "$dir/mock.port" ] && break; sleep 0.1; done
mock="http://127.0.0.1:$(cat "$dir/mock.port")"
curl -s -X PUT "$mock/_mock/models/slow200" -d '{"fixed_text": "Your order ships tomorrow.", "latency_ms": 200}' >/dev/null
bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
flock -u 9 2>/dev/null || true     # the install lock guards the install only
PSQL="psql -h /tmp -p $port -d bench -X -q -v ON_ERROR_STOP=1"
$PSQL <<SQL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, timeout_ms)
VALUES ('slow200', 'openai', '$mock/v1', 'slow200', 'LLM_CANARY_TEST_KEY', 10000);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('bench', 'full', 'slow200', 'slow200');
SQL
$PSQL -At -c "SELECT canary_call('warm up', 'u_0', 'bench')->>'outcome'" >/dev/null

t0=$(date +%s.%N)
$PSQL -At -c "SELECT count(*) FROM generate_series(1, 20) g, LATERAL (SELECT canary_call('serial ' || g, 'u_' || g, 'bench')) c" >/dev/null
t1=$(date +%s.%N)
serial20=$(echo "$t1 - $t0" | bc -l)

t0=$(date +%s.%N)
ok=$($PSQL -At -c "SELECT count(*) FILTER (WHERE ok) FROM canary_batch(ARRAY(SELECT 'request ' || g FROM generate_series(1, $n) g), ARRAY(SELECT 'u_' || g FROM generate_series(1, $n) g), 'bench', concurrency => $conc)")
t1=$(date +%s.%N)
batch=$(echo "$t1 - $t0" | bc -l)
$PSQL -At -c "SELECT canary_flush()" >/dev/null
recorded=$($PSQL -At -c "SELECT count(*) FROM canary_requests WHERE prompt_hash IS NOT NULL AND user_id ~ '^u_[0-9]+\$' AND user_id <> 'u_0'")
dropped=$($PSQL -At -c "SELECT dropped FROM canary_stats()")
printf 'serial canary_call: 20 requests in %.2f s -> %.1f s for %d\n' "$serial20" "$(echo "$serial20 * $n / 20" | bc -l)" "$n"
printf 'canary_batch, concurrency %d: %d requests in %.2f s, %s answered\n' "$conc" "$n" "$batch" "$ok"
printf 'attempts recorded: %s (serial 20 + batch %d), metrics dropped: %s\n' "$recorded" "$n" "$dropped"
