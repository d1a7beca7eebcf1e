/*
 * 1.1: decisions beyond the article (sql/parts/52_decisions.sql, the alert
 * kinds in sql/parts/50_killswitch.sql, src/sequential.c).
 */
ALTER TABLE canary_alerts
    DROP CONSTRAINT canary_alerts_kind_check,
    ADD CONSTRAINT canary_alerts_kind_check
        CHECK (kind IN ('kill_switch', 'manual_trip', 'csat_pin', 'sample_ratio',
                        'advance', 'decommission'));

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
 * canary_requests at every check (rows reach canary_requests through the
 * metrics queue a little late) and drops the minutes before evidence_since.
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
    PRIMARY KEY (canary, bucket, cohort)
);
COMMENT ON TABLE canary_evidence IS
    'Per rollout, minute and cohort since evidence_since: requests, errors, refusals, thumbs-down and requests slower than p95_ratio_threshold x control p95';

/*
 * The sample-ratio check: each user once per evidence period, with the
 * cohort that served it first, and the running counts.
 */
CREATE TABLE canary_srm_users (
    canary          text NOT NULL,
    user_id         text NOT NULL,
    cohort          text NOT NULL,
    PRIMARY KEY (canary, user_id)
);
COMMENT ON TABLE canary_srm_users IS
    'Users seen per rollout since evidence_since, with their cohort: the sample-ratio check counts each user once';

CREATE TABLE canary_srm_state (
    canary          text PRIMARY KEY,
    since           timestamptz,
    users_canary    bigint NOT NULL DEFAULT 0,
    users_control   bigint NOT NULL DEFAULT 0,
    evidence        double precision,
    alerted_at      timestamptz
);
COMMENT ON TABLE canary_srm_state IS
    'Per rollout: users per cohort since evidence_since, the log evidence of a mismatch, and when it was alerted';

/*
 * decision_mode is valid, and evidence starts afresh when the kill switch
 * is re-armed or what routing does changes (stage, percent_new, models):
 * traffic from before says nothing about the new state.  An UPDATE that
 * sets evidence_since itself keeps its value (the simulator and tests move
 * it along a simulated clock).  The old evidence is deleted.  Fires
 * after canary_config_b_validate.
 */
CREATE FUNCTION canary_config_evidence()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.decision_mode IS NULL OR NEW.decision_mode NOT IN ('sequential', 'confirm_windows', 'raw') THEN
        RAISE EXCEPTION 'invalid decision_mode "%" for rollout "%"', NEW.decision_mode, NEW.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Valid modes are: sequential (the default), confirm_windows, raw.';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.evidence_since IS NOT DISTINCT FROM OLD.evidence_since
          AND ((NEW.kill_switch_armed AND NOT OLD.kill_switch_armed)
               OR (NEW.stage, NEW.percent_new, NEW.old_model, NEW.new_model)
                  IS DISTINCT FROM (OLD.stage, OLD.percent_new, OLD.old_model, OLD.new_model)) THEN
        NEW.evidence_since := now();
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.evidence_since IS DISTINCT FROM OLD.evidence_since THEN
        DELETE FROM @extschema@.canary_evidence WHERE canary = NEW.name;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_config_c_evidence
    BEFORE INSERT OR UPDATE ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_evidence();

/*
 * canary_collect_evidence: recount the minutes of canary_evidence from two
 * minutes before p_at (or from the last minute counted, when the checks
 * paused; at most an hour back) up to p_at, counting only requests after
 * p_since, and drop the minutes before p_since or older than 14 days (a
 * stage statistic covers at most the last 14 days).  p_slow_over: the latency (ms) above
 * which a canary request counts as slow (p95_ratio_threshold x control
 * p95); 0 when no baseline is known.  Internal: canary_check calls it.
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

/*
 * canary_srm_check: the sample-ratio check of one rollout at p_at.  Counts
 * every user once per evidence period (the cohort that first served it),
 * and tests the canary's share of users against percent_new with a
 * two-sided mixture likelihood ratio (always valid, like the kill switch's
 * tests): a mismatch is called at evidence log(1 / significance), so a
 * correct split raises a false alarm with probability at most significance
 * per evidence period.  Users, not requests: requests of one user are not
 * independent draws, and a fixed set of users hashed to the canary makes
 * the request share differ from percent_new for good.  On a mismatch: one
 * alert of kind sample_ratio per evidence period; with srm_trips the kill
 * switch trips instead (the trip's alert has kind sample_ratio).  Returns
 * the reason when it alerted or tripped now.  Internal: canary_check calls
 * it for every armed rollout with 0 < percent_new < 100.
 */
CREATE FUNCTION canary_srm_check(p_canary text, p_at timestamptz)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    st @extschema@.canary_srm_state;
    added_canary bigint;
    added_control bigint;
    expected double precision;
    seen double precision;
    total bigint;
    reason text;
    payload jsonb;
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config WHERE name = p_canary;
    IF NOT FOUND OR cfg.percent_new <= 0 OR cfg.percent_new >= 100 THEN
        RETURN NULL;
    END IF;
    INSERT INTO @extschema@.canary_srm_state (canary, since) VALUES (p_canary, cfg.evidence_since)
        ON CONFLICT (canary) DO NOTHING;
    SELECT * INTO st FROM @extschema@.canary_srm_state WHERE canary = p_canary FOR UPDATE;
    IF st.since IS DISTINCT FROM cfg.evidence_since THEN
        DELETE FROM @extschema@.canary_srm_users WHERE canary = p_canary;
        UPDATE @extschema@.canary_srm_state
           SET since = cfg.evidence_since, users_canary = 0, users_control = 0,
               evidence = NULL, alerted_at = NULL
         WHERE canary = p_canary
        RETURNING * INTO st;
    END IF;

    WITH seen_users AS (
        SELECT DISTINCT ON (r.user_id) r.user_id, r.cohort
          FROM @extschema@.canary_requests r
         WHERE r.canary = p_canary AND r.ts > p_at - interval '150 seconds' AND r.ts <= p_at
           AND (cfg.evidence_since IS NULL OR r.ts > cfg.evidence_since)
           AND r.user_id IS NOT NULL AND r.cohort IN ('canary', 'control')
         ORDER BY r.user_id, r.ts
    ), added AS (
        INSERT INTO @extschema@.canary_srm_users (canary, user_id, cohort)
        SELECT p_canary, s.user_id, s.cohort FROM seen_users s
        ON CONFLICT DO NOTHING
        RETURNING cohort
    )
    SELECT count(*) FILTER (WHERE cohort = 'canary'), count(*) FILTER (WHERE cohort = 'control')
      INTO added_canary, added_control FROM added;

    total := st.users_canary + added_canary + st.users_control + added_control;
    expected := cfg.percent_new / 100.0;
    seen := CASE WHEN total > 0 THEN (st.users_canary + added_canary)::float8 / total END;
    UPDATE @extschema@.canary_srm_state
       SET users_canary = users_canary + added_canary,
           users_control = users_control + added_control,
           evidence = @extschema@.canary_sequential_evidence(users_canary + added_canary, total,
                                                             expected, true)
     WHERE canary = p_canary
    RETURNING * INTO st;

    IF st.alerted_at IS NOT NULL OR st.evidence < ln(1.0 / cfg.significance::float8) THEN
        RETURN NULL;
    END IF;
    UPDATE @extschema@.canary_srm_state SET alerted_at = p_at WHERE canary = p_canary;
    reason := format('sample ratio mismatch: %s of %s users in the canary cohort (%s %%), percent_new %s %%',
                     st.users_canary, total, round((100 * seen)::numeric, 2), cfg.percent_new);
    IF cfg.srm_trips THEN
        PERFORM @extschema@.canary_trip_internal(p_canary, reason, 'sample_ratio',
                                                 st.users_canary, st.users_control);
        RETURN reason;
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
    RETURN reason;
END;
$$;

CREATE FUNCTION canary_sequential_evidence(events bigint, trials bigint, boundary double precision,
                                           two_sided boolean DEFAULT false)
RETURNS double precision
AS 'MODULE_PATHNAME', 'canary_sequential_evidence'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION canary_sequential_evidence(bigint, bigint, double precision, boolean) IS
    'log mixture likelihood ratio of events in trials against rate <= boundary (two-sided: = boundary), as the kill switch computes it';

-- privileges, as sql/parts/90_roles.sql gives them in a fresh install
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE
    ON TABLE canary_evidence, canary_srm_users, canary_srm_state TO llm_canary_admin;
GRANT SELECT ON TABLE canary_evidence, canary_srm_users, canary_srm_state TO llm_canary_app;
REVOKE ALL ON FUNCTION canary_config_evidence(), canary_collect_evidence(text, timestamptz, timestamptz, double precision),
    canary_srm_check(text, timestamptz), canary_sequential_evidence(bigint, bigint, double precision, boolean)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_config_evidence(), canary_collect_evidence(text, timestamptz, timestamptz, double precision),
    canary_srm_check(text, timestamptz), canary_sequential_evidence(bigint, bigint, double precision, boolean)
    TO llm_canary_admin;
