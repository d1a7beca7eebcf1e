/*
 * Monitoring: the Prometheus series of the article's metric schema and a
 * per-cohort timeline of the kill switch's window summaries for psql.
 */

/*
 * The series, from canary_rollup_totals (through canary_rollup_totals_source:
 * the fleet's combined totals on a control database): counters summed since install,
 * monotonic (retention never touches them) and as cheap to read at any
 * retention (one row per rollout, member, model, cohort and fallback).
 * Labels: canary, model and cohort, where fallback attempts carry the
 * cohort label "<cohort>_fallback" so that the canary cohort's series are
 * the new model's own answers; llm_requests_total adds outcome.  The
 * monitoring/ folder's postgres_exporter queries read these functions;
 * canary_prometheus() prints the same series in the text format.
 */
CREATE FUNCTION canary_prometheus_requests(canary text DEFAULT NULL)
RETURNS TABLE (canary text, model text, cohort text, outcome text, total bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.canary, t.model, t.cohort || CASE WHEN t.fallback THEN '_fallback' ELSE '' END,
           o.outcome, sum(o.n)::bigint
      FROM @extschema@.canary_rollup_totals_source t
     CROSS JOIN LATERAL (VALUES ('error', t.outcome_error), ('ok', t.outcome_ok),
                                ('refusal', t.outcome_refusal), ('timeout', t.outcome_timeout)) o (outcome, n)
     WHERE $1 IS NULL OR t.canary = $1
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
$$;
COMMENT ON FUNCTION canary_prometheus_requests(text) IS
    'llm_requests_total: model attempts since install by rollout, model, cohort and outcome (from canary_rollup_totals)';

CREATE FUNCTION canary_prometheus_series(canary text DEFAULT NULL)
RETURNS TABLE (canary text, model text, cohort text, refusals_total bigint, thumbs_down_total bigint,
               latency_ms float8[], latency_ms_bucket int8[], latency_ms_sum float8, latency_ms_count bigint,
               completion_tokens float8[], completion_tokens_bucket int8[], completion_tokens_sum float8,
               completion_tokens_count bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.canary, t.model, t.cohort || CASE WHEN t.fallback THEN '_fallback' ELSE '' END,
           sum(t.refusals)::bigint, sum(t.thumbs_down)::bigint,
           @extschema@.canary_hist_le(),
           @extschema@.canary_hist_cumulative(@extschema@.canary_hist_sum(t.latency_hist)),
           sum(t.latency_sum)::float8, sum(t.latency_count)::bigint,
           @extschema@.canary_hist_le(),
           @extschema@.canary_hist_cumulative(@extschema@.canary_hist_sum(t.tokens_hist)),
           sum(t.completion_tokens)::float8, sum(t.completions)::bigint
      FROM @extschema@.canary_rollup_totals_source t
     WHERE $1 IS NULL OR t.canary = $1
     GROUP BY 1, 2, 3
     ORDER BY 1, 2, 3
$$;
COMMENT ON FUNCTION canary_prometheus_series(text) IS
    'Refusals, thumbs-down and the latency and completion-token histograms since install by rollout, model and cohort (from canary_rollup_totals), shaped for postgres_exporter';

/*
 * canary_prometheus: text exposition format (version 0.0.4) of the series
 * above and of the extension's health, for every rollout or just one.
 */
CREATE FUNCTION canary_prometheus(canary text DEFAULT NULL)
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
COMMENT ON FUNCTION canary_prometheus(text) IS
    'Prometheus exposition: llm_requests_total, llm_latency_ms, llm_completion_tokens, llm_refusals_total, llm_thumbs_down_total (counters since install, from canary_rollup_totals) and the extension''s health, with the age of each checked rollout''s last check (llm_canary_check_age_seconds) and the age past which its checks count as stopped (llm_canary_check_age_limit_seconds)';

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
    cutoff  timestamptz := @extschema@.canary_report_window(canary_timeline.canary, since);
    max_err float8;
    max_p95 float8;
    max_ref float8;
BEGIN
    SELECT max(w.error_rate), max(w.p95_latency_ms), max(w.refusal_rate)
      INTO max_err, max_p95, max_ref
      FROM @extschema@.canary_window_summaries w
     WHERE w.canary = canary_timeline.canary AND w.at > cutoff;
    RETURN QUERY
    SELECT w.at, w.cohort, w.samples,
           round(w.error_rate::numeric, 4),
           repeat('█', CASE WHEN max_err > 0 THEN round(20 * coalesce(w.error_rate, 0) / max_err)::int ELSE 0 END),
           round(w.p95_latency_ms::numeric, 0),
           repeat('█', CASE WHEN max_p95 > 0 THEN round(20 * coalesce(w.p95_latency_ms, 0) / max_p95)::int ELSE 0 END),
           round(w.refusal_rate::numeric, 4),
           repeat('█', CASE WHEN max_ref > 0 THEN round(20 * coalesce(w.refusal_rate, 0) / max_ref)::int ELSE 0 END)
      FROM @extschema@.canary_window_summaries w
     WHERE w.canary = canary_timeline.canary AND w.at > cutoff
     ORDER BY w.at, w.cohort;
END;
$$;
COMMENT ON FUNCTION canary_timeline(text, interval) IS
    'Per-cohort timeline of the kill switch''s window summaries, with text bars (error rate, p95, refusals)';
