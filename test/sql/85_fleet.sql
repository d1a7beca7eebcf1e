-- The fleet's SQL surface on a standalone database (the default role).  The
-- fleet itself (three clusters, logical replication) is test/t/100_fleet.pl.
\set VERBOSITY default
\set SHOW_CONTEXT never

-- a standalone database: no member name, never fails safe
SELECT role, member, heard_at, lag_ms, fail_safe, fail_safe_routes FROM canary_fleet_local();
SELECT canary_fleet_prometheus() = '' AS no_fleet_metrics;
SELECT * FROM canary_fleet();

-- publishing and joining need a role
SELECT canary_fleet_publish();
SELECT canary_fleet_join();

-- the standalone database writes its configuration as always
UPDATE canary_config SET salt = salt WHERE name = 'default';

-- the fleet's triggers: guards fire for local writes (origin), cache
-- invalidation and the heartbeat stamp only for rows the subscription
-- applies (replica)
SELECT tgrelid::regclass::text AS "table", tgname, tgenabled
  FROM pg_trigger
 WHERE tgname LIKE '%fleet%' AND NOT tgisinternal
 ORDER BY 1, 2;

-- what a member's worker reports, and what canary_fleet makes of it
SELECT canary_fleet_report('m-test', now(), false, 0);
SELECT member, fail_safe, routing ? 'default' AS routes_default FROM canary_fleet_members;
SELECT member, state, reported_at IS NOT NULL AS reported FROM canary_fleet();
DELETE FROM canary_fleet_members;

-- the combined rollups: a standalone database is no control, reads
-- canary_rollups through the views and keeps no combined rows
SELECT canary_fleet_is_control();
INSERT INTO canary_rollups (canary, bucket_end, stage, cohort, model, fallback, cached, requests, latency_hist)
VALUES ('default', '2026-01-01 00:00:30+00', 'ramp_1', 'canary', 'n', false, false, 3, '{5,3}');
SELECT canary, requests, latency_hist FROM canary_rollup_source WHERE bucket_end = '2026-01-01 00:00:30+00';
SELECT count(*) AS combined_rows FROM canary_fleet_rollups;
DELETE FROM canary_rollups WHERE bucket_end = '2026-01-01 00:00:30+00';
SELECT canary_fleet_combine('-infinity');
-- the old histogram taken out of a row, never below zero
SELECT canary_hist_subtract('{5,3,70,4}', '{5,1,70,9,80,2}') AS less,
       canary_hist_subtract('{5,3}', NULL) AS less_nothing,
       canary_hist_subtract(NULL, '{5,3}') AS from_nothing;
-- a histogram the histogram functions refuse is refused where it is
-- written (23514), so it never reaches the control's combine trigger
SELECT canary_hist_valid('{}') AS empty, canary_hist_valid('{5,3,70,4}') AS valid,
       canary_hist_valid('{5}') AS odd, canary_hist_valid('{5,-1}') AS negative,
       canary_hist_valid('{-1,1}') AS bucket_low, canary_hist_valid('{100000,1}') AS bucket_high,
       canary_hist_valid('{5,NULL}') AS null_count, canary_hist_valid('{{5,1},{6,1}}') AS two_dims;
DO $$
BEGIN
    INSERT INTO canary_rollups (canary, bucket_end, stage, cohort, model, fallback, cached, requests, latency_hist)
    VALUES ('default', '2026-01-01 00:00:30+00', 'ramp_1', 'canary', 'n', false, false, 3, '{5,-3}');
    RAISE NOTICE 'not refused';
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'canary_rollups refused: %', SQLERRM;
END $$;
DO $$
BEGIN
    INSERT INTO canary_rollup_totals (canary, model, cohort, fallback, tokens_hist)
    VALUES ('default', 'n', 'canary', false, '{5,3,6}');
    RAISE NOTICE 'not refused';
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'canary_rollup_totals refused: %', SQLERRM;
END $$;
-- counts saturate instead of wrapping
SELECT canary_hist_subtract('{1,9223372036854775807,1,5}', '{}') AS saturated,
       canary_hist_merge('{1,9223372036854775807}', '{1,1,2,1}') AS merged;
-- the combine trigger's function is generated from the counter list
-- (34_fleet_combine_trigger.sql): it compares and writes every key with
-- OLD., NEW. and t., whatever standard_conforming_strings was at install
-- (test/t/001_upgrade.pl installs with it off), and reads every counter of
-- NEW: once for a plain counter, three times for a histogram (the check,
-- the delta, the sum), in each table's branch
SELECT s.n, strpos(p.prosrc, s.s) > 0 AS in_trigger, s.s AS text
  FROM pg_proc p, unnest(ARRAY[
    'IF TG_OP = ''UPDATE'' AND (OLD.canary, OLD.bucket_end, OLD.stage, OLD.cohort, OLD.model, OLD.fallback, OLD.cached) = (NEW.canary, NEW.bucket_end, NEW.stage, NEW.cohort, NEW.model, NEW.fallback, NEW.cached) THEN',
    'WHERE (t.canary, t.bucket_end, t.stage, t.cohort, t.model, t.fallback, t.cached) = (OLD.canary, OLD.bucket_end, OLD.stage, OLD.cohort, OLD.model, OLD.fallback, OLD.cached);',
    'VALUES (NEW.canary, NEW.bucket_end, NEW.stage, NEW.cohort, NEW.model, NEW.fallback, NEW.cached,',
    'ON CONFLICT (canary, bucket_end, stage, cohort, model, fallback, cached) DO UPDATE',
    'IF TG_OP = ''UPDATE'' AND (OLD.canary, OLD.model, OLD.cohort, OLD.fallback) = (NEW.canary, NEW.model, NEW.cohort, NEW.fallback) THEN',
    'WHERE (t.canary, t.model, t.cohort, t.fallback) = (OLD.canary, OLD.model, OLD.cohort, OLD.fallback);',
    'VALUES (NEW.canary, NEW.model, NEW.cohort, NEW.fallback,',
    'ON CONFLICT (canary, model, cohort, fallback) DO UPDATE']) WITH ORDINALITY s (s, n)
 WHERE p.oid = 'canary_fleet_combine_trigger()'::regprocedure
 ORDER BY s.n;
SELECT c.counter, c.hist, c.in_totals, regexp_count(p.prosrc, 'NEW[.]' || c.counter || '[^a-z_]') AS new_reads
  FROM canary_rollup_counters() c, pg_proc p
 WHERE p.oid = 'canary_fleet_combine_trigger()'::regprocedure;
