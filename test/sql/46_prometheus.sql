-- Monitoring: the Prometheus export and the timeline of window summaries,
-- over the rows 45_summary recorded for the rollout "prom".
\set SHOW_CONTEXT never
SET TIME ZONE 'UTC';
-- every line is a comment or "name{labels} value"
SELECT count(*) AS lines,
       count(*) FILTER (WHERE l !~ '^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.]+(e[+-]?[0-9]+)?)$') AS malformed
  FROM regexp_split_to_table(rtrim(canary_prometheus('prom'), E'\n'), E'\n') l;
-- (the age of the last check, a time, as its name)
SELECT CASE WHEN l ~ '^llm_canary_check_age_seconds' THEN regexp_replace(l, ' [0-9.]+$', ' (age)') ELSE l END AS series
  FROM regexp_split_to_table(rtrim(canary_prometheus('prom'), E'\n'), E'\n') l
 WHERE l !~ '^#' AND l !~ '^llm_canary_(queue|metrics|worker)'
   AND (l !~ '_bucket' OR l ~ 'le="(128|512|1024|\+Inf)"');

-- the timeline of two checks, with bars
SELECT canary_check('prom', now() - interval '30 seconds') IS NULL AS not_tripped_yet;
SELECT canary_check('prom') IS NULL AS not_tripped;
-- the age of the last check: the check just made
SELECT canary, last_check > now() - interval '1 minute' AS checked, age_seconds BETWEEN 0 AND 60 AS recent
  FROM canary_check_age('prom');
SELECT count(*) AS not_checked_rollouts FROM canary_check_age('nope');
SELECT cohort, samples, error_rate, error_bar, p95_latency_ms, p95_bar, refusal_rate, refusal_bar
  FROM canary_timeline('prom', '1 hour') ORDER BY at, cohort;

-- bad input
SELECT * FROM canary_timeline('nope');
\echo :LAST_ERROR_SQLSTATE
