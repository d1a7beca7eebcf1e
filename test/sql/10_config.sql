-- The rollout configuration: validation with specific SQLSTATEs and hints,
\set SHOW_CONTEXT never
-- percent_new following the stage, and the history of every change.
INSERT INTO canary_models (name, provider, base_url, model)
VALUES ('model-new', 'anthropic', 'https://api.anthropic.com/v1', 'claude-sonnet-4-5');

-- bad models
INSERT INTO canary_models (name, provider, base_url, model) VALUES ('m1', 'gemini', 'https://x/v1', 'g');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_models (name, provider, base_url, model) VALUES ('m1', 'openai', 'ftp://x/v1', 'g');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_models (name, provider, base_url, model) VALUES ('m1', 'openai', 'http://x/v1', '');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_models (name, provider, base_url, model, timeout_ms) VALUES ('m1', 'openai', 'http://x/v1', 'g', 0);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_models (name, provider, base_url, model) VALUES ('bad name!', 'openai', 'http://x/v1', 'g');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS models FROM canary_models;

UPDATE canary_config SET old_model = 'model-old', new_model = 'model-new' WHERE name = 'default';

-- percent_new follows the stage ...
UPDATE canary_config SET stage = 'ramp_1';
SELECT stage, percent_new FROM canary_config;
UPDATE canary_config SET stage = 'ramp_5';
SELECT stage, percent_new FROM canary_config;
UPDATE canary_config SET stage = 'ramp_25';
SELECT stage, percent_new FROM canary_config;
UPDATE canary_config SET stage = 'full';
SELECT stage, percent_new FROM canary_config;
UPDATE canary_config SET stage = 'shadow';
SELECT stage, percent_new FROM canary_config;
-- ... unless the same statement sets it
UPDATE canary_config SET stage = 'ramp_5', percent_new = 2.5;
SELECT stage, percent_new FROM canary_config;
-- setting it to the value it already has still counts as setting it
UPDATE canary_config SET stage = 'ramp_25', percent_new = 2.5;
SELECT stage, percent_new FROM canary_config;
-- percent alone
UPDATE canary_config SET percent_new = 10;
SELECT stage, percent_new FROM canary_config;
UPDATE canary_config SET stage = 'ramp_5';
SELECT stage, percent_new FROM canary_config;

-- invalid values: nothing is written
UPDATE canary_config SET stage = 'ramp_50';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET percent_new = 100.5;
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET percent_new = -1;
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET shadow_sample_rate = 1.5;
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET new_model = 'model-typo';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET error_rate_threshold = -0.1;
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET significance = 1;
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET window_seconds = 0;
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET kill_switch_armed = NULL;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_config (name, stage) VALUES ('second', 'ramp_2');
\echo :LAST_ERROR_SQLSTATE
SELECT name, stage, percent_new, new_model FROM canary_config ORDER BY name;

-- a second rollout, created at a ramp stage
INSERT INTO canary_config (name, stage, old_model, new_model, salt)
VALUES ('second', 'ramp_1', 'model-old', 'model-new', 'second-salt');
SELECT name, stage, percent_new FROM canary_config ORDER BY name;

-- deleting a model a rollout uses is refused
DELETE FROM canary_models WHERE name = 'model-new';
\echo :LAST_ERROR_SQLSTATE

-- the kill switch
UPDATE canary_config SET kill_switch_armed = false WHERE name = 'default';
UPDATE canary_config SET kill_switch_armed = true WHERE name = 'default';
-- a change that does not touch routing leaves no history
UPDATE canary_config SET min_samples = 50 WHERE name = 'default';

SELECT canary, action, old_stage, new_stage, old_percent, new_percent,
       old_armed, new_armed, new_old_model, new_new_model,
       changed_by = current_user AS by_me
  FROM canary_stage_history ORDER BY id;
