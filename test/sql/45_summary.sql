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

SELECT * FROM canary_summary('prom', '1 hour');

-- bad input
SELECT * FROM canary_summary('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_summary('prom', NULL);
\echo :LAST_ERROR_SQLSTATE
