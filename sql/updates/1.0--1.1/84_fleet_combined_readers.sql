/*
 * The fleet's combined rollups (83_fleet_combined.sql is the part
 * sql/parts/33_fleet_combined.sql itself, linked; 83_fleet_combined_trigger
 * and 83_fleet_combined_trigger_attach the parts 34_fleet_combine_trigger
 * and 34_fleet_combine_trigger_attach).  The readers that pick
 * their source by role and are plain plpgsql are changed where they are
 * created (canary_rollup_rebuild, canary_rollup_maintenance in 30_rollups,
 * canary_summary in 80_reports_maintenance); the two SQL functions the
 * Prometheus export reads are created here, after the view
 * canary_rollup_totals_source they read (a SQL function's body is checked
 * when it is created).  Then the grants sql/parts/90_roles.sql gives the
 * new objects on a fresh install.
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


DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOREACH fn IN ARRAY ARRAY['@extschema@.canary_fleet_is_control()'::regprocedure,
                              '@extschema@.canary_hist_subtract(int8[], int8[])'::regprocedure,
                              '@extschema@.canary_hist_valid(int8[])'::regprocedure,
                              '@extschema@.canary_fleet_combine_trigger()'::regprocedure,
                              '@extschema@.canary_fleet_combine(timestamptz, timestamptz)'::regprocedure,
                              '@extschema@.canary_prometheus_requests(text)'::regprocedure,
                              '@extschema@.canary_prometheus_series(text)'::regprocedure]
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_admin', fn);
    END LOOP;
END;
$$;
-- the views of the reports call canary_fleet_is_control as the reader
GRANT EXECUTE ON FUNCTION canary_fleet_is_control(), canary_prometheus_requests(text),
    canary_prometheus_series(text) TO llm_canary_app;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE
    ON TABLE canary_fleet_rollups, canary_fleet_rollup_totals, canary_rollup_source, canary_rollup_totals_source
    TO llm_canary_admin;
GRANT SELECT
    ON TABLE canary_fleet_rollups, canary_fleet_rollup_totals, canary_rollup_source, canary_rollup_totals_source
    TO llm_canary_app;
