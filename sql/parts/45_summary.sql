/*
 * Reading the metrics: the per-cohort summary, from canary_rollups (the
 * 30-second buckets that end in the last since; the latencies from the
 * histograms, within 1/64 of percentile_cont).  Thumbs-down verdicts count
 * in the bucket of their request.
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
           string_agg(DISTINCT r.model, ', ') FILTER (WHERE NOT r.fallback AND r.requests > 0),
           coalesce(sum(r.requests) FILTER (WHERE NOT r.fallback), 0)::bigint,
           coalesce(sum(r.requests) FILTER (WHERE r.fallback), 0)::bigint,
           round(sum(r.outcome_error + r.outcome_timeout) FILTER (WHERE NOT r.fallback)
                 / nullif(sum(r.requests) FILTER (WHERE NOT r.fallback), 0), 4),
           round(sum(r.refusals) FILTER (WHERE NOT r.fallback)
                 / nullif(sum(r.requests) FILTER (WHERE NOT r.fallback), 0), 4),
           round(@extschema@.canary_hist_quantile(
                     @extschema@.canary_hist_sum(r.latency_hist) FILTER (WHERE NOT r.fallback), 0.5)::numeric, 1),
           round(@extschema@.canary_hist_quantile(
                     @extschema@.canary_hist_sum(r.latency_hist) FILTER (WHERE NOT r.fallback), 0.95)::numeric, 1),
           round(sum(r.completion_tokens) FILTER (WHERE NOT r.fallback)
                 / nullif(sum(r.completions) FILTER (WHERE NOT r.fallback), 0), 1),
           round(sum(r.thumbs_down) FILTER (WHERE NOT r.fallback)
                 / nullif(sum(r.requests) FILTER (WHERE NOT r.fallback), 0), 4),
           round(sum(r.cost), 6)
      FROM @extschema@.canary_rollups r
     WHERE r.canary = canary_summary.canary AND r.bucket_end > now() - since
     GROUP BY r.cohort
    HAVING sum(r.requests) > 0
     ORDER BY r.cohort;
END;
$$;
COMMENT ON FUNCTION canary_summary(text, interval) IS
    'Per cohort, from canary_rollups: requests, error and refusal rates, p50/p95 latency, mean completion tokens, thumbs-down rate, cost';
