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
