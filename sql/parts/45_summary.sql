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
