#!/usr/bin/env bash
# canary_csat_report on a fleet's control database, side by side in one run
# on one throwaway cluster: the report as it is now and as it was before it
# restricted itself to the scored users (the text of commit c00fb5a, loaded
# as canary_csat_report_before; it groups every user-day of every member in
# the window).  The feed holds BENCH_FEED_ROWS rows (default 1,800,000: 6
# members, 7 days, the users split between them) and the control 70,000 raw
# rows of its own; 7,000 scores (1,000 a day, half with a request_id).  Each
# report over 7 days, alternating, BENCH_ROUNDS rounds (default 5): median
# time, and the temporary blocks one run of each wrote.  Run as postgres
# with the extension installed: test/bench/run.sh csat_report (or
# PGBIN=<a private PostgreSQL with the build installed>).  BENCH_PORT
# (default 55497).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=${PGBIN:-/usr/lib/postgresql/15/bin}
port=${BENCH_PORT:-55497}; rounds=${BENCH_ROUNDS:-5}; feed=${BENCH_FEED_ROWS:-1800000}
dir=/tmp/llm_canary_bench_csat_report.$port
rm -rf "$dir"; mkdir -p "$dir"
trap 'bash "$top/test/cluster.sh" stop "$dir/data"' EXIT
PGBIN=$BIN bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
P() { "$BIN/psql" -h /tmp -p "$port" -U postgres -d bench -qAtX -v ON_ERROR_STOP=1 "$@"; }
P -c "ALTER SYSTEM SET llm_canary.fleet_role = 'control'" >/dev/null
PGBIN=$BIN bash "$top/test/cluster.sh" stop "$dir/data" >/dev/null
PGBIN=$BIN bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
[ "$(P -c 'SELECT canary_fleet_is_control()')" = t ] || { echo 'not a control database' >&2; exit 1; }
# the report before: the function's text at c00fb5a, renamed
git -c safe.directory='*' -C "$top" show c00fb5a:sql/parts/51_csat.sql \
  | sed -n '/^CREATE FUNCTION canary_csat_report(/,/^\$\$;/p' \
  | sed -e 's/^CREATE FUNCTION canary_csat_report(/CREATE FUNCTION canary_csat_report_before(/' \
        -e 's/canary_csat_report\./canary_csat_report_before./g' -e 's/@extschema@/public/g' > "$dir/before.sql"
P -f "$dir/before.sql"
P -c "INSERT INTO canary_models (name, provider, base_url, model, api_key_env) VALUES
        ('o', 'openai', 'http://127.0.0.1:1/v1', 'o', 'LLM_CANARY_TEST_KEY'),
        ('n', 'openai', 'http://127.0.0.1:1/v1', 'n', 'LLM_CANARY_TEST_KEY')" \
  -c "UPDATE canary_config SET old_model = 'o', new_model = 'n', stage = 'ramp_25'" \
  -c "ALTER TABLE canary_csat_user_days SET (autovacuum_enabled = off)" \
  -c "INSERT INTO canary_csat_user_days (day, canary, member, user_id, cohort)
      SELECT (now() AT TIME ZONE 'UTC')::date - (i % 7), 'default', 'm' || (i / 7 % 6), 'u' || (i / 7),
             CASE WHEN i % 4 = 0 THEN 'canary' ELSE 'control' END
        FROM generate_series(0, $feed - 1) i" \
  -c "SELECT canary_maintenance()" >/dev/null
P -c "INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms)
      SELECT gen_random_uuid(), now() - make_interval(days => i % 7), 'default', 'ramp_25',
             'c' || i, CASE WHEN i % 4 = 0 THEN 'canary' ELSE 'control' END, 'o', 'ok', 100
        FROM generate_series(1, 70000) i" \
  -c "INSERT INTO canary_csat (user_id, score, recorded_at, request_id)
      SELECT CASE WHEN i % 2 = 0 THEN 'u' || (i * 37 % ($feed / 7)) ELSE 'c' || i END, 1 + i % 5,
             ((now() AT TIME ZONE 'UTC')::date - (i % 7))::timestamp AT TIME ZONE 'UTC' + interval '1 minute',
             CASE WHEN i % 4 = 1 THEN (SELECT r.request_id FROM canary_requests r WHERE r.user_id = 'c' || i) END
        FROM generate_series(1, 7000) i" \
  -c "VACUUM ANALYZE canary_csat_user_days, canary_requests, canary_csat"
[ "$(P -c "SELECT (SELECT array_agg(r ORDER BY r::text) FROM canary_csat_report('default', 7) r)::text
               = (SELECT array_agg(r ORDER BY r::text) FROM canary_csat_report_before('default', 7) r)::text")" = t ] \
  || { echo 'the two reports differ:' >&2
         P -c "(SELECT * FROM canary_csat_report('default', 7) EXCEPT ALL SELECT * FROM canary_csat_report_before('default', 7))
               UNION ALL SELECT NULL, '--', NULL, NULL, NULL, NULL, NULL
               UNION ALL (SELECT * FROM canary_csat_report_before('default', 7) EXCEPT ALL SELECT * FROM canary_csat_report('default', 7))" >&2
         exit 1; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
: > "$dir/times"
for r in $(seq 1 "$rounds"); do
    for f in canary_csat_report_before canary_csat_report; do
        echo "$f $(P -c '\timing on' -c "SELECT count(*) FROM $f('default', 7)" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')" >> "$dir/times"
    done
done
for f in canary_csat_report_before canary_csat_report; do
    temp=$(P -c "SELECT pg_stat_reset()" -c "SELECT count(*) FROM $f('default', 7)" -c "SELECT pg_sleep(0.6)" \
             -c "SELECT pg_size_pretty(temp_bytes) FROM pg_stat_database WHERE datname = 'bench'" | tail -1)
    printf '%-26s median %8s ms  temp %s\n' "$f" "$(grep "^$f " "$dir/times" | cut -d' ' -f2 | median)" "$temp"
done
P -c "SELECT 'feed rows: ' || count(*) || ', report rows: ' || (SELECT count(*) FROM canary_csat_report('default', 7)) FROM canary_csat_user_days"
