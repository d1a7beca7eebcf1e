/*
 * The kill switch: window summaries, the trip, alerts and scheduling (the
 * slow CSAT signal is 51_csat.sql).  canary_check is in src/killswitch.c;
 * the rest is SQL.
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
/*
 * About 5,800 rows per rollout per day: canary_maintenance() deletes those
 * older than llm_canary.retention_days through this index.  The rows are
 * data, so pg_dump copies them.
 */
CREATE INDEX canary_window_summaries_at_idx ON canary_window_summaries (at);
/*
 * The baseline at stage full (LastControlBaseline, src/killswitch.c): the
 * last control summary with traffic, which may be weeks old when a rollout
 * has served everyone that long.  Neither index above finds it without
 * reading every summary since (at 5 million rows, a rollout at full for 10
 * days: 2 million rows, 75,000 buffers, 0.3-0.4 s a check); this one holds
 * only those rows, and the query repeats its predicate word for word, so
 * the planner uses it for custom and generic plans alike (4 buffers).
 */
CREATE INDEX canary_window_summaries_baseline_idx ON canary_window_summaries (canary, at)
    WHERE cohort = 'control' AND samples > 0;
SELECT pg_catalog.pg_extension_config_dump('canary_window_summaries', '');
SELECT pg_catalog.pg_extension_config_dump('canary_window_summaries_id_seq', '');

CREATE TABLE canary_alerts (
    id                  bigserial PRIMARY KEY,
    canary              text NOT NULL,
    ts                  timestamptz NOT NULL DEFAULT now(),
    kind                text NOT NULL
                        CHECK (kind IN ('kill_switch', 'manual_trip', 'csat_pin', 'sample_ratio',
                                        'advance', 'decommission', 'check_blocked')),
    payload             jsonb NOT NULL,
    webhook_status      text NOT NULL DEFAULT 'pending'
                        CHECK (webhook_status IN ('none', 'pending', 'delivered', 'failed')),
    webhook_attempts    integer NOT NULL DEFAULT 0,
    webhook_last_error  text,
    webhook_next_at     timestamptz,
    delivered_at        timestamptz
);
CREATE INDEX canary_alerts_canary_idx ON canary_alerts (canary, ts);
/*
 * The alerts the webhook has still to deliver, oldest first: the worker
 * claims one about once a second (WebhookClaimStep, src/webhook.c: 'pending'
 * ... ORDER BY id LIMIT 1, or with no webhook all of them set to 'none').
 * The alerts are kept (the audit trail): without this index each claim
 * read all of them (100,000 alerts: 8 ms a second; with it 0.03 ms).
 */
CREATE INDEX canary_alerts_pending_idx ON canary_alerts (id) WHERE webhook_status = 'pending';
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
    SELECT * INTO cfg FROM @extschema@.canary_config WHERE name = p_canary FOR NO KEY UPDATE;
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
    nsp constant name := @extschema@.canary_schema_name();
    jobs text[][] := ARRAY[
        ARRAY['llm_canary_check', check_schedule, format('SELECT %I.canary_check()', nsp)],
        ARRAY['llm_canary_csat', csat_schedule, format('SELECT %I.canary_csat_check()', nsp)],
        ARRAY['llm_canary_maintenance', maintenance_schedule, format('SELECT %I.canary_maintenance()', nsp)]];
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
    FOR j IN EXECUTE 'SELECT jobname FROM cron.job WHERE starts_with(jobname, ''llm_canary_'') AND username = current_user' LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING j;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;
COMMENT ON FUNCTION canary_unschedule() IS 'Remove the pg_cron jobs canary_schedule registered';
