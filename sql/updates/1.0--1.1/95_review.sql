/*
 * Review fixes (review2).
 *
 * canary_collect_evidence: the thumbs-down lookup has a lower time bound
 * (a verdict follows its request), so a check reads a day or two of
 * canary_feedback instead of every retained verdict.
 */
CREATE OR REPLACE FUNCTION canary_collect_evidence(p_canary text, p_at timestamptz, p_since timestamptz,
                                        p_slow_over double precision)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
    from_bucket timestamptz := date_bin('1 minute', p_at - interval '2 minutes', origin);
    last_bucket timestamptz;
BEGIN
    SELECT max(e.bucket) INTO last_bucket FROM @extschema@.canary_evidence e
     WHERE e.canary = p_canary AND e.bucket <= p_at;
    from_bucket := least(from_bucket,
                         greatest(coalesce(last_bucket, date_bin('1 minute', p_since, origin), from_bucket),
                                  date_bin('1 minute', p_at - interval '1 hour', origin)));
    DELETE FROM @extschema@.canary_evidence e
     WHERE e.canary = p_canary
       AND ((e.bucket >= from_bucket AND e.bucket <= p_at)
            OR e.bucket < date_bin('1 minute', p_since, origin)
            OR e.bucket < p_at - interval '14 days');
    INSERT INTO @extschema@.canary_evidence
        (canary, bucket, cohort, samples, errors, refusals, thumbs_down, slow)
    SELECT p_canary, date_bin('1 minute', r.ts, origin), r.cohort, count(*),
           count(*) FILTER (WHERE r.outcome IN ('error', 'timeout')),
           count(*) FILTER (WHERE r.refusal),
           -- a verdict follows its request (f.ts is the start of the verdict's
           -- transaction, a day of slack): the lower bound prunes the daily
           -- partitions, so a check probes a day or two of canary_feedback per
           -- request instead of hashing every retained verdict
           count(*) FILTER (WHERE EXISTS (SELECT 1 FROM @extschema@.canary_feedback f
                                           WHERE f.request_id = r.request_id AND f.thumbs_down
                                             AND f.ts >= r.ts - interval '1 day' AND f.ts <= p_at)),
           count(*) FILTER (WHERE p_slow_over > 0 AND r.latency_ms > p_slow_over)
      FROM @extschema@.canary_requests r
     WHERE r.canary = p_canary AND r.ts >= from_bucket AND r.ts <= p_at
       AND (p_since IS NULL OR r.ts > p_since)
       AND r.cohort IN ('canary', 'control') AND NOT r.fallback AND NOT r.cached
     GROUP BY 2, 3;
END;
$$;
