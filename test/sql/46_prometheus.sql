-- Monitoring: the Prometheus export and the timeline of window summaries,
-- over the rows 45_summary recorded for the rollout "prom".
\set SHOW_CONTEXT never
SET TIME ZONE 'UTC';
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
SELECT * FROM canary_timeline('nope');
\echo :LAST_ERROR_SQLSTATE
