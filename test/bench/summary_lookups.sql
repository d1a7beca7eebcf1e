-- The kill switch's lookups of one rollout's newest window summary, before
-- and after the fix (test/bench/summary_lookups.sh runs this; BENCHMARKS.md,
-- "Lookups of a rollout's newest summary").  psql variables: days, rollouts, since.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
ALTER SYSTEM SET llm_canary.check_interval = 0;
SELECT pg_reload_conf();
TRUNCATE canary_window_summaries;
DROP TABLE IF EXISTS bench_t0;
CREATE TABLE bench_t0 AS SELECT date_trunc('minute', now()) AS t0;
-- every 30 s for :days days, :rollouts rollouts, both cohorts, in time
-- order as the checks write them; r01 at full for the last :since days (its
-- control cohort without traffic), r02 not checked for the last :since days
-- (tripped, say)
\timing on
INSERT INTO canary_window_summaries
    (canary, at, window_seconds, stage, cohort, samples, errors, error_rate, p95_latency_ms,
     refusals, refusal_rate, thumbs_down, thumbs_down_rate, decision)
SELECT 'r' || lpad(r::text, 2, '0'), b.t0 - :days * interval '1 day' + s * interval '30 seconds', 300,
       CASE WHEN r = 1 AND s >= (:days - :since) * 2880 THEN 'full' ELSE 'ramp_25' END, c,
       CASE WHEN c = 'control' AND r = 1 AND s >= (:days - :since) * 2880 THEN 0 ELSE 100 END,
       1, 0.01, 900, 1, 0.01, 2, 0.02,
       CASE WHEN c = 'canary' THEN '{"trip": null, "rules": {}, "check_lock": true}'::jsonb END
  FROM bench_t0 b, generate_series(0, :days * 2880 - 1) s, generate_series(1, :rollouts) r,
       unnest(ARRAY['canary', 'control']) c
 WHERE NOT (r = 2 AND s >= (:days - :since) * 2880)
 ORDER BY s, r, c;
-- what ALTER EXTENSION UPDATE adds to an upgrade (98_periodic_lookups.sql)
DROP INDEX canary_window_summaries_baseline_idx;
CREATE INDEX canary_window_summaries_baseline_idx ON canary_window_summaries (canary, at)
    WHERE cohort = 'control' AND samples > 0;
\timing off
VACUUM ANALYZE canary_window_summaries;
SELECT count(*) AS summaries, pg_size_pretty(pg_total_relation_size('canary_window_summaries')) AS size
  FROM canary_window_summaries;

-- EXPLAIN (ANALYZE, BUFFERS) of a statement, three times: the median
-- execution time, the buffers of that run, the index it scans
CREATE OR REPLACE FUNCTION pg_temp.measure(q text, OUT ms numeric, OUT buffers bigint, OUT index text)
LANGUAGE plpgsql AS $$
DECLARE
    j json;
    runs numeric[] := '{}';
BEGIN
    FOR i IN 1..3 LOOP
        EXECUTE 'EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ' || q INTO j;
        runs := runs || round((j->0->>'Execution Time')::numeric, 3);
    END LOOP;
    ms := (SELECT x FROM unnest(runs) x ORDER BY x OFFSET 1 LIMIT 1);
    buffers := (j->0->'Plan'->>'Shared Hit Blocks')::bigint + (j->0->'Plan'->>'Shared Read Blocks')::bigint;
    index := substring(j::text from '"Index Name": "([^"]+)"');
END $$;

CREATE TEMP TABLE lookups (n int, lookup text, plan text, version text, sql text);
INSERT INTO lookups VALUES
 (1, 'baseline r01 (LastControlBaseline)', 'custom', 'before',
  $q$SELECT samples, errors, refusals, thumbs_down, p95_latency_ms, at FROM canary_window_summaries
     WHERE canary = 'r01' AND cohort = 'control' AND samples > 0 AND at <= '$T0' ORDER BY at DESC LIMIT 1$q$),
 (1, 'baseline r01 (LastControlBaseline)', 'custom', 'after',
  $q$SELECT samples, errors, refusals, thumbs_down, p95_latency_ms, at FROM canary_window_summaries
     WHERE canary >= 'r01' AND canary <= 'r01' AND cohort = 'control' AND samples > 0
       AND at <= '$T0' ORDER BY canary DESC, at DESC LIMIT 1$q$),
 (2, 'baseline r01 (LastControlBaseline)', 'generic', 'before',
  $q$SELECT samples, errors, refusals, thumbs_down, p95_latency_ms, at FROM canary_window_summaries
     WHERE canary = $1 AND cohort = 'control' AND samples > 0 AND at <= $2 ORDER BY at DESC LIMIT 1$q$),
 (2, 'baseline r01 (LastControlBaseline)', 'generic', 'after',
  $q$SELECT samples, errors, refusals, thumbs_down, p95_latency_ms, at FROM canary_window_summaries
     WHERE canary >= $1 AND canary <= $1 AND cohort = 'control' AND samples > 0
       AND at <= $2 ORDER BY canary DESC, at DESC LIMIT 1$q$),
 (3, 'last decision r02 (CheckBlind, TripDeferredAlerted)', 'custom', 'before',
  $q$SELECT w.at, w.decision FROM canary_window_summaries w
     WHERE w.canary = 'r02' AND w.cohort = 'canary' AND w.at <= '$T0' ORDER BY w.at DESC, w.id DESC LIMIT 1$q$),
 (3, 'last decision r02 (CheckBlind, TripDeferredAlerted)', 'custom', 'after',
  $q$SELECT w.at, w.decision FROM canary_window_summaries w
     WHERE w.canary >= 'r02' AND w.canary <= 'r02' AND w.cohort = 'canary' AND w.at <= '$T0'
     ORDER BY w.canary DESC, w.at DESC, w.id DESC LIMIT 1$q$),
 (4, 'last decision r02 (canary_plan_gates)', 'generic', 'before',
  $q$SELECT w.decision FROM canary_window_summaries w
     WHERE w.canary = $1 AND w.cohort = 'canary' AND w.at <= $2 ORDER BY w.at DESC, w.id DESC LIMIT 1$q$),
 (4, 'last decision r02 (canary_plan_gates)', 'generic', 'after',
  $q$SELECT w.decision FROM canary_window_summaries w
     WHERE w.canary >= $1 AND w.canary <= $1 AND w.cohort = 'canary' AND w.at <= $2
     ORDER BY w.canary DESC, w.at DESC, w.id DESC LIMIT 1$q$);
UPDATE lookups SET sql = replace(sql, '$T0', (SELECT t0::text FROM bench_t0));

CREATE TEMP TABLE results (n int, lookup text, plan text, version text, ms numeric, buffers bigint, index text);
-- after: the statements now; before: the statements of 1.1 before the
-- fix, without the baseline index (dropped for them)
CREATE OR REPLACE FUNCTION pg_temp.run(p_version text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    l record;
    m record;
BEGIN
    FOR l IN SELECT * FROM lookups WHERE version = p_version ORDER BY n LOOP
        IF l.plan = 'generic' THEN
            PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
            EXECUTE format('PREPARE bench_q%s(text, timestamptz) AS %s', l.n, l.sql);
            m := pg_temp.measure(format('EXECUTE bench_q%s(%L, %L)', l.n,
                                        CASE WHEN l.n = 2 THEN 'r01' ELSE 'r02' END,
                                        (SELECT t0 FROM bench_t0)));
            EXECUTE format('DEALLOCATE bench_q%s', l.n);
            PERFORM set_config('plan_cache_mode', 'auto', true);
        ELSE
            m := pg_temp.measure(l.sql);
        END IF;
        INSERT INTO results VALUES (l.n, l.lookup, l.plan, p_version, m.ms, m.buffers, m.index);
    END LOOP;
END $$;
SELECT pg_temp.run('after');
DROP INDEX canary_window_summaries_baseline_idx;
SELECT pg_temp.run('before');

SELECT b.lookup, b.plan, b.ms AS before_ms, b.buffers AS before_buffers, b.index AS before_index,
       a.ms AS after_ms, a.buffers AS after_buffers, a.index AS after_index,
       round(b.ms / nullif(a.ms, 0)) AS ratio
  FROM results b JOIN results a ON a.n = b.n AND a.version = 'after'
 WHERE b.version = 'before' ORDER BY b.n;
