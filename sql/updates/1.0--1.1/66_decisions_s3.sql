/*
 * 1.1, decisions (third session): the running totals of the settled minutes
 * of the kill switch's evidence, so that a check and the plan's gates sum a
 * few rows however long the stage (sql/parts/52_decisions.sql).
 */
CREATE TABLE canary_evidence_settled (
    canary          text NOT NULL,
    cohort          text NOT NULL CHECK (cohort IN ('canary', 'control')),
    since           timestamptz,
    through         timestamptz NOT NULL,
    samples         bigint NOT NULL,
    errors          bigint NOT NULL,
    refusals        bigint NOT NULL,
    thumbs_down     bigint NOT NULL,
    slow            bigint NOT NULL,
    PRIMARY KEY (canary, cohort)
);
COMMENT ON TABLE canary_evidence_settled IS
    'Per rollout and cohort: the sums of canary_evidence over the minutes of the evidence period (since) before through';

CREATE FUNCTION canary_evidence_stage(p_canary text, p_since timestamptz, p_at timestamptz)
RETURNS TABLE (cohort text, samples bigint, errors bigint, refusals bigint, thumbs_down bigint,
               slow bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH s AS (
        SELECT s.* FROM @extschema@.canary_evidence_settled s
         WHERE s.canary = p_canary AND s.since IS NOT DISTINCT FROM p_since
           AND s.through <= date_bin('1 minute', p_at, timestamptz '2000-01-01 00:00:00+00')
    ), lo AS (
        SELECT coalesce((SELECT min(s.through) FROM s),
                        date_bin('1 minute', p_since, timestamptz '2000-01-01 00:00:00+00'),
                        '-infinity') AS bucket
    )
    SELECT x.cohort, sum(x.samples)::bigint, sum(x.errors)::bigint, sum(x.refusals)::bigint,
           sum(x.thumbs_down)::bigint, sum(x.slow)::bigint
      FROM (SELECT s.cohort, s.samples, s.errors, s.refusals, s.thumbs_down, s.slow FROM s
            UNION ALL
            SELECT e.cohort, e.samples, e.errors, e.refusals, e.thumbs_down, e.slow
              FROM @extschema@.canary_evidence e, lo
             WHERE e.canary = p_canary AND e.bucket >= lo.bucket AND e.bucket <= p_at) x
     GROUP BY x.cohort
$$;

-- privileges, as sql/parts/90_roles.sql gives them in a fresh install (the
-- plan's gates, which the application may read, call canary_evidence_stage)
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE canary_evidence_settled TO llm_canary_admin;
GRANT SELECT ON TABLE canary_evidence_settled TO llm_canary_app;
REVOKE ALL ON FUNCTION canary_evidence_stage(text, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_evidence_stage(text, timestamptz, timestamptz) TO llm_canary_admin, llm_canary_app;
