-- Reading the metrics: canary_summary per cohort.  Traffic is recorded
-- through the real metrics queue with known latencies, outcomes and tokens;
-- 46_prometheus reads the same rows (rollout "prom").
\set SHOW_CONTEXT never
SET TIME ZONE 'UTC';
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('prom', 'ramp_25', 'model-old', 'model-new');
-- control: 8 attempts, latencies 100..800, one refusal, tokens 10 each
SELECT count(canary_record(canary => 'prom', user_id => 'c' || i, model => 'model-old', cohort => 'control',
                           outcome => CASE WHEN i = 8 THEN 'refusal' ELSE 'ok' END, latency_ms => 100 * i,
                           completion_tokens => 10, prompt_tokens => 5, ts => now() - interval '1 minute'))
  FROM generate_series(1, 8) i;
-- canary: 4 attempts, one timeout, latencies 50, 600, 3000, 40000; tokens 100
SELECT count(canary_record(canary => 'prom', user_id => 'n' || i, model => 'model-new', cohort => 'canary',
                           outcome => CASE WHEN i = 4 THEN 'timeout' ELSE 'ok' END,
                           latency_ms => (ARRAY[50, 600, 3000, 40000])[i],
                           completion_tokens => CASE WHEN i < 4 THEN 100 END, ts => now() - interval '1 minute'))
  FROM generate_series(1, 4) i;
SELECT canary_flush() > 0 AS flushed;
SELECT count(canary_feedback(request_id, true)) AS thumbs_down
  FROM canary_requests WHERE canary = 'prom' AND user_id IN ('n1', 'c1');
-- verdicts reach the rollups once folded (by the worker within flush_interval_ms)
SELECT canary_feedback_fold() >= 0 AS folded;
DO $$ BEGIN FOR i IN 1 .. 200 LOOP EXIT WHEN NOT EXISTS (SELECT 1 FROM canary_feedback_pending); PERFORM pg_sleep(0.05); END LOOP; END $$;

SELECT * FROM canary_summary('prom', '1 hour');

-- rows loaded by hand (a backfill from the team's own logs) that leave out
-- fallback and cached count like the worker's rows, in the summary and in
-- the CSAT report: both columns are NOT NULL and default to false
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('imported', 'ramp_25', 'model-old', 'model-new');
INSERT INTO canary_requests (request_id, ts, canary, user_id, cohort, model, outcome, latency_ms) VALUES
    ('00000000-0000-4000-8000-0000000000a1', now(), 'imported', 'imp1', 'control', 'model-old', 'ok', 100),
    ('00000000-0000-4000-8000-0000000000a2', now(), 'imported', 'imp2', 'canary', 'model-new', 'ok', 200);
SELECT cohort, model, requests, fallbacks FROM canary_summary('imported');
INSERT INTO canary_csat (user_id, score, recorded_at) VALUES ('imp1', 4, now()), ('imp2', 2, now());
SELECT cohort, responses, mean_csat, delta_vs_control FROM canary_csat_report('imported', 1);
-- an explicit NULL is refused instead of vanishing from every report
\set VERBOSITY terse
INSERT INTO canary_requests (request_id, ts, canary, cohort, model, outcome, fallback)
VALUES ('00000000-0000-4000-8000-0000000000a3', '2030-06-01 00:00:00+00', 'imported', 'control', 'model-old', 'ok', NULL);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
DELETE FROM canary_csat WHERE user_id IN ('imp1', 'imp2');
DELETE FROM canary_requests WHERE canary = 'imported';
DELETE FROM canary_config WHERE name = 'imported';

-- bad input (every report checks its rollout and window the same way:
-- canary_report_window)
SELECT * FROM canary_summary('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_summary('prom', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_summary('prom', '-1 hour');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_summary(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_csat_report('nope');
\echo :LAST_ERROR_SQLSTATE
