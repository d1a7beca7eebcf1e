/*
 * The fleet's combined rollups (83_fleet_combined.sql is the part
 * sql/parts/33_fleet_combined.sql itself, linked): the readers that pick
 * their source by role, the rebuild that rewrites a member's rows with
 * UPDATEs (so the control's combined rows follow it), the retention of the
 * combined rows; and the grants sql/parts/90_roles.sql gives the new
 * objects on a fresh install.  The last copy of each function here is its
 * final text.
 */

CREATE OR REPLACE FUNCTION canary_rollup_rebuild(since timestamptz, until timestamptz DEFAULT 'infinity')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    in_range constant text :=
        '@extschema@.canary_rollup_bucket(%s) > %L AND @extschema@.canary_rollup_bucket(%s) <= %L';
BEGIN
    IF since IS NULL OR until IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN since IS NULL THEN 'since' ELSE 'until' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    LOCK TABLE @extschema@.canary_rollups IN SHARE ROW EXCLUSIVE MODE;
    UPDATE @extschema@.canary_rollups r
       SET requests = 0, outcome_ok = 0, outcome_refusal = 0, outcome_error = 0, outcome_timeout = 0,
           refusals = 0, thumbs_down = 0, verdicts = 0, prompt_tokens = 0, completion_tokens = 0,
           completions = 0, cost = 0, latency_count = 0, latency_sum = 0, latency_hist = '{}', tokens_hist = '{}'
     WHERE r.bucket_end > since AND r.bucket_end <= until AND r.member = @extschema@.canary_rollup_member();
    EXECUTE @extschema@.canary_rollup_statement('requests',
        format('(SELECT * FROM @extschema@.canary_requests WHERE ' || in_range || ')',
               'ts', since, 'ts', until), false);
    EXECUTE @extschema@.canary_rollup_statement('feedback',
        format('(SELECT f.* FROM @extschema@.canary_feedback f'
               ' CROSS JOIN LATERAL (SELECT coalesce((SELECT q.ts FROM @extschema@.canary_requests q'
               '   WHERE q.request_id = f.request_id ORDER BY q.ts LIMIT 1), f.ts) AS ts) k WHERE '
               || in_range || ')', 'k.ts', since, 'k.ts', until), false);
    DELETE FROM @extschema@.canary_rollups r
     WHERE r.bucket_end > since AND r.bucket_end <= until AND r.member = @extschema@.canary_rollup_member()
       AND r.requests = 0 AND r.verdicts = 0;
    SELECT count(*) INTO n FROM @extschema@.canary_rollups r
     WHERE r.bucket_end > since AND r.bucket_end <= until AND r.member = @extschema@.canary_rollup_member();
    RETURN n;
END;
$$;

CREATE OR REPLACE FUNCTION canary_rollup_maintenance(today date DEFAULT current_date)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    days integer := coalesce(nullif(current_setting('llm_canary.rollup_retention_days', true), '')::integer, 400);
    n bigint := 0;
BEGIN
    IF days > 0 THEN
        DELETE FROM @extschema@.canary_rollups r
         WHERE r.bucket_end < (today - days)::timestamp AT TIME ZONE 'UTC';
        GET DIAGNOSTICS n = ROW_COUNT;
        -- and a fleet control's combined rows (33_fleet_combined.sql)
        DELETE FROM @extschema@.canary_fleet_rollups r
         WHERE r.bucket_end < (today - days)::timestamp AT TIME ZONE 'UTC';
    END IF;
    RETURN n;
END;
$$;

CREATE OR REPLACE FUNCTION canary_summary(canary text DEFAULT 'default', since interval DEFAULT '1 hour')
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
      FROM @extschema@.canary_rollup_source r
     WHERE r.canary = canary_summary.canary AND r.bucket_end > cutoff
     GROUP BY r.cohort
    HAVING sum(r.requests) > 0
     ORDER BY r.cohort;
END;
$$;

CREATE OR REPLACE FUNCTION canary_prometheus_requests(canary text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION canary_prometheus_series(canary text DEFAULT NULL)
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

DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOREACH fn IN ARRAY ARRAY['@extschema@.canary_fleet_is_control()'::regprocedure,
                              '@extschema@.canary_hist_subtract(int8[], int8[])'::regprocedure,
                              '@extschema@.canary_fleet_combine_trigger()'::regprocedure,
                              '@extschema@.canary_fleet_combine(timestamptz, timestamptz)'::regprocedure]
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_admin', fn);
    END LOOP;
END;
$$;
-- the views of the reports call it as the reader
GRANT EXECUTE ON FUNCTION canary_fleet_is_control() TO llm_canary_app;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE
    ON TABLE canary_fleet_rollups, canary_fleet_rollup_totals, canary_rollup_source, canary_rollup_totals_source
    TO llm_canary_admin;
GRANT SELECT
    ON TABLE canary_fleet_rollups, canary_fleet_rollup_totals, canary_rollup_source, canary_rollup_totals_source
    TO llm_canary_app;
