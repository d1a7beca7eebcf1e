/*
 * Configuration: the upstream models, the rollouts, and the history of every
 * change an operator makes to a rollout.  An operator's whole interface is
 * INSERT/UPDATE on these tables; triggers validate, fill in derived values,
 * write history and tell every backend to drop its cached copy.
 */

-- Stage names and the percentage of users each one sends to the new model.
CREATE FUNCTION canary_stage_percent(stage text)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE stage
        WHEN 'shadow'  THEN 0
        WHEN 'ramp_1'  THEN 1
        WHEN 'ramp_5'  THEN 5
        WHEN 'ramp_25' THEN 25
        WHEN 'full'    THEN 100
    END::numeric
$$;
COMMENT ON FUNCTION canary_stage_percent(text) IS
    'Percentage of users routed to the new model by default at a stage (NULL for an unknown stage)';

CREATE TABLE canary_models (
    name                text PRIMARY KEY,
    provider            text NOT NULL,
    base_url            text NOT NULL,
    model               text NOT NULL,
    timeout_ms          integer NOT NULL DEFAULT 30000,
    connect_timeout_ms  integer NOT NULL DEFAULT 5000,
    max_retries         integer NOT NULL DEFAULT 2,
    max_tokens          integer,
    use_max_completion_tokens boolean NOT NULL DEFAULT false,
    temperature         double precision,
    system_prompt       text,
    price_input_per_1k  numeric NOT NULL DEFAULT 0,
    price_output_per_1k numeric NOT NULL DEFAULT 0,
    api_key_env         text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT canary_models_provider_check CHECK (provider IN ('openai', 'anthropic')),
    CONSTRAINT canary_models_url_check CHECK (base_url ~* '^https?://'),
    CONSTRAINT canary_models_timeout_check CHECK (timeout_ms BETWEEN 1 AND 600000
                                                  AND connect_timeout_ms BETWEEN 1 AND 600000),
    CONSTRAINT canary_models_retries_check CHECK (max_retries BETWEEN 0 AND 10),
    CONSTRAINT canary_models_tokens_check CHECK (max_tokens IS NULL OR max_tokens > 0),
    CONSTRAINT canary_models_temperature_check CHECK (temperature IS NULL OR temperature BETWEEN 0 AND 2),
    CONSTRAINT canary_models_price_check CHECK (price_input_per_1k >= 0 AND price_output_per_1k >= 0)
);
COMMENT ON TABLE canary_models IS 'Upstream LLMs a rollout can route to, one row per model';
COMMENT ON COLUMN canary_models.provider IS 'openai (chat completions, also vLLM, Ollama, llama.cpp) or anthropic (messages)';
COMMENT ON COLUMN canary_models.api_key_env IS 'Name of an environment variable of the server process that holds the API key';

CREATE TABLE canary_config (
    name                 text PRIMARY KEY,
    stage                text NOT NULL DEFAULT 'shadow',
    percent_new          numeric(5,2),
    kill_switch_armed    boolean NOT NULL DEFAULT true,
    old_model            text REFERENCES canary_models (name) ON UPDATE CASCADE,
    new_model            text REFERENCES canary_models (name) ON UPDATE CASCADE,
    salt                 text NOT NULL DEFAULT '',
    shadow_sample_rate   numeric NOT NULL DEFAULT 1,
    session_ttl          interval NOT NULL DEFAULT '30 minutes',
    fallback_to_old      boolean NOT NULL DEFAULT true,
    -- kill switch (the article's defaults)
    window_seconds       integer NOT NULL DEFAULT 300,
    error_rate_threshold numeric NOT NULL DEFAULT 0.02,
    p95_ratio_threshold  numeric NOT NULL DEFAULT 1.5,
    refusal_delta_threshold numeric NOT NULL DEFAULT 0.05,
    thumbs_down_ratio_threshold numeric NOT NULL DEFAULT 2.0,
    min_samples          integer NOT NULL DEFAULT 100,
    significance         numeric NOT NULL DEFAULT 0.1,
    raw_rules            boolean NOT NULL DEFAULT false,
    confirm_windows      integer NOT NULL DEFAULT 2,
    -- slow signal
    csat_drop            numeric NOT NULL DEFAULT 3,
    csat_sustain         interval NOT NULL DEFAULT '48 hours',
    -- state written by the monitor
    tripped_at           timestamptz,
    trip_reason          text,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    updated_by           name NOT NULL DEFAULT current_user,
    CONSTRAINT canary_config_stage_check
        CHECK (stage IN ('shadow', 'ramp_1', 'ramp_5', 'ramp_25', 'full')),
    CONSTRAINT canary_config_percent_check CHECK (percent_new BETWEEN 0 AND 100),
    CONSTRAINT canary_config_sample_check CHECK (shadow_sample_rate BETWEEN 0 AND 1),
    CONSTRAINT canary_config_threshold_check
        CHECK (window_seconds > 0 AND error_rate_threshold >= 0 AND p95_ratio_threshold >= 0
               AND refusal_delta_threshold >= 0 AND thumbs_down_ratio_threshold >= 0
               AND min_samples >= 0 AND significance > 0 AND significance < 1
               AND confirm_windows BETWEEN 1 AND 12
               AND csat_drop >= 0 AND csat_sustain >= '0'::interval
               AND session_ttl >= '0'::interval)
);
COMMENT ON TABLE canary_config IS
    'One row per rollout; UPDATE stage, percent_new or kill_switch_armed to drive it';

CREATE TABLE canary_stage_history (
    id              bigserial PRIMARY KEY,
    canary          text NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_by      name NOT NULL DEFAULT current_user,
    session_user_name name NOT NULL DEFAULT session_user,
    action          text NOT NULL,
    old_stage       text,
    new_stage       text,
    old_percent     numeric(5,2),
    new_percent     numeric(5,2),
    old_armed       boolean,
    new_armed       boolean,
    old_old_model   text,
    new_old_model   text,
    old_new_model   text,
    new_new_model   text,
    reason          text
);
CREATE INDEX canary_stage_history_canary_idx ON canary_stage_history (canary, changed_at);
COMMENT ON TABLE canary_stage_history IS
    'Every change of stage, percentage, kill-switch state or models, written by triggers';

/*
 * Validation, in a BEFORE trigger so that a bad value fails with a specific
 * SQLSTATE and a hint listing what is valid, before any row is written.  The
 * CHECK constraints above stay as the last line of defence.
 */
CREATE FUNCTION canary_models_validate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.name IS NULL OR NEW.name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid model name "%"', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A model name has 1 to 63 letters, digits, "_", ".", ":" or "-".';
    END IF;
    IF NEW.provider IS NULL OR NEW.provider NOT IN ('openai', 'anthropic') THEN
        RAISE EXCEPTION 'invalid provider "%" for model "%"', NEW.provider, NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Valid providers are: openai (also for OpenAI-compatible servers such as vLLM, Ollama and llama.cpp), anthropic.';
    END IF;
    IF NEW.base_url IS NULL OR NEW.base_url !~* '^https?://[^/?#]+' THEN
        RAISE EXCEPTION 'invalid base_url "%" for model "%"', NEW.base_url, NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use an http:// or https:// URL such as https://api.openai.com/v1.';
    END IF;
    IF NEW.model IS NULL OR NEW.model = '' THEN
        RAISE EXCEPTION 'model id of model "%" must not be empty', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Set model to the provider''s model id, for example gpt-4o-mini.';
    END IF;
    IF NEW.timeout_ms IS NULL OR NEW.timeout_ms NOT BETWEEN 1 AND 600000
       OR NEW.connect_timeout_ms IS NULL OR NEW.connect_timeout_ms NOT BETWEEN 1 AND 600000 THEN
        RAISE EXCEPTION 'timeouts of model "%" must be between 1 and 600000 ms', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The default timeout_ms is 30000 and connect_timeout_ms 5000.';
    END IF;
    IF NEW.max_retries IS NULL OR NEW.max_retries NOT BETWEEN 0 AND 10 THEN
        RAISE EXCEPTION 'max_retries of model "%" must be between 0 and 10', NEW.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.max_tokens IS NOT NULL AND NEW.max_tokens <= 0 THEN
        RAISE EXCEPTION 'max_tokens of model "%" must be positive', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave max_tokens NULL to use the provider''s default.';
    END IF;
    IF NEW.temperature IS NOT NULL AND NEW.temperature NOT BETWEEN 0 AND 2 THEN
        RAISE EXCEPTION 'temperature of model "%" must be between 0 and 2', NEW.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.price_input_per_1k < 0 OR NEW.price_output_per_1k < 0 THEN
        RAISE EXCEPTION 'prices of model "%" must not be negative', NEW.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_models_validate
    BEFORE INSERT OR UPDATE ON canary_models
    FOR EACH ROW EXECUTE FUNCTION canary_models_validate();

/*
 * percent_new follows the stage unless the same statement sets it.  A row
 * trigger cannot see the SET list, but a column trigger can: the trigger
 * "canary_config_a_percent" fires only when percent_new is in the SET list
 * and leaves a transaction-local mark that the validating trigger reads and
 * clears (triggers fire in name order).
 */
CREATE FUNCTION canary_config_mark_percent()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('llm_canary_internal.percent_set', NEW.name, true);
    RETURN NEW;
END;
$$;

CREATE FUNCTION canary_config_validate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    percent_explicit boolean := false;
    known_models text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        percent_explicit := coalesce(current_setting('llm_canary_internal.percent_set', true), '') = NEW.name;
        PERFORM set_config('llm_canary_internal.percent_set', '', true);
    ELSE
        percent_explicit := NEW.percent_new IS NOT NULL;
    END IF;

    IF NEW.name IS NULL OR NEW.name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid rollout name "%"', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A rollout name has 1 to 63 letters, digits, "_", ".", ":" or "-".';
    END IF;
    IF NEW.stage IS NULL OR @extschema@.canary_stage_percent(NEW.stage) IS NULL THEN
        RAISE EXCEPTION 'invalid stage "%" for rollout "%"', NEW.stage, NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Valid stages are: shadow, ramp_1, ramp_5, ramp_25, full.';
    END IF;

    IF TG_OP = 'INSERT' AND NOT percent_explicit THEN
        NEW.percent_new := @extschema@.canary_stage_percent(NEW.stage);
    ELSIF TG_OP = 'UPDATE' AND NEW.stage IS DISTINCT FROM OLD.stage AND NOT percent_explicit THEN
        NEW.percent_new := @extschema@.canary_stage_percent(NEW.stage);
    END IF;
    IF NEW.percent_new IS NULL OR NEW.percent_new NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'percent_new % of rollout "%" is out of range', coalesce(NEW.percent_new::text, 'NULL'), NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'percent_new is between 0 and 100 (stage defaults: shadow 0, ramp_1 1, ramp_5 5, ramp_25 25, full 100).';
    END IF;
    IF NEW.shadow_sample_rate IS NULL OR NEW.shadow_sample_rate NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_sample_rate % of rollout "%" is out of range', coalesce(NEW.shadow_sample_rate::text, 'NULL'), NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'shadow_sample_rate is a fraction between 0 and 1; 0.1 to 0.2 keeps shadow cost low.';
    END IF;
    IF NEW.kill_switch_armed IS NULL THEN
        RAISE EXCEPTION 'kill_switch_armed of rollout "%" must not be NULL', NEW.name
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Use true (armed) or false (tripped: everyone is served by the old model).';
    END IF;
    IF NEW.window_seconds IS NULL OR NEW.window_seconds <= 0 THEN
        RAISE EXCEPTION 'window_seconds of rollout "%" must be positive', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The article''s window is 300 seconds.';
    END IF;
    IF NEW.error_rate_threshold < 0 OR NEW.p95_ratio_threshold < 0
       OR NEW.refusal_delta_threshold < 0 OR NEW.thumbs_down_ratio_threshold < 0
       OR NEW.min_samples < 0 OR NEW.csat_drop < 0 THEN
        RAISE EXCEPTION 'kill-switch thresholds of rollout "%" must not be negative', NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Defaults: error_rate_threshold 0.02, p95_ratio_threshold 1.5, refusal_delta_threshold 0.05, thumbs_down_ratio_threshold 2.0, min_samples 100, csat_drop 3.';
    END IF;
    IF NEW.confirm_windows IS NULL OR NEW.confirm_windows NOT BETWEEN 1 AND 12 THEN
        RAISE EXCEPTION 'confirm_windows % of rollout "%" is out of range', coalesce(NEW.confirm_windows::text, 'NULL'), NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'confirm_windows is how many consecutive windows must breach a rule, 1 to 12; the default 2 keeps noise from tripping the switch.';
    END IF;
    IF NEW.significance IS NULL OR NEW.significance <= 0 OR NEW.significance >= 1 THEN
        RAISE EXCEPTION 'significance % of rollout "%" is out of range', coalesce(NEW.significance::text, 'NULL'), NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'significance is a probability strictly between 0 and 1, for example 0.1.';
    END IF;

    FOR i IN 1..2 LOOP
        DECLARE
            m text := CASE i WHEN 1 THEN NEW.old_model ELSE NEW.new_model END;
        BEGIN
            IF m IS NOT NULL AND NOT EXISTS (SELECT 1 FROM @extschema@.canary_models WHERE name = m) THEN
                SELECT coalesce(string_agg(name, ', ' ORDER BY name), 'none yet')
                  INTO known_models FROM @extschema@.canary_models;
                RAISE EXCEPTION 'model "%" does not exist', m
                    USING ERRCODE = 'foreign_key_violation',
                          HINT = format('Known models: %s. Add one with INSERT INTO canary_models (name, provider, base_url, model).', known_models);
            END IF;
        END;
    END LOOP;

    NEW.updated_at := now();
    NEW.updated_by := current_user;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_config_a_percent
    BEFORE UPDATE OF percent_new ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_mark_percent();
CREATE TRIGGER canary_config_b_validate
    BEFORE INSERT OR UPDATE ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_validate();

-- History: one row for every change of what decides routing.
CREATE FUNCTION canary_config_history()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO @extschema@.canary_stage_history
            (canary, action, new_stage, new_percent, new_armed, new_old_model, new_new_model, reason)
        VALUES (NEW.name, 'create', NEW.stage, NEW.percent_new, NEW.kill_switch_armed,
                NEW.old_model, NEW.new_model, NEW.trip_reason);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO @extschema@.canary_stage_history
            (canary, action, old_stage, old_percent, old_armed, old_old_model, old_new_model)
        VALUES (OLD.name, 'delete', OLD.stage, OLD.percent_new, OLD.kill_switch_armed,
                OLD.old_model, OLD.new_model);
    ELSIF (NEW.stage, NEW.percent_new, NEW.kill_switch_armed, NEW.old_model, NEW.new_model)
          IS DISTINCT FROM
          (OLD.stage, OLD.percent_new, OLD.kill_switch_armed, OLD.old_model, OLD.new_model) THEN
        INSERT INTO @extschema@.canary_stage_history
            (canary, action, old_stage, new_stage, old_percent, new_percent, old_armed, new_armed,
             old_old_model, new_old_model, old_new_model, new_new_model, reason)
        VALUES (NEW.name,
                CASE
                    WHEN OLD.kill_switch_armed AND NOT NEW.kill_switch_armed THEN 'trip'
                    WHEN NOT OLD.kill_switch_armed AND NEW.kill_switch_armed THEN 'rearm'
                    ELSE 'update'
                END,
                OLD.stage, NEW.stage, OLD.percent_new, NEW.percent_new,
                OLD.kill_switch_armed, NEW.kill_switch_armed,
                OLD.old_model, NEW.old_model, OLD.new_model, NEW.new_model,
                CASE WHEN OLD.kill_switch_armed AND NOT NEW.kill_switch_armed THEN NEW.trip_reason END);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER canary_config_history
    AFTER INSERT OR UPDATE OR DELETE ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_history();

/*
 * Every backend caches rollouts and models; a change to these tables sends a
 * relcache invalidation for the table, delivered to every backend at commit.
 */
CREATE FUNCTION canary_invalidate_cache()
RETURNS trigger
AS 'MODULE_PATHNAME', 'canary_invalidate_cache'
LANGUAGE C;

CREATE TRIGGER canary_config_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON canary_config
    FOR EACH STATEMENT EXECUTE FUNCTION canary_invalidate_cache();
CREATE TRIGGER canary_models_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON canary_models
    FOR EACH STATEMENT EXECUTE FUNCTION canary_invalidate_cache();

INSERT INTO canary_config (name) VALUES ('default');

SELECT pg_catalog.pg_extension_config_dump('canary_models', '');
SELECT pg_catalog.pg_extension_config_dump('canary_config', $$WHERE name <> 'default'$$);
SELECT pg_catalog.pg_extension_config_dump('canary_stage_history', '');
SELECT pg_catalog.pg_extension_config_dump('canary_stage_history_id_seq', '');
