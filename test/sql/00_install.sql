-- Installing the extension: tables, the default rollout, the reserved prefix.
\set SHOW_CONTEXT never
CREATE EXTENSION llm_canary CASCADE;
SELECT extversion FROM pg_extension WHERE extname = 'llm_canary';

-- a row named 'default' exists after install, in shadow with the article's thresholds
SELECT name, stage, percent_new, kill_switch_armed, old_model, new_model, salt,
       shadow_sample_rate, window_seconds, error_rate_threshold, p95_ratio_threshold,
       refusal_delta_threshold, thumbs_down_ratio_threshold
  FROM canary_config;

-- inserting a model with just the four required columns works
INSERT INTO canary_models (name, provider, base_url, model)
VALUES ('model-old', 'openai', 'https://api.openai.com/v1', 'gpt-4o-mini');
SELECT name, provider, base_url, model, timeout_ms FROM canary_models;

-- the llm_canary.* prefix is reserved: a misspelt setting is an error
SET llm_canary.no_such_setting = 1;
\echo :LAST_ERROR_SQLSTATE
SHOW llm_canary.database_name;
