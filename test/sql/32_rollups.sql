-- Rollups: the histograms' error bound, the triggers that keep
-- canary_rollups equal to a recount of the raw rows whoever writes them,
-- canary_rollup_rebuild, retention, and malformed histograms.
\set SHOW_CONTEXT never
SET TIME ZONE 'UTC';

-- exact from 0 to 64; above, every quantile within 1/64 of percentile_cont
WITH dists AS (
    SELECT 'small' AS dist, g % 65 AS v FROM generate_series(1, 5000) g
    UNION ALL
    SELECT 'uniform', (hashtext('u' || g) & 1048575) FROM generate_series(1, 20000) g
    UNION ALL
    SELECT 'exponential', round(400 - 600 * ln(1 - ((hashtext('e' || g) & 1048575) + 0.5) / 1048576.0))::int
      FROM generate_series(1, 20000) g
    UNION ALL
    SELECT 'wide', round(exp(((hashtext('w' || g) & 1048575) / 1048576.0) * 21))::int
      FROM generate_series(1, 20000) g
    UNION ALL
    SELECT 'two values', CASE WHEN g % 2 = 0 THEN 70 ELSE 90000 END FROM generate_series(1, 101) g
), qs AS (
    SELECT unnest(ARRAY[0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1]) AS q
), cmp AS (
    SELECT d.dist, qs.q,
           (SELECT percentile_cont(qs.q) WITHIN GROUP (ORDER BY v) FROM dists x WHERE x.dist = d.dist) AS exact,
           canary_hist_quantile((SELECT canary_hist_agg(v) FROM dists x WHERE x.dist = d.dist), qs.q) AS approx
      FROM (SELECT DISTINCT dist FROM dists) d, qs
)
SELECT dist, count(*) AS quantiles,
       max(abs(approx - exact) / greatest(exact, 1)) <= 1 / 64.0 AS within_bound,
       bool_and(approx = exact OR exact > 64) AS exact_to_64
  FROM cmp GROUP BY dist ORDER BY dist;

-- the Prometheus buckets: 98 bounds, counts exact at each bound
SELECT cardinality(canary_hist_le()) AS bounds, (canary_hist_le())[1:12] AS first_bounds,
       (canary_hist_le())[98] AS last_bound;
WITH v AS (SELECT (hashtext('p' || g) & 262143) AS v FROM generate_series(1, 10000) g)
SELECT bool_and(c.n = (SELECT count(*) FROM v WHERE v.v <= c.le)) AS cumulative_exact
  FROM unnest(canary_hist_le(), canary_hist_cumulative((SELECT canary_hist_agg(v) FROM v))) AS c(le, n);

-- merging and counting
SELECT canary_hist_agg(v) AS hist FROM unnest(ARRAY[0, 5, 5, 64, 65, 66, 67, 1000, NULL]) v;
SELECT canary_hist_merge('{5,2,65,1}', '{5,1,100,3}') AS merged,
       canary_hist_sum(h) AS summed
  FROM (VALUES ('{5,2,65,1}'::int8[]), ('{5,1,100,3}'), (NULL)) t(h);
SELECT canary_hist_count_over('{5,2,64,1,65,1}', 64) AS over_64, canary_hist_count_over('{5,2,64,1,65,1}', 4) AS over_4,
       canary_hist_quantile('{}', 0.5) AS empty;

-- malformed histograms are refused, never read out of bounds
SELECT canary_hist_quantile('{1,2,3}', 0.5);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_hist_quantile('{900,1}', 0.5);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_hist_merge('{1,-1}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_hist_merge('{{1,1}}', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_hist_quantile('{1,1}', 1.5);
\echo :LAST_ERROR_SQLSTATE

-- buckets: (end - 30 s, end]
SELECT canary_rollup_bucket('2026-01-01 00:00:30+00') AS on_boundary,
       canary_rollup_bucket('2026-01-01 00:00:30.000001+00') AS just_after,
       canary_rollup_bucket('2026-01-01 00:00:00.5+00') AS first_half;

-- a backfill written straight into canary_requests (INSERT and COPY) and
-- verdicts on it reach the rollups in the same statement
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('rolls', 'ramp_25', 'model-old', 'model-new');
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms,
                             completion_tokens, prompt_tokens, refusal, fallback, cost)
SELECT ('00000000-0000-0000-0076-' || lpad(g::text, 12, '0'))::uuid,
       timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => g), 'rolls', 'ramp_25', 'u' || g,
       CASE WHEN g % 4 = 0 THEN 'canary' ELSE 'control' END,
       CASE WHEN g % 4 = 0 THEN 'model-new' ELSE 'model-old' END,
       (ARRAY['ok', 'ok', 'ok', 'refusal', 'error', 'timeout'])[1 + g % 6], 50 + (g * 37) % 2000,
       CASE WHEN g % 5 <> 0 THEN g % 300 END, 10, g % 6 = 3, g % 9 = 0, 0.001
  FROM generate_series(1, 600) g;
COPY canary_requests (request_id, ts, canary, cohort, model, outcome, latency_ms, fallback) FROM stdin;
00000000-0000-0000-0076-100000000001	2026-01-01 00:00:30+00	rolls	canary	model-new	ok	123	f
00000000-0000-0000-0076-100000000002	2026-01-01 00:00:30.5+00	rolls	canary	model-new	error	456	f
\.
INSERT INTO canary_feedback (request_id, ts, thumbs_down, user_id, canary, cohort, model)
SELECT request_id, now(), user_id <> 'u8', user_id, canary, cohort, model
  FROM canary_requests WHERE canary = 'rolls' AND user_id IN ('u4', 'u8', 'u12', 'u30');
-- the trigger queued them, keyed like the rollups; canary_feedback_fold (the
-- worker's, canary_check's or this one) moves them into the rollups, once
SELECT canary_feedback_fold() >= 0 AS folded;
DO $$ BEGIN FOR i IN 1 .. 200 LOOP EXIT WHEN NOT EXISTS (SELECT 1 FROM canary_feedback_pending); PERFORM pg_sleep(0.05); END LOOP; END $$;
SELECT count(*) AS pending FROM canary_feedback_pending;
SELECT bucket_end, stage, cohort, model, fallback, requests, outcome_ok, outcome_error, outcome_timeout, refusals,
       thumbs_down, verdicts, completions, latency_count, latency_sum
  FROM canary_rollups WHERE canary = 'rolls' AND bucket_end <= '2026-01-01 00:01:00+00'
 ORDER BY bucket_end, stage, cohort, fallback;
SELECT cohort, fallback, requests, outcome_ok + outcome_refusal + outcome_error + outcome_timeout AS by_outcome,
       thumbs_down, verdicts, cost
  FROM canary_rollup_totals WHERE canary = 'rolls' ORDER BY cohort, fallback;

-- the kill switch reads them: a window of whole buckets
SELECT canary_check('rolls', '2026-01-01 00:05:00+00') AS reason;
SELECT cohort, samples, errors, refusals, thumbs_down, p95_latency_ms
  FROM canary_window_summaries WHERE canary = 'rolls' ORDER BY cohort;

-- deleted raw rows leave the rollups; canary_rollup_rebuild recounts them
DELETE FROM canary_requests WHERE canary = 'rolls' AND ts <= '2026-01-01 00:01:00+00';
SELECT sum(requests) AS rolled_before_rebuild FROM canary_rollups WHERE canary = 'rolls';
SELECT canary_rollup_rebuild('2026-01-01', '2026-01-01 00:02:00+00') AS rows_in_range;
SELECT sum(requests) AS rolled_after_rebuild, sum(thumbs_down) AS thumbs_down
  FROM canary_rollups WHERE canary = 'rolls';
SELECT count(*) AS raw_rows FROM canary_requests WHERE canary = 'rolls';
SELECT sum(requests) AS totals_unchanged FROM canary_rollup_totals WHERE canary = 'rolls';

-- retention: rollups older than llm_canary.rollup_retention_days (400)
-- before today are deleted (canary_maintenance calls this; test/t tests it)
SELECT canary_rollup_maintenance(date '2027-02-05') AS deleted_day_before;
BEGIN;
SELECT canary_rollup_maintenance(date '2027-02-06') > 0 AS deleted_day_after;
SELECT count(*) AS rolls_left FROM canary_rollups WHERE canary = 'rolls';
ROLLBACK;
SELECT canary_rollup_rebuild(NULL);
\echo :LAST_ERROR_SQLSTATE

-- the rollout of this file leaves with its rows
DELETE FROM canary_window_summaries WHERE canary = 'rolls';
DELETE FROM canary_feedback WHERE canary = 'rolls';
DELETE FROM canary_requests WHERE canary = 'rolls';
DELETE FROM canary_rollups WHERE canary = 'rolls';
DELETE FROM canary_rollup_totals WHERE canary = 'rolls';
DELETE FROM canary_config WHERE name = 'rolls';
