#!/usr/bin/env bash
# The kill switch's stage statistic at the end of a long stage: the cost of
# canary_check (sequential) and of canary_plan for one rollout whose
# evidence period began 14 days ago (canary_evidence: 20,160 minutes x 2
# cohorts, written directly), no new traffic, one check every simulated
# 30 s.  Two builds side by side (two throwaway clusters, rounds
# alternating), to compare a change with the code before it:
#   STAGE_BEFORE_BIN, STAGE_AFTER_BIN   bin directories of two installs
#                                       (test/pgroot.sh copies)
#   STAGE_ROUNDS (3), STAGE_CHECKS (50) rounds, checks per round
# Prints per build and round the median ms of a check and of canary_plan.
# Run as postgres.
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
rounds=${STAGE_ROUNDS:-3}; checks=${STAGE_CHECKS:-50}
declare -A bin=([before]=${STAGE_BEFORE_BIN:?} [after]=${STAGE_AFTER_BIN:?})
declare -A port=([before]=55621 [after]=55622)
cleanup() { for b in before after; do PGBIN=${bin[$b]} bash "$top/test/cluster.sh" stop "/tmp/llm_canary_stage_$b" || true; done; }
trap cleanup EXIT
for b in before after; do
    rm -rf "/tmp/llm_canary_stage_$b"
    PGBIN=${bin[$b]} bash "$top/test/cluster.sh" start "/tmp/llm_canary_stage_$b" "${port[$b]}" bench >/dev/null
    "${bin[$b]}/psql" -h /tmp -p "${port[$b]}" -U postgres -d bench -X -q -v ON_ERROR_STOP=1 <<'SQL'
ALTER SYSTEM SET llm_canary.check_interval = 0;
SELECT pg_reload_conf();
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'), ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
CREATE TABLE bench_t0 AS SELECT date_trunc('hour', now()) + interval '2 hours' AS t0;
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
SELECT 'long', 'ramp_25', 'm-old', 'm-new', t0 - interval '14 days', false FROM bench_t0;
INSERT INTO canary_evidence (canary, bucket, cohort, samples, errors, refusals, thumbs_down, slow)
SELECT 'long', t0 - interval '14 days' + m * interval '1 minute', c.cohort, c.n, c.n / 100, c.n / 100,
       c.n / 50, 0
  FROM bench_t0, generate_series(0, 14 * 1440 - 1) m, (VALUES ('canary', 1500), ('control', 4500)) c(cohort, n);
VACUUM ANALYZE canary_evidence;
SQL
done
step=0
for r in $(seq 1 "$rounds"); do
    for b in before after; do
        "${bin[$b]}/psql" -h /tmp -p "${port[$b]}" -U postgres -d bench -X -q -At -v ON_ERROR_STOP=1 \
            -c "SET bench.step = $step" -c "SET bench.checks = $checks" -c "SET bench.build = $b" -c "SET bench.round = $r" -f - <<'SQL'
DO $$
DECLARE
    t0 timestamptz := (SELECT t0 FROM bench_t0);
    c0 timestamptz;
    ck float8[] := '{}';
    pl float8[] := '{}';
BEGIN
    FOR i IN 1 .. current_setting('bench.checks')::int LOOP
        c0 := clock_timestamp();
        PERFORM canary_check('long', t0 + (current_setting('bench.step')::int + i) * interval '30 s');
        ck := ck || extract(epoch FROM clock_timestamp() - c0) * 1000;
        c0 := clock_timestamp();
        PERFORM count(*) FROM canary_plan('long', t0 + (current_setting('bench.step')::int + i) * interval '30 s');
        pl := pl || extract(epoch FROM clock_timestamp() - c0) * 1000;
    END LOOP;
    RAISE NOTICE '% round %: canary_check median % ms, canary_plan median % ms',
        current_setting('bench.build'), current_setting('bench.round'),
        round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(ck) x)::numeric, 2),
        round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(pl) x)::numeric, 2);
END;
$$;
SQL
    done
    step=$((step + checks))
done 2>&1
