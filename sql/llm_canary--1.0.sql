/*
 * llm_canary install script, generated from sql/parts/ by the Makefile.
 *
 * Parts, in order: configuration (models, rollouts, history), routing,
 * the call path and its metrics, shadow mode, the monitor (kill switch,
 * alerts, CSAT) and scheduling.  Each part creates what it owns.
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION llm_canary" to load this file. \quit
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
    significance         numeric NOT NULL DEFAULT 0.05,
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
                  HINT = 'significance is a probability strictly between 0 and 1, for example 0.05.';
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
/*
 * Routing: which model serves a user.  Sticky per user through a hash of the
 * user id, optionally pinned per session.  Implemented in src/routing.c.
 */

CREATE FUNCTION canary_bucket(user_id text, salt text DEFAULT '')
RETURNS numeric
AS 'MODULE_PATHNAME', 'canary_bucket'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_bucket(text, text) IS
    'Routing bucket 0.00 to 99.99: int(first 8 hex digits of sha256(salt || user_id), 16) % 10000 / 100';

CREATE FUNCTION canary_route(user_id text, canary text DEFAULT 'default', session_id text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'canary_route'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_route(text, text, text) IS
    'Name of the model that serves this user in this rollout';

CREATE FUNCTION canary_cohort(user_id text, canary text DEFAULT 'default', session_id text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'canary_cohort'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_cohort(text, text, text) IS
    'canary when the user is served by the new model, control otherwise';

/*
 * Session pins: the first decision for a session holds for the rollout's
 * session_ttl, so a user does not switch voices mid-conversation.  A tripped
 * kill switch always wins over a pin.
 */
CREATE TABLE canary_sessions (
    canary      text NOT NULL REFERENCES canary_config (name) ON UPDATE CASCADE ON DELETE CASCADE,
    session_id  text NOT NULL,
    user_id     text NOT NULL,
    model       text NOT NULL,
    cohort      text NOT NULL CHECK (cohort IN ('canary', 'control')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (canary, session_id)
);
CREATE INDEX canary_sessions_expires_idx ON canary_sessions (expires_at);
COMMENT ON TABLE canary_sessions IS 'Routing decisions pinned per session until expires_at';
/*
 * canary_probe: an administrator's smoke test of one model's configuration.
 * It calls the model directly (no routing, no fallback, no metrics) and
 * returns what happened.  It spends tokens, so only superusers and roles
 * granted EXECUTE may call it.  Implemented in src/probe.c.
 */
CREATE FUNCTION canary_probe(model text, prompt text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'canary_probe'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_probe(text, text) IS
    'Call one model directly with a prompt: outcome, HTTP status, text, tokens, refusal, error, tries and latency as jsonb';
REVOKE EXECUTE ON FUNCTION canary_probe(text, text) FROM PUBLIC;
/*
 * Metrics: one row per model attempt in canary_requests, one row per user
 * verdict in canary_feedback.
 *
 * The call path does not write canary_requests itself: it copies each
 * record into a queue in shared memory and the llm_canary background worker
 * writes the queue in batches, in transactions of its own, so an attempt is
 * recorded even when the caller's transaction rolls back.  canary_flush()
 * waits for the worker; canary_stats() shows the queue.
 *
 * Both tables are partitioned by day (UTC days, partitions named
 * <table>_YYYYMMDD) with a DEFAULT partition, so a write never fails for a
 * missing partition; canary_maintenance() creates partitions ahead and drops
 * those older than llm_canary.retention_days.
 */

CREATE TABLE canary_requests (
    request_id          uuid NOT NULL,
    ts                  timestamptz NOT NULL,
    canary              text NOT NULL,
    stage               text,
    user_id             text,
    cohort              text,
    model               text,
    outcome             text,
    http_status         integer,
    latency_ms          integer,
    prompt_tokens       integer,
    completion_tokens   integer,
    response_chars      integer,
    refusal             boolean,
    prompt_class        text,
    prompt_hash         text,
    fallback            boolean,
    error               text,
    cost                numeric,
    cached              boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (ts);
CREATE TABLE canary_requests_default PARTITION OF canary_requests DEFAULT;
CREATE INDEX canary_requests_canary_ts_idx ON canary_requests (canary, ts);
CREATE INDEX canary_requests_request_id_idx ON canary_requests (request_id);
COMMENT ON TABLE canary_requests IS
    'One row per model attempt, written by the llm_canary worker; partitioned by UTC day';
COMMENT ON COLUMN canary_requests.outcome IS 'ok, refusal, error or timeout';
COMMENT ON COLUMN canary_requests.cohort IS 'canary (new model) or control (old model)';
COMMENT ON COLUMN canary_requests.fallback IS
    'This attempt served a canary user with the old model after the new model failed';
COMMENT ON COLUMN canary_requests.cached IS
    'Answered from canary_response_cache without calling the model (latency: the lookup; cost 0); the kill switch does not count it';

CREATE TABLE canary_feedback (
    request_id          uuid NOT NULL,
    ts                  timestamptz NOT NULL DEFAULT now(),
    thumbs_down         boolean NOT NULL,
    user_id             text,
    canary              text,
    cohort              text,
    model               text
) PARTITION BY RANGE (ts);
CREATE TABLE canary_feedback_default PARTITION OF canary_feedback DEFAULT;
CREATE INDEX canary_feedback_canary_ts_idx ON canary_feedback (canary, ts);
CREATE INDEX canary_feedback_request_id_idx ON canary_feedback (request_id);
COMMENT ON TABLE canary_feedback IS
    'User verdicts on answers (canary_feedback()), with the rollout, cohort and model copied from the request';

/*
 * Partitions.  A day is a UTC day whatever the session's TimeZone, so that
 * partitions made by sessions in different time zones never overlap.
 */
CREATE FUNCTION canary_maintenance(days_ahead integer DEFAULT 7, today date DEFAULT current_date)
RETURNS TABLE (action text, partition text, moved_rows bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    retention integer := coalesce(nullif(current_setting('llm_canary.retention_days', true), '')::integer, 30);
    nsp name;
    parent text;
    columns text;
    locked boolean;
    day date;
    part text;
    lo timestamptz;
    hi timestamptz;
    has_rows boolean;
    n bigint;
    old record;
BEGIN
    IF days_ahead IS NULL OR today IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN today IS NULL THEN 'today' ELSE 'days_ahead' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF days_ahead NOT BETWEEN 0 AND 366 THEN
        RAISE EXCEPTION 'days_ahead % is out of range', days_ahead
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create between 0 and 366 days of partitions ahead; the default is 7.';
    END IF;
    SELECT c.relnamespace::regnamespace::name INTO nsp
      FROM pg_class c WHERE c.oid = '@extschema@.canary_requests'::regclass;

    -- expired answers of the response cache (created by a later part)
    IF to_regclass(format('%I.canary_response_cache', nsp)) IS NOT NULL THEN
        -- the setting reads like '1h' (its unit is seconds): a valid interval;
        -- off (0) or not loaded, every row is stale
        EXECUTE format('DELETE FROM %I.canary_response_cache WHERE created_at <= now() - $1', nsp)
           USING coalesce(nullif(current_setting('llm_canary.response_cache_ttl', true), ''), '0')::interval;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            action := 'expire'; partition := 'canary_response_cache'; moved_rows := n;
            RETURN NEXT;
        END IF;
    END IF;

    FOREACH parent IN ARRAY ARRAY['canary_requests', 'canary_feedback', 'canary_shadow'] LOOP
        -- canary_shadow is created after this function's first run at install
        CONTINUE WHEN to_regclass(format('%I.%I', nsp, parent)) IS NULL;
        locked := false;
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO columns
          FROM pg_attribute a
         WHERE a.attrelid = format('%I.%I', nsp, parent)::regclass
           AND a.attnum > 0 AND NOT a.attisdropped;

        -- today .. today + days_ahead
        FOR i IN 0 .. days_ahead LOOP
            day := today + i;
            part := parent || '_' || to_char(day, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(format('%I.%I', nsp, part)) IS NOT NULL;
            IF NOT locked THEN
                -- writes go through the parent: block them (not reads) while
                -- rows move, taking the parent's lock before any partition's
                EXECUTE format('LOCK TABLE ONLY %I.%I IN SHARE ROW EXCLUSIVE MODE', nsp, parent);
                locked := true;
            END IF;
            lo := day::timestamp AT TIME ZONE 'UTC';
            hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE ts >= $1 AND ts < $2)',
                           nsp, parent || '_default')
               INTO has_rows USING lo, hi;
            IF NOT has_rows THEN
                EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                               nsp, part, nsp, parent, lo, hi);
                action := 'create'; partition := part; moved_rows := 0;
            ELSE
                -- the DEFAULT partition holds rows of this day: move them
                -- into a new table, then attach it
                EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               nsp, part, nsp, parent);
                EXECUTE format('WITH moved AS (DELETE FROM %I.%I WHERE ts >= $1 AND ts < $2 RETURNING %s)'
                               ' INSERT INTO %I.%I (%s) SELECT %s FROM moved',
                               nsp, parent || '_default', columns, nsp, part, columns, columns)
                   USING lo, hi;
                GET DIAGNOSTICS n = ROW_COUNT;
                EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                               nsp, parent, nsp, part, lo, hi);
                action := 'create'; partition := part; moved_rows := n;
            END IF;
            RETURN NEXT;
        END LOOP;

        -- retention: drop daily partitions of days before today - retention
        IF retention > 0 THEN
            FOR old IN
                SELECT c.relname::text AS relname
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = format('%I.%I', nsp, parent)::regclass
                   AND c.relname ~ ('^' || parent || '_[0-9]{8}$')
                   AND to_date(right(c.relname, 8), 'YYYYMMDD') < today - retention
                 ORDER BY c.relname
            LOOP
                IF NOT locked THEN
                    EXECUTE format('LOCK TABLE ONLY %I.%I IN SHARE ROW EXCLUSIVE MODE', nsp, parent);
                    locked := true;
                END IF;
                EXECUTE format('DROP TABLE %I.%I', nsp, old.relname);
                action := 'drop'; partition := old.relname; moved_rows := NULL;
                RETURN NEXT;
            END LOOP;
        END IF;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION canary_maintenance(integer, date) IS
    'Creates daily partitions of canary_requests, canary_feedback and canary_shadow from today through today + days_ahead (moving rows out of the DEFAULT partition), drops those older than llm_canary.retention_days, and deletes answers of canary_response_cache older than llm_canary.response_cache_ttl';
REVOKE ALL ON FUNCTION canary_maintenance(integer, date) FROM PUBLIC;

/* The queue and the worker (src/metrics_queue.c, src/metrics_funcs.c). */
CREATE FUNCTION canary_flush(timeout interval DEFAULT '10 seconds')
RETURNS bigint
AS 'MODULE_PATHNAME', 'canary_flush'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_flush(interval) IS
    'Waits until the worker wrote every metric record queued before the call; returns the records written since server start';

CREATE FUNCTION canary_record(canary text, user_id text, model text, cohort text, outcome text,
                              latency_ms integer, ts timestamptz DEFAULT now(),
                              refusal boolean DEFAULT false, http_status integer DEFAULT 200,
                              prompt_tokens integer DEFAULT NULL, completion_tokens integer DEFAULT NULL,
                              prompt_class text DEFAULT NULL, error text DEFAULT NULL,
                              stage text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'canary_record'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_record(text, text, text, text, text, integer, timestamptz, boolean,
                                  integer, integer, integer, text, text, text) IS
    'Queues one synthetic model attempt through the metrics queue, as canary_call would; returns its request_id (NULL if the queue was full)';
REVOKE ALL ON FUNCTION canary_record(text, text, text, text, text, integer, timestamptz, boolean,
                                     integer, integer, integer, text, text, text) FROM PUBLIC;

CREATE FUNCTION canary_stats()
RETURNS TABLE (queue_capacity integer, queue_depth bigint, enqueued bigint, dropped bigint,
               written bigint, write_errors bigint, batches bigint, last_write_at timestamptz,
               worker_pid integer, worker_state text, database text)
AS 'MODULE_PATHNAME', 'canary_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_stats() IS
    'Counters of the metrics queue and the state of the llm_canary worker since server start';

CREATE FUNCTION canary_backend_stats()
RETURNS TABLE (pid integer, calls bigint)
AS 'MODULE_PATHNAME', 'canary_backend_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_backend_stats() IS
    'Calls recorded by each connected backend';

/*
 * Feedback.  SECURITY DEFINER so that an application role needs only
 * EXECUTE on this function, not privileges on the tables.
 */
CREATE FUNCTION canary_feedback(request_id uuid, thumbs_down boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    req record;
BEGIN
    IF canary_feedback.request_id IS NULL OR canary_feedback.thumbs_down IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
                        CASE WHEN canary_feedback.request_id IS NULL THEN 'request_id' ELSE 'thumbs_down' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;

    -- the last attempt of a call answered it (a fallback follows the failure)
    SELECT r.user_id, r.canary, r.cohort, r.model INTO req
      FROM @extschema@.canary_requests r
     WHERE r.request_id = canary_feedback.request_id
     ORDER BY r.ts DESC
     LIMIT 1;
    IF NOT FOUND THEN
        -- a request just made may still be queued: let the worker write it
        BEGIN
            PERFORM @extschema@.canary_flush();
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            NULL;               -- no worker for this database: nothing queued here
        END;
        SELECT r.user_id, r.canary, r.cohort, r.model INTO req
          FROM @extschema@.canary_requests r
         WHERE r.request_id = canary_feedback.request_id
         ORDER BY r.ts DESC
         LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request "%" does not exist', canary_feedback.request_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'Pass a request_id returned by canary_call(); requests are kept for llm_canary.retention_days days.';
    END IF;

    INSERT INTO @extschema@.canary_feedback (request_id, thumbs_down, user_id, canary, cohort, model)
    VALUES (canary_feedback.request_id, canary_feedback.thumbs_down, req.user_id, req.canary, req.cohort, req.model);
END;
$$;
COMMENT ON FUNCTION canary_feedback(uuid, boolean) IS
    'Records a user''s verdict (thumbs down or not) on the answer to a request';
REVOKE ALL ON FUNCTION canary_feedback(uuid, boolean) FROM PUBLIC;

/*
 * Today's partitions exist from the start.  They are data, not part of the
 * extension: like the partitions the worker creates later, they are dumped
 * by pg_dump and dropped with their table.
 */
SELECT count(*) FROM canary_maintenance();
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT d.objid::regclass
          FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
           AND c.relname ~ '^canary_(requests|feedback)_[0-9]{8}$'
    LOOP
        EXECUTE format('ALTER EXTENSION llm_canary DROP TABLE %s', part);
    END LOOP;
END;
$$;

SELECT pg_catalog.pg_extension_config_dump('canary_requests_default', '');
SELECT pg_catalog.pg_extension_config_dump('canary_feedback_default', '');
/*
 * Shadow mode: in stage "shadow" the old model answers the user while the
 * new model answers the same prompt in the background (src/shadow.c); both
 * answers land in one row of canary_shadow.  The row is compared once, when
 * it is written, and the reports below read the comparison: the article's
 * Stage 1 numbers (output diff rate, length distribution, refusal rate,
 * per-prompt-class regressions, and the openings "tone-drift detector") and
 * a gate that says whether the rollout may leave shadow.
 */

/*
 * Per-rollout settings of the comparison and of the gate.  The gate settings
 * may be NULL: that condition is then not checked.
 */
ALTER TABLE canary_config
    ADD COLUMN shadow_equivalence_threshold numeric NOT NULL DEFAULT 0.8,
    ADD COLUMN shadow_min_agreement numeric DEFAULT 0.70,
    ADD COLUMN shadow_max_refusal_delta numeric DEFAULT 0.05,
    ADD COLUMN shadow_max_length_ratio numeric DEFAULT 1.3,
    ADD CONSTRAINT canary_config_shadow_check
        CHECK (shadow_equivalence_threshold BETWEEN 0 AND 1
               AND shadow_min_agreement BETWEEN 0 AND 1
               AND shadow_max_refusal_delta BETWEEN 0 AND 1
               AND shadow_max_length_ratio >= 1);
ALTER TABLE canary_config
    ADD COLUMN shadow_embedding_model text REFERENCES canary_models (name) ON UPDATE CASCADE;
COMMENT ON COLUMN canary_config.shadow_equivalence_threshold IS
    'Shadow rows whose similarity is at or above this (0 to 1) are "equivalent"';
COMMENT ON COLUMN canary_config.shadow_embedding_model IS
    'An OpenAI-compatible embeddings model (canary_models.name): shadow similarity is the cosine of the embeddings of both answers; NULL: lexical similarity';
COMMENT ON COLUMN canary_config.shadow_min_agreement IS
    'Gate: smallest share of identical or equivalent answers (0 to 1; NULL: not checked)';
COMMENT ON COLUMN canary_config.shadow_max_refusal_delta IS
    'Gate: largest |new - old| refusal rate (0 to 1; NULL: not checked)';
COMMENT ON COLUMN canary_config.shadow_max_length_ratio IS
    'Gate: mean new length / mean old length must lie in [1/this, this] (>= 1; NULL: not checked)';

/*
 * canary_config_validate does not know these columns; this trigger fires
 * after it (triggers fire in name order) with the same kind of errors.
 */
CREATE FUNCTION canary_config_shadow_validate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    provider     text;
    known_models text;
BEGIN
    IF NEW.shadow_equivalence_threshold IS NULL THEN
        RAISE EXCEPTION 'shadow_equivalence_threshold of rollout "%" must not be NULL', NEW.name
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Use a similarity between 0 and 1; the default is 0.8.';
    END IF;
    IF NEW.shadow_equivalence_threshold NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_equivalence_threshold % of rollout "%" is out of range',
                        NEW.shadow_equivalence_threshold, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a similarity between 0 and 1; the default is 0.8.';
    END IF;
    IF NEW.shadow_min_agreement NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_min_agreement % of rollout "%" is out of range',
                        NEW.shadow_min_agreement, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a share between 0 and 1 (the article''s gate is 0.70), or NULL not to check it.';
    END IF;
    IF NEW.shadow_max_refusal_delta NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_max_refusal_delta % of rollout "%" is out of range',
                        NEW.shadow_max_refusal_delta, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a difference of refusal rates between 0 and 1 (default 0.05), or NULL not to check it.';
    END IF;
    IF NEW.shadow_embedding_model IS NOT NULL THEN
        SELECT m.provider INTO provider FROM @extschema@.canary_models m WHERE m.name = NEW.shadow_embedding_model;
        IF NOT FOUND THEN
            SELECT coalesce(string_agg(m.name, ', ' ORDER BY m.name), 'none yet') INTO known_models
              FROM @extschema@.canary_models m;
            RAISE EXCEPTION 'model "%" does not exist', NEW.shadow_embedding_model
                USING ERRCODE = 'foreign_key_violation',
                      HINT = format('Known models: %s. Add the embeddings model with INSERT INTO canary_models (name, provider, base_url, model).', known_models);
        END IF;
        IF provider <> 'openai' THEN
            RAISE EXCEPTION 'model "%" cannot be the shadow_embedding_model of rollout "%"',
                            NEW.shadow_embedding_model, NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('Its provider is %s; embeddings are requested from an OpenAI-compatible POST {base_url}/embeddings.', provider),
                      HINT = 'Use a model with provider ''openai'' (OpenAI, vLLM, Ollama, llama.cpp serve /embeddings).';
        END IF;
    END IF;
    IF NEW.shadow_max_length_ratio < 1 THEN
        RAISE EXCEPTION 'shadow_max_length_ratio % of rollout "%" is out of range',
                        NEW.shadow_max_length_ratio, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a ratio of at least 1 (default 1.3 allows means from 1/1.3 to 1.3 times the old one), or NULL not to check it.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_config_c_shadow_validate
    BEFORE INSERT OR UPDATE ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_shadow_validate();

/*
 * The comparison of two answers.
 *
 *   words       the maximal runs of word characters (\w: letters, digits,
 *               "_") and apostrophes (' and U+2019) of the lowercased text,
 *               so "I'm" is one word "i'm"; everything else separates words.
 *   identical   both texts equal after whitespace normalisation (leading and
 *               trailing whitespace removed, every run of whitespace made one
 *               space); case and punctuation count.
 *   similarity  multiset Jaccard (Ruzicka) over the words:
 *                   sum over words w of min(old count w, new count w)
 *                   / sum over words w of max(old count w, new count w)
 *               = |old ∩ new| / (|old| + |new| - |old ∩ new|) as multisets;
 *               1 for identical texts and for two texts without words, 0 when
 *               exactly one has none.  Order does not count.
 *   verdict     identical; else equivalent when similarity >=
 *               equivalence_threshold; else different.  NULL (and similarity
 *               NULL) when either text is NULL, i.e. a model failed.
 *   opening     the first five words joined by single spaces ('' for a text
 *               without words, NULL for NULL): "Thank you for contacting
 *               support." gives "thank you for contacting support".
 *   length_ratio  length(new_text) / length(old_text) in characters; NULL
 *               when old_text is NULL or empty, or new_text is NULL.
 *
 * Cost, measured with EXPLAIN ANALYZE over 10,000 synthetic rows of two
 * 200-word (1200-character) texts, PostgreSQL 15 on a shared 2-core VM:
 * 0.33 to 0.48 ms per pair of different texts, 0.17 ms per pair of equal
 * texts, 0.41 to 0.53 ms per row INSERTed into canary_shadow with this
 * trigger.  Nearly all of it is the regular-expression split into words; the
 * multiset intersection is one INTERSECT ALL (a hash set operation).
 */
CREATE FUNCTION canary_shadow_compare(old_text text, new_text text,
                                      equivalence_threshold float8 DEFAULT 0.8,
                                      OUT verdict text, OUT similarity float8,
                                      OUT old_opening text, OUT new_opening text,
                                      OUT length_ratio float8)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_words text[];
    new_words text[];
    common    bigint;
    total     bigint;
BEGIN
    -- the split leaves '' at either end when a text starts or ends with a separator
    old_words := array_remove(regexp_split_to_array(lower(old_text), '[^\w''’]+'), '');
    old_opening := array_to_string(old_words[1:5], ' ');
    IF length(old_text) > 0 THEN
        length_ratio := length(new_text)::float8 / length(old_text);
    END IF;
    -- equal texts, frequent in shadow traffic, need one split and no more
    IF old_text = new_text THEN
        new_opening := old_opening;
        verdict := 'identical';
        similarity := 1;
        RETURN;
    END IF;
    new_words := array_remove(regexp_split_to_array(lower(new_text), '[^\w''’]+'), '');
    new_opening := array_to_string(new_words[1:5], ' ');
    IF old_text IS NULL OR new_text IS NULL THEN
        RETURN;
    END IF;

    -- equal words are necessary for identical texts: test that first, it is cheap
    IF old_words = new_words
       AND btrim(regexp_replace(old_text, '\s+', ' ', 'g'), ' ')
           = btrim(regexp_replace(new_text, '\s+', ' ', 'g'), ' ') THEN
        verdict := 'identical';
        similarity := 1;
        RETURN;
    END IF;

    total := cardinality(old_words) + cardinality(new_words);
    IF total = 0 THEN
        similarity := 1;
    ELSE
        SELECT count(*) INTO common
          FROM (SELECT unnest(old_words) INTERSECT ALL SELECT unnest(new_words)) s;
        similarity := common::float8 / (total - common);
    END IF;
    verdict := CASE WHEN similarity >= equivalence_threshold THEN 'equivalent' ELSE 'different' END;
END;
$$;
COMMENT ON FUNCTION canary_shadow_compare(text, text, float8) IS
    'Compare an old and a new answer: verdict (identical, equivalent, different), multiset Jaccard similarity of the words, openings (first five words) and length ratio new/old';

/*
 * One row per shadowed request, written by the shadow worker.  Partitioned by
 * day (UTC) so that old shadow traffic is dropped a partition at a time; rows
 * outside every daily partition land in canary_shadow_default.  No foreign
 * key to canary_config: the evidence outlives the rollout.
 */
CREATE TABLE canary_shadow (
    request_id      uuid NOT NULL,
    ts              timestamptz NOT NULL DEFAULT now(),
    canary          text NOT NULL,
    user_id         text,
    prompt_hash     text,
    prompt          text,
    prompt_class    text,
    old_model       text,
    new_model       text,
    old_text        text,
    old_tokens      integer,
    old_latency_ms  integer,
    old_refusal     boolean,
    old_error       text,
    new_text        text,
    new_tokens      integer,
    new_latency_ms  integer,
    new_refusal     boolean,
    new_error       text,
    new_cached      boolean,
    -- filled from canary_shadow_compare() by the trigger below; the worker
    -- supplies similarity with similarity_method 'embedding' when the
    -- rollout has a shadow_embedding_model and the embeddings call worked
    verdict         text,
    similarity      float8,
    similarity_method text,
    old_opening     text,
    new_opening     text,
    length_ratio    float8
) PARTITION BY RANGE (ts);
CREATE INDEX canary_shadow_canary_ts_idx ON canary_shadow (canary, ts);
CREATE INDEX canary_shadow_request_id_idx ON canary_shadow (request_id);
CREATE TABLE canary_shadow_default PARTITION OF canary_shadow DEFAULT;
COMMENT ON TABLE canary_shadow IS
    'Shadow mode: the old and the new model''s answer to the same request, compared when written';
COMMENT ON COLUMN canary_shadow.verdict IS
    'identical, equivalent or different (see canary_shadow_compare); NULL when either answer is missing';
COMMENT ON COLUMN canary_shadow.new_error IS
    'Why the new model gave no answer; ''timeout'' when it did not answer in time';
COMMENT ON COLUMN canary_shadow.new_cached IS
    'The new model''s answer came from canary_response_cache (llm_canary.response_cache_ttl)';
COMMENT ON COLUMN canary_shadow.similarity_method IS
    'lexical (multiset Jaccard of the words) or embedding (cosine of the answers'' embeddings); NULL when there is no similarity';

/*
 * Create the daily partitions canary_shadow_YYYYMMDD for days UTC days from
 * from_day on; those that exist are skipped.  Rows already in the default
 * partition for such a day are moved into the new partition (a new partition
 * cannot be added while the default one holds rows of its range).  Returns
 * the number of partitions created.  Meant for a daily maintenance job.
 */
CREATE FUNCTION canary_shadow_create_partitions(from_day date DEFAULT (now() AT TIME ZONE 'UTC')::date,
                                                days integer DEFAULT 8)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    created integer := 0;
    day     date;
    part    text;
    lo      text;
    hi      text;
BEGIN
    IF from_day IS NULL OR days IS NULL THEN
        RAISE EXCEPTION 'from_day and days must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'For example canary_shadow_create_partitions(current_date, 8).';
    END IF;
    IF days NOT BETWEEN 0 AND 366 THEN
        RAISE EXCEPTION 'days % is out of range', days
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create between 0 and 366 daily partitions at a time.';
    END IF;
    -- one creator at a time; inserts (ROW EXCLUSIVE) go on
    LOCK TABLE @extschema@.canary_shadow IN SHARE UPDATE EXCLUSIVE MODE;
    FOR i IN 0 .. days - 1 LOOP
        day := from_day + i;
        part := 'canary_shadow_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(format('%I.%I', '@extschema@', part)) IS NOT NULL;
        lo := to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00';
        hi := to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';
        EXECUTE format('CREATE TABLE %I.%I (LIKE %I.canary_shadow INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       '@extschema@', part, '@extschema@');
        EXECUTE format('WITH moved AS (DELETE FROM %I.canary_shadow_default WHERE ts >= %L AND ts < %L RETURNING *)'
                       ' INSERT INTO %I.%I SELECT * FROM moved',
                       '@extschema@', lo, hi, '@extschema@', part);
        EXECUTE format('ALTER TABLE %I.canary_shadow ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                       '@extschema@', '@extschema@', part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;
COMMENT ON FUNCTION canary_shadow_create_partitions(date, integer) IS
    'Create the daily partitions of canary_shadow for the given number of UTC days from from_day; returns how many were created';

SELECT canary_shadow_create_partitions((now() AT TIME ZONE 'UTC')::date, 8);

-- Fill the comparison columns when a row is written (and when its answers change).
CREATE FUNCTION canary_shadow_fill()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    threshold float8;
    supplied  float8;
BEGIN
    SELECT shadow_equivalence_threshold INTO threshold
      FROM @extschema@.canary_config WHERE name = NEW.canary;
    threshold := coalesce(threshold, 0.8);
    -- an embedding similarity written with the row (never a stale one on UPDATE)
    IF TG_OP = 'INSERT' AND NEW.similarity_method = 'embedding' AND NEW.similarity IS NOT NULL
       AND NEW.old_text IS NOT NULL AND NEW.new_text IS NOT NULL THEN
        supplied := NEW.similarity;
    END IF;
    SELECT c.verdict, c.similarity, c.old_opening, c.new_opening, c.length_ratio
      INTO NEW.verdict, NEW.similarity, NEW.old_opening, NEW.new_opening, NEW.length_ratio
      FROM @extschema@.canary_shadow_compare(NEW.old_text, NEW.new_text, threshold) c;
    IF supplied IS NOT NULL THEN
        NEW.similarity := supplied;
        NEW.similarity_method := 'embedding';
        IF NEW.verdict <> 'identical' THEN
            NEW.verdict := CASE WHEN supplied >= threshold THEN 'equivalent' ELSE 'different' END;
        END IF;
    ELSE
        NEW.similarity_method := CASE WHEN NEW.similarity IS NOT NULL THEN 'lexical' END;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_shadow_fill
    BEFORE INSERT OR UPDATE OF old_text, new_text ON canary_shadow
    FOR EACH ROW EXECUTE FUNCTION canary_shadow_fill();

/*
 * Reports.  Each takes a rollout and a window (rows with ts >= now() - since)
 * and checks both through this helper, which returns the window's start.
 */
CREATE FUNCTION canary_shadow_window(canary text, since interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    known text;
BEGIN
    IF canary IS NULL THEN
        RAISE EXCEPTION 'rollout name must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the name of a rollout in canary_config, for example ''default''.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c WHERE c.name = canary) THEN
        SELECT coalesce(string_agg(c.name, ', ' ORDER BY c.name), 'none') INTO known
          FROM @extschema@.canary_config c;
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = format('Existing rollouts: %s. Create one with INSERT INTO canary_config (name, old_model, new_model).', known);
    END IF;
    IF since IS NULL THEN
        RAISE EXCEPTION 'since must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass how far back to look, for example interval ''7 days''.';
    END IF;
    IF since < interval '0' THEN
        RAISE EXCEPTION 'since must not be negative'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how far back to look, for example interval ''7 days''.';
    END IF;
    RETURN now() - since;
END;
$$;
COMMENT ON FUNCTION canary_shadow_window(text, interval) IS
    'Start of a report window (now() - since), after checking the rollout and the interval';

/*
 * The Stage 1 summary and gate.  "Paired" rows are those where both models
 * answered (old_text and new_text not NULL); every comparison is over them,
 * so both sides are measured on the same prompts:
 *   identical/equivalent/different_share  verdict counts / paired
 *   agreement           identical_share + equivalent_share
 *   old/new_refusal_rate  rows with x_refusal true / paired
 *   refusal_delta       new_refusal_rate - old_refusal_rate
 *   *_length            length in characters: mean, p50 and p95
 *                       (percentile_disc: an observed length)
 *   *_length_ratio      new / old of the same statistic
 * Over all rows (samples): new_error_rate (new_error not NULL) and
 * new_timeout_rate (new_error = 'timeout').
 * ready: paired > 0, agreement >= shadow_min_agreement,
 * |refusal_delta| <= shadow_max_refusal_delta and
 * 1/shadow_max_length_ratio <= mean_length_ratio <= shadow_max_length_ratio
 * (a NULL setting is not checked); reasons lists each failed condition.
 * Rates are rounded to 4 decimals, ratios to 3, means to 1; the gate uses
 * the exact values.
 */
CREATE FUNCTION canary_shadow_report(canary text DEFAULT 'default', since interval DEFAULT '7 days')
RETURNS TABLE (samples bigint, paired bigint,
               identical_share numeric, equivalent_share numeric, different_share numeric,
               agreement numeric,
               old_refusal_rate numeric, new_refusal_rate numeric, refusal_delta numeric,
               old_mean_length numeric, new_mean_length numeric, mean_length_ratio numeric,
               old_p50_length integer, new_p50_length integer, p50_length_ratio numeric,
               old_p95_length integer, new_p95_length integer, p95_length_ratio numeric,
               new_error_rate numeric, new_timeout_rate numeric,
               ready boolean, reasons text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff  timestamptz := @extschema@.canary_shadow_window(canary_shadow_report.canary, since);
    cfg     record;
    s       record;
    agree   numeric;
    delta   numeric;
    ratio   numeric;
    why     text[] := '{}';
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = canary_shadow_report.canary;

    SELECT count(*) AS samples,
           count(*) FILTER (WHERE p) AS paired,
           count(*) FILTER (WHERE p AND verdict = 'identical') AS identical,
           count(*) FILTER (WHERE p AND verdict = 'equivalent') AS equivalent,
           count(*) FILTER (WHERE p AND verdict = 'different') AS different,
           count(*) FILTER (WHERE p AND old_refusal) AS old_refusals,
           count(*) FILTER (WHERE p AND new_refusal) AS new_refusals,
           avg(length(old_text)) FILTER (WHERE p) AS old_mean,
           avg(length(new_text)) FILTER (WHERE p) AS new_mean,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY length(old_text)) FILTER (WHERE p) AS old_p50,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY length(new_text)) FILTER (WHERE p) AS new_p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY length(old_text)) FILTER (WHERE p) AS old_p95,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY length(new_text)) FILTER (WHERE p) AS new_p95,
           count(*) FILTER (WHERE new_error IS NOT NULL) AS errors,
           count(*) FILTER (WHERE new_error = 'timeout') AS timeouts
      INTO s
      FROM (SELECT r.*, r.old_text IS NOT NULL AND r.new_text IS NOT NULL AS p
              FROM @extschema@.canary_shadow r
             WHERE r.canary = canary_shadow_report.canary AND r.ts >= cutoff) x;

    IF s.paired > 0 THEN
        agree := (s.identical + s.equivalent)::numeric / s.paired;
        delta := (s.new_refusals - s.old_refusals)::numeric / s.paired;
        ratio := s.new_mean / nullif(s.old_mean, 0);
    END IF;

    IF s.samples = 0 THEN
        why := why || format('no shadow samples since %s UTC',
                             to_char(cutoff AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'));
    ELSIF s.paired = 0 THEN
        why := why || format('no paired answers: the new model answered none of %s samples', s.samples);
    ELSE
        IF agree < cfg.shadow_min_agreement THEN
            why := why || format('agreement %s < %s (%s of %s paired answers identical or equivalent)',
                                 round(agree, 3), cfg.shadow_min_agreement,
                                 s.identical + s.equivalent, s.paired);
        END IF;
        IF abs(delta) > cfg.shadow_max_refusal_delta THEN
            why := why || format('refusal delta %s%s %s %s%s (old %s, new %s)',
                                 CASE WHEN delta > 0 THEN '+' END, round(delta, 3),
                                 CASE WHEN delta > 0 THEN '>' ELSE '<' END,
                                 CASE WHEN delta > 0 THEN '+' ELSE '-' END, cfg.shadow_max_refusal_delta,
                                 round(s.old_refusals::numeric / s.paired, 3),
                                 round(s.new_refusals::numeric / s.paired, 3));
        END IF;
        IF cfg.shadow_max_length_ratio IS NOT NULL THEN
            IF ratio IS NULL THEN
                why := why || 'mean length ratio undefined: the old answers are empty'::text;
            ELSIF ratio > cfg.shadow_max_length_ratio THEN
                why := why || format('mean length ratio %s > %s (new %s vs old %s characters)',
                                     round(ratio, 3), cfg.shadow_max_length_ratio,
                                     round(s.new_mean, 1), round(s.old_mean, 1));
            ELSIF ratio < 1 / cfg.shadow_max_length_ratio THEN
                why := why || format('mean length ratio %s < %s (1/%s) (new %s vs old %s characters)',
                                     round(ratio, 3), round(1 / cfg.shadow_max_length_ratio, 3),
                                     cfg.shadow_max_length_ratio,
                                     round(s.new_mean, 1), round(s.old_mean, 1));
            END IF;
        END IF;
    END IF;

    RETURN QUERY SELECT
        s.samples, s.paired,
        round(s.identical::numeric / nullif(s.paired, 0), 4),
        round(s.equivalent::numeric / nullif(s.paired, 0), 4),
        round(s.different::numeric / nullif(s.paired, 0), 4),
        round(agree, 4),
        round(s.old_refusals::numeric / nullif(s.paired, 0), 4),
        round(s.new_refusals::numeric / nullif(s.paired, 0), 4),
        round(delta, 4),
        round(s.old_mean, 1), round(s.new_mean, 1), round(ratio, 3),
        s.old_p50, s.new_p50, round(s.new_p50::numeric / nullif(s.old_p50, 0), 3),
        s.old_p95, s.new_p95, round(s.new_p95::numeric / nullif(s.old_p95, 0), 3),
        round(s.errors::numeric / nullif(s.samples, 0), 4),
        round(s.timeouts::numeric / nullif(s.samples, 0), 4),
        cardinality(why) = 0, why;
END;
$$;
COMMENT ON FUNCTION canary_shadow_report(text, interval) IS
    'Shadow mode summary of a rollout: verdict shares, refusal rates, lengths, new-model errors, and whether it is ready to leave shadow (with the reasons if not)';

/*
 * The openings, the article's cheapest tone-drift detector: the top n
 * openings by max(old count, new count), ties by opening; old_share is the
 * share among old answers (old_text not NULL), new_share among new answers;
 * delta = new_share - old_share; a bar is round(20 * share) blocks, so 20
 * blocks are 100 %.  An answer without words shows as '(no words)'.
 */
CREATE FUNCTION canary_shadow_openings(canary text DEFAULT 'default', since interval DEFAULT '7 days',
                                       n integer DEFAULT 20)
RETURNS TABLE (opening text, old_share numeric, new_share numeric, delta numeric,
               old_bar text, new_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_shadow_window(canary_shadow_openings.canary, since);
BEGIN
    IF n IS NULL THEN
        RAISE EXCEPTION 'n must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass how many openings to show, for example 20.';
    END IF;
    IF n < 1 THEN
        RAISE EXCEPTION 'n % must be at least 1', n
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how many openings to show, for example 20.';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT r.old_opening, r.new_opening
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_openings.canary AND r.ts >= cutoff
    ), totals AS (
        SELECT count(w.old_opening) AS old_total, count(w.new_opening) AS new_total FROM w
    ), counts AS (
        SELECT o.op, sum(o.old_n) AS old_n, sum(o.new_n) AS new_n
          FROM (SELECT w.old_opening AS op, 1 AS old_n, 0 AS new_n FROM w WHERE w.old_opening IS NOT NULL
                UNION ALL
                SELECT w.new_opening, 0, 1 FROM w WHERE w.new_opening IS NOT NULL) o
         GROUP BY o.op
    ), shares AS (
        SELECT c.op, greatest(c.old_n, c.new_n) AS top,
               c.old_n::numeric / nullif(t.old_total, 0) AS os,
               c.new_n::numeric / nullif(t.new_total, 0) AS ns
          FROM counts c, totals t
    )
    SELECT CASE WHEN sh.op = '' THEN '(no words)' ELSE sh.op END,
           round(sh.os, 4), round(sh.ns, 4), round(sh.ns - sh.os, 4),
           repeat('█', round(20 * coalesce(sh.os, 0))::integer),
           repeat('█', round(20 * coalesce(sh.ns, 0))::integer)
      FROM shares sh
     ORDER BY sh.top DESC, sh.op
     LIMIT n;
END;
$$;
COMMENT ON FUNCTION canary_shadow_openings(text, interval, integer) IS
    'The most frequent openings (first five words) of old and new answers with their shares: the tone-drift detector';

/*
 * Length histogram, old vs new, over common bounds: buckets equal-width
 * buckets over [0, L], L the longest answer of either model in the window;
 * bucket i holds lengths in [lower, upper), the last one also L
 * (width_bucket, with L put into the last bucket).  Each side counts its own
 * answers (x_text not NULL).  A bar is round(20 * count / largest count of
 * either side) blocks.  No rows when the window holds no answer.
 */
CREATE FUNCTION canary_shadow_lengths(canary text DEFAULT 'default', since interval DEFAULT '7 days',
                                      buckets integer DEFAULT 10)
RETURNS TABLE (bucket integer, lower numeric, upper numeric, old_count bigint, new_count bigint,
               old_bar text, new_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_shadow_window(canary_shadow_lengths.canary, since);
BEGIN
    IF buckets IS NULL THEN
        RAISE EXCEPTION 'buckets must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the number of histogram buckets, for example 10.';
    END IF;
    IF buckets NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'buckets % is out of range', buckets
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass between 1 and 1000 histogram buckets, for example 10.';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT length(r.old_text)::numeric AS ol, length(r.new_text)::numeric AS nl
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_lengths.canary AND r.ts >= cutoff
           AND (r.old_text IS NOT NULL OR r.new_text IS NOT NULL)
    ), top AS (
        -- a window of empty answers still gets a histogram: all in bucket 1
        SELECT greatest(max(w.ol), max(w.nl), 1) AS l FROM w HAVING count(*) > 0
    ), placed AS (
        -- least() skips NULLs: a missing answer must stay out of every bucket
        SELECT CASE WHEN w.ol IS NOT NULL THEN least(width_bucket(w.ol, 0, top.l, buckets), buckets) END AS ob,
               CASE WHEN w.nl IS NOT NULL THEN least(width_bucket(w.nl, 0, top.l, buckets), buckets) END AS nb
          FROM w, top
    ), old_counts AS (
        SELECT p.ob AS b, count(*) AS c FROM placed p WHERE p.ob IS NOT NULL GROUP BY p.ob
    ), new_counts AS (
        SELECT p.nb AS b, count(*) AS c FROM placed p WHERE p.nb IS NOT NULL GROUP BY p.nb
    ), hist AS (
        SELECT g AS b, top.l * (g - 1) / buckets AS lo, top.l * g / buckets AS hi,
               coalesce(oc.c, 0) AS oc, coalesce(nc.c, 0) AS nc
          FROM top
               CROSS JOIN generate_series(1, buckets) g
               LEFT JOIN old_counts oc ON oc.b = g
               LEFT JOIN new_counts nc ON nc.b = g
    ), scale AS (
        SELECT greatest(max(h.oc), max(h.nc), 1) AS m FROM hist h
    )
    SELECT h.b, round(h.lo, 1), round(h.hi, 1), h.oc, h.nc,
           repeat('█', round(20.0 * h.oc / scale.m)::integer),
           repeat('█', round(20.0 * h.nc / scale.m)::integer)
      FROM hist h, scale
     ORDER BY h.b;
END;
$$;
COMMENT ON FUNCTION canary_shadow_lengths(text, interval, integer) IS
    'Histogram of answer lengths in characters, old vs new model, over common bucket bounds';

/*
 * Per prompt class (NULL shown as '(none)'), over paired rows as in
 * canary_shadow_report: agreement, refusal_delta (new - old refusal rate),
 * mean_length_ratio (mean new / mean old length).  A class is
 * worse_than_overall when
 *     agreement < overall agreement - 0.10       (more than 10 points lower)
 *  or refusal_delta > overall refusal_delta + 0.05,
 * both over all paired rows of the window; note says which and by how much.
 * A class without paired rows is never flagged.  Flagged classes come first,
 * then by samples.
 */
CREATE FUNCTION canary_shadow_by_class(canary text DEFAULT 'default', since interval DEFAULT '7 days')
RETURNS TABLE (prompt_class text, samples bigint, paired bigint, agreement numeric,
               refusal_delta numeric, mean_length_ratio numeric,
               worse_than_overall boolean, note text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_shadow_window(canary_shadow_by_class.canary, since);
BEGIN
    RETURN QUERY
    WITH w AS (
        SELECT coalesce(r.prompt_class, '(none)') AS cls,
               r.old_text IS NOT NULL AND r.new_text IS NOT NULL AS p,
               r.verdict, r.old_refusal, r.new_refusal,
               length(r.old_text) AS ol, length(r.new_text) AS nl
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_by_class.canary AND r.ts >= cutoff
    ), overall AS (
        SELECT count(*) FILTER (WHERE w.verdict IN ('identical', 'equivalent'))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS agree,
               (count(*) FILTER (WHERE w.p AND w.new_refusal) - count(*) FILTER (WHERE w.p AND w.old_refusal))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS delta
          FROM w
    ), per AS (
        SELECT w.cls, count(*) AS samples, count(*) FILTER (WHERE w.p) AS paired,
               count(*) FILTER (WHERE w.p AND w.verdict IN ('identical', 'equivalent'))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS agree,
               (count(*) FILTER (WHERE w.p AND w.new_refusal) - count(*) FILTER (WHERE w.p AND w.old_refusal))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS delta,
               avg(w.nl) FILTER (WHERE w.p) / nullif(avg(w.ol) FILTER (WHERE w.p), 0) AS ratio
          FROM w
         GROUP BY w.cls
    ), judged AS (
        SELECT per.*, o.agree AS o_agree, o.delta AS o_delta,
               coalesce(per.agree < o.agree - 0.10, false) AS low_agree,
               coalesce(per.delta > o.delta + 0.05, false) AS more_refusals
          FROM per, overall o
    )
    SELECT j.cls, j.samples, j.paired, round(j.agree, 4), round(j.delta, 4), round(j.ratio, 3),
           j.low_agree OR j.more_refusals,
           nullif(concat_ws('; ',
               CASE WHEN j.low_agree THEN
                   format('agreement %s is %s points below overall %s',
                          round(j.agree, 3), round(100 * (j.o_agree - j.agree), 1), round(j.o_agree, 3)) END,
               CASE WHEN j.more_refusals THEN
                   format('refusal delta %s exceeds overall %s by %s',
                          round(j.delta, 3), round(j.o_delta, 3), round(j.delta - j.o_delta, 3)) END), '')
      FROM judged j
     ORDER BY j.low_agree OR j.more_refusals DESC, j.samples DESC, j.cls;
END;
$$;
COMMENT ON FUNCTION canary_shadow_by_class(text, interval) IS
    'Shadow mode per prompt class: agreement, refusal delta and length ratio, flagging classes clearly worse than the rollout overall';

CREATE FUNCTION canary_shadow_stats()
RETURNS TABLE (queue_capacity integer, in_flight integer, dispatched bigint,
               dropped_queue_full bigint, dropped_no_worker bigint, dropped_memory bigint,
               rows_written bigint, rows_lost bigint, bytes_in_use bigint)
AS 'MODULE_PATHNAME', 'canary_shadow_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_shadow_stats() IS
    'Counters of shadow mode since server start: jobs dispatched, dropped (queue full, no worker, memory), rows written and lost';
/*
 * The call path: canary_call and the refusal patterns it matches answers
 * against.  Implemented in src/call.c (with src/http.c and src/provider.c).
 */

CREATE TABLE canary_refusal_patterns (
    pattern     text PRIMARY KEY CHECK (pattern <> ''),
    enabled     boolean NOT NULL DEFAULT true,
    note        text
);
COMMENT ON TABLE canary_refusal_patterns IS
    'An answer containing one of these phrases (case-insensitive) counts as a refusal';

INSERT INTO canary_refusal_patterns (pattern, note) VALUES
    ('I cannot help with that', 'the article''s example'),
    ('I can''t help with that', NULL),
    ('I cannot assist with', NULL),
    ('I can''t assist with', NULL),
    ('I''m sorry, but I can''t', NULL),
    ('I''m sorry, but I cannot', NULL),
    ('I am unable to help with', NULL),
    ('I''m unable to help with', NULL),
    ('I''m not able to help with', NULL),
    ('I won''t be able to help with', NULL);

CREATE TRIGGER canary_refusal_patterns_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON canary_refusal_patterns
    FOR EACH STATEMENT EXECUTE FUNCTION canary_invalidate_cache();

SELECT pg_catalog.pg_extension_config_dump('canary_refusal_patterns', '');

CREATE FUNCTION canary_call(prompt text, user_id text, canary text DEFAULT 'default',
                            prompt_class text DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'canary_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_call(text, text, text, text, text) IS
    'Answer a user''s prompt with the model the rollout routes them to; every attempt is recorded in canary_requests';
/*
 * The response cache (src/cache.c): with llm_canary.response_cache_ttl > 0,
 * canary_call and the shadow worker answer a prompt a model already answered
 * within the TTL from here, without calling the model again.
 *
 * One row per (model, prompt).  request_sha256 is the SHA-256 of exactly
 * what would be sent (the URL, then a line feed, then the JSON body: model
 * id, system prompt, max tokens, temperature and the prompt), so an answer
 * is served only to the request that produced it: a changed model
 * configuration misses, and the next answer replaces the row.  Only answers
 * are stored (outcome ok or refusal, with text); never errors or timeouts.
 *
 * The table holds answers to every user's prompts: it belongs to the
 * extension's owner, and the C code reads and writes it under that
 * identity, so no application role needs (or should get) privileges on it.
 * Expired rows are deleted by canary_maintenance().
 */
CREATE TABLE canary_response_cache (
    model               text NOT NULL,
    prompt_sha256       text NOT NULL,
    request_sha256      text NOT NULL,
    response            text NOT NULL,
    prompt_tokens       integer,
    completion_tokens   integer,
    provider_refusal    boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, prompt_sha256)
);
CREATE INDEX canary_response_cache_created_at_idx ON canary_response_cache (created_at);
REVOKE ALL ON canary_response_cache FROM PUBLIC;
COMMENT ON TABLE canary_response_cache IS
    'Answers of the models per (model, prompt), served again within llm_canary.response_cache_ttl; owner-only';
COMMENT ON COLUMN canary_response_cache.model IS 'canary_models.name of the model that answered';
COMMENT ON COLUMN canary_response_cache.prompt_sha256 IS 'SHA-256 (hex) of the whole prompt';
COMMENT ON COLUMN canary_response_cache.request_sha256 IS
    'SHA-256 (hex) of the request URL and body: a hit needs the same model id, system prompt, max tokens and temperature';
COMMENT ON COLUMN canary_response_cache.provider_refusal IS
    'The provider signalled a refusal; refusal patterns are matched again at every hit';
/*
 * Reading the metrics: the per-cohort summary and the Prometheus export.
 */

CREATE FUNCTION canary_summary(canary text DEFAULT 'default', since interval DEFAULT '1 hour')
RETURNS TABLE (cohort text, model text, requests bigint, fallbacks bigint,
               error_rate numeric, refusal_rate numeric,
               p50_latency_ms numeric, p95_latency_ms numeric,
               mean_completion_tokens numeric, thumbs_down_rate numeric, cost numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF since IS NULL OR since < '0'::interval THEN
        RAISE EXCEPTION 'since must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example: canary_summary(''default'', ''1 hour'').';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c WHERE c.name = canary_summary.canary) THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    RETURN QUERY
    SELECT r.cohort,
           string_agg(DISTINCT r.model, ', ') FILTER (WHERE NOT r.fallback),
           count(*) FILTER (WHERE NOT r.fallback),
           count(*) FILTER (WHERE r.fallback),
           round(avg((r.outcome IN ('error', 'timeout'))::int) FILTER (WHERE NOT r.fallback), 4),
           round(avg(r.refusal::int) FILTER (WHERE NOT r.fallback), 4),
           round((percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency_ms)
                  FILTER (WHERE NOT r.fallback))::numeric, 1),
           round((percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms)
                  FILTER (WHERE NOT r.fallback))::numeric, 1),
           round(avg(r.completion_tokens) FILTER (WHERE NOT r.fallback), 1),
           round(avg((EXISTS (SELECT 1 FROM @extschema@.canary_feedback f
                              WHERE f.request_id = r.request_id AND f.thumbs_down))::int)
                 FILTER (WHERE NOT r.fallback), 4),
           round(sum(r.cost), 6)
      FROM @extschema@.canary_requests r
     WHERE r.canary = canary_summary.canary AND r.ts > now() - since
     GROUP BY r.cohort
     ORDER BY r.cohort;
END;
$$;
COMMENT ON FUNCTION canary_summary(text, interval) IS
    'Per cohort: requests, error and refusal rates, p50/p95 latency, mean completion tokens, thumbs-down rate, cost';
/*
 * Monitoring: the Prometheus exposition of the article's metric schema and
 * a per-cohort timeline of the kill switch's window summaries for psql.
 */

/*
 * canary_prometheus: text exposition format (version 0.0.4), for every
 * rollout or just one.  Series carry a canary label besides the article's
 * model, cohort and outcome labels.  Counters and
 * histograms are computed from the retained rows of canary_requests and
 * canary_feedback (so they restart when old partitions are dropped, which
 * Prometheus treats as a counter reset), labelled by model, cohort and,
 * for llm_requests_total, outcome.  Fallback attempts carry their own cohort
 * label value "<cohort>_fallback" so that the canary cohort's series are the
 * new model's own answers.
 */
CREATE FUNCTION canary_prometheus(canary text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    out text := '';
    r record;
    le_latency integer[] := ARRAY[50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];
    le_tokens integer[] := ARRAY[16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
    s record;
    ss record;
BEGIN
    out := out || E'# HELP llm_requests_total Model attempts by model, cohort and outcome.\n'
               || E'# TYPE llm_requests_total counter\n';
    FOR r IN
        SELECT q.canary, q.model, q.cohort || CASE WHEN q.fallback THEN '_fallback' ELSE '' END AS cohort,
               q.outcome, count(*) AS n
          FROM @extschema@.canary_requests q
         WHERE canary_prometheus.canary IS NULL OR q.canary = canary_prometheus.canary
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    LOOP
        out := out || format(E'llm_requests_total{canary="%s",model="%s",cohort="%s",outcome="%s"} %s\n',
                             r.canary, r.model, r.cohort, r.outcome, r.n);
    END LOOP;

    FOR r IN SELECT * FROM (VALUES
                 ('llm_latency_ms', 'Latency of model attempts in milliseconds.', 'latency_ms', le_latency),
                 ('llm_completion_tokens', 'Completion tokens of model answers.', 'completion_tokens', le_tokens))
                 AS v(metric, help, col, bounds)
    LOOP
        out := out || format(E'# HELP %s %s\n# TYPE %s histogram\n', r.metric, r.help, r.metric);
        FOR s IN EXECUTE format(
            'SELECT canary, model, cohort || CASE WHEN fallback THEN ''_fallback'' ELSE '''' END AS cohort,'
            ' array_agg(%1$I) FILTER (WHERE %1$I IS NOT NULL) AS vals,'
            ' coalesce(sum(%1$I), 0) AS total, count(%1$I) AS n'
            ' FROM @extschema@.canary_requests WHERE $1 IS NULL OR canary = $1'
            ' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3', r.col) USING canary_prometheus.canary
        LOOP
            FOR i IN 1 .. array_length(r.bounds, 1) LOOP
                out := out || format(E'%s_bucket{canary="%s",model="%s",cohort="%s",le="%s"} %s\n',
                                     r.metric, s.canary, s.model, s.cohort, r.bounds[i],
                                     (SELECT count(*) FROM unnest(s.vals) v WHERE v <= r.bounds[i]));
            END LOOP;
            out := out || format(E'%s_bucket{canary="%s",model="%s",cohort="%s",le="+Inf"} %s\n',
                                 r.metric, s.canary, s.model, s.cohort, s.n)
                       || format(E'%s_sum{canary="%s",model="%s",cohort="%s"} %s\n',
                                 r.metric, s.canary, s.model, s.cohort, s.total)
                       || format(E'%s_count{canary="%s",model="%s",cohort="%s"} %s\n',
                                 r.metric, s.canary, s.model, s.cohort, s.n);
        END LOOP;
    END LOOP;

    out := out || E'# HELP llm_refusals_total Refusals by model and cohort.\n# TYPE llm_refusals_total counter\n';
    FOR r IN
        SELECT q.canary, q.model, q.cohort || CASE WHEN q.fallback THEN '_fallback' ELSE '' END AS cohort,
               count(*) FILTER (WHERE q.refusal) AS n
          FROM @extschema@.canary_requests q
         WHERE canary_prometheus.canary IS NULL OR q.canary = canary_prometheus.canary
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    LOOP
        out := out || format(E'llm_refusals_total{canary="%s",model="%s",cohort="%s"} %s\n',
                             r.canary, r.model, r.cohort, r.n);
    END LOOP;

    out := out || E'# HELP llm_thumbs_down_total Thumbs-down verdicts by model and cohort.\n# TYPE llm_thumbs_down_total counter\n';
    FOR r IN
        SELECT f.canary, f.model, f.cohort, count(*) FILTER (WHERE f.thumbs_down) AS n
          FROM @extschema@.canary_feedback f
         WHERE canary_prometheus.canary IS NULL OR f.canary = canary_prometheus.canary
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    LOOP
        out := out || format(E'llm_thumbs_down_total{canary="%s",model="%s",cohort="%s"} %s\n',
                             r.canary, r.model, r.cohort, r.n);
    END LOOP;

    -- the extension's own health
    SELECT * INTO ss FROM @extschema@.canary_stats();
    out := out || E'# HELP llm_canary_queue_depth Metric records waiting for the worker.\n# TYPE llm_canary_queue_depth gauge\n'
               || format(E'llm_canary_queue_depth %s\n', coalesce(ss.queue_depth, 0))
               || E'# HELP llm_canary_queue_dropped_total Metric records dropped because the queue was full.\n# TYPE llm_canary_queue_dropped_total counter\n'
               || format(E'llm_canary_queue_dropped_total %s\n', coalesce(ss.dropped, 0))
               || E'# HELP llm_canary_metrics_written_total Metric records written by the worker since server start.\n# TYPE llm_canary_metrics_written_total counter\n'
               || format(E'llm_canary_metrics_written_total %s\n', coalesce(ss.written, 0))
               || E'# HELP llm_canary_worker_up 1 when the llm_canary worker is running.\n# TYPE llm_canary_worker_up gauge\n'
               || format(E'llm_canary_worker_up %s\n', CASE WHEN ss.worker_state = 'running' THEN 1 ELSE 0 END)
               || E'# HELP llm_canary_kill_switch_armed 1 while a rollout''s kill switch is armed, 0 once tripped.\n# TYPE llm_canary_kill_switch_armed gauge\n';
    FOR r IN SELECT c.name, c.kill_switch_armed FROM @extschema@.canary_config c
              WHERE canary_prometheus.canary IS NULL OR c.name = canary_prometheus.canary ORDER BY c.name LOOP
        out := out || format(E'llm_canary_kill_switch_armed{canary="%s"} %s\n', r.name, r.kill_switch_armed::int);
    END LOOP;
    out := out || E'# HELP llm_canary_percent_new Percentage of users routed to the new model.\n# TYPE llm_canary_percent_new gauge\n';
    FOR r IN SELECT c.name, c.percent_new FROM @extschema@.canary_config c
              WHERE canary_prometheus.canary IS NULL OR c.name = canary_prometheus.canary ORDER BY c.name LOOP
        out := out || format(E'llm_canary_percent_new{canary="%s"} %s\n', r.name, r.percent_new);
    END LOOP;
    RETURN out;
END;
$$;
COMMENT ON FUNCTION canary_prometheus(text) IS
    'Prometheus exposition: llm_requests_total, llm_latency_ms, llm_completion_tokens, llm_refusals_total, llm_thumbs_down_total and the extension''s health';

/*
 * canary_timeline: the kill switch's window summaries per cohort over the
 * last hours, one row per check, with text bars so a trend shows in psql.
 */
CREATE FUNCTION canary_timeline(canary text DEFAULT 'default', since interval DEFAULT '6 hours')
RETURNS TABLE (at timestamptz, cohort text, samples bigint, error_rate numeric, error_bar text,
               p95_latency_ms numeric, p95_bar text, refusal_rate numeric, refusal_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_err float8;
    max_p95 float8;
    max_ref float8;
BEGIN
    IF since IS NULL OR since < '0'::interval THEN
        RAISE EXCEPTION 'since must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example: canary_timeline(''default'', ''6 hours'').';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c WHERE c.name = canary_timeline.canary) THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    SELECT max(w.error_rate), max(w.p95_latency_ms), max(w.refusal_rate)
      INTO max_err, max_p95, max_ref
      FROM @extschema@.canary_window_summaries w
     WHERE w.canary = canary_timeline.canary AND w.at > now() - since;
    RETURN QUERY
    SELECT w.at, w.cohort, w.samples,
           round(w.error_rate::numeric, 4),
           repeat('█', CASE WHEN max_err > 0 THEN round(20 * coalesce(w.error_rate, 0) / max_err)::int ELSE 0 END),
           round(w.p95_latency_ms::numeric, 0),
           repeat('█', CASE WHEN max_p95 > 0 THEN round(20 * coalesce(w.p95_latency_ms, 0) / max_p95)::int ELSE 0 END),
           round(w.refusal_rate::numeric, 4),
           repeat('█', CASE WHEN max_ref > 0 THEN round(20 * coalesce(w.refusal_rate, 0) / max_ref)::int ELSE 0 END)
      FROM @extschema@.canary_window_summaries w
     WHERE w.canary = canary_timeline.canary AND w.at > now() - since
     ORDER BY w.at, w.cohort;
END;
$$;
COMMENT ON FUNCTION canary_timeline(text, interval) IS
    'Per-cohort timeline of the kill switch''s window summaries, with text bars (error rate, p95, refusals)';
/*
 * The monitor: window summaries, the kill switch, alerts, the slow CSAT
 * signal and scheduling.  canary_check is in src/monitor.c; the rest is SQL.
 */

CREATE TABLE canary_window_summaries (
    id                  bigserial PRIMARY KEY,
    canary              text NOT NULL,
    at                  timestamptz NOT NULL,
    window_seconds      integer NOT NULL,
    stage               text NOT NULL,
    cohort              text NOT NULL CHECK (cohort IN ('canary', 'control')),
    samples             bigint NOT NULL,
    errors              bigint NOT NULL,
    error_rate          double precision,
    p95_latency_ms      double precision,
    refusals            bigint NOT NULL,
    refusal_rate        double precision,
    thumbs_down         bigint NOT NULL,
    thumbs_down_rate    double precision,
    slow_share          double precision,  -- canary only: share slower than p95 ratio x baseline p95
    baseline_from       timestamptz        -- canary only: 'at' of the control summary used as baseline
);
CREATE INDEX canary_window_summaries_idx ON canary_window_summaries (canary, at);
COMMENT ON TABLE canary_window_summaries IS
    'One row per cohort per kill-switch check: the time series behind every trip decision';

ALTER TABLE canary_config
    ADD COLUMN csat_pinned_at timestamptz,
    ADD COLUMN csat_pin_reason text;

CREATE TABLE canary_alerts (
    id                  bigserial PRIMARY KEY,
    canary              text NOT NULL,
    ts                  timestamptz NOT NULL DEFAULT now(),
    kind                text NOT NULL CHECK (kind IN ('kill_switch', 'manual_trip', 'csat_pin')),
    payload             jsonb NOT NULL,
    webhook_status      text NOT NULL DEFAULT 'pending'
                        CHECK (webhook_status IN ('none', 'pending', 'delivered', 'failed')),
    webhook_attempts    integer NOT NULL DEFAULT 0,
    webhook_last_error  text,
    webhook_next_at     timestamptz,
    delivered_at        timestamptz
);
CREATE INDEX canary_alerts_canary_idx ON canary_alerts (canary, ts);
COMMENT ON TABLE canary_alerts IS
    'Every kill-switch trip and CSAT pin, with the article''s alert payload';

SELECT pg_catalog.pg_extension_config_dump('canary_alerts', '');
SELECT pg_catalog.pg_extension_config_dump('canary_alerts_id_seq', '');

/*
 * canary_raise_alert: record an alert and NOTIFY llm_canary_alerts with its
 * payload (delivered when the transaction commits).  Internal.
 */
CREATE FUNCTION canary_raise_alert(p_canary text, p_kind text, p_payload jsonb)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    alert_id bigint;
BEGIN
    -- webhook_status starts 'pending': the worker delivers it after commit
    -- (or marks it 'none' when llm_canary.webhook_url is not set)
    INSERT INTO @extschema@.canary_alerts (canary, kind, payload)
    VALUES (p_canary, p_kind, p_payload)
    RETURNING id INTO alert_id;
    PERFORM pg_notify('llm_canary_alerts', p_payload::text);
    RETURN alert_id;
END;
$$;
REVOKE ALL ON FUNCTION canary_raise_alert(text, text, jsonb) FROM PUBLIC;

/*
 * canary_trip_internal: flip the switch, record the reason, history (by the
 * config trigger) and the alert, all in the caller's transaction.
 */
CREATE FUNCTION canary_trip_internal(p_canary text, p_reason text, p_kind text,
                                     p_samples_new bigint, p_samples_old bigint)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    payload jsonb;
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config WHERE name = p_canary FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rollout "%" does not exist', p_canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    IF NOT cfg.kill_switch_armed THEN
        RETURN NULL;            -- already tripped: nothing to do
    END IF;
    UPDATE @extschema@.canary_config
       SET kill_switch_armed = false, tripped_at = now(), trip_reason = p_reason
     WHERE name = p_canary;
    payload := jsonb_build_object(
        'alert', 'canary kill-switch tripped',
        'reason', p_reason,
        'canary', p_canary,
        'stage', cfg.stage,
        'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'samples_new', p_samples_new,
        'samples_old', p_samples_old,
        'auto_action', format('all traffic routed to %s', cfg.old_model));
    PERFORM @extschema@.canary_raise_alert(p_canary, p_kind, payload);
    RETURN payload;
END;
$$;
REVOKE ALL ON FUNCTION canary_trip_internal(text, text, text, bigint, bigint) FROM PUBLIC;

CREATE FUNCTION canary_trip(canary text DEFAULT 'default', reason text DEFAULT 'manual trip')
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload jsonb;
BEGIN
    IF canary IS NULL OR reason IS NULL OR reason = '' THEN
        RAISE EXCEPTION 'canary and reason must not be NULL or empty'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Example: SELECT canary_trip(''default'', ''rehearsal in a quiet hour'');';
    END IF;
    payload := @extschema@.canary_trip_internal(canary, reason, 'manual_trip', NULL, NULL);
    IF payload IS NULL THEN
        RAISE NOTICE 'the kill switch of rollout "%" is already tripped', canary;
    END IF;
    RETURN payload;
END;
$$;
COMMENT ON FUNCTION canary_trip(text, text) IS
    'The big red button: route everyone to the old model now, with an alert';

CREATE FUNCTION canary_rearm(canary text DEFAULT 'default')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE @extschema@.canary_config
       SET kill_switch_armed = true
     WHERE name = canary;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
END;
$$;
COMMENT ON FUNCTION canary_rearm(text) IS
    'Re-arm the kill switch: routing follows stage and percent_new again';

CREATE FUNCTION canary_check(canary text DEFAULT NULL, at timestamptz DEFAULT now())
RETURNS text
AS 'MODULE_PATHNAME', 'canary_check'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_check(text, timestamptz) IS
    'Summarise the last window per cohort and trip the kill switch when a rule breaches; returns the reason or NULL';

/*
 * Slow signal: CSAT.  The team loads scores from its support system; users
 * are joined to their cohort through canary_requests of the same day.
 */
CREATE TABLE canary_csat (
    id           bigserial PRIMARY KEY,
    user_id      text NOT NULL,
    score        numeric NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    request_id   uuid
);
CREATE INDEX canary_csat_recorded_idx ON canary_csat (recorded_at);
COMMENT ON TABLE canary_csat IS 'Customer satisfaction scores, loaded from the support system';
SELECT pg_catalog.pg_extension_config_dump('canary_csat', '');
SELECT pg_catalog.pg_extension_config_dump('canary_csat_id_seq', '');

/*
 * Cohort of a CSAT score: the cohort of its request when request_id is
 * given; otherwise the cohorts that served the user on that day (UTC) in the
 * rollout.  A user served by both cohorts that day (a stage change or a trip
 * in between) is counted in neither and reported as mixed.
 */
CREATE FUNCTION canary_csat_report(canary text DEFAULT 'default', days integer DEFAULT 7)
RETURNS TABLE (day date, cohort text, responses bigint, mean_csat numeric,
               delta_vs_control numeric, mixed_users bigint, drop_rule_holds boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'days must be at least 1'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The default report covers 7 days.';
    END IF;
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = canary_csat_report.canary;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    RETURN QUERY
    WITH scores AS (
        SELECT s.user_id, s.score, (s.recorded_at AT TIME ZONE 'UTC')::date AS d, s.request_id
          FROM @extschema@.canary_csat s
         WHERE s.recorded_at >= ((now() AT TIME ZONE 'UTC')::date - (days - 1))::timestamp AT TIME ZONE 'UTC'
    ),
    by_request AS (
        SELECT DISTINCT ON (r.request_id) r.request_id, r.cohort
          FROM @extschema@.canary_requests r
         WHERE r.canary = canary_csat_report.canary
           AND r.request_id IN (SELECT request_id FROM scores WHERE request_id IS NOT NULL)
           AND NOT r.fallback
    ),
    user_day AS (
        SELECT r.user_id, (r.ts AT TIME ZONE 'UTC')::date AS d,
               CASE WHEN count(DISTINCT r.cohort) > 1 THEN 'mixed' ELSE min(r.cohort) END AS cohort
          FROM @extschema@.canary_requests r
         WHERE r.canary = canary_csat_report.canary
           AND r.ts >= ((now() AT TIME ZONE 'UTC')::date - (days - 1))::timestamp AT TIME ZONE 'UTC'
           AND NOT r.fallback
         GROUP BY 1, 2
    ),
    tagged AS (
        SELECT s.d, coalesce(br.cohort, ud.cohort) AS cohort, s.score, s.user_id
          FROM scores s
          LEFT JOIN by_request br ON br.request_id = s.request_id
          LEFT JOIN user_day ud ON s.request_id IS NULL AND ud.user_id = s.user_id AND ud.d = s.d
    ),
    agg AS (
        SELECT t.d, t.cohort, count(*) AS n, round(avg(t.score), 3) AS mean
          FROM tagged t WHERE t.cohort IN ('canary', 'control') GROUP BY 1, 2
    ),
    mixed AS (
        SELECT t.d, count(DISTINCT t.user_id) AS m FROM tagged t WHERE t.cohort = 'mixed' GROUP BY 1
    )
    SELECT a.d, a.cohort, a.n, a.mean,
           CASE WHEN a.cohort = 'canary' THEN a.mean - c.mean END,
           coalesce(mx.m, 0),
           CASE WHEN a.cohort = 'canary' AND c.mean IS NOT NULL
                THEN c.mean - a.mean >= cfg.csat_drop END
      FROM agg a
      LEFT JOIN agg c ON c.d = a.d AND c.cohort = 'control'
      LEFT JOIN mixed mx ON mx.d = a.d
     ORDER BY a.d, a.cohort;
END;
$$;
COMMENT ON FUNCTION canary_csat_report(text, integer) IS
    'Per day and cohort: CSAT responses, mean, delta against control and whether the drop rule holds';

/*
 * canary_csat_check: the daily job.  When the canary's mean CSAT is at least
 * csat_drop below control on every day of the last csat_sustain (48 hours:
 * the last two complete days), pin the rollout at 0 percent and alert.
 */
CREATE FUNCTION canary_csat_check(canary text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    need_days integer;
    held_days integer;
    last_delta numeric;
    reason text;
    result text;
    payload jsonb;
BEGIN
    IF canary IS NOT NULL AND NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c WHERE c.name = canary) THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    FOR cfg IN SELECT * FROM @extschema@.canary_config c
                WHERE (canary IS NULL OR c.name = canary) AND c.percent_new > 0
                ORDER BY c.name
    LOOP
        need_days := greatest(1, ceil(extract(epoch FROM cfg.csat_sustain) / 86400.0)::integer);
        SELECT count(*) FILTER (WHERE r.drop_rule_holds),
               (array_agg(r.delta_vs_control ORDER BY r.day DESC))[1]
          INTO held_days, last_delta
          FROM @extschema@.canary_csat_report(cfg.name, need_days + 1) r
         WHERE r.cohort = 'canary'
           AND r.day BETWEEN (now() AT TIME ZONE 'UTC')::date - need_days
                         AND (now() AT TIME ZONE 'UTC')::date - 1;
        IF held_days >= need_days THEN
            reason := format('csat canary %s vs control for %s days >= drop %s sustained %s',
                             last_delta, held_days, cfg.csat_drop, cfg.csat_sustain);
            UPDATE @extschema@.canary_config
               SET percent_new = 0, csat_pinned_at = now(), csat_pin_reason = reason
             WHERE name = cfg.name;
            payload := jsonb_build_object(
                'alert', 'canary csat drop: pinned at 0 percent',
                'reason', reason, 'canary', cfg.name, 'stage', cfg.stage,
                'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'samples_new', NULL, 'samples_old', NULL,
                'auto_action', format('canary pinned at 0 percent; all traffic routed to %s', cfg.old_model));
            PERFORM @extschema@.canary_raise_alert(cfg.name, 'csat_pin', payload);
            result := concat_ws('; ', result, cfg.name || ': ' || reason);
        END IF;
    END LOOP;
    RETURN result;
END;
$$;
COMMENT ON FUNCTION canary_csat_check(text) IS
    'Daily slow-signal check: pin the canary at 0 percent when CSAT drops by csat_drop for csat_sustain';

/*
 * Scheduling with pg_cron, when it is installed in this database.  Job names
 * make it idempotent: scheduling again updates the jobs.
 */
CREATE FUNCTION canary_schedule(check_schedule text DEFAULT '* * * * *',
                                csat_schedule text DEFAULT '15 0 * * *',
                                maintenance_schedule text DEFAULT '5 0 * * *')
RETURNS TABLE (jobname text, schedule text, command text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cron_db text := current_setting('cron.database_name', true);
    schema_name text := quote_ident('@extschema@');
    jobs text[][] := ARRAY[
        ARRAY['llm_canary_check', check_schedule, format('SELECT %s.canary_check()', schema_name)],
        ARRAY['llm_canary_csat', csat_schedule, format('SELECT %s.canary_csat_check()', schema_name)],
        ARRAY['llm_canary_maintenance', maintenance_schedule, format('SELECT %s.canary_maintenance()', schema_name)]];
    hint text := '';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        FOR i IN 1..3 LOOP
            hint := hint || format(E'\nSELECT cron.schedule_in_database(%L, %L, %L, %L);',
                                   jobs[i][1], jobs[i][2], jobs[i][3], current_database());
        END LOOP;
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN cron_db IS NOT NULL AND cron_db <> current_database()
                              THEN format('pg_cron lives in database "%s". Run there:%s', cron_db, hint)
                              ELSE 'Install pg_cron (shared_preload_libraries = ''pg_cron,llm_canary'', cron.database_name = this database, CREATE EXTENSION pg_cron) or rely on the background worker, which runs canary_check every llm_canary.check_interval.'
                         END;
    END IF;
    FOR i IN 1..3 LOOP
        EXECUTE 'SELECT cron.schedule($1, $2, $3)' USING jobs[i][1], jobs[i][2], jobs[i][3];
        jobname := jobs[i][1]; schedule := jobs[i][2]; command := jobs[i][3];
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION canary_schedule(text, text, text) IS
    'Register (or update) the pg_cron jobs: kill-switch check, daily CSAT check, partition maintenance';

CREATE FUNCTION canary_unschedule()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer := 0;
    j text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run cron.unschedule(''llm_canary_check'') and the like in the database where pg_cron lives.';
    END IF;
    FOR j IN EXECUTE 'SELECT jobname FROM cron.job WHERE jobname LIKE ''llm\_canary\_%'' AND username = current_user' LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING j;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;
COMMENT ON FUNCTION canary_unschedule() IS 'Remove the pg_cron jobs canary_schedule registered';
/*
 * Roles and privileges.  Runs last, so that it sees every function and table
 * the parts before it created (and those that parts added later create).
 *
 *   llm_canary_admin  operators: models, keys (the names of the environment
 *                     variables that hold them), stages, thresholds,
 *                     schedules, the kill switch, probes, maintenance.
 *   llm_canary_app    the application: canary_call, routing, feedback and
 *                     the reports.  It reads what routing and the reports
 *                     need and writes nothing directly; it cannot change a
 *                     model (so it cannot point one at another URL or at
 *                     another environment variable), a stage or a
 *                     threshold, and cannot read the prompts and answers
 *                     stored by shadow mode while they are private.
 *
 * GRANT llm_canary_app TO myapp; GRANT llm_canary_admin TO alice;
 * Both roles are NOLOGIN and cluster-wide: created here when missing, so that
 * installing into a second database reuses them, and left in place by DROP
 * EXTENSION (other databases may use them; DROP ROLE them by hand).
 * The privileges below are per database, recorded in pg_init_privs and so
 * dumped by pg_dump only where changed afterwards.
 */

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'llm_canary_admin') THEN
        CREATE ROLE llm_canary_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'llm_canary_app') THEN
        CREATE ROLE llm_canary_app NOLOGIN;
    END IF;
    -- an administrator can do what the application does
    IF NOT pg_catalog.pg_has_role('llm_canary_admin', 'llm_canary_app', 'MEMBER') THEN
        GRANT llm_canary_app TO llm_canary_admin;
    END IF;
END;
$$;
COMMENT ON ROLE llm_canary_admin IS
    'llm_canary operators: models, rollouts, stages, thresholds, kill switch, probes, schedules';
COMMENT ON ROLE llm_canary_app IS
    'llm_canary applications: canary_call, canary_route, canary_cohort, canary_bucket, canary_feedback, reports';

GRANT USAGE ON SCHEMA @extschema@ TO llm_canary_admin, llm_canary_app;

/*
 * Functions that must run as the extension's owner, each with its search_path
 * pinned (every SECURITY DEFINER function of the extension has SET
 * search_path = pg_catalog, pg_temp and schema-qualifies its own objects):
 *
 *  - the shadow reports: they aggregate prompt-free facts (verdicts, lengths,
 *    refusals, the first five words of each answer) out of canary_shadow,
 *    whose prompt, old_text and new_text the application role may not read
 *    (see canary_set_shadow_private below).  Column privileges alone would
 *    break the reports for that role, because they compute over the texts;
 *    SECURITY DEFINER lets them compute while the role still gets 42501 for
 *    a SELECT of the texts.  They take only a rollout name, an interval and
 *    small integers, used as values, never as SQL text.
 *  - canary_raise_alert: it reads llm_canary.webhook_url, a superuser-only
 *    setting (the URL often embeds a token), and only learns whether it is
 *    set; without this a trip by a non-superuser administrator fails.
 *  - canary_maintenance, canary_shadow_create_partitions: attaching a
 *    partition requires owning the partitioned table.
 */
ALTER FUNCTION canary_shadow_report(text, interval) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_openings(text, interval, integer) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_lengths(text, interval, integer) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_by_class(text, interval) SECURITY DEFINER;
ALTER FUNCTION canary_raise_alert(text, text, jsonb) SECURITY DEFINER;
ALTER FUNCTION canary_maintenance(integer, date) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_create_partitions(date, integer) SECURITY DEFINER;

/*
 * Shadow texts, private or not.  The state is the privilege itself: while
 * private (the default), llm_canary_app may SELECT every column of
 * canary_shadow but prompt, old_text and new_text; otherwise the whole table.
 * The partitions are never granted: the application reads through the
 * parent.  Returns the new state.
 */
CREATE FUNCTION canary_set_shadow_private(private boolean DEFAULT true)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    public_columns text;
BEGIN
    IF private IS NULL THEN
        RAISE EXCEPTION 'private must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass true to hide prompts and answers from llm_canary_app, false to show them.';
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO public_columns
      FROM pg_attribute a
     WHERE a.attrelid = '@extschema@.canary_shadow'::regclass
       AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('prompt', 'old_text', 'new_text');
    IF private THEN
        REVOKE SELECT ON TABLE @extschema@.canary_shadow FROM llm_canary_app;
        REVOKE SELECT (prompt, old_text, new_text) ON TABLE @extschema@.canary_shadow FROM llm_canary_app;
        EXECUTE format('GRANT SELECT (%s) ON TABLE @extschema@.canary_shadow TO llm_canary_app', public_columns);
    ELSE
        GRANT SELECT ON TABLE @extschema@.canary_shadow TO llm_canary_app;
    END IF;
    RETURN private;
END;
$$;
COMMENT ON FUNCTION canary_set_shadow_private(boolean) IS
    'Hide (true) or show (false) the prompts and answers in canary_shadow to llm_canary_app; the shadow reports work either way';

CREATE FUNCTION canary_shadow_is_private()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT has_column_privilege('llm_canary_app', '@extschema@.canary_shadow', 'new_text', 'SELECT')
$$;
COMMENT ON FUNCTION canary_shadow_is_private() IS
    'Whether llm_canary_app is denied the prompts and answers stored in canary_shadow';

/*
 * Functions.  Nothing of the extension is executable by PUBLIC; every
 * function of this extension (and only of this extension: pg_depend
 * deptype 'e') is the administrator's, and the application gets the
 * functions named below, whichever of them exist (parts may add reports
 * such as canary_prometheus or canary_timeline).  Overloads share a grant.
 */
DO $$
DECLARE
    fn regprocedure;
    app_functions text[] := ARRAY[
        -- the call path and routing
        'canary_call', 'canary_route', 'canary_cohort', 'canary_bucket', 'canary_feedback',
        -- reports
        'canary_summary', 'canary_shadow_report', 'canary_shadow_openings',
        'canary_shadow_lengths', 'canary_shadow_by_class', 'canary_csat_report',
        'canary_stats', 'canary_shadow_stats', 'canary_prometheus', 'canary_timeline',
        'canary_shadow_is_private'];
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_proc p ON p.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'llm_canary')
         ORDER BY p.oid
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_admin', fn);
        IF (SELECT proname FROM pg_catalog.pg_proc WHERE oid = fn) = ANY (app_functions) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_app', fn);
        END IF;
    END LOOP;
END;
$$;

/*
 * Tables and sequences.  The administrator may do anything to the rows of
 * every table of the extension (not to the tables themselves: they stay the
 * owner's).  The application may read every table but two:
 *   canary_sessions  nothing: routing reads and writes pins as the owner
 *                    (src/routing.c); a role that could write a pin could
 *                    put a session on the new model in any stage;
 *   canary_shadow    no prompts or answers while private (above).
 * canary_models holds nothing secret: api_key_env is the name of an
 * environment variable of the server, never the key, and canary_call reads
 * the models as the caller.  Partitions made later are not granted to
 * either role: queries go through the parent tables.
 */
DO $$
DECLARE
    rel regclass;
    kind "char";
BEGIN
    FOR rel, kind IN
        SELECT c.oid::regclass, c.relkind
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'llm_canary')
           AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
         ORDER BY c.relname
    LOOP
        IF kind = 'S' THEN
            EXECUTE format('GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO llm_canary_admin', rel);
            CONTINUE;
        END IF;
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE %s TO llm_canary_admin', rel);
        CONTINUE WHEN rel IN ('@extschema@.canary_sessions'::regclass, '@extschema@.canary_shadow'::regclass,
                              '@extschema@.canary_response_cache'::regclass);
        -- default partitions are members of the extension (for pg_dump): reads go through the parent
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = rel);
        EXECUTE format('GRANT SELECT ON TABLE %s TO llm_canary_app', rel);
    END LOOP;
END;
$$;

SELECT canary_set_shadow_private(true);
