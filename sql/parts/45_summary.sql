/*
 * Reports: the check of a report's arguments that every report shares, and
 * the per-cohort summary, from canary_rollups (the 30-second buckets that
 * end in the last since; the latencies from the histograms, within 1/64 of
 * percentile_cont; thumbs-down verdicts count in the bucket of their
 * request).  The Prometheus export and the timeline are in
 * 46_prometheus.sql, the shadow reports in 35_shadow.sql, the CSAT report
 * in 51_csat.sql; all of them call canary_report_window.
 */

/*
 * canary_report_window: the one check of a report's rollout and window.
 * A NULL rollout or since is 22004, a rollout that does not exist 42704
 * (the hint lists those that do), a negative since 22023.  Returns the
 * window's start, now() - since.  Reads canary_config as the caller.
 */
CREATE FUNCTION canary_report_window(canary text, since interval)
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
COMMENT ON FUNCTION canary_report_window(text, interval) IS
    'Start of a report window (now() - since), after checking the rollout and the interval: the check every report shares';

CREATE FUNCTION canary_summary(canary text DEFAULT 'default', since interval DEFAULT '1 hour')
RETURNS TABLE (cohort text, model text, requests bigint, fallbacks bigint,
               error_rate numeric, refusal_rate numeric,
               p50_latency_ms numeric, p95_latency_ms numeric,
               mean_completion_tokens numeric, thumbs_down_rate numeric, cost numeric)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_summary.canary, since);
BEGIN
    -- the one table this database reads, chosen here rather than in the
    -- view canary_rollup_source, whose other branch the planner would cost
    -- too (and at millions of rows pick a parallel plan for)
    RETURN QUERY EXECUTE format($q$
        SELECT r.cohort,
               string_agg(DISTINCT r.model, ', ') FILTER (WHERE NOT r.fallback AND r.requests > 0),
               coalesce(sum(r.requests) FILTER (WHERE NOT r.fallback), 0)::bigint,
               coalesce(sum(r.requests) FILTER (WHERE r.fallback), 0)::bigint,
               round(sum(r.outcome_error + r.outcome_timeout) FILTER (WHERE NOT r.fallback)
                     / nullif(sum(r.requests) FILTER (WHERE NOT r.fallback), 0), 4),
               round(sum(r.refusals) FILTER (WHERE NOT r.fallback)
                     / nullif(sum(r.requests) FILTER (WHERE NOT r.fallback), 0), 4),
               round(%1$I.canary_hist_quantile(
                         %1$I.canary_hist_sum(r.latency_hist) FILTER (WHERE NOT r.fallback), 0.5)::numeric, 1),
               round(%1$I.canary_hist_quantile(
                         %1$I.canary_hist_sum(r.latency_hist) FILTER (WHERE NOT r.fallback), 0.95)::numeric, 1),
               round(sum(r.completion_tokens) FILTER (WHERE NOT r.fallback)
                     / nullif(sum(r.completions) FILTER (WHERE NOT r.fallback), 0), 1),
               round(sum(r.thumbs_down) FILTER (WHERE NOT r.fallback)
                     / nullif(sum(r.requests) FILTER (WHERE NOT r.fallback), 0), 4),
               round(sum(r.cost), 6)
          FROM %1$I.%2$I r
         WHERE r.canary = $1 AND r.bucket_end > $2
         GROUP BY r.cohort
        HAVING sum(r.requests) > 0
         ORDER BY r.cohort$q$, @extschema@.canary_schema_name(),
        CASE WHEN @extschema@.canary_fleet_is_control() THEN 'canary_fleet_rollups' ELSE 'canary_rollups' END)
    USING canary_summary.canary, cutoff;
END;
$$;
COMMENT ON FUNCTION canary_summary(text, interval) IS
    'Per cohort, from canary_rollups: requests, error and refusal rates, p50/p95 latency, mean completion tokens, thumbs-down rate, cost';
