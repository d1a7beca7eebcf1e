-- The slow signal: CSAT (sql/parts/51_csat.sql).  canary_csat_report joins
-- the scores to the cohorts; canary_csat_check pins a rollout at 0 percent
-- when the canary's CSAT is csat_drop below control on each day of the last
-- csat_sustain.  mk() is 50_killswitch's.
\set SHOW_CONTEXT never
SET TIME ZONE 'UTC';
-- canary users 1.5 vs control 4.5 on each of the last two days -> pinned at 0
SELECT mk('ks_csat');
UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'ks_csat';
SELECT count(canary_record(canary => 'ks_csat', user_id => c || '_' || i, model => 'm', cohort => c,
                           outcome => 'ok', latency_ms => 100,
                           ts => date_trunc('day', now()) - make_interval(days => d) + interval '1 hour'))
  FROM generate_series(1, 2) d, generate_series(1, 10) i, unnest(ARRAY['canary', 'control']) c;
SELECT canary_flush() > 0 AS flushed;
INSERT INTO canary_csat (user_id, score, recorded_at)
SELECT c || '_' || i, CASE c WHEN 'canary' THEN 1.5 ELSE 4.5 END,
       date_trunc('day', now()) - make_interval(days => d) + interval '2 hours'
  FROM generate_series(1, 2) d, generate_series(1, 10) i, unnest(ARRAY['canary', 'control']) c;
SELECT day = current_date - 2 AS two_days_ago, cohort, responses, mean_csat, delta_vs_control, drop_rule_holds
  FROM canary_csat_report('ks_csat', 3) WHERE day < current_date ORDER BY day, cohort;
SELECT canary_csat_check('ks_csat') IS NOT NULL AS pinned;
SELECT stage, percent_new, csat_pinned_at IS NOT NULL AS pinned FROM canary_config WHERE name = 'ks_csat';
SELECT payload->>'alert' AS alert FROM canary_alerts WHERE canary = 'ks_csat';
-- a small drop (1 point) does not pin
SELECT mk('ks_csat_ok');
UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'ks_csat_ok';
SELECT count(canary_record(canary => 'ks_csat_ok', user_id => 'ok' || c || '_' || i, model => 'm', cohort => c,
                           outcome => 'ok', latency_ms => 100,
                           ts => date_trunc('day', now()) - make_interval(days => d) + interval '1 hour'))
  FROM generate_series(1, 2) d, generate_series(1, 10) i, unnest(ARRAY['canary', 'control']) c;
SELECT canary_flush() > 0 AS flushed;
INSERT INTO canary_csat (user_id, score, recorded_at)
SELECT 'ok' || c || '_' || i, CASE c WHEN 'canary' THEN 3.5 ELSE 4.5 END,
       date_trunc('day', now()) - make_interval(days => d) + interval '2 hours'
  FROM generate_series(1, 2) d, generate_series(1, 10) i, unnest(ARRAY['canary', 'control']) c;
SELECT canary_csat_check('ks_csat_ok') IS NULL AS not_pinned;
SELECT percent_new FROM canary_config WHERE name = 'ks_csat_ok';
-- the fleet's CSAT feed: a standalone database keeps none (the rows above
-- wrote nothing), and canary_maintenance expires its days with the raw
-- partitions (llm_canary.retention_days, 30 by default)
SELECT count(*) AS feed_rows FROM canary_csat_user_days;
INSERT INTO canary_csat_user_days (day, canary, member, user_id, cohort)
SELECT current_date - d, 'ks_csat', 'm1', 'u' || d, 'canary' FROM unnest(ARRAY[29, 30, 31, 40]) d;
SELECT action, moved_rows FROM canary_maintenance(0) WHERE partition = 'canary_csat_user_days';
SELECT current_date - day AS days_ago FROM canary_csat_user_days ORDER BY day;
DELETE FROM canary_csat_user_days;
