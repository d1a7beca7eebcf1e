-- Routing per stage, monotone ramps, the kill switch, salts, sessions, and
\set SHOW_CONTEXT never
-- routing in a read-only transaction.
UPDATE canary_config SET stage = 'shadow' WHERE name = 'default';

-- shadow: everyone is served by the old model
SELECT canary_route('u_' || g) AS model, canary_cohort('u_' || g) AS cohort, count(*)
  FROM generate_series(1, 10000) g GROUP BY 1, 2 ORDER BY 1;

-- ramp stages: exactly the users whose bucket is below percent_new
-- (counts computed with Python's hashlib over u_1 .. u_10000: 102, 459, 2470, 10000;
-- with salt 'second-salt' at 5%: 477 users, 23 of them also in the unsalted 5%)
UPDATE canary_config SET stage = 'ramp_1' WHERE name = 'default';
SELECT count(*) FILTER (WHERE canary_route('u_' || g) = 'model-new') AS new_users,
       bool_and((canary_route('u_' || g) = 'model-new') = (canary_bucket('u_' || g) < 1)) AS agrees
  FROM generate_series(1, 10000) g;
CREATE TEMP TABLE at1 AS SELECT 'u_' || g AS u FROM generate_series(1, 10000) g WHERE canary_route('u_' || g) = 'model-new';
UPDATE canary_config SET stage = 'ramp_5' WHERE name = 'default';
SELECT count(*) FILTER (WHERE canary_route('u_' || g) = 'model-new') AS new_users
  FROM generate_series(1, 10000) g;
CREATE TEMP TABLE at5 AS SELECT 'u_' || g AS u FROM generate_series(1, 10000) g WHERE canary_route('u_' || g) = 'model-new';
UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'default';
SELECT count(*) FILTER (WHERE canary_route('u_' || g) = 'model-new') AS new_users
  FROM generate_series(1, 10000) g;
CREATE TEMP TABLE at25 AS SELECT 'u_' || g AS u FROM generate_series(1, 10000) g WHERE canary_route('u_' || g) = 'model-new';
UPDATE canary_config SET stage = 'full' WHERE name = 'default';
SELECT count(*) FILTER (WHERE canary_route('u_' || g) = 'model-new') AS new_users
  FROM generate_series(1, 10000) g;

-- monotone: every user on the new model at 1% is still there at 5% and 25%
SELECT (SELECT count(*) FROM at1 WHERE u NOT IN (SELECT u FROM at5)) AS lost_1_to_5,
       (SELECT count(*) FROM at5 WHERE u NOT IN (SELECT u FROM at25)) AS lost_5_to_25;

-- fractional percentages compare the bucket exactly: 0.29% takes buckets 0.00 .. 0.28
UPDATE canary_config SET stage = 'ramp_1', percent_new = 0.29 WHERE name = 'default';
SELECT bool_and((canary_route('u_' || g) = 'model-new') = (canary_bucket('u_' || g) < 0.29)) AS agrees
  FROM generate_series(1, 100000) g;

-- the kill switch sends everyone back to the old model, whatever the stage
UPDATE canary_config SET stage = 'full' WHERE name = 'default';
UPDATE canary_config SET kill_switch_armed = false WHERE name = 'default';
SELECT canary_route('u_' || g) AS model, canary_cohort('u_' || g) AS cohort, count(*)
  FROM generate_series(1, 1000) g GROUP BY 1, 2;
UPDATE canary_config SET kill_switch_armed = true WHERE name = 'default';

-- a salted rollout picks a different 5%: salts 'second-salt' vs '' overlap little
UPDATE canary_config SET stage = 'ramp_5' WHERE name IN ('default', 'second');
UPDATE canary_config SET percent_new = 5 WHERE name = 'second';
SELECT count(*) FILTER (WHERE canary_cohort('u_' || g, 'second') = 'canary') AS second_canaries,
       bool_and((canary_cohort('u_' || g, 'second') = 'canary') = (canary_bucket('u_' || g, 'second-salt') < 5)) AS agrees,
       count(*) FILTER (WHERE canary_cohort('u_' || g, 'second') = 'canary'
                          AND canary_cohort('u_' || g) = 'canary') AS in_both
  FROM generate_series(1, 10000) g;

-- a committed change is seen by the next call in the same session and
-- inside an open transaction block after another statement
BEGIN;
SELECT canary_route('u_91442');          -- bucket 10.60: old at 5%
UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'default';
SELECT canary_route('u_91442');          -- new at 25%
ROLLBACK;
SELECT canary_route('u_91442');          -- the rollback undid it: old again

-- read-only transactions route fine (no writes without a session)
BEGIN READ ONLY;
SELECT canary_route('u_91442'), canary_cohort('alice'), canary_route('alice', 'second');
COMMIT;

-- sessions: the first decision is pinned for session_ttl
UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'default';
SELECT canary_route('u_91442', 'default', 'sess-1') AS pinned_new;
UPDATE canary_config SET stage = 'ramp_5' WHERE name = 'default';
SELECT canary_route('u_91442', 'default', 'sess-1') AS still_new,
       canary_route('u_91442') AS without_session,
       canary_route('u_91442', 'default', 'sess-2') AS new_session;
-- a tripped kill switch wins over a pin
UPDATE canary_config SET kill_switch_armed = false WHERE name = 'default';
SELECT canary_route('u_91442', 'default', 'sess-1') AS tripped;
UPDATE canary_config SET kill_switch_armed = true WHERE name = 'default';
-- an expired pin is decided again
UPDATE canary_sessions SET expires_at = now() - interval '1 second' WHERE session_id = 'sess-1';
SELECT canary_route('u_91442', 'default', 'sess-1') AS redecided;
SELECT canary, session_id, user_id, model, cohort FROM canary_sessions ORDER BY session_id;
-- pinning needs a read-write transaction
BEGIN READ ONLY;
SELECT canary_route('u_91442', 'default', 'sess-3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- bad input
SELECT canary_route(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_route('');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_route('u_1', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_route('u_1', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_route('u_1', 'default', '');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_config (name) VALUES ('unconfigured');
SELECT canary_route('u_1', 'unconfigured');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM canary_config WHERE name = 'unconfigured';

-- the cache reads every column cast to the type it needs: a column type a
-- user changed (salt varchar(100), window_seconds bigint) routes as before,
-- and repeated lookups leave the cache's memory as it was
CREATE TEMP TABLE routed AS
SELECT g, canary_route('u_' || g) AS m, canary_route('u_' || g, 'second') AS m2
  FROM generate_series(1, 2000) g;
ALTER TABLE canary_config ALTER salt TYPE varchar(100), ALTER window_seconds TYPE bigint;
SELECT count(*) FILTER (WHERE m2 = 'model-new') AS second_new,
       count(*) FILTER (WHERE canary_route('u_' || g) IS DISTINCT FROM m
                           OR canary_route('u_' || g, 'second') IS DISTINCT FROM m2) AS changed
  FROM routed;
SELECT sum(total_bytes) <= 8192 AS cache_small
  FROM pg_backend_memory_contexts WHERE name = 'llm_canary config cache';
ALTER TABLE canary_config ALTER salt TYPE text, ALTER window_seconds TYPE integer;
-- a stage the table's CHECK constraint would keep out is refused, named
BEGIN;
ALTER TABLE canary_config DROP CONSTRAINT canary_config_stage_check;
SET LOCAL session_replication_role = replica;
UPDATE canary_config SET stage = 'ramp_50' WHERE name = 'second';
SELECT canary_route('u_1', 'second');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
DROP TABLE routed;
