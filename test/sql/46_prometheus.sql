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
SELECT canary, last_check > now() - interval '1 minute' AS checked, age_seconds BETWEEN 0 AND 60 AS recent,
       alert_after_seconds
  FROM canary_check_age('prom');
SELECT count(*) AS not_checked_rollouts FROM canary_check_age('nope');
SELECT cohort, samples, error_rate, error_bar, p95_latency_ms, p95_bar, refusal_rate, refusal_bar
  FROM canary_timeline('prom', '1 hour') ORDER BY at, cohort;

-- bad input
SELECT * FROM canary_timeline('nope');
\echo :LAST_ERROR_SQLSTATE

-- canary_check_age probes canary_window_summaries_idx once per rollout, one
-- backward scan stopping at the first row: not canary_window_summaries_at_idx
-- walked back from now and filtered on canary (the planner's choice for
-- "canary = name ORDER BY at DESC" when the rollouts' summaries interleave),
-- which reads every summary since a stalled rollout's last check.  50,000
-- summaries of four rollouts checked every 15 s, and one checked 30 days
-- ago; the function's own text, planned as the function plans it (generic).
-- Likewise the start of each rollout's checkable spell, one backward scan
-- of canary_stage_history_canary_idx: 20,000 history rows of earlier
-- spells (trips and re-arms 40 days ago and before); probe6, never
-- checked, re-armed 3 days ago, then 100 changes of percent_new (no new
-- spell) up to a day ago, ages from its re-arm
INSERT INTO canary_config (name, stage, old_model, new_model)
SELECT 'probe' || g, 'ramp_5', 'model-old', 'model-new' FROM generate_series(1, 6) g;
UPDATE canary_stage_history SET changed_at = now() - interval '50 days' WHERE canary LIKE 'probe%';
INSERT INTO canary_stage_history (canary, changed_at, action, old_stage, new_stage, old_armed, new_armed)
SELECT 'probe' || (1 + g % 6), now() - interval '40 days' - g * interval '1 minute',
       CASE WHEN g % 12 < 6 THEN 'rearm' ELSE 'trip' END, 'ramp_5', 'ramp_5', g % 12 >= 6, g % 12 < 6
  FROM generate_series(1, 20000) g
UNION ALL
SELECT 'probe6', now() - interval '3 days', 'rearm', 'ramp_5', 'ramp_5', false, true
UNION ALL
SELECT 'probe6', now() - interval '3 days' + g * interval '20 minutes', 'update', 'ramp_5', 'ramp_5', true, true
  FROM generate_series(1, 100) g;
ANALYZE canary_stage_history;
INSERT INTO canary_window_summaries (canary, at, window_seconds, stage, cohort, samples, errors, refusals, thumbs_down)
SELECT 'probe' || (1 + g % 4), now() - (g / 4) * interval '15 seconds', 300, 'ramp_5',
       CASE WHEN g % 2 = 0 THEN 'canary' ELSE 'control' END, 100, 1, 1, 1
  FROM generate_series(1, 50000) g
UNION ALL
SELECT 'probe5', now() - interval '30 days' - g * interval '30 seconds', 300, 'ramp_5', 'canary', 1, 0, 0, 0
  FROM generate_series(1, 100) g;
ANALYZE canary_window_summaries;
DO $$
BEGIN
    EXECUTE format('PREPARE check_age(text) AS %s',
                   (SELECT prosrc FROM pg_proc WHERE proname = 'canary_check_age'));
END;
$$;
SET plan_cache_mode = force_generic_plan;
EXPLAIN (COSTS OFF) EXECUTE check_age(NULL);
RESET plan_cache_mode;
DEALLOCATE check_age;
SELECT canary, last_check > now() - interval '1 minute' AS last_minute,
       floor(extract(epoch FROM now() - last_check) / 86400) AS days_ago,
       floor(age_seconds / 86400) AS age_days
  FROM canary_check_age() WHERE canary LIKE 'probe%';
DELETE FROM canary_window_summaries WHERE canary LIKE 'probe%';
DELETE FROM canary_config WHERE name LIKE 'probe%';
DELETE FROM canary_stage_history WHERE canary LIKE 'probe%';
