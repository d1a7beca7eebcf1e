-- The kill switch: the four rules both ways, the noise guard, baselines at
-- full, the trip's effects, manual trip and re-arm, pg_cron jobs (CSAT:
-- 51_csat).
-- Traffic is recorded through the real metrics queue (canary_record) at
-- fixed times around T0 = 2030-01-01 12:00 UTC; canary_check runs 'at' T0.
\set SHOW_CONTEXT never
SET TIME ZONE 'UTC';
-- the window rules (decision_mode confirm_windows; the default sequential
-- mode is tested in test/t/085_decisions.pl): sections 1-7 test each rule on
-- a single window (confirm_windows = 1); section 8 the confirmation over two
CREATE FUNCTION mk(n text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows, decision_mode)
    VALUES (n, 'ramp_5', 'model-old', 'model-new', 1, 'confirm_windows')
$$;
-- n requests of a cohort, spread over the 300 s before T0; every k-th one
-- (k > 0) has the given flag; latency base + (i % spread)
CREATE FUNCTION traffic(rollout text, cohort text, n int, bad_every int, what text,
                        base int DEFAULT 100, spread int DEFAULT 100,
                        t0 timestamptz DEFAULT '2030-01-01 12:00:00+00') RETURNS void LANGUAGE sql AS $$
    SELECT count(canary_record(
               canary => rollout, user_id => cohort || '_' || i,
               model => CASE cohort WHEN 'canary' THEN 'model-new' ELSE 'model-old' END,
               cohort => cohort,
               outcome => CASE WHEN what = 'error' AND bad_every > 0 AND i % bad_every = 0 THEN 'error'
                               WHEN what = 'refusal' AND bad_every > 0 AND i % bad_every = 0 THEN 'refusal'
                               ELSE 'ok' END,
               latency_ms => base + (i % spread),
               ts => t0 - make_interval(secs => (i % 290) + 1),
               refusal => what = 'refusal' AND bad_every > 0 AND i % bad_every = 0))
      FROM generate_series(1, n) i
$$;
\set T0 '''2030-01-01 12:00:00+00'''

-- 1. error rate: 10 errors in 200 (0.050) trips; exact binomial p ~ 0.005
SELECT mk('ks_err');
SELECT traffic('ks_err', 'control', 1000, 0, 'ok'), traffic('ks_err', 'canary', 200, 20, 'error');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_err', :T0);

-- 2. noise guard: 3 errors in 100 (0.030 > 0.02) is not credible (p ~ 0.32) ...
SELECT mk('ks_noise');
SELECT traffic('ks_noise', 'control', 1000, 0, 'ok'), traffic('ks_noise', 'canary', 100, 33, 'error');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_noise', :T0) IS NULL AS not_tripped;
-- ... but trips with the article's raw comparison
UPDATE canary_config SET raw_rules = true WHERE name = 'ks_noise';
SELECT canary_check('ks_noise', :T0);
-- and 10 errors in 50 (20%) never trips below min_samples (100)
SELECT mk('ks_few');
SELECT traffic('ks_few', 'control', 1000, 0, 'ok'), traffic('ks_few', 'canary', 50, 5, 'error');
SELECT canary_flush() > 0 AS flushed;
UPDATE canary_config SET raw_rules = true WHERE name = 'ks_few';
SELECT canary_check('ks_few', :T0) IS NULL AS not_tripped;

-- 3. p95: control 100..199 ms (p95 ~ 194), canary 300..399 ms trips
SELECT mk('ks_p95');
SELECT traffic('ks_p95', 'control', 1000, 0, 'ok'), traffic('ks_p95', 'canary', 200, 0, 'ok', 300);
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_p95', :T0);
-- a canary only 20% slower does not
SELECT mk('ks_p95_ok');
SELECT traffic('ks_p95_ok', 'control', 1000, 0, 'ok'), traffic('ks_p95_ok', 'canary', 200, 0, 'ok', 120);
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_p95_ok', :T0) IS NULL AS not_tripped;

-- 4. refusals: the article's trip, canary 45 of 500 (0.090) vs control 10 of 1000
--    (0.010); z = 2.30 with the Agresti-Caffo adjustment, p = 0.011
SELECT mk('ks_ref');
SELECT traffic('ks_ref', 'control', 1000, 91, 'refusal'), traffic('ks_ref', 'canary', 500, 11, 'refusal');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_ref', :T0);
-- control 0.011 vs canary 0.040: within the 0.05 delta
SELECT mk('ks_ref_ok');
SELECT traffic('ks_ref_ok', 'control', 1000, 91, 'refusal'), traffic('ks_ref_ok', 'canary', 200, 25, 'refusal');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_ref_ok', :T0) IS NULL AS not_tripped;

-- 5. thumbs-down: canary 30 of 200 (0.150) vs control 50 of 1000 (0.050): 3x
SELECT mk('ks_thumbs');
SELECT traffic('ks_thumbs', 'control', 1000, 0, 'ok'), traffic('ks_thumbs', 'canary', 200, 0, 'ok');
SELECT canary_flush() > 0 AS flushed;
SELECT count(canary_feedback(request_id, true)) FROM (
    SELECT request_id, row_number() OVER (PARTITION BY cohort ORDER BY user_id) AS rn, cohort
      FROM canary_requests WHERE canary = 'ks_thumbs') s
 WHERE (cohort = 'canary' AND rn <= 30) OR (cohort = 'control' AND rn <= 50);
SELECT canary_check('ks_thumbs', :T0);

-- every check stored both cohorts' summaries
SELECT canary, cohort, samples, errors, round(error_rate::numeric, 3) AS error_rate,
       refusals, thumbs_down, round(p95_latency_ms::numeric) AS p95
  FROM canary_window_summaries WHERE canary IN ('ks_err', 'ks_ref', 'ks_thumbs')
 ORDER BY canary, cohort;

-- the trip's effects: switch, history, alert payload, routing
SELECT name, kill_switch_armed, trip_reason, tripped_at IS NOT NULL AS has_trip_time
  FROM canary_config WHERE name = 'ks_ref';
SELECT action, old_armed, new_armed, reason FROM canary_stage_history
 WHERE canary = 'ks_ref' ORDER BY id DESC LIMIT 1;
SELECT payload - 'ts' AS payload, payload->>'ts' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$' AS ts_iso
  FROM canary_alerts WHERE canary = 'ks_ref';
SELECT count(*) FILTER (WHERE canary_cohort('u_' || g, 'ks_ref') = 'canary') AS canary_users_after_trip
  FROM generate_series(1, 2000) g;
-- a tripped rollout is not checked again
SELECT canary_check('ks_ref', :T0) IS NULL AS skipped;

-- 6. full, ten minutes later: no control traffic in the window, so the
--    baselines come from the last control summary (T0: 10 refusals in 1000);
--    the canary refuses 60 of 300 (0.200)
UPDATE canary_config SET stage = 'full' WHERE name = 'ks_ref_ok';
SELECT traffic('ks_ref_ok', 'canary', 300, 5, 'refusal', t0 => timestamptz '2030-01-01 12:10:00+00');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_ref_ok', timestamptz '2030-01-01 12:10:00+00');
SELECT cohort, samples, refusals, baseline_from FROM canary_window_summaries
 WHERE canary = 'ks_ref_ok' ORDER BY id DESC LIMIT 2;
-- missing data never trips: a new rollout at full without any history
SELECT mk('ks_nobase');
UPDATE canary_config SET stage = 'full' WHERE name = 'ks_nobase';
SELECT traffic('ks_nobase', 'canary', 300, 2, 'refusal');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_nobase', :T0) IS NULL AS not_tripped;

-- 7. manual trip, re-arm
SELECT canary_trip('ks_p95_ok', 'rehearsal in a quiet hour') - 'ts' AS payload;
SELECT canary_trip('ks_p95_ok', 'again');
SELECT canary_rearm('ks_p95_ok');
SELECT action, reason FROM canary_stage_history WHERE canary = 'ks_p95_ok' ORDER BY id DESC LIMIT 2;
SELECT kind, count(*) FROM canary_alerts WHERE canary LIKE 'ks\_%' GROUP BY kind ORDER BY kind;

-- bad input
SELECT canary_check('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_check(NULL, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_trip('nope', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_trip('ks_err', '');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_rearm('nope');
\echo :LAST_ERROR_SQLSTATE

-- 8. confirmation (confirm_windows = 2 by default): a breach must also
--    hold in the window before, so a single noisy window does not trip
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode)
VALUES ('ks_confirm', 'ramp_5', 'model-old', 'model-new', 'confirm_windows');
SELECT confirm_windows FROM canary_config WHERE name = 'ks_confirm';
SELECT traffic('ks_confirm', 'control', 1000, 0, 'ok'), traffic('ks_confirm', 'canary', 200, 20, 'error');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_confirm', :T0) IS NULL AS one_window_is_not_enough;
-- the same breach in the window before (T0 - 300 s): now it trips
SELECT traffic('ks_confirm', 'control', 1000, 0, 'ok', t0 => timestamptz '2030-01-01 11:55:00+00'),
       traffic('ks_confirm', 'canary', 200, 20, 'error', t0 => timestamptz '2030-01-01 11:55:00+00');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_confirm', :T0);
-- a breach of another rule in the window before does not confirm
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode)
VALUES ('ks_confirm2', 'ramp_5', 'model-old', 'model-new', 'confirm_windows');
SELECT traffic('ks_confirm2', 'control', 1000, 0, 'ok'), traffic('ks_confirm2', 'canary', 200, 20, 'error');
SELECT traffic('ks_confirm2', 'control', 1000, 91, 'refusal', t0 => timestamptz '2030-01-01 11:55:00+00'),
       traffic('ks_confirm2', 'canary', 500, 11, 'refusal', t0 => timestamptz '2030-01-01 11:55:00+00');
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('ks_confirm2', :T0) IS NULL AS different_rules_do_not_confirm;
UPDATE canary_config SET confirm_windows = 0 WHERE name = 'ks_confirm2';
\echo :LAST_ERROR_SQLSTATE

-- 9. pg_cron in the same database: scheduling is idempotent
CREATE EXTENSION pg_cron;
SELECT * FROM canary_schedule();
SELECT count(*) FROM canary_schedule();
SELECT jobname, schedule FROM cron.job ORDER BY jobname;
SELECT canary_unschedule();
SELECT count(*) AS jobs_left FROM cron.job;
DROP EXTENSION pg_cron;
SELECT canary_schedule();
\echo :LAST_ERROR_SQLSTATE
