/*
 * In a fleet, an alert's payload says which members the evidence came from
 * (canary_fleet_alert_members, sql/parts/80_fleet.sql).
 */
CREATE OR REPLACE FUNCTION canary_trip_internal(p_canary text, p_reason text, p_kind text,
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
        'auto_action', format('all traffic routed to %s', cfg.old_model))
        -- in a fleet, the members the evidence came from
        || @extschema@.canary_fleet_alert_members(p_canary, cfg.window_seconds);
    PERFORM @extschema@.canary_raise_alert(p_canary, p_kind, payload);
    RETURN payload;
END;
$$;
