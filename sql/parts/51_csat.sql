/*
 * The slow signal: CSAT.  Scores come from the support system; the daily
 * check pins a rollout at 0 percent when the canary's CSAT stays below
 * control (canary_schedule in 50_killswitch.sql runs it with pg_cron).  The
 * pin is recorded on the rollout and alerted as kind csat_pin.
 */

ALTER TABLE canary_config
    ADD COLUMN csat_pinned_at timestamptz,
    ADD COLUMN csat_pin_reason text;

/*
 * The scores, loaded by the team from its support system; users are joined
 * to their cohort through canary_requests of the same day.
 */
CREATE TABLE canary_csat (
    id           bigserial PRIMARY KEY,
    user_id      text NOT NULL,
    score        numeric NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    request_id   uuid
);
CREATE INDEX canary_csat_recorded_idx ON canary_csat (recorded_at);
COMMENT ON TABLE canary_csat IS 'Customer satisfaction scores, loaded from the support system';
SELECT pg_catalog.pg_extension_config_dump('canary_csat', '');
SELECT pg_catalog.pg_extension_config_dump('canary_csat_id_seq', '');

/*
 * Cohort of a CSAT score: the cohort of its request when request_id is
 * given; otherwise the cohorts that served the user on that day (UTC) in the
 * rollout.  A user served by both cohorts that day (a stage change or a trip
 * in between) is counted in neither and reported as mixed.  On a fleet's
 * control database the users the members served come from
 * canary_csat_user_days (below): a user served by the canary on one member
 * and by control on another that day is mixed too, and a score whose
 * request the control does not hold (a member served it) takes the user's
 * cohort of that day.
 */
CREATE FUNCTION canary_csat_report(canary text DEFAULT 'default', days integer DEFAULT 7)
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
COMMENT ON FUNCTION canary_csat_report(text, integer) IS
    'Per day and cohort: CSAT responses, mean, delta against control and whether the drop rule holds';

/*
 * canary_csat_check: the daily job.  When the canary's mean CSAT is at least
 * csat_drop below control on every day of the last csat_sustain (48 hours:
 * the last two complete days), pin the rollout at 0 percent and alert.
 */
CREATE FUNCTION canary_csat_check(canary text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    need_days integer;
    held_days integer;
    last_delta numeric;
    reason text;
    result text;
    payload jsonb;
BEGIN
    IF canary IS NOT NULL AND NOT EXISTS (SELECT 1 FROM @extschema@.canary_config c WHERE c.name = canary) THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    FOR cfg IN SELECT * FROM @extschema@.canary_config c
                WHERE (canary IS NULL OR c.name = canary) AND c.percent_new > 0
                ORDER BY c.name
    LOOP
        need_days := greatest(1, ceil(extract(epoch FROM cfg.csat_sustain) / 86400.0)::integer);
        SELECT count(*) FILTER (WHERE r.drop_rule_holds),
               (array_agg(r.delta_vs_control ORDER BY r.day DESC))[1]
          INTO held_days, last_delta
          FROM @extschema@.canary_csat_report(cfg.name, need_days + 1) r
         WHERE r.cohort = 'canary'
           AND r.day BETWEEN (now() AT TIME ZONE 'UTC')::date - need_days
                         AND (now() AT TIME ZONE 'UTC')::date - 1;
        IF held_days >= need_days THEN
            reason := format('csat canary %s vs control for %s days >= drop %s sustained %s',
                             last_delta, held_days, cfg.csat_drop, cfg.csat_sustain);
            UPDATE @extschema@.canary_config
               SET percent_new = 0, csat_pinned_at = now(), csat_pin_reason = reason
             WHERE name = cfg.name;
            payload := jsonb_build_object(
                'alert', 'canary csat drop: pinned at 0 percent',
                'reason', reason, 'canary', cfg.name, 'stage', cfg.stage,
                'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'samples_new', NULL, 'samples_old', NULL,
                'auto_action', format('canary pinned at 0 percent; all traffic routed to %s', cfg.old_model));
            -- on the fleet's control, the members whose users the days hold
            -- (their CSAT feeds; the control itself when its raw rows have any)
            IF @extschema@.canary_fleet_is_control() THEN
                payload := payload || jsonb_build_object('members', coalesce((
                    SELECT jsonb_agg(m.member ORDER BY m.member)
                      FROM (SELECT DISTINCT f.member
                              FROM @extschema@.canary_csat_user_days f
                             WHERE f.canary = cfg.name
                               AND f.day BETWEEN (now() AT TIME ZONE 'UTC')::date - need_days
                                             AND (now() AT TIME ZONE 'UTC')::date - 1
                            UNION
                            SELECT @extschema@.canary_rollup_member()
                             WHERE EXISTS (SELECT 1 FROM @extschema@.canary_requests r
                                            WHERE r.canary = cfg.name
                                              AND r.ts >= ((now() AT TIME ZONE 'UTC')::date - need_days)::timestamp AT TIME ZONE 'UTC'
                                              AND r.ts < ((now() AT TIME ZONE 'UTC')::date)::timestamp AT TIME ZONE 'UTC')) m),
                    '[]'::jsonb));
            END IF;
            PERFORM @extschema@.canary_raise_alert(cfg.name, 'csat_pin', payload);
            result := concat_ws('; ', result, cfg.name || ': ' || reason);
        END IF;
    END LOOP;
    RETURN result;
END;
$$;
COMMENT ON FUNCTION canary_csat_check(text) IS
    'Daily slow-signal check: pin the canary at 0 percent when CSAT drops by csat_drop for csat_sustain';

/*
 * The fleet's CSAT feed.  Raw rows stay on the members, so the control's
 * CSAT check cannot join a score to the cohort that served its user from
 * them.  Each member keeps, instead, one row per rollout, UTC day and user
 * it served while the rollout split the traffic (requests routed in a
 * ramp stage, armed above 0 percent: the stages where the rule compares the
 * cohorts), and on a day that holds such users every later request too (the
 * day a rollout goes to full or to 0 percent), with the cohort that
 * served the user that day, or mixed; canary_fleet_publish() publishes it
 * with the rollups, keyed by member, and canary_csat_report on the control
 * reads it.  The rule joins scores to users, so the user id is kept; no
 * prompt, answer or request.  The rows are written as the requests are
 * (AFTER INSERT on canary_requests, per statement, only on a member): one
 * primary-key probe per user of the statement, an update only when a
 * second cohort serves the user that day, nothing scanned; rows of days
 * before llm_canary.retention_days go with canary_maintenance.
 */
CREATE TABLE canary_csat_user_days (
    day             date NOT NULL,
    canary          text NOT NULL,
    member          text NOT NULL,
    user_id         text NOT NULL,
    cohort          text NOT NULL,
    PRIMARY KEY (day, canary, user_id, member)
);
COMMENT ON TABLE canary_csat_user_days IS
    'On a fleet member: the users it served per rollout and UTC day with their cohort (or mixed), published to the control database for its CSAT check';
COMMENT ON COLUMN canary_csat_user_days.member IS 'Fleet member that served the user (llm_canary.member)';
COMMENT ON COLUMN canary_csat_user_days.cohort IS
    'The cohort that served the user that day on this member (requests that were not fallbacks), mixed when more than one did';

CREATE FUNCTION canary_csat_feed_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF coalesce(current_setting('llm_canary.fleet_role', true), '') <> 'member' THEN
        RETURN NULL;
    END IF;
    -- a row counts when its own stage split the traffic (the stage it was
    -- routed in, the rollout's when it has none), and the rollout is armed
    -- above 0 percent; or, at any stage, when its day already has users of
    -- the rollout (one probe per rollout and day of the statement): on the
    -- day a rollout goes to full or to 0 percent, a user served by both
    -- cohorts is mixed, and whole days at full or at 0 percent cost nothing.
    -- Users already recorded with this cohort (or mixed) are only probed:
    -- no row lock, no WAL
    INSERT INTO @extschema@.canary_csat_user_days AS u (day, canary, member, user_id, cohort)
    SELECT s.day, s.canary, s.member, s.user_id, s.cohort
      FROM (SELECT (r.ts AT TIME ZONE 'UTC')::date AS day, r.canary,
                   @extschema@.canary_rollup_member() AS member, r.user_id,
                   CASE WHEN min(r.cohort) <> max(r.cohort) THEN 'mixed' ELSE min(r.cohort) END AS cohort
              FROM new_rows r
              JOIN @extschema@.canary_config c ON c.name = r.canary
              JOIN (SELECT d.day, d.canary,
                           EXISTS (SELECT 1 FROM @extschema@.canary_csat_user_days o
                                    WHERE o.day = d.day AND o.canary = d.canary) AS recorded
                      FROM (SELECT DISTINCT (n.ts AT TIME ZONE 'UTC')::date AS day, n.canary
                              FROM new_rows n) d) k
                ON k.day = (r.ts AT TIME ZONE 'UTC')::date AND k.canary = r.canary
             WHERE NOT r.fallback AND r.user_id IS NOT NULL AND r.cohort IS NOT NULL
               AND (k.recorded
                    OR (coalesce(nullif(r.stage, ''), c.stage) IN ('ramp_1', 'ramp_5', 'ramp_25')
                        AND c.kill_switch_armed AND c.percent_new > 0))
             GROUP BY 1, 2, 4) s
     WHERE NOT EXISTS (SELECT 1 FROM @extschema@.canary_csat_user_days o
                        WHERE (o.day, o.canary, o.member, o.user_id) = (s.day, s.canary, s.member, s.user_id)
                          AND o.cohort IN (s.cohort, 'mixed'))
     ORDER BY 1, 2, 4
    ON CONFLICT (day, canary, member, user_id) DO UPDATE SET cohort = 'mixed'
     WHERE u.cohort <> excluded.cohort AND u.cohort <> 'mixed';
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION canary_csat_feed_trigger() IS
    'On a fleet member: records the users of the rows an INSERT or COPY wrote to canary_requests, per rollout and day, with their cohort (canary_csat_user_days)';
REVOKE ALL ON FUNCTION canary_csat_feed_trigger() FROM PUBLIC;
CREATE TRIGGER canary_requests_csat_feed AFTER INSERT ON canary_requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION canary_csat_feed_trigger();

/*
 * A member's feed is replicated to the control (inserts, updates, deletes;
 * not TRUNCATE): the rows a member truncated stay on the control, and the
 * same users recorded again would stop the control's subscription on a
 * duplicate key.  A member refuses TRUNCATE; its rows are dumped with the
 * extension's (pg_dump), so a restored member does not record them again
 * either.
 */
SELECT pg_catalog.pg_extension_config_dump('canary_csat_user_days', '');
CREATE FUNCTION canary_csat_feed_truncate_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF coalesce(current_setting('llm_canary.fleet_role', true), '') = 'member' THEN
        RAISE EXCEPTION 'cannot truncate table "%" on fleet member "%"',
                        TG_TABLE_NAME, current_setting('llm_canary.member', true)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The control database keeps the rows of this member''s CSAT feed: a TRUNCATE does not reach it, and the users recorded again would stop its subscription on a duplicate key.',
                  HINT = 'Delete the rows instead (DELETE reaches the control database), or let canary_maintenance() expire them.';
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION canary_csat_feed_truncate_guard() IS
    'On a fleet member: refuses TRUNCATE of canary_csat_user_days (the control database keeps its rows)';
REVOKE ALL ON FUNCTION canary_csat_feed_truncate_guard() FROM PUBLIC;
CREATE TRIGGER canary_csat_user_days_no_truncate BEFORE TRUNCATE ON canary_csat_user_days
    FOR EACH STATEMENT EXECUTE FUNCTION canary_csat_feed_truncate_guard();
