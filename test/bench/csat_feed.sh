#!/usr/bin/env bash
# The fleet's CSAT feed (canary_csat_user_days) at the writer, side by side
# in one run on one throwaway cluster: one INSERT of 10,000 rows into
# canary_requests (5,000 users, two rows each, a rollout at ramp_25: the
# rollup and sample-ratio triggers fire too), with the feed's trigger
# enabled and disabled, alternating, BENCH_ROUNDS rounds; in each, once
# with users new that day (the worst case: a feed row per user) and once
# with the same users again (a probe per user).  Role member, then
# standalone (the trigger returns at once).  Prints the median statement
# times.  Run as postgres with the extension installed:
# test/bench/run.sh csat_feed (or PGBIN=<a private PostgreSQL with the build
# installed>).  BENCH_PORT (default 55496), BENCH_ROUNDS (default 6).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=${PGBIN:-/usr/lib/postgresql/15/bin}
port=${BENCH_PORT:-55496}; rounds=${BENCH_ROUNDS:-6}
dir=/tmp/llm_canary_bench_csat_feed.$port
rm -rf "$dir"; mkdir -p "$dir"
trap 'bash "$top/test/cluster.sh" stop "$dir/data"' EXIT
PGBIN=$BIN bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
P() { "$BIN/psql" -h /tmp -p "$port" -U postgres -d bench -qAtX -v ON_ERROR_STOP=1 "$@"; }
P -c "INSERT INTO canary_models (name, provider, base_url, model, api_key_env) VALUES
        ('o', 'openai', 'http://127.0.0.1:1/v1', 'o', 'LLM_CANARY_TEST_KEY'),
        ('n', 'openai', 'http://127.0.0.1:1/v1', 'n', 'LLM_CANARY_TEST_KEY')" \
  -c "UPDATE canary_config SET old_model = 'o', new_model = 'n', stage = 'ramp_25'"
# one statement: milliseconds
insert() {
    P -c '\timing on' -c "
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms)
SELECT gen_random_uuid(), now() - make_interval(days => $1 % 3, secs => 60 - i / 1000.0), 'default', 'ramp_25',
       'u' || (i % 5000) || '-$2', CASE WHEN i % 4 = 0 THEN 'canary' ELSE 'control' END, 'o', 'ok', 100
  FROM generate_series(1, 10000) i" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
for role in member standalone; do
    P -c "ALTER SYSTEM SET llm_canary.fleet_role = '$role'" -c "ALTER SYSTEM SET llm_canary.member = 'm1'" \
      -c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
    : > "$dir/times"
    for r in $(seq 1 "$rounds"); do
        for state in ENABLE DISABLE; do
            P -c "ALTER TABLE canary_requests $state TRIGGER canary_requests_csat_feed"
            echo "$state new $(insert "$r" "$role$state$r")" >> "$dir/times"
            echo "$state seen $(insert "$r" "$role$state$r")" >> "$dir/times"
        done
    done
    for k in "ENABLE new" "DISABLE new" "ENABLE seen" "DISABLE seen"; do
        printf '%-10s feed %-7s users %-4s  median %s ms\n' "$role" \
            "$( [ "${k% *}" = ENABLE ] && echo on || echo off)" "${k#* }" \
            "$(grep "^$k " "$dir/times" | cut -d' ' -f3 | median)"
    done
done
P -c "SELECT 'feed rows: ' || count(*) FROM canary_csat_user_days"
