/*
 * In a fleet, an alert's payload says which members the evidence came from
 * (canary_fleet_alert_members, sql/parts/80_fleet.sql), and the Prometheus
 * export carries the fleet's gauges (canary_fleet_prometheus).
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

CREATE OR REPLACE FUNCTION canary_prometheus(canary text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    out text := '';
    r record;
    s record;
    ss record;
    labels text;
    limits text := '';
BEGIN
    out := out || E'# HELP llm_requests_total Model attempts by model, cohort and outcome.\n'
               || E'# TYPE llm_requests_total counter\n';
    FOR r IN SELECT * FROM @extschema@.canary_prometheus_requests(canary_prometheus.canary) LOOP
        out := out || format(E'llm_requests_total{canary="%s",model="%s",cohort="%s",outcome="%s"} %s\n',
                             r.canary, r.model, r.cohort, r.outcome, r.total);
    END LOOP;

    FOR r IN SELECT * FROM (VALUES
                 ('llm_latency_ms', 'Latency of model attempts in milliseconds.'),
                 ('llm_completion_tokens', 'Completion tokens of model answers.')) AS v(metric, help)
    LOOP
        out := out || format(E'# HELP %s %s\n# TYPE %s histogram\n', r.metric, r.help, r.metric);
        FOR s IN
            SELECT p.canary, p.model, p.cohort,
                   CASE r.metric WHEN 'llm_latency_ms' THEN p.latency_ms ELSE p.completion_tokens END AS le,
                   CASE r.metric WHEN 'llm_latency_ms' THEN p.latency_ms_bucket ELSE p.completion_tokens_bucket END AS n,
                   CASE r.metric WHEN 'llm_latency_ms' THEN p.latency_ms_sum ELSE p.completion_tokens_sum END AS total,
                   CASE r.metric WHEN 'llm_latency_ms' THEN p.latency_ms_count ELSE p.completion_tokens_count END AS count
              FROM @extschema@.canary_prometheus_series(canary_prometheus.canary) p
        LOOP
            labels := format('canary="%s",model="%s",cohort="%s"', s.canary, s.model, s.cohort);
            out := out || (SELECT string_agg(format(E'%s_bucket{%s,le="%s"} %s\n', r.metric, labels, b.le, b.n), '' ORDER BY b.i)
                             FROM unnest(s.le, s.n) WITH ORDINALITY AS b(le, n, i))
                       || format(E'%s_bucket{%s,le="+Inf"} %s\n', r.metric, labels, s.count)
                       || format(E'%s_sum{%s} %s\n', r.metric, labels, s.total)
                       || format(E'%s_count{%s} %s\n', r.metric, labels, s.count);
        END LOOP;
    END LOOP;

    out := out || E'# HELP llm_refusals_total Refusals by model and cohort.\n# TYPE llm_refusals_total counter\n';
    FOR r IN SELECT * FROM @extschema@.canary_prometheus_series(canary_prometheus.canary) LOOP
        out := out || format(E'llm_refusals_total{canary="%s",model="%s",cohort="%s"} %s\n',
                             r.canary, r.model, r.cohort, r.refusals_total);
    END LOOP;
    out := out || E'# HELP llm_thumbs_down_total Thumbs-down verdicts by model and cohort.\n# TYPE llm_thumbs_down_total counter\n';
    FOR r IN SELECT * FROM @extschema@.canary_prometheus_series(canary_prometheus.canary) LOOP
        out := out || format(E'llm_thumbs_down_total{canary="%s",model="%s",cohort="%s"} %s\n',
                             r.canary, r.model, r.cohort, r.thumbs_down_total);
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
    -- the kill switch's checks: how long since each rollout it checks was last checked
    out := out || E'# HELP llm_canary_check_age_seconds Seconds since the kill switch last checked the rollout (armed rollouts out of shadow; canary_check_age).\n# TYPE llm_canary_check_age_seconds gauge\n';
    -- and, from the same call (one probe per rollout, the two series agree),
    -- the age past which its checks count as stopped (LLMCanaryChecksStopped)
    FOR r IN SELECT a.canary, a.age_seconds, a.alert_after_seconds
               FROM @extschema@.canary_check_age(canary_prometheus.canary) a LOOP
        out := out || format(E'llm_canary_check_age_seconds{canary="%s"} %s\n', r.canary, round(r.age_seconds::numeric, 3));
        limits := limits || format(E'llm_canary_check_age_limit_seconds{canary="%s"} %s\n', r.canary, r.alert_after_seconds);
    END LOOP;
    out := out || E'# HELP llm_canary_check_age_limit_seconds Age of the last check past which the checks count as stopped: 10 x llm_canary.check_interval, at least 600 (canary_check_age).\n# TYPE llm_canary_check_age_limit_seconds gauge\n'
               || limits;
    -- in a fleet: the fail-safe, the lag from the control database
    RETURN out || @extschema@.canary_fleet_prometheus();
END;
$$;
