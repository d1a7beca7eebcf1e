/*
 * 1.1, decisions (third session), sql/parts/52_decisions.sql: the refusal
 * rule's paired statistic per minute of evidence, and the running totals of
 * the settled minutes of the kill switch's evidence, so that a check and the
 * plan's gates sum a few rows however long the stage.
 */
ALTER TABLE canary_evidence
    ADD COLUMN paired_1 double precision NOT NULL DEFAULT 0,
    ADD COLUMN paired_2 double precision NOT NULL DEFAULT 0,
    ADD COLUMN paired_3 double precision NOT NULL DEFAULT 0,
    ADD COLUMN paired_4 double precision NOT NULL DEFAULT 0;
COMMENT ON COLUMN canary_evidence.paired_1 IS
    'canary rows: the log of the refusal rule''s paired statistic for the minute, one column per bet size (src/sequential.c, paired_2 to paired_4 likewise)';

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
    paired_1        double precision NOT NULL DEFAULT 0,
    paired_2        double precision NOT NULL DEFAULT 0,
    paired_3        double precision NOT NULL DEFAULT 0,
    paired_4        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (canary, cohort)
);
COMMENT ON TABLE canary_evidence_settled IS
    'Per rollout and cohort: the sums of canary_evidence over the minutes of the evidence period (since) before through';

CREATE FUNCTION canary_evidence_stage(p_canary text, p_since timestamptz, p_at timestamptz)
RETURNS TABLE (cohort text, samples bigint, errors bigint, refusals bigint, thumbs_down bigint,
               slow bigint, paired_1 double precision, paired_2 double precision,
               paired_3 double precision, paired_4 double precision)
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
           sum(x.thumbs_down)::bigint, sum(x.slow)::bigint, sum(x.paired_1), sum(x.paired_2),
           sum(x.paired_3), sum(x.paired_4)
      FROM (SELECT s.cohort, s.samples, s.errors, s.refusals, s.thumbs_down, s.slow, s.paired_1,
                   s.paired_2, s.paired_3, s.paired_4 FROM s
            UNION ALL
            SELECT e.cohort, e.samples, e.errors, e.refusals, e.thumbs_down, e.slow, e.paired_1,
                   e.paired_2, e.paired_3, e.paired_4
              FROM @extschema@.canary_evidence e, lo
             WHERE e.canary = p_canary AND e.bucket >= lo.bucket AND e.bucket <= p_at) x
     GROUP BY x.cohort
$$;

CREATE FUNCTION canary_paired_evidence(canary_samples bigint, canary_events bigint, control_samples bigint,
                                       control_events bigint, delta double precision)
RETURNS double precision[]
AS 'MODULE_PATHNAME', 'canary_paired_evidence'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION canary_paired_evidence(bigint, bigint, bigint, bigint, double precision) IS
    'log of the refusal rule''s paired statistic (canary events <= control events + delta) of one increment of traffic, per bet size';

-- privileges, as sql/parts/90_roles.sql gives them in a fresh install (the
-- plan's gates, which the application may read, call canary_evidence_stage)
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE canary_evidence_settled TO llm_canary_admin;
GRANT SELECT ON TABLE canary_evidence_settled TO llm_canary_app;
REVOKE ALL ON FUNCTION canary_evidence_stage(text, timestamptz, timestamptz),
    canary_paired_evidence(bigint, bigint, bigint, bigint, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_paired_evidence(bigint, bigint, bigint, bigint, double precision)
    TO llm_canary_admin;
GRANT EXECUTE ON FUNCTION canary_evidence_stage(text, timestamptz, timestamptz) TO llm_canary_admin, llm_canary_app;
