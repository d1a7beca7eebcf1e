-- Roles: what the application role (llm_canary_app) and the administrator
\set SHOW_CONTEXT never
-- role (llm_canary_admin) may do, tried as a login in each.  Every row here
-- belongs to the rollout "roles" and the models "rl-*" this file creates.
\getenv mock LLM_CANARY_MOCK_URL

-- both roles exist, cannot log in, and the administrator is also an application
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolbypassrls
  FROM pg_roles WHERE rolname IN ('llm_canary_admin', 'llm_canary_app') ORDER BY rolname;
SELECT pg_has_role('llm_canary_admin', 'llm_canary_app', 'MEMBER') AS admin_is_app;

-- nothing of the extension is executable by PUBLIC, everything by the administrator
CREATE TEMP VIEW ext_functions AS
SELECT p.oid, p.oid::regprocedure AS fn, p.proname, p.prosecdef, p.proconfig
  FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
 WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary');
SELECT count(*) AS functions,
       count(*) FILTER (WHERE has_function_privilege('public', oid, 'EXECUTE')) AS public_may_run,
       count(*) FILTER (WHERE has_function_privilege('llm_canary_admin', oid, 'EXECUTE')) AS admin_may_run
  FROM ext_functions;
-- the application's functions
SELECT string_agg(DISTINCT proname, ', ' ORDER BY proname) AS app_functions
  FROM ext_functions WHERE has_function_privilege('llm_canary_app', oid, 'EXECUTE');
-- every SECURITY DEFINER function pins search_path
SELECT fn, proconfig FROM ext_functions WHERE prosecdef ORDER BY proname;

-- tables: what each role may do (r = SELECT, a = INSERT, w = UPDATE, d = DELETE)
SELECT c.relname,
       concat(CASE WHEN has_table_privilege('llm_canary_app', c.oid, 'SELECT') THEN 'r' END,
              CASE WHEN has_table_privilege('llm_canary_app', c.oid, 'INSERT') THEN 'a' END,
              CASE WHEN has_table_privilege('llm_canary_app', c.oid, 'UPDATE') THEN 'w' END,
              CASE WHEN has_table_privilege('llm_canary_app', c.oid, 'DELETE') THEN 'd' END) AS app,
       concat(CASE WHEN has_table_privilege('llm_canary_admin', c.oid, 'SELECT') THEN 'r' END,
              CASE WHEN has_table_privilege('llm_canary_admin', c.oid, 'INSERT') THEN 'a' END,
              CASE WHEN has_table_privilege('llm_canary_admin', c.oid, 'UPDATE') THEN 'w' END,
              CASE WHEN has_table_privilege('llm_canary_admin', c.oid, 'DELETE') THEN 'd' END) AS admin
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind IN ('r', 'p')
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
   AND c.relname !~ '_[0-9]{8}$'        -- daily partitions: named by the day of installation
 ORDER BY c.relname;
-- canary_shadow: every column but the prompt and the two answers
SELECT string_agg(attname, ', ' ORDER BY attnum) AS app_cannot_read
  FROM pg_attribute
 WHERE attrelid = 'canary_shadow'::regclass AND attnum > 0
   AND NOT has_column_privilege('llm_canary_app', attrelid, attnum, 'SELECT');
SELECT canary_shadow_is_private();
-- canary_models holds no key: api_key_env names an environment variable
SELECT col_description('canary_models'::regclass, attnum)
  FROM pg_attribute WHERE attrelid = 'canary_models'::regclass AND attname = 'api_key_env';

-- a rollout with two models on the mock server, one shadow row, two logins
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
    ('rl-old', 'openai',    :'mock' || '/v1', 'rl-old', 'LLM_CANARY_TEST_KEY', 0),
    ('rl-new', 'anthropic', :'mock' || '/v1', 'rl-new', 'LLM_CANARY_TEST_KEY', 0);
\! python3 test/mock_ctl.py put rl-old '{"fixed_text": "Old answer."}'
\! python3 test/mock_ctl.py put rl-new '{"fixed_text": "New answer."}'
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('roles', 'ramp_25', 'rl-old', 'rl-new');
INSERT INTO canary_shadow (request_id, ts, canary, prompt, prompt_class, old_model, new_model, old_text, new_text)
VALUES ('00000000-0000-4000-8000-000000000001', now(), 'roles', 'my card number is 4111',
        'billing', 'rl-old', 'rl-new', 'Thanks for reaching out. We can help.', 'Thank you for contacting support.');
-- users in each cohort at 25 %
SELECT u, canary_bucket(u) FROM (VALUES ('u-2'), ('u-3')) v(u) ORDER BY u;
CREATE ROLE app_user LOGIN IN ROLE llm_canary_app;
CREATE ROLE ops_user LOGIN IN ROLE llm_canary_admin;

-- === as the application ===
SET ROLE app_user;
SELECT canary_bucket('u-2') AS bucket, canary_route('u-2', 'roles') AS route,
       canary_cohort('u-2', 'roles') AS cohort, canary_cohort('u-3', 'roles') AS other;
-- a session pin is written for it, though it has no privilege on canary_sessions
SELECT canary_route('u-2', 'roles', 'sess-1') AS pinned, canary_route('u-2', 'roles', 'sess-1') AS again;
SELECT * FROM canary_sessions;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_sessions (canary, session_id, user_id, model, cohort, expires_at)
VALUES ('roles', 'sess-2', 'u-3', 'rl-new', 'canary', now() + interval '1 day');
\echo :LAST_ERROR_SQLSTATE
-- canary_call and canary_feedback
SELECT r ->> 'response' AS response, r ->> 'model' AS model, r ->> 'cohort' AS cohort
  FROM canary_call('Where is my order?', 'u-2', 'roles') r;
SELECT canary_call('Where is my order?', 'u-3', 'roles') ->> 'request_id' AS request_id \gset
SELECT canary_feedback(:'request_id', true);
-- the configuration: readable, not writable
SELECT name, provider, api_key_env FROM canary_models WHERE name LIKE 'rl-%' ORDER BY name;
SELECT name, stage, percent_new FROM canary_config WHERE name = 'roles';
UPDATE canary_config SET stage = 'full' WHERE name = 'roles';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET error_rate_threshold = 1 WHERE name = 'roles';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET kill_switch_armed = false WHERE name = 'roles';
\echo :LAST_ERROR_SQLSTATE
-- no model can be pointed at another URL or another environment variable
UPDATE canary_models SET base_url = 'http://169.254.169.254/latest' WHERE name = 'rl-new';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_models SET api_key_env = 'PGPASSWORD' WHERE name = 'rl-new';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_models (name, provider, base_url, model) VALUES ('evil', 'openai', 'http://127.0.0.1:1/v1', 'x');
\echo :LAST_ERROR_SQLSTATE
DELETE FROM canary_refusal_patterns;
\echo :LAST_ERROR_SQLSTATE
-- shadow prompts and answers are private
SELECT prompt FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT old_text FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT new_text FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM canary_shadow_default;
\echo :LAST_ERROR_SQLSTATE
SELECT canary, prompt_class, verdict FROM canary_shadow WHERE canary = 'roles';
-- so are the openings (the first five words of each answer), in the table
-- and through the openings report
SELECT old_opening FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT new_opening FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT opening, old_share, new_share FROM canary_shadow_openings('roles');
\echo :LAST_ERROR_SQLSTATE
-- the administrator's functions
\set VERBOSITY terse
SELECT canary_probe('rl-new', 'hi');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_trip('roles', 'app pulls the plug');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_rearm('roles');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_record('roles', 'u-9', 'rl-new', 'canary', 'error', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_check('roles');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_csat_check('roles');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_maintenance();
\echo :LAST_ERROR_SQLSTATE
SELECT canary_schedule();
\echo :LAST_ERROR_SQLSTATE
SELECT canary_set_shadow_private(false);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- reports (verdicts reach the rollups once the worker folded them)
DO $$ BEGIN FOR i IN 1 .. 200 LOOP EXIT WHEN NOT EXISTS (SELECT 1 FROM canary_feedback_pending); PERFORM pg_sleep(0.05); END LOOP; END $$;
SELECT cohort, model, requests, thumbs_down_rate FROM canary_summary('roles');
SELECT samples, paired, different_share, ready FROM canary_shadow_report('roles');
SELECT bucket, old_count, new_count FROM canary_shadow_lengths('roles', buckets => 2);
SELECT prompt_class, samples, agreement FROM canary_shadow_by_class('roles');
SELECT count(*) FROM canary_csat_report('roles');
SELECT queue_capacity > 0 AS queue FROM canary_stats();
SELECT queue_capacity > 0 AS shadow_queue FROM canary_shadow_stats();
RESET ROLE;

-- === as the administrator ===
SET ROLE ops_user;
UPDATE canary_config SET stage = 'full' WHERE name = 'roles';
UPDATE canary_config SET error_rate_threshold = 0.05 WHERE name = 'roles';
UPDATE canary_models SET timeout_ms = 4000 WHERE name = 'rl-new';
SELECT canary_probe('rl-new', 'hi') ->> 'text' AS probe;
SELECT canary_record('roles', 'u-9', 'rl-new', 'canary', 'ok', 10) IS NOT NULL AS recorded;
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('roles') AS tripped;
SELECT canary_trip('roles', 'drill') ->> 'reason' AS trip;
SELECT action, old_stage, new_stage, changed_by FROM canary_stage_history WHERE canary = 'roles' ORDER BY id;
SELECT kind, payload ->> 'reason' AS reason FROM canary_alerts WHERE canary = 'roles';
SELECT canary_rearm('roles');
SELECT count(*) >= 0 AS maintained FROM canary_maintenance();
-- the administrator reads the openings
SELECT opening, old_share, new_share FROM canary_shadow_openings('roles');
-- showing the shadow texts to the application, and hiding them again
SELECT canary_set_shadow_private(false);
SET ROLE app_user;
SELECT canary_shadow_is_private(), prompt, old_opening FROM canary_shadow WHERE canary = 'roles';
SELECT opening, old_share, new_share FROM canary_shadow_openings('roles');
SET ROLE ops_user;
SELECT canary_set_shadow_private(true);
SET ROLE app_user;
SELECT prompt FROM canary_shadow;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM canary_shadow_openings('roles');
\echo :LAST_ERROR_SQLSTATE
SET ROLE ops_user;
-- rows, not structure: the tables stay the owner's
DROP TABLE canary_sessions;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE canary_models ADD COLUMN api_key text;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- a second database: the roles exist already; DROP EXTENSION leaves them
CREATE DATABASE llm_canary_roles_second;
\c llm_canary_roles_second
SET client_min_messages = warning;
CREATE EXTENSION llm_canary;
SELECT has_table_privilege('llm_canary_app', 'canary_config', 'SELECT') AS app_reads_config,
       has_function_privilege('llm_canary_app', 'canary_call(text, text, text, text, text)', 'EXECUTE') AS app_calls;
DROP EXTENSION llm_canary;
SELECT count(*) AS roles_left FROM pg_roles WHERE rolname IN ('llm_canary_admin', 'llm_canary_app');
\c contrib_regression
DROP DATABASE llm_canary_roles_second;

DROP ROLE app_user;
DROP ROLE ops_user;
