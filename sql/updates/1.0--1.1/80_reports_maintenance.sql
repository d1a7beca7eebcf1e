/*
 * 1.0 -> 1.1: reports, maintenance and retention (test layout and SQL
 * structure of issue 10, the SQL items of issue 11).  Last of the
 * fragments: it carries the final text of canary_maintenance and
 * canary_summary, which earlier fragments (30_rollups, 70_chat) change too.
 *
 *  - canary_report_window: the one check of a report's rollout and window
 *    (replaces canary_shadow_window; canary_summary, canary_timeline and
 *    canary_csat_report use it too, with the same error texts).
 *  - canary_partition_days: the one partition maintainer, used by
 *    canary_maintenance and canary_shadow_create_partitions, under a lock
 *    that blocks writers (an insert into the DEFAULT partition made ATTACH
 *    fail).
 *  - canary_maintenance also deletes expired session pins and window
 *    summaries older than llm_canary.retention_days (new index on at).
 *  - private shadow texts hide the openings too; canary_shadow_openings
 *    runs as its caller.
 *  - canary_window_summaries and the DEFAULT partition of canary_shadow are
 *    dumped by pg_dump; daily partitions of canary_shadow made at install
 *    are data, not members of the extension.
 *  (canary_requests.fallback NOT NULL: 25_requests_fallback.sql.)
 */

-- the reports' one check

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

REVOKE ALL ON FUNCTION canary_report_window(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_report_window(text, interval) TO llm_canary_admin;
GRANT EXECUTE ON FUNCTION canary_report_window(text, interval) TO llm_canary_app;

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

CREATE OR REPLACE FUNCTION canary_timeline(canary text DEFAULT 'default', since interval DEFAULT '6 hours')
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

CREATE OR REPLACE FUNCTION canary_csat_report(canary text DEFAULT 'default', days integer DEFAULT 7)
RETURNS TABLE (day date, cohort text, responses bigint, mean_csat numeric,
               delta_vs_control numeric, mixed_users bigint, drop_rule_holds boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    on_control boolean := @extschema@.canary_fleet_is_control();
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
    -- only the users a score needs: each is a primary-key probe of the feed
    scored AS (
        SELECT DISTINCT s.user_id, s.d FROM scores s
    ),
    user_day AS (
        SELECT u.user_id, u.d,
               CASE WHEN min(u.cohort) <> max(u.cohort) THEN 'mixed' ELSE min(u.cohort) END AS cohort
          FROM (SELECT r.user_id, (r.ts AT TIME ZONE 'UTC')::date AS d, r.cohort
                  FROM @extschema@.canary_requests r
                 WHERE r.canary = canary_csat_report.canary
                   AND r.ts >= ((now() AT TIME ZONE 'UTC')::date - (days - 1))::timestamp AT TIME ZONE 'UTC'
                   AND NOT r.fallback
                   AND (r.user_id, (r.ts AT TIME ZONE 'UTC')::date) IN (SELECT sc.user_id, sc.d FROM scored sc)
                UNION ALL
                -- on the control: the members' users (their own cohort or mixed)
                SELECT f.user_id, f.day, f.cohort
                  FROM scored sc
                  JOIN @extschema@.canary_csat_user_days f
                    ON f.day = sc.d AND f.canary = canary_csat_report.canary AND f.user_id = sc.user_id
                 WHERE on_control) u
         GROUP BY 1, 2
    ),
    tagged AS (
        SELECT s.d, coalesce(br.cohort, ud.cohort) AS cohort, s.score, s.user_id
          FROM scores s
          LEFT JOIN by_request br ON br.request_id = s.request_id
          LEFT JOIN user_day ud ON (s.request_id IS NULL OR (on_control AND br.request_id IS NULL))
                               AND ud.user_id = s.user_id AND ud.d = s.d
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

CREATE OR REPLACE FUNCTION canary_shadow_report(canary text DEFAULT 'default', since interval DEFAULT '7 days')
RETURNS TABLE (samples bigint, paired bigint,
               identical_share numeric, equivalent_share numeric, different_share numeric,
               agreement numeric,
               old_refusal_rate numeric, new_refusal_rate numeric, refusal_delta numeric,
               old_mean_length numeric, new_mean_length numeric, mean_length_ratio numeric,
               old_p50_length integer, new_p50_length integer, p50_length_ratio numeric,
               old_p95_length integer, new_p95_length integer, p95_length_ratio numeric,
               new_error_rate numeric, new_timeout_rate numeric,
               ready boolean, reasons text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff  timestamptz := @extschema@.canary_report_window(canary_shadow_report.canary, since);
    cfg     record;
    s       record;
    agree   numeric;
    delta   numeric;
    ratio   numeric;
    why     text[] := '{}';
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = canary_shadow_report.canary;

    SELECT count(*) AS samples,
           count(*) FILTER (WHERE p) AS paired,
           count(*) FILTER (WHERE p AND verdict = 'identical') AS identical,
           count(*) FILTER (WHERE p AND verdict = 'equivalent') AS equivalent,
           count(*) FILTER (WHERE p AND verdict = 'different') AS different,
           count(*) FILTER (WHERE p AND old_refusal) AS old_refusals,
           count(*) FILTER (WHERE p AND new_refusal) AS new_refusals,
           avg(length(old_text)) FILTER (WHERE p) AS old_mean,
           avg(length(new_text)) FILTER (WHERE p) AS new_mean,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY length(old_text)) FILTER (WHERE p) AS old_p50,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY length(new_text)) FILTER (WHERE p) AS new_p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY length(old_text)) FILTER (WHERE p) AS old_p95,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY length(new_text)) FILTER (WHERE p) AS new_p95,
           count(*) FILTER (WHERE sent) AS sent,
           count(*) FILTER (WHERE sent AND new_error IS NOT NULL) AS errors,
           count(*) FILTER (WHERE new_error = 'timeout') AS timeouts
      INTO s
      FROM (SELECT r.*, r.old_text IS NOT NULL AND r.new_text IS NOT NULL AS p,
                   r.new_error IS NULL OR r.new_error NOT IN ('fail_safe', 'shutdown') AS sent
              FROM @extschema@.canary_shadow r
             WHERE r.canary = canary_shadow_report.canary AND r.ts >= cutoff) x;

    IF s.paired > 0 THEN
        agree := (s.identical + s.equivalent)::numeric / s.paired;
        delta := (s.new_refusals - s.old_refusals)::numeric / s.paired;
        ratio := s.new_mean / nullif(s.old_mean, 0);
    END IF;

    IF s.samples = 0 THEN
        why := why || format('no shadow samples since %s UTC',
                             to_char(cutoff AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'));
    ELSIF s.paired = 0 THEN
        why := why || format('no paired answers: the new model answered none of %s samples', s.samples);
    ELSE
        IF agree < cfg.shadow_min_agreement THEN
            why := why || format('agreement %s < %s (%s of %s paired answers identical or equivalent)',
                                 round(agree, 3), cfg.shadow_min_agreement,
                                 s.identical + s.equivalent, s.paired);
        END IF;
        IF abs(delta) > cfg.shadow_max_refusal_delta THEN
            why := why || format('refusal delta %s%s %s %s%s (old %s, new %s)',
                                 CASE WHEN delta > 0 THEN '+' END, round(delta, 3),
                                 CASE WHEN delta > 0 THEN '>' ELSE '<' END,
                                 CASE WHEN delta > 0 THEN '+' ELSE '-' END, cfg.shadow_max_refusal_delta,
                                 round(s.old_refusals::numeric / s.paired, 3),
                                 round(s.new_refusals::numeric / s.paired, 3));
        END IF;
        IF cfg.shadow_max_length_ratio IS NOT NULL THEN
            IF ratio IS NULL THEN
                why := why || 'mean length ratio undefined: the old answers are empty'::text;
            ELSIF ratio > cfg.shadow_max_length_ratio THEN
                why := why || format('mean length ratio %s > %s (new %s vs old %s characters)',
                                     round(ratio, 3), cfg.shadow_max_length_ratio,
                                     round(s.new_mean, 1), round(s.old_mean, 1));
            ELSIF ratio < 1 / cfg.shadow_max_length_ratio THEN
                why := why || format('mean length ratio %s < %s (1/%s) (new %s vs old %s characters)',
                                     round(ratio, 3), round(1 / cfg.shadow_max_length_ratio, 3),
                                     cfg.shadow_max_length_ratio,
                                     round(s.new_mean, 1), round(s.old_mean, 1));
            END IF;
        END IF;
    END IF;

    RETURN QUERY SELECT
        s.samples, s.paired,
        round(s.identical::numeric / nullif(s.paired, 0), 4),
        round(s.equivalent::numeric / nullif(s.paired, 0), 4),
        round(s.different::numeric / nullif(s.paired, 0), 4),
        round(agree, 4),
        round(s.old_refusals::numeric / nullif(s.paired, 0), 4),
        round(s.new_refusals::numeric / nullif(s.paired, 0), 4),
        round(delta, 4),
        round(s.old_mean, 1), round(s.new_mean, 1), round(ratio, 3),
        s.old_p50, s.new_p50, round(s.new_p50::numeric / nullif(s.old_p50, 0), 3),
        s.old_p95, s.new_p95, round(s.new_p95::numeric / nullif(s.old_p95, 0), 3),
        round(s.errors::numeric / nullif(s.sent, 0), 4),
        round(s.timeouts::numeric / nullif(s.sent, 0), 4),
        cardinality(why) = 0, why;
END;
$$;

CREATE OR REPLACE FUNCTION canary_shadow_openings(canary text DEFAULT 'default', since interval DEFAULT '7 days',
                                       n integer DEFAULT 20)
RETURNS TABLE (opening text, old_share numeric, new_share numeric, delta numeric,
               old_bar text, new_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_shadow_openings.canary, since);
BEGIN
    -- the openings are the first words of the answers: private like them
    -- (this function runs as its caller)
    IF NOT has_column_privilege('@extschema@.canary_shadow', 'new_opening', 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for the openings of shadow answers'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The openings are the first words of the answers, which are private to this role.',
                  HINT = 'Run the report as llm_canary_admin, or make the texts readable with canary_set_shadow_private(false).';
    END IF;
    IF n IS NULL THEN
        RAISE EXCEPTION 'n must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass how many openings to show, for example 20.';
    END IF;
    IF n < 1 THEN
        RAISE EXCEPTION 'n % must be at least 1', n
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how many openings to show, for example 20.';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT r.old_opening, r.new_opening
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_openings.canary AND r.ts >= cutoff
    ), totals AS (
        SELECT count(w.old_opening) AS old_total, count(w.new_opening) AS new_total FROM w
    ), counts AS (
        SELECT o.op, sum(o.old_n) AS old_n, sum(o.new_n) AS new_n
          FROM (SELECT w.old_opening AS op, 1 AS old_n, 0 AS new_n FROM w WHERE w.old_opening IS NOT NULL
                UNION ALL
                SELECT w.new_opening, 0, 1 FROM w WHERE w.new_opening IS NOT NULL) o
         GROUP BY o.op
    ), shares AS (
        SELECT c.op, greatest(c.old_n, c.new_n) AS top,
               c.old_n::numeric / nullif(t.old_total, 0) AS os,
               c.new_n::numeric / nullif(t.new_total, 0) AS ns
          FROM counts c, totals t
    )
    SELECT CASE WHEN sh.op = '' THEN '(no words)' ELSE sh.op END,
           round(sh.os, 4), round(sh.ns, 4), round(sh.ns - sh.os, 4),
           repeat('█', round(20 * coalesce(sh.os, 0))::integer),
           repeat('█', round(20 * coalesce(sh.ns, 0))::integer)
      FROM shares sh
     ORDER BY sh.top DESC, sh.op
     LIMIT n;
END;
$$;

CREATE OR REPLACE FUNCTION canary_shadow_lengths(canary text DEFAULT 'default', since interval DEFAULT '7 days',
                                      buckets integer DEFAULT 10)
RETURNS TABLE (bucket integer, lower numeric, upper numeric, old_count bigint, new_count bigint,
               old_bar text, new_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_shadow_lengths.canary, since);
BEGIN
    IF buckets IS NULL THEN
        RAISE EXCEPTION 'buckets must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the number of histogram buckets, for example 10.';
    END IF;
    IF buckets NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'buckets % is out of range', buckets
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass between 1 and 1000 histogram buckets, for example 10.';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT length(r.old_text)::numeric AS ol, length(r.new_text)::numeric AS nl
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_lengths.canary AND r.ts >= cutoff
           AND (r.old_text IS NOT NULL OR r.new_text IS NOT NULL)
    ), top AS (
        -- a window of empty answers still gets a histogram: all in bucket 1
        SELECT greatest(max(w.ol), max(w.nl), 1) AS l FROM w HAVING count(*) > 0
    ), placed AS (
        -- least() skips NULLs: a missing answer must stay out of every bucket
        SELECT CASE WHEN w.ol IS NOT NULL THEN least(width_bucket(w.ol, 0, top.l, buckets), buckets) END AS ob,
               CASE WHEN w.nl IS NOT NULL THEN least(width_bucket(w.nl, 0, top.l, buckets), buckets) END AS nb
          FROM w, top
    ), old_counts AS (
        SELECT p.ob AS b, count(*) AS c FROM placed p WHERE p.ob IS NOT NULL GROUP BY p.ob
    ), new_counts AS (
        SELECT p.nb AS b, count(*) AS c FROM placed p WHERE p.nb IS NOT NULL GROUP BY p.nb
    ), hist AS (
        SELECT g AS b, top.l * (g - 1) / buckets AS lo, top.l * g / buckets AS hi,
               coalesce(oc.c, 0) AS oc, coalesce(nc.c, 0) AS nc
          FROM top
               CROSS JOIN generate_series(1, buckets) g
               LEFT JOIN old_counts oc ON oc.b = g
               LEFT JOIN new_counts nc ON nc.b = g
    ), scale AS (
        SELECT greatest(max(h.oc), max(h.nc), 1) AS m FROM hist h
    )
    SELECT h.b, round(h.lo, 1), round(h.hi, 1), h.oc, h.nc,
           repeat('█', round(20.0 * h.oc / scale.m)::integer),
           repeat('█', round(20.0 * h.nc / scale.m)::integer)
      FROM hist h, scale
     ORDER BY h.b;
END;
$$;

CREATE OR REPLACE FUNCTION canary_shadow_by_class(canary text DEFAULT 'default', since interval DEFAULT '7 days')
RETURNS TABLE (prompt_class text, samples bigint, paired bigint, agreement numeric,
               refusal_delta numeric, mean_length_ratio numeric,
               worse_than_overall boolean, note text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_shadow_by_class.canary, since);
BEGIN
    RETURN QUERY
    WITH w AS (
        SELECT coalesce(r.prompt_class, '(none)') AS cls,
               r.old_text IS NOT NULL AND r.new_text IS NOT NULL AS p,
               r.verdict, r.old_refusal, r.new_refusal,
               length(r.old_text) AS ol, length(r.new_text) AS nl
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_by_class.canary AND r.ts >= cutoff
    ), per AS (
        -- per class, and overall: the grand total row, the only one whose
        -- cls is NULL (a row without a class is '(none)')
        SELECT w.cls, count(*) AS samples, count(*) FILTER (WHERE w.p) AS paired,
               count(*) FILTER (WHERE w.p AND w.verdict IN ('identical', 'equivalent'))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS agree,
               (count(*) FILTER (WHERE w.p AND w.new_refusal) - count(*) FILTER (WHERE w.p AND w.old_refusal))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS delta,
               avg(w.nl) FILTER (WHERE w.p) / nullif(avg(w.ol) FILTER (WHERE w.p), 0) AS ratio
          FROM w
         GROUP BY GROUPING SETS ((w.cls), ())
    ), judged AS (
        SELECT per.*, o.agree AS o_agree, o.delta AS o_delta,
               coalesce(per.agree < o.agree - 0.10, false) AS low_agree,
               coalesce(per.delta > o.delta + 0.05, false) AS more_refusals
          FROM per JOIN per o ON o.cls IS NULL
         WHERE per.cls IS NOT NULL
    )
    SELECT j.cls, j.samples, j.paired, round(j.agree, 4), round(j.delta, 4), round(j.ratio, 3),
           j.low_agree OR j.more_refusals,
           nullif(concat_ws('; ',
               CASE WHEN j.low_agree THEN
                   format('agreement %s is %s points below overall %s',
                          round(j.agree, 3), round(100 * (j.o_agree - j.agree), 1), round(j.o_agree, 3)) END,
               CASE WHEN j.more_refusals THEN
                   format('refusal delta %s exceeds overall %s by %s',
                          round(j.delta, 3), round(j.o_delta, 3), round(j.delta - j.o_delta, 3)) END), '')
      FROM judged j
     ORDER BY j.low_agree OR j.more_refusals DESC, j.samples DESC, j.cls;
END;
$$;

-- CREATE OR REPLACE resets SECURITY DEFINER: the reports that read the
-- private texts keep it, the openings run as the caller
ALTER FUNCTION canary_shadow_report(text, interval) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_lengths(text, interval, integer) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_by_class(text, interval) SECURITY DEFINER;
DROP FUNCTION canary_shadow_window(text, interval);

-- the openings are private with the texts

CREATE OR REPLACE FUNCTION canary_set_shadow_private(private boolean DEFAULT true)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    public_columns text;
BEGIN
    IF private IS NULL THEN
        RAISE EXCEPTION 'private must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass true to hide prompts and answers from llm_canary_app, false to show them.';
    END IF;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO public_columns
      FROM pg_attribute a
     WHERE a.attrelid = '@extschema@.canary_shadow'::regclass
       AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('prompt', 'old_text', 'new_text', 'old_opening', 'new_opening');
    IF private THEN
        REVOKE SELECT ON TABLE @extschema@.canary_shadow FROM llm_canary_app;
        REVOKE SELECT (prompt, old_text, new_text, old_opening, new_opening)
            ON TABLE @extschema@.canary_shadow FROM llm_canary_app;
        EXECUTE format('GRANT SELECT (%s) ON TABLE %I.canary_shadow TO llm_canary_app',
                       public_columns, @extschema@.canary_schema_name());
    ELSE
        GRANT SELECT ON TABLE @extschema@.canary_shadow TO llm_canary_app;
    END IF;
    RETURN private;
END;
$$;

SELECT canary_set_shadow_private(true) WHERE canary_shadow_is_private();

-- one partition maintainer

CREATE FUNCTION canary_partition_days(parent text, from_day date, days integer)
RETURNS TABLE (partition text, moved_rows bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nsp      name := @extschema@.canary_schema_name();  -- unquoted: %I below
    columns  text;
    locked   boolean := false;
    day      date;
    part     text;
    lo       timestamptz;
    hi       timestamptz;
    has_rows boolean;
BEGIN
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO columns
      FROM pg_attribute a
     WHERE a.attrelid = format('%I.%I', nsp, parent)::regclass
       AND a.attnum > 0 AND NOT a.attisdropped;
    FOR i IN 0 .. days - 1 LOOP
        day := from_day + i;
        part := parent || '_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(format('%I.%I', nsp, part)) IS NOT NULL;
        IF NOT locked THEN
            -- the parent's lock before any partition's
            EXECUTE format('LOCK TABLE ONLY %I.%I IN SHARE ROW EXCLUSIVE MODE', nsp, parent);
            locked := true;
            -- another maintainer may have made it while this one waited
            CONTINUE WHEN to_regclass(format('%I.%I', nsp, part)) IS NOT NULL;
        END IF;
        lo := day::timestamp AT TIME ZONE 'UTC';
        hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I WHERE ts >= $1 AND ts < $2)',
                       nsp, parent || '_default')
           INTO has_rows USING lo, hi;
        partition := part;
        IF NOT has_rows THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                           nsp, part, nsp, parent, lo, hi);
            moved_rows := 0;
        ELSE
            EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           nsp, part, nsp, parent);
            EXECUTE format('WITH moved AS (DELETE FROM %I.%I WHERE ts >= $1 AND ts < $2 RETURNING %s)'
                           ' INSERT INTO %I.%I (%s) SELECT %s FROM moved',
                           nsp, parent || '_default', columns, nsp, part, columns, columns)
               USING lo, hi;
            GET DIAGNOSTICS moved_rows = ROW_COUNT;
            EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                           nsp, parent, nsp, part, lo, hi);
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION canary_partition_days(text, date, integer) IS
    'Create the missing daily partitions of a partitioned table of the extension for days UTC days from from_day, moving their rows out of the DEFAULT partition';

REVOKE ALL ON FUNCTION canary_partition_days(text, date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_partition_days(text, date, integer) TO llm_canary_admin;

CREATE OR REPLACE FUNCTION canary_maintenance(days_ahead integer DEFAULT 7, today date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS TABLE (action text, partition text, moved_rows bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    retention integer := coalesce(nullif(current_setting('llm_canary.retention_days', true), '')::integer, 30);
    nsp name := @extschema@.canary_schema_name();  -- unquoted: %I below
    parent text;
    locked boolean;
    n bigint;
    made record;
    old record;
    expired record;
BEGIN
    IF days_ahead IS NULL OR today IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN today IS NULL THEN 'today' ELSE 'days_ahead' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF days_ahead NOT BETWEEN 0 AND 366 THEN
        RAISE EXCEPTION 'days_ahead % is out of range', days_ahead
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create between 0 and 366 days of partitions ahead; the default is 7.';
    END IF;

    -- expired rows: each table, the condition its index serves, and the
    -- cutoff ($1); a table of a later part is skipped while it does not
    -- exist.  Rollups (no condition) expire through their own function,
    -- after the window summaries and before the submissions.
    FOR expired IN
        SELECT * FROM (VALUES
            -- the cache's TTL reads like '1h' (its unit is seconds): a valid
            -- interval; off (0) or not loaded, every answer is stale
            ('canary_response_cache', 'created_at <= $1',
             now() - coalesce(nullif(current_setting('llm_canary.response_cache_ttl', true), ''), '0')::interval),
            -- expired session pins: routing decides such a session again
            ('canary_sessions', 'expires_at < $1', now()),
            -- window summaries of days before today - retention (none when 0)
            ('canary_window_summaries', 'at < $1',
             CASE WHEN retention > 0 THEN (today - retention)::timestamp AT TIME ZONE 'UTC' END),
            -- rollups older than llm_canary.rollup_retention_days
            ('canary_rollups', NULL, NULL),
            -- finished submissions past llm_canary.submit_retention
            ('canary_submissions', 'finished_at < $1',
             now() - coalesce(nullif(current_setting('llm_canary.submit_retention', true), ''), '1d')::interval)
        ) AS e (relname, condition, cutoff)
    LOOP
        IF expired.condition IS NULL THEN
            CONTINUE WHEN to_regprocedure(format('%I.canary_rollup_maintenance(date)', nsp)) IS NULL;
            EXECUTE format('SELECT %I.canary_rollup_maintenance($1)', nsp) INTO n USING today;
        ELSE
            CONTINUE WHEN expired.cutoff IS NULL
                       OR to_regclass(format('%I.%I', nsp, expired.relname)) IS NULL;
            EXECUTE format('DELETE FROM %I.%I WHERE %s', nsp, expired.relname, expired.condition)
               USING expired.cutoff;
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
        IF n > 0 THEN
            action := 'expire'; partition := expired.relname; moved_rows := n;
            RETURN NEXT;
        END IF;
    END LOOP;

    -- the CSAT feed's users of days before today - retention: a member's
    -- own; on the control only those of members no longer in
    -- canary_fleet_members, and any two days later (each member's own
    -- delete reaches the control through replication: the apply worker
    -- neither waits on this one nor deadlocks with it); batches of 10,000,
    -- at most 1,000,000 rows a day, rows another transaction holds skipped
    -- (canary_fleet_members is created by a later part)
    IF retention > 0 AND to_regclass(format('%I.canary_fleet_members', nsp)) IS NOT NULL THEN
        moved_rows := 0;
        LOOP
            EXECUTE format($q$
                DELETE FROM %1$I.canary_csat_user_days u
                 WHERE u.ctid = ANY (ARRAY(
                       SELECT o.ctid FROM %1$I.canary_csat_user_days o
                        WHERE o.day < $1
                          AND (NOT $2 OR o.day < $1 - 2
                               OR NOT EXISTS (SELECT 1 FROM %1$I.canary_fleet_members m
                                               WHERE m.member = o.member))
                        LIMIT 10000 FOR UPDATE OF o SKIP LOCKED))$q$, nsp)
               USING today - retention,
                     coalesce(current_setting('llm_canary.fleet_role', true), '') = 'control';
            GET DIAGNOSTICS n = ROW_COUNT;
            moved_rows := moved_rows + n;
            EXIT WHEN n < 10000 OR moved_rows >= 1000000;
        END LOOP;
        IF moved_rows > 0 THEN
            action := 'expire'; partition := 'canary_csat_user_days';
            RETURN NEXT;
        END IF;
    END IF;

    -- (both created by a later part than this function's first run)
    -- the sample-ratio users of deleted rollouts (those of other evidence
    -- periods go at each check), found through the primary key (one probe
    -- per rollout), and the verdict marks no check will use (rollouts
    -- deleted, disarmed or not sequential; older than 15 days, past the
    -- 14 days a check recounts; all but one of a rollout and bucket);
    -- at most 100,000 rows each a day, rows another transaction holds skipped
    IF to_regclass(format('%I.canary_srm_users', nsp)) IS NOT NULL THEN
        EXECUTE format($q$
            WITH RECURSIVE r (canary) AS (
                (SELECT u.canary FROM %1$I.canary_srm_users u ORDER BY u.canary LIMIT 1)
                UNION ALL
                SELECT (SELECT u.canary FROM %1$I.canary_srm_users u
                         WHERE u.canary > r.canary ORDER BY u.canary LIMIT 1)
                  FROM r WHERE r.canary IS NOT NULL
            )
            DELETE FROM %1$I.canary_srm_users u
             WHERE u.ctid = ANY (ARRAY(
                   SELECT o.ctid FROM r JOIN %1$I.canary_srm_users o ON o.canary = r.canary
                    WHERE NOT EXISTS (SELECT 1 FROM %1$I.canary_config c WHERE c.name = r.canary)
                    LIMIT 100000 FOR UPDATE OF o SKIP LOCKED))$q$, nsp);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            action := 'expire'; partition := 'canary_srm_users'; moved_rows := n;
            RETURN NEXT;
        END IF;
        EXECUTE format($q$
            DELETE FROM %1$I.canary_verdict_marks m
             WHERE m.ctid = ANY (ARRAY(
                   SELECT o.ctid FROM %1$I.canary_verdict_marks o
                     LEFT JOIN %1$I.canary_config c ON c.name = o.canary
                    WHERE c.name IS NULL OR NOT c.kill_switch_armed OR c.decision_mode <> 'sequential'
                       OR o.bucket_end < now() - interval '15 days'
                       OR EXISTS (SELECT 1 FROM %1$I.canary_verdict_marks e
                                   WHERE e.canary = o.canary AND e.bucket_end = o.bucket_end AND e.ctid < o.ctid)
                    LIMIT 100000 FOR UPDATE OF o SKIP LOCKED))$q$, nsp);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            action := 'expire'; partition := 'canary_verdict_marks'; moved_rows := n;
            RETURN NEXT;
        END IF;
    END IF;

    FOREACH parent IN ARRAY ARRAY['canary_requests', 'canary_feedback', 'canary_shadow'] LOOP
        -- canary_shadow is created after this function's first run at install
        CONTINUE WHEN to_regclass(format('%I.%I', nsp, parent)) IS NULL;

        -- today .. today + days_ahead
        FOR made IN SELECT p.partition, p.moved_rows
                      FROM @extschema@.canary_partition_days(parent, today, days_ahead + 1) p
        LOOP
            action := 'create'; partition := made.partition; moved_rows := made.moved_rows;
            RETURN NEXT;
        END LOOP;

        -- retention: drop daily partitions of days before today - retention
        locked := false;
        IF retention > 0 THEN
            FOR old IN
                SELECT c.relname::text AS relname
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = format('%I.%I', nsp, parent)::regclass
                   AND c.relname ~ ('^' || parent || '_[0-9]{8}$')
                   AND to_date(right(c.relname, 8), 'YYYYMMDD') < today - retention
                 ORDER BY c.relname
            LOOP
                IF NOT locked THEN
                    EXECUTE format('LOCK TABLE ONLY %I.%I IN SHARE ROW EXCLUSIVE MODE', nsp, parent);
                    locked := true;
                END IF;
                EXECUTE format('DROP TABLE %I.%I', nsp, old.relname);
                action := 'drop'; partition := old.relname; moved_rows := NULL;
                RETURN NEXT;
            END LOOP;
        END IF;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION canary_maintenance(integer, date) IS
    'Creates daily partitions of canary_requests, canary_feedback and canary_shadow from today through today + days_ahead (moving rows out of the DEFAULT partition), drops those and the canary_window_summaries rows older than llm_canary.retention_days, and deletes expired session pins, answers of canary_response_cache older than llm_canary.response_cache_ttl, canary_rollups older than llm_canary.rollup_retention_days and finished canary_submissions older than llm_canary.submit_retention';

CREATE OR REPLACE FUNCTION canary_shadow_create_partitions(from_day date DEFAULT (now() AT TIME ZONE 'UTC')::date,
                                                days integer DEFAULT 8)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF from_day IS NULL OR days IS NULL THEN
        RAISE EXCEPTION 'from_day and days must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'For example canary_shadow_create_partitions(current_date, 8).';
    END IF;
    IF days NOT BETWEEN 0 AND 366 THEN
        RAISE EXCEPTION 'days % is out of range', days
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create between 0 and 366 daily partitions at a time.';
    END IF;
    RETURN (SELECT count(*)::integer FROM @extschema@.canary_partition_days('canary_shadow', from_day, days));
END;
$$;

ALTER FUNCTION canary_maintenance(integer, date) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_create_partitions(date, integer) SECURITY DEFINER;

-- retention of the window summaries, and what pg_dump copies
CREATE INDEX canary_window_summaries_at_idx ON canary_window_summaries (at);
SELECT pg_catalog.pg_extension_config_dump('canary_window_summaries', '');
SELECT pg_catalog.pg_extension_config_dump('canary_window_summaries_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('canary_shadow_default', '');
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT d.objid::regclass
          FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
           AND c.relname ~ '^canary_shadow_[0-9]{8}$'
    LOOP
        EXECUTE format('ALTER EXTENSION llm_canary DROP TABLE %s', part);
    END LOOP;
END;
$$;
