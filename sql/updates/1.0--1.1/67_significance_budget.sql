/*
 * 1.1, the false-trip budget (issue 13): significance defaults to 0.1 per
 * rollout-day, split by rule in src/sequential.c (the planner's
 * canary_sequential_samples takes the rule: 65_plan.sql).  Rollouts that
 * exist when the update runs keep the value they have (0.05 unless set).
 */
ALTER TABLE canary_config ALTER COLUMN significance SET DEFAULT 0.1;

-- the out-of-range hint names the new default (text as in sql/parts/10_config.sql)
CREATE OR REPLACE FUNCTION canary_config_validate()
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
