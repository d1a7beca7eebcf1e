/*
 * The monitor: window summaries, the kill switch, alerts, the slow CSAT
 * signal and scheduling.  canary_check is in src/killswitch.c; the rest is SQL.
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
SELECT pg_catalog.pg_extension_config_dump('canary_window_summaries', '');
SELECT pg_catalog.pg_extension_config_dump('canary_window_summaries_id_seq', '');

ALTER TABLE canary_config
    ADD COLUMN csat_pinned_at timestamptz,
    ADD COLUMN csat_pin_reason text;

CREATE TABLE canary_alerts (
    id                  bigserial PRIMARY KEY,
    canary              text NOT NULL,
    ts                  timestamptz NOT NULL DEFAULT now(),
    kind                text NOT NULL
                        CHECK (kind IN ('kill_switch', 'manual_trip', 'csat_pin', 'sample_ratio',
                                        'advance', 'decommission')),
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
    PERFORM @extschema@.canary_report_window(canary_csat_report.canary, make_interval(days => days));
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = canary_csat_report.canary;
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
