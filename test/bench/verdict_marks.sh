#!/usr/bin/env bash
# A late verdict and the kill switch's evidence (issue 12): what the next
# canary_check costs after a thumbs-down on an answer of 14 days ago.  One
# rollout with 14 days of 30-second rollups (2 cohorts x 2 models, 161,280
# rows, written directly), its evidence counted once; then, per round, one
# mark at the oldest bucket (as canary_feedback_fold leaves for a verdict on
# that answer) and canary_check timed, then canary_check timed again with
# no mark.  Side by side: every PostgreSQL of BENCH_BINS (each a private
# install, e.g. of the code before and after a change) gets its own
# throwaway cluster, and the rounds alternate between them.
# Run as postgres: BENCH_BINS="<bin dir> <bin dir>" bash test/bench/verdict_marks.sh
# BENCH_ROUNDS (default 5), BENCH_PORT (default 55750; the next ports too).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
bins=(${BENCH_BINS:-/usr/lib/postgresql/15/bin})
rounds=${BENCH_ROUNDS:-5}
port0=${BENCH_PORT:-55750}
dirs=()
cleanup() {
    for i in "${!dirs[@]}"; do
        PGBIN=${bins[$i]} bash "$top/test/cluster.sh" stop "${dirs[$i]}" || true
    done
}
trap cleanup EXIT
for i in "${!bins[@]}"; do
    d=/tmp/llm_canary_bench_marks.$(( port0 + i )); rm -rf "$d"; dirs+=("$d")
    PGBIN=${bins[$i]} bash "$top/test/cluster.sh" start "$d" $(( port0 + i )) bench >/dev/null
    echo "llm_canary.check_interval = 0" >> "$d/postgresql.conf"
    "${bins[$i]}/pg_ctl" -D "$d" -l "$d/server.log" -w restart >/dev/null
    "${bins[$i]}/psql" -h /tmp -p $(( port0 + i )) -d bench -X -q -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'), ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode) VALUES ('bench', 'ramp_25', 'm-old', 'm-new', 'sequential');
UPDATE canary_config SET evidence_since = canary_rollup_bucket(now()) - interval '14 days' WHERE name = 'bench';
INSERT INTO canary_rollups (canary, bucket_end, stage, cohort, model, fallback, cached, requests, outcome_ok,
                            outcome_error, thumbs_down, verdicts, latency_count, latency_sum, latency_hist)
SELECT 'bench', b, 'ramp_25', c, m, false, false, 100, 99, 1, 1, 5, 100, 100000, '{200,100}'
  FROM generate_series(canary_rollup_bucket(now()) - interval '14 days' + interval '30 seconds',
                       canary_rollup_bucket(now()), interval '30 seconds') b,
       unnest(ARRAY['canary', 'control']) c, unnest(ARRAY['m-old', 'm-new']) m;
VACUUM ANALYZE canary_rollups;
SELECT canary_check('bench') IS NULL;
-- the median of n timed checks, each after the statement before (a mark, or nothing)
CREATE FUNCTION bench_check(before text, n integer) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    ms float8[] := '{}';
BEGIN
    FOR i IN 1 .. n LOOP
        EXECUTE before;
        t := clock_timestamp();
        PERFORM canary_check('bench');
        ms := ms || extract(epoch FROM clock_timestamp() - t) * 1000;
    END LOOP;
    RETURN (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 2) FROM unnest(ms) x);
END;
$$;
SQL
done
echo "== canary_check after one mark 14 days back, and with no mark (median ms of 5 checks each)"
echo "   rollup rows: $("${bins[0]}/psql" -h /tmp -p "$port0" -d bench -X -At -c "SELECT count(*) FROM canary_rollups")"
for round in $(seq 1 "$rounds"); do
    for i in "${!bins[@]}"; do
        r=$("${bins[$i]}/psql" -h /tmp -p $(( port0 + i )) -d bench -X -At -F ' ' -c "
SELECT bench_check(\$\$INSERT INTO canary_verdict_marks VALUES ('bench', canary_rollup_bucket(now()) - interval '14 days' + interval '30 seconds')\$\$, 5),
       bench_check('SELECT 1', 5)")
        echo "   round $round  ${bins[$i]}: one old mark ${r% *} ms, no mark ${r#* } ms"
    done
done
