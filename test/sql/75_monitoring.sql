-- Reading the metrics: canary_summary per cohort, the Prometheus export,
-- and the timeline of window summaries.  Traffic is recorded through the real
-- metrics queue with known latencies, outcomes and tokens.
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

-- every line is a comment or "name{labels} value"
SELECT count(*) AS lines,
       count(*) FILTER (WHERE l !~ '^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.]+(e[+-]?[0-9]+)?)$') AS malformed
  FROM regexp_split_to_table(rtrim(canary_prometheus('prom'), E'\n'), E'\n') l;
SELECT l AS series
  FROM regexp_split_to_table(rtrim(canary_prometheus('prom'), E'\n'), E'\n') l
 WHERE l !~ '^#' AND l !~ '^llm_canary_(queue|metrics|worker)'
   AND (l !~ '_bucket' OR l ~ 'le="(128|512|1024|\+Inf)"');

-- the timeline of two checks, with bars
SELECT canary_check('prom', now() - interval '30 seconds') IS NULL AS not_tripped_yet;
SELECT canary_check('prom') IS NULL AS not_tripped;
SELECT cohort, samples, error_rate, error_bar, p95_latency_ms, p95_bar, refusal_rate, refusal_bar
  FROM canary_timeline('prom', '1 hour') ORDER BY at, cohort;

-- bad input
SELECT * FROM canary_summary('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_summary('prom', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_timeline('nope');
\echo :LAST_ERROR_SQLSTATE
