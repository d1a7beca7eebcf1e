/*
 * Decisions: which test the kill switch applies (decision_mode), the
 * evidence it applies it to (per-minute counts since the last re-arm or
 * change of stage, percentage or models), and the sample-ratio check.  The
 * statistics are in src/sequential.c, the decision in src/killswitch.c.
 */

ALTER TABLE canary_config
    ADD COLUMN decision_mode text NOT NULL DEFAULT 'sequential',
    ADD COLUMN evidence_since timestamptz,
    ADD COLUMN srm_trips boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT canary_config_decision_mode_check
        CHECK (decision_mode IN ('sequential', 'confirm_windows', 'raw'));
COMMENT ON COLUMN canary_config.decision_mode IS
    'sequential (always-valid tests, the default), confirm_windows (a breach in consecutive windows) or raw (the article''s plain comparisons)';
COMMENT ON COLUMN canary_config.evidence_since IS
    'The kill switch and the sample-ratio check count only traffic after this (NULL: all of it); set at each re-arm and change of stage, percentage or models';
COMMENT ON COLUMN canary_config.srm_trips IS
    'A sample-ratio mismatch trips the kill switch (default: it only alerts)';

ALTER TABLE canary_window_summaries
    ADD COLUMN decision_mode text,
    ADD COLUMN decision jsonb;
COMMENT ON COLUMN canary_window_summaries.decision IS
    'canary only: each rule''s verdict (trip, below_threshold, min_samples, not_credible, unconfirmed, no_data) with its numbers';

/*
 * The evidence of the kill switch: per rollout, minute and cohort, the
 * counts the rules test.  canary_check recounts the last few minutes from
 * canary_rollups at every check (rows reach the rollups through the metrics
 * queue a little late), and from further back when a late verdict changed
 * an older bucket (canary_verdict_marks), and drops the minutes before
 * evidence_since.
 */
CREATE TABLE canary_evidence (
    canary          text NOT NULL,
    bucket          timestamptz NOT NULL,
    cohort          text NOT NULL CHECK (cohort IN ('canary', 'control')),
    samples         bigint NOT NULL,
    errors          bigint NOT NULL,
    refusals        bigint NOT NULL,
    thumbs_down     bigint NOT NULL,
    slow            bigint NOT NULL,
    paired_1        double precision NOT NULL DEFAULT 0,
    paired_2        double precision NOT NULL DEFAULT 0,
    paired_3        double precision NOT NULL DEFAULT 0,
    paired_4        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (canary, bucket, cohort)
);
COMMENT ON TABLE canary_evidence IS
    'Per rollout, minute and cohort since evidence_since: requests, errors, refusals, thumbs-down and requests slower than p95_ratio_threshold x control p95';
COMMENT ON COLUMN canary_evidence.paired_1 IS
    'canary rows: the log of the refusal rule''s paired statistic for the minute, one column per bet size (src/sequential.c, paired_2 to paired_4 likewise)';

/*
 * The running totals of canary_evidence's settled minutes, per rollout and
 * cohort: the sums of every minute of the evidence period (since) before
 * through, the minutes canary_collect_evidence no longer recounts at every
 * check.  A check then adds up these two rows and the last few minutes
 * (canary_evidence_stage), not the up to 20,160 minutes of a 14-day stage;
 * a recount of older minutes (a late verdict) takes them out and puts them
 * back.  Kept by canary_collect_evidence; dropped with the evidence when
 * evidence_since changes.
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
    paired_1        double precision NOT NULL DEFAULT 0,
    paired_2        double precision NOT NULL DEFAULT 0,
    paired_3        double precision NOT NULL DEFAULT 0,
    paired_4        double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (canary, cohort)
);
COMMENT ON TABLE canary_evidence_settled IS
    'Per rollout and cohort: the sums of canary_evidence over the minutes of the evidence period (since) before through';

/*
 * The sample-ratio check: each user once per rollout and evidence period
 * (period: the evidence_since it was seen under, -infinity for none), with
 * the cohort that served it first, recorded as the requests are written
 * (canary_srm_trigger), and the running counts.
 */
CREATE TABLE canary_srm_users (
    canary          text NOT NULL,
    user_id         text NOT NULL,
    cohort          text NOT NULL,
    period          timestamptz NOT NULL,
    PRIMARY KEY (canary, period, user_id)
);
COMMENT ON TABLE canary_srm_users IS
    'Users seen per rollout and evidence period (the evidence_since they were seen under), with their cohort: the sample-ratio check counts each user once';
COMMENT ON COLUMN canary_srm_users.period IS
    'The rollout''s evidence_since when the user was first seen (-infinity when none); rows of earlier periods are deleted a few thousand at a time by canary_srm_check';

CREATE TABLE canary_srm_state (
    canary          text PRIMARY KEY,
    since           timestamptz,
    users_canary    bigint NOT NULL DEFAULT 0,
    users_control   bigint NOT NULL DEFAULT 0,
    evidence        double precision,
    alerted_at      timestamptz,
    counted_to      timestamptz,
    settled_canary  bigint NOT NULL DEFAULT 0,
    settled_control bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE canary_srm_state IS
    'Per rollout: users per cohort since evidence_since, the log evidence of a mismatch, and when it was alerted';
COMMENT ON COLUMN canary_srm_state.counted_to IS
    'settled_canary and settled_control count the new users of the rollup buckets ending at or before this (buckets older than two minutes, taken as complete)';

/*
 * decision_mode is valid, and evidence starts afresh when the kill switch
 * is re-armed or what routing does changes (stage, percent_new, models):
 * traffic from before says nothing about the new state.  An UPDATE that
 * sets evidence_since itself keeps its value (the simulator and tests move
 * it along a simulated clock).  The evidence_since this trigger sets is
 * rounded up to the next 30-second boundary (the end of the current rollup
 * bucket): evidence is counted from whole rollup buckets that start at or
 * after evidence_since, so a value on a boundary loses no traffic.  The old
 * evidence is deleted.  The evidence of a rollout deleted or renamed is
 * deleted with it, and a rollout created or renamed under a name starts
 * with none of an earlier one's (after the row is written: an upsert
 * that meets the existing rollout keeps its evidence).  Before it deletes
 * a rollout's evidence it waits for the rollout's check lock, and holds it
 * until the transaction ends: a check meanwhile (one that does not hold
 * it) judges on the evidence committed, rather than wait for the rows
 * deleted here until the operator commits.  Lock order: the row of
 * canary_config (held by the UPDATE or DELETE that fires this), then the
 * check lock; a check, holding check locks, never waits for a row of
 * canary_config (its trip skips a row another transaction holds: the next
 * check trips), so the two cannot deadlock.  Fires after
 * canary_config_b_validate.
 */
CREATE FUNCTION canary_config_evidence()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- AFTER (canary_config_d_evidence_gone): the evidence of a rollout
    -- deleted or renamed goes with it, and a rollout created (or renamed)
    -- under a name starts with none.  After the row is written, not before:
    -- an INSERT ... ON CONFLICT that meets the existing rollout fires no
    -- AFTER INSERT, so an upsert keeps the rollout's evidence.
    IF TG_WHEN = 'AFTER' THEN
        IF TG_OP = 'UPDATE' AND NEW.name = OLD.name THEN
            RETURN NULL;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            PERFORM @extschema@.canary_try_check_lock(OLD.name, true);
            DELETE FROM @extschema@.canary_evidence WHERE canary = OLD.name;
            DELETE FROM @extschema@.canary_evidence_settled WHERE canary = OLD.name;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            PERFORM @extschema@.canary_try_check_lock(NEW.name, true);
            DELETE FROM @extschema@.canary_evidence WHERE canary = NEW.name;
            DELETE FROM @extschema@.canary_evidence_settled WHERE canary = NEW.name;
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.decision_mode IS NULL OR NEW.decision_mode NOT IN ('sequential', 'confirm_windows', 'raw') THEN
        RAISE EXCEPTION 'invalid decision_mode "%" for rollout "%"', NEW.decision_mode, NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Valid modes are: sequential (the default), confirm_windows, raw.';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.evidence_since IS NOT DISTINCT FROM OLD.evidence_since
          AND ((NEW.kill_switch_armed AND NOT OLD.kill_switch_armed)
               OR (NEW.stage, NEW.percent_new, NEW.old_model, NEW.new_model, NEW.refusal_delta_threshold)
                  IS DISTINCT FROM (OLD.stage, OLD.percent_new, OLD.old_model, OLD.new_model,
                                    OLD.refusal_delta_threshold)) THEN
        NEW.evidence_since := @extschema@.canary_rollup_bucket(now());
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.evidence_since IS DISTINCT FROM OLD.evidence_since THEN
        PERFORM @extschema@.canary_try_check_lock(NEW.name, true);
        DELETE FROM @extschema@.canary_evidence WHERE canary = NEW.name;
        DELETE FROM @extschema@.canary_evidence_settled WHERE canary = NEW.name;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_config_c_evidence
    BEFORE INSERT OR UPDATE ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_evidence();
CREATE TRIGGER canary_config_d_evidence_gone
    AFTER INSERT OR DELETE OR UPDATE OF name ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_evidence();

/*
 * canary_try_check_lock: take the rollout's check lock without waiting
 * (src/private_locks.c), held to the end of the transaction: the
 * evidence and the sample-ratio state of a rollout are written by one
 * check at a time.  With wait (canary_config_evidence, before it deletes
 * the evidence), waiting for it.  An advisory-style lock in a space of
 * its own, apart from the applications' advisory locks.  Internal.
 */
CREATE FUNCTION canary_try_check_lock(canary text, wait boolean DEFAULT false)
RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_try_check_lock'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION canary_try_check_lock(text, boolean) IS
    'Internal: take the check lock of a rollout (its evidence and sample-ratio state) until the end of the transaction, without waiting unless wait';

/*
 * canary_collect_evidence: recount the minutes of canary_evidence from
 * canary_rollups (requests neither fallback nor cached, cohorts canary and
 * control), from two minutes before p_at (or from the last minute counted,
 * when the checks paused, at most an hour back) up to the rollup bucket
 * that holds p_at; and, before that, only the minutes of the buckets whose
 * thumbs-down a fold changed since (canary_verdict_marks) or that a
 * verdict still queued in canary_feedback_pending belongs to (the queue's
 * verdicts are counted too, read without a lock), each minute alone: a
 * late verdict costs its minute, not a recount of the days since.  Counts
 * only buckets that start at or after p_since, and drops the minutes
 * before p_since or older than 14 days (a stage statistic covers at most
 * the last 14 days), keeping the running totals of the settled minutes
 * (canary_evidence_settled) in step: they always hold the sums of the
 * minutes before their 'through', the minute two minutes before p_at,
 * which later checks recount only for a late verdict or after a pause; and
 * adds to each recounted minute's paired statistic (the refusal rule's)
 * that of the requests counted since its last count.  A 30-second bucket
 * counts in the minute it starts in.  p_slow_over: the latency (ms) above which a canary request counts
 * as slow (p95_ratio_threshold x control p95), read from the latency
 * histograms (values within 1/64 of it may be misplaced); 0 when no
 * baseline is known.  Plain sums over canary_rollups (a fleet's combined
 * rows sum the same way).  Internal: canary_check calls it.
 */
CREATE FUNCTION canary_collect_evidence(p_canary text, p_at timestamptz, p_since timestamptz,
                                        p_slow_over double precision)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
    from_bucket timestamptz := date_bin('1 minute', p_at - interval '2 minutes', origin);
    last_bucket timestamptz;
    oldest constant timestamptz := greatest(date_bin('1 minute', p_at - interval '14 days', origin),
                                            date_bin('1 minute', p_since, origin));
    marked timestamptz[];
    settled timestamptz;
    settle_to constant timestamptz := date_bin('1 minute', p_at - interval '2 minutes', origin);
    old_rows @extschema@.canary_evidence[];
    delta double precision;
    nsp constant name := @extschema@.canary_schema_name();  -- unquoted: %I below
BEGIN
    -- one collection of a rollout at a time (two would both add their sums
    -- to the running totals), under the rollout's check lock (canary_check
    -- took it already); a check that finds another one collecting judges
    -- on what is committed rather than wait for it (a check left open in a
    -- transaction must not stall the monitor)
    IF NOT @extschema@.canary_try_check_lock(p_canary) THEN
        RETURN;
    END IF;
    -- the evidence period changed since the caller read it (or the rollout
    -- is gone): the next check collects for the new one
    IF NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c
                    WHERE c.name = p_canary AND c.evidence_since IS NOT DISTINCT FROM p_since) THEN
        RETURN;
    END IF;
    SELECT max(e.bucket) INTO last_bucket FROM @extschema@.canary_evidence e
     WHERE e.canary = p_canary AND e.bucket <= p_at;
    from_bucket := least(from_bucket,
                         greatest(coalesce(last_bucket, date_bin('1 minute', p_since, origin), from_bucket),
                                  date_bin('1 minute', p_at - interval '1 hour', origin)));
    -- late verdicts: the minutes, before from_bucket, of the buckets a fold
    -- changed (marks another transaction holds are left to it: never
    -- waits) and of the verdicts still queued
    WITH used AS (
        DELETE FROM @extschema@.canary_verdict_marks m
         WHERE m.ctid = ANY (ARRAY(SELECT o.ctid FROM @extschema@.canary_verdict_marks o
                                    WHERE o.canary = p_canary FOR UPDATE SKIP LOCKED))
        RETURNING m.bucket_end
    )
    SELECT array_agg(DISTINCT k.minute) INTO marked
      FROM (SELECT u.bucket_end FROM used u
            UNION ALL
            SELECT q.bucket_end FROM @extschema@.canary_feedback_pending q
             WHERE q.canary = p_canary AND q.thumbs_down > 0) b
     CROSS JOIN LATERAL (SELECT date_bin('1 minute', b.bucket_end - interval '30 seconds', origin) AS minute) k
     WHERE k.minute < from_bucket AND k.minute >= oldest;
    -- the running totals: the settled minutes about to be recounted or
    -- dropped leave them (they start over in another evidence period, or
    -- when the clock went back)
    SELECT s.through INTO settled FROM @extschema@.canary_evidence_settled s
     WHERE s.canary = p_canary AND s.since IS NOT DISTINCT FROM p_since
     ORDER BY s.cohort LIMIT 1 FOR UPDATE;
    IF settled IS NULL OR settled > settle_to THEN
        DELETE FROM @extschema@.canary_evidence_settled s WHERE s.canary = p_canary;
        settled := NULL;
    ELSE
        UPDATE @extschema@.canary_evidence_settled s
           SET samples = s.samples - d.samples, errors = s.errors - d.errors,
               refusals = s.refusals - d.refusals, thumbs_down = s.thumbs_down - d.thumbs_down,
               slow = s.slow - d.slow, paired_1 = s.paired_1 - d.paired_1, paired_2 = s.paired_2 - d.paired_2,
               paired_3 = s.paired_3 - d.paired_3, paired_4 = s.paired_4 - d.paired_4
          FROM (SELECT e.cohort, sum(e.samples) AS samples, sum(e.errors) AS errors,
                       sum(e.refusals) AS refusals, sum(e.thumbs_down) AS thumbs_down, sum(e.slow) AS slow,
                       sum(e.paired_1) AS paired_1, sum(e.paired_2) AS paired_2, sum(e.paired_3) AS paired_3,
                       sum(e.paired_4) AS paired_4
                  FROM @extschema@.canary_evidence e
                 WHERE e.canary = p_canary AND e.bucket < settled
                   AND ((e.bucket >= from_bucket AND e.bucket <= p_at)
                        OR e.bucket IN (SELECT unnest(marked))
                        OR e.bucket < date_bin('1 minute', p_since, origin)
                        OR e.bucket < p_at - interval '14 days')
                 GROUP BY e.cohort) d
         WHERE s.canary = p_canary AND s.cohort = d.cohort;
    END IF;
    -- the minutes about to be recounted, as counted before (the paired
    -- statistic adds the requests counted since)
    SELECT array_agg(e) INTO old_rows FROM @extschema@.canary_evidence e
     WHERE e.canary = p_canary
       AND ((e.bucket >= from_bucket AND e.bucket <= p_at) OR e.bucket IN (SELECT unnest(marked)));
    DELETE FROM @extschema@.canary_evidence e
     WHERE e.canary = p_canary
       AND ((e.bucket >= from_bucket AND e.bucket <= p_at)
            OR e.bucket IN (SELECT unnest(marked))
            OR e.bucket < date_bin('1 minute', p_since, origin)
            OR e.bucket < p_at - interval '14 days');
    -- the one rollups table of this database's role (canary_summary says why)
    EXECUTE format($q$
    INSERT INTO %2$I.canary_evidence
        (canary, bucket, cohort, samples, errors, refusals, thumbs_down, slow)
    SELECT $1, date_bin('1 minute', r.bucket_end - interval '30 seconds', $6), r.cohort,
           sum(r.requests)::bigint, sum(r.outcome_error + r.outcome_timeout)::bigint,
           sum(r.refusals)::bigint, sum(r.thumbs_down)::bigint,
           sum(CASE WHEN $5 > 0
                    THEN %2$I.canary_hist_count_over(r.latency_hist, $5) ELSE 0 END)::bigint
      FROM (SELECT r.bucket_end, r.cohort, r.fallback, r.cached, r.requests, r.outcome_error,
                   r.outcome_timeout, r.refusals, r.thumbs_down, r.latency_hist
              FROM %2$I.%1$I r
             WHERE r.canary = $1 AND r.bucket_end > $2 AND r.bucket_end < $3 + interval '30 seconds'
            UNION ALL
            -- the marked minutes, each alone: their two buckets, looked up by key
            SELECT r.bucket_end, r.cohort, r.fallback, r.cached, r.requests, r.outcome_error,
                   r.outcome_timeout, r.refusals, r.thumbs_down, r.latency_hist
              FROM %2$I.%1$I r
             WHERE r.canary = $1
               AND r.bucket_end = ANY (ARRAY(SELECT m + d FROM unnest($7::timestamptz[]) m,
                                                  unnest(ARRAY[interval '30 seconds', interval '1 minute']) d))
            UNION ALL
            -- verdicts queued and not folded yet (read without a lock)
            SELECT q.bucket_end, q.cohort, q.fallback, q.cached, 0, 0, 0, 0, q.thumbs_down, '{}'::int8[]
              FROM %2$I.canary_feedback_pending q
             WHERE q.canary = $1
               AND ((q.bucket_end > $2 AND q.bucket_end < $3 + interval '30 seconds')
                    OR date_bin('1 minute', q.bucket_end - interval '30 seconds', $6) = ANY ($7))) r
     WHERE ($4 IS NULL OR r.bucket_end - interval '30 seconds' >= $4)
       AND r.cohort IN ('canary', 'control') AND NOT r.fallback AND NOT r.cached
     GROUP BY 2, 3$q$,
        CASE WHEN @extschema@.canary_fleet_is_control() THEN 'canary_fleet_rollups' ELSE 'canary_rollups' END, nsp)
    USING p_canary, from_bucket, p_at, p_since, p_slow_over, origin, marked;
    -- the refusal rule's paired statistic of a recounted minute: as before,
    -- plus that of the requests counted since (paired among themselves); a
    -- recount that found fewer requests than before (counts that shrank)
    -- leaves the minute no paired evidence: the requests counted again
    -- later must not be paired twice
    SELECT c.refusal_delta_threshold INTO delta FROM @extschema@.canary_config c WHERE c.name = p_canary;
    UPDATE @extschema@.canary_evidence c
       SET paired_1 = CASE WHEN x.shrank THEN 0 ELSE x.p1 + coalesce(x.e[1], 0) END,
           paired_2 = CASE WHEN x.shrank THEN 0 ELSE x.p2 + coalesce(x.e[2], 0) END,
           paired_3 = CASE WHEN x.shrank THEN 0 ELSE x.p3 + coalesce(x.e[3], 0) END,
           paired_4 = CASE WHEN x.shrank THEN 0 ELSE x.p4 + coalesce(x.e[4], 0) END
      FROM (SELECT n.bucket, coalesce(oc.paired_1, 0) AS p1, coalesce(oc.paired_2, 0) AS p2,
                   coalesce(oc.paired_3, 0) AS p3, coalesce(oc.paired_4, 0) AS p4,
                   (n.samples < coalesce(oc.samples, 0) OR n.refusals < coalesce(oc.refusals, 0)
                    OR coalesce(k.samples, 0) < coalesce(ok.samples, 0)
                    OR coalesce(k.refusals, 0) < coalesce(ok.refusals, 0)) AS shrank,
                   @extschema@.canary_paired_evidence(n.samples - coalesce(oc.samples, 0),
                                                      n.refusals - coalesce(oc.refusals, 0),
                                                      coalesce(k.samples, 0) - coalesce(ok.samples, 0),
                                                      coalesce(k.refusals, 0) - coalesce(ok.refusals, 0),
                                                      coalesce(delta, 0.05)) AS e
              FROM @extschema@.canary_evidence n
              LEFT JOIN @extschema@.canary_evidence k
                     ON k.canary = n.canary AND k.bucket = n.bucket AND k.cohort = 'control'
              LEFT JOIN unnest(old_rows) oc ON oc.bucket = n.bucket AND oc.cohort = 'canary'
              LEFT JOIN unnest(old_rows) ok ON ok.bucket = n.bucket AND ok.cohort = 'control'
             WHERE n.canary = p_canary AND n.cohort = 'canary'
               AND ((n.bucket >= from_bucket AND n.bucket <= p_at) OR n.bucket IN (SELECT unnest(marked)))) x
     WHERE c.canary = p_canary AND c.cohort = 'canary' AND c.bucket = x.bucket;
    -- ... and the recounted minutes come back into the totals, with the
    -- minutes settled since
    INSERT INTO @extschema@.canary_evidence_settled AS s
        (canary, cohort, since, through, samples, errors, refusals, thumbs_down, slow,
         paired_1, paired_2, paired_3, paired_4)
    SELECT p_canary, c.cohort, p_since, settle_to, coalesce(sum(e.samples), 0),
           coalesce(sum(e.errors), 0), coalesce(sum(e.refusals), 0), coalesce(sum(e.thumbs_down), 0),
           coalesce(sum(e.slow), 0), coalesce(sum(e.paired_1), 0), coalesce(sum(e.paired_2), 0),
           coalesce(sum(e.paired_3), 0), coalesce(sum(e.paired_4), 0)
      FROM (VALUES ('canary'), ('control')) c(cohort)
      LEFT JOIN @extschema@.canary_evidence e
             ON e.canary = p_canary AND e.cohort = c.cohort AND e.bucket < settle_to
            AND (settled IS NULL OR e.bucket >= settled OR e.bucket >= from_bucket
                 OR e.bucket IN (SELECT unnest(marked)))
     GROUP BY c.cohort
    ON CONFLICT (canary, cohort) DO UPDATE
       SET through = excluded.through, samples = s.samples + excluded.samples,
           errors = s.errors + excluded.errors, refusals = s.refusals + excluded.refusals,
           thumbs_down = s.thumbs_down + excluded.thumbs_down, slow = s.slow + excluded.slow,
           paired_1 = s.paired_1 + excluded.paired_1, paired_2 = s.paired_2 + excluded.paired_2,
           paired_3 = s.paired_3 + excluded.paired_3, paired_4 = s.paired_4 + excluded.paired_4;
END;
$$;

/*
 * canary_evidence_stage: per cohort, the sums of canary_evidence over the
 * evidence period p_since up to p_at: the running totals of the settled
 * minutes (canary_evidence_settled, when they belong to p_since and end by
 * p_at) and the minutes after them, a few rows; otherwise every minute
 * since p_since.  Internal: the kill switch's stage statistic and the
 * plan's evidence gates.
 */
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

/*
 * canary_srm_check: the sample-ratio check of one rollout at p_at.  Counts
 * every user once per evidence period (the cohort that first served it,
 * recorded as the requests are written: canary_srm_trigger),
 * and tests the canary's share of users against percent_new with a
 * two-sided mixture likelihood ratio (always valid, like the kill switch's
 * tests): a mismatch is called at evidence log(1 / significance), so a
 * correct split raises a false alarm with probability at most significance
 * per evidence period.  Users, not requests: requests of one user are not
 * independent draws, and a fixed set of users hashed to the canary makes
 * the request share differ from percent_new for good.  On a mismatch: one
 * alert of kind sample_ratio per evidence period; with srm_trips the kill
 * switch trips instead (the trip's alert has kind sample_ratio).  Returns
 * the reason when it alerted, tripped or deferred a trip now, and what
 * came of the check: outcome 'tripped', 'alerted', 'deferred' (srm_trips, the mismatch called
 * but another transaction holds the rollout's row: the next check trips),
 * 'already tripped' (tripped meanwhile by another), 'skipped' (another
 * transaction holds the check lock), 'rollout deleted' or 'none' (no
 * mismatch to report).  canary_check reads the outcome: the rule lives
 * here alone.  Internal: canary_check calls it for every armed rollout
 * with 0 < percent_new < 100.
 */
CREATE FUNCTION canary_srm_check(p_canary text, p_at timestamptz, OUT reason text, OUT outcome text)
RETURNS record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    st @extschema@.canary_srm_state;
    added_canary bigint;
    added_control bigint;
    cur_period timestamptz;
    lo timestamptz;
    settle_to timestamptz;
    expected double precision;
    seen double precision;
    total bigint;
    payload jsonb;
    -- the new users of buckets in ($2, $3), from the one rollups table of
    -- this database's role (canary_summary says why)
    users_q constant text := $q$
        SELECT coalesce(sum(r.new_users) FILTER (WHERE r.cohort = 'canary'), 0),
               coalesce(sum(r.new_users) FILTER (WHERE r.cohort = 'control'), 0)
          FROM %s r
         WHERE r.canary = $1 AND r.bucket_end > $2 AND r.bucket_end < $3$q$;
    rollups constant text := format('%I.%I', @extschema@.canary_schema_name(),
                                    CASE WHEN @extschema@.canary_fleet_is_control()
                                         THEN 'canary_fleet_rollups' ELSE 'canary_rollups' END);
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config WHERE name = p_canary;
    IF NOT FOUND THEN
        outcome := 'rollout deleted';   -- canary_maintenance deletes its users
        RETURN;
    END IF;
    -- the users and the state are written by one check at a time, under
    -- the rollout's check lock (canary_check took it already); a check
    -- that finds another one holding it (left open in a transaction, say)
    -- leaves them to that one rather than wait for its rows (its state row,
    -- the state row it inserted, the old users it deleted)
    IF NOT @extschema@.canary_try_check_lock(p_canary) THEN
        RAISE WARNING 'sample-ratio check of rollout "%" skipped', p_canary
            USING ERRCODE = 'lock_not_available',
                  DETAIL = 'Another transaction holds the rollout''s check lock.',
                  HINT = 'The next check after that transaction ends runs it.';
        outcome := 'skipped';
        RETURN;
    END IF;
    cur_period := coalesce(cfg.evidence_since, '-infinity');
    -- the users of other evidence periods go a few thousand at a time, by
    -- two ranges of the primary key (also while the check is off)
    DELETE FROM @extschema@.canary_srm_users u
     WHERE u.ctid = ANY (ARRAY(SELECT o.ctid FROM @extschema@.canary_srm_users o
                                WHERE o.canary = p_canary AND o.period < cur_period LIMIT 5000));
    DELETE FROM @extschema@.canary_srm_users u
     WHERE u.ctid = ANY (ARRAY(SELECT o.ctid FROM @extschema@.canary_srm_users o
                                WHERE o.canary = p_canary AND o.period > cur_period LIMIT 5000));
    IF cfg.percent_new <= 0 OR cfg.percent_new >= 100 THEN
        outcome := 'none';
        RETURN;
    END IF;
    INSERT INTO @extschema@.canary_srm_state (canary, since) VALUES (p_canary, cfg.evidence_since)
        ON CONFLICT (canary) DO NOTHING;
    SELECT * INTO st FROM @extschema@.canary_srm_state WHERE canary = p_canary FOR UPDATE;
    IF st.since IS DISTINCT FROM cfg.evidence_since THEN
        UPDATE @extschema@.canary_srm_state
           SET since = cfg.evidence_since, users_canary = 0, users_control = 0,
               evidence = NULL, alerted_at = NULL, counted_to = NULL,
               settled_canary = 0, settled_control = 0
         WHERE canary = p_canary
        RETURNING * INTO st;
    END IF;

    -- the users first seen in this period, counted into the rollups as the
    -- requests were written (canary_srm_trigger): the buckets that ended two
    -- minutes before p_at are added up once, the later ones at each check
    lo := greatest(coalesce(st.counted_to, '-infinity'), cur_period);
    settle_to := date_bin('30 seconds', p_at - interval '2 minutes', timestamptz '2000-01-01 00:00:00+00');
    IF settle_to > lo THEN
        EXECUTE format(users_q, rollups) INTO added_canary, added_control    -- up to settle_to included
          USING p_canary, lo, settle_to + interval '1 microsecond';
        UPDATE @extschema@.canary_srm_state
           SET settled_canary = settled_canary + added_canary,
               settled_control = settled_control + added_control, counted_to = settle_to
         WHERE canary = p_canary
        RETURNING * INTO st;
        lo := settle_to;
    END IF;
    EXECUTE format(users_q, rollups) INTO added_canary, added_control
      USING p_canary, lo, p_at + interval '30 seconds';

    total := st.settled_canary + added_canary + st.settled_control + added_control;
    expected := cfg.percent_new / 100.0;
    seen := CASE WHEN total > 0 THEN (st.settled_canary + added_canary)::float8 / total END;
    UPDATE @extschema@.canary_srm_state
       SET users_canary = settled_canary + added_canary,
           users_control = settled_control + added_control,
           evidence = @extschema@.canary_sequential_evidence(settled_canary + added_canary, total,
                                                             expected, true)
     WHERE canary = p_canary
    RETURNING * INTO st;

    IF st.alerted_at IS NOT NULL OR st.evidence < ln(1.0 / cfg.significance::float8) THEN
        outcome := 'none';
        RETURN;
    END IF;
    reason := format('sample ratio mismatch: %s of %s users in the canary cohort (%s %%), percent_new %s %%',
                     st.users_canary, total, round((100 * seen)::numeric, 2), cfg.percent_new);
    -- a trip never waits for the rollout's row while the check lock is held
    -- (canary_config_evidence says why): the next check trips; the reason
    -- goes with the deferral (the check's decision and alert name it)
    IF cfg.srm_trips AND NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c
                                      WHERE c.name = p_canary FOR NO KEY UPDATE SKIP LOCKED) THEN
        RAISE WARNING 'could not trip the kill switch of rollout "%" now', p_canary
            USING ERRCODE = 'lock_not_available',
                  DETAIL = 'Another transaction holds the rollout''s row in canary_config.',
                  HINT = 'The next check trips it if the sample ratio still says so; end that transaction.';
        outcome := 'deferred';
        RETURN;
    END IF;
    UPDATE @extschema@.canary_srm_state SET alerted_at = p_at WHERE canary = p_canary;
    IF cfg.srm_trips THEN
        -- NULL: tripped meanwhile by another, whose trip it is to report
        IF @extschema@.canary_trip_internal(p_canary, reason, 'sample_ratio',
                                            st.users_canary, st.users_control) IS NULL THEN
            reason := NULL;
            outcome := 'already tripped';
            RETURN;
        END IF;
        outcome := 'tripped';
        RETURN;
    END IF;
    payload := jsonb_build_object(
        'alert', 'canary sample ratio mismatch',
        'reason', reason, 'canary', p_canary, 'stage', cfg.stage,
        'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'expected_share', expected, 'seen_share', round(seen::numeric, 5),
        'users_canary', st.users_canary, 'users_control', st.users_control,
        'evidence', round(st.evidence::numeric, 2),
        'auto_action', 'none: comparisons between the cohorts are biased until the split is fixed');
    PERFORM @extschema@.canary_raise_alert(p_canary, 'sample_ratio', payload);
    outcome := 'alerted';
END;
$$;

/*
 * canary_srm_trigger: the users of the sample-ratio check, recorded as the
 * requests are written (AFTER INSERT on canary_requests, per statement,
 * after canary_requests_rollup) by canary_srm_statement
 * (53_srm_writer.sql), except in the metrics worker's own batches, whose
 * users the worker records (canary_worker_batch).  SECURITY DEFINER
 * like canary_rollup_trigger.  enable_nestloop off: the planner does not
 * know how many rows a statement wrote and would join the new users back
 * to their first rows with a nested loop (minutes for a batch of 10,000
 * users, instead of a hash join's milliseconds).
 */
CREATE FUNCTION canary_srm_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_nestloop = off
AS $$
BEGIN
    IF NOT @extschema@.canary_worker_batch(TG_NAME) THEN
        EXECUTE @extschema@.canary_srm_statement('new_rows', NULL);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION canary_srm_trigger() IS
    'Records the users of the rows an INSERT or COPY wrote to canary_requests for the sample-ratio check (canary_srm_users, canary_rollups.new_users)';
REVOKE ALL ON FUNCTION canary_srm_trigger() FROM PUBLIC;
CREATE TRIGGER canary_requests_srm AFTER INSERT ON canary_requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION canary_srm_trigger();

CREATE FUNCTION canary_sequential_evidence(events bigint, trials bigint, boundary double precision,
                                           two_sided boolean DEFAULT false)
RETURNS double precision
AS 'MODULE_PATHNAME', 'canary_sequential_evidence'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION canary_sequential_evidence(bigint, bigint, double precision, boolean) IS
    'log mixture likelihood ratio of events in trials against rate <= boundary (two-sided: = boundary), as the kill switch computes it';

CREATE FUNCTION canary_paired_evidence(canary_samples bigint, canary_events bigint, control_samples bigint,
                                       control_events bigint, delta double precision)
RETURNS double precision[]
AS 'MODULE_PATHNAME', 'canary_paired_evidence'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION canary_paired_evidence(bigint, bigint, bigint, bigint, double precision) IS
    'log of the refusal rule''s paired statistic (canary events <= control events + delta) of one increment of traffic, per bet size';
