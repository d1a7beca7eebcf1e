/*
 * canary_check_age: per rollout the kill switch checks, how long ago it was
 * last checked.  A check that stops altogether (the worker down,
 * llm_canary.check_interval = 0 with pg_cron's job gone, a check that fails
 * every time) raises no alert of its own, so the age is exported
 * (llm_canary_check_age_seconds, monitoring/postgres_exporter.yml and
 * canary_prometheus) and alerted on (LLMCanaryChecksStopped,
 * monitoring/alerts.yml).
 *
 * The rollouts are those canary_check visits (src/killswitch.c): armed and
 * not in stage shadow, whatever their percent_new; none on a fleet member,
 * which leaves the checks to the control database.  Every check stores a
 * row per cohort in canary_window_summaries: the last check is its newest
 * row, one probe of canary_window_summaries_idx per rollout (a scrape costs
 * the same at any number of summaries).  The probe is spelled so that only
 * that index serves it: with "s.canary = c.name ORDER BY s.at DESC" the
 * planner may walk canary_window_summaries_at_idx backwards from now,
 * filtering on canary, which for a rollout whose checks stopped reads every
 * summary since (measured at 20 million rows, 37 rollouts, one stalled
 * for 30 days, most of the table not yet vacuumed: 1.2 s and 110,000
 * buffers a scrape); the range on canary (the same rows as equality) with
 * the order (canary, at) leaves it one backward scan of (canary, at) that
 * stops at its first row (measured: 5 ms and 152 buffers, cold).
 *
 * The age runs from the later of that check and the start of the rollout's
 * current checkable spell: its newest canary_stage_history row that made it
 * checkable (created armed out of shadow, re-armed, moved out of shadow),
 * so a rollout never checked ages from when it became checkable and a
 * re-armed one from its re-arm, not from the check before its trip.  Not
 * updated_at: any UPDATE of canary_config sets it, a no-op too (config
 * management re-applying its rows every few minutes would hide a stall for
 * good), and not evidence_since (NULL until the first change, and moved
 * by hand by the simulator).  The history is probed like the summaries:
 * one backward scan of canary_stage_history_canary_idx (canary,
 * changed_at) that stops at the spell's start, reading only the rollout's
 * changes within its current spell (of stage, percentage or models).  A
 * rollout with no such row (renamed, or its history deleted by hand) ages
 * from its last check, or from updated_at if never checked.  Never
 * negative (a check at a later 'at' counts as now).
 *
 * alert_after_seconds is the age past which the checks count as stopped,
 * the alert's threshold (llm_canary_check_age_limit_seconds): ten of the
 * worker's llm_canary.check_interval, as the kill switch's own blind alert
 * (BlindAlertSeconds, src/killswitch.c), and at least 10 minutes, ten of
 * pg_cron's default schedule (every minute).  A pg_cron schedule
 * (canary_schedule's check_schedule) is not read: cron.job may live in
 * another database.  With check_interval = 0 and a schedule slower than
 * every minute, edit the alert's threshold (monitoring/alerts.yml).
 */
CREATE FUNCTION canary_check_age(canary text DEFAULT NULL)
RETURNS TABLE (canary text, last_check timestamptz, age_seconds double precision,
               alert_after_seconds double precision)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.name, w.at,
           greatest(extract(epoch FROM now() - coalesce(greatest(w.at, b.changed_at), c.updated_at)), 0)::float8,
           greatest(600, 10 * coalesce((SELECT g.setting::float8 FROM pg_catalog.pg_settings g
                                         WHERE g.name = 'llm_canary.check_interval'
                                           AND g.vartype = 'integer'), 0))
      FROM @extschema@.canary_config c
      LEFT JOIN LATERAL (SELECT s.at FROM @extschema@.canary_window_summaries s
                          WHERE s.canary >= c.name AND s.canary <= c.name
                          ORDER BY s.canary DESC, s.at DESC LIMIT 1) w ON true
      LEFT JOIN LATERAL (SELECT h.changed_at FROM @extschema@.canary_stage_history h
                          WHERE h.canary >= c.name AND h.canary <= c.name
                            AND h.new_armed AND h.new_stage <> 'shadow'
                            AND NOT coalesce(h.old_armed AND h.old_stage <> 'shadow', false)
                          ORDER BY h.canary DESC, h.changed_at DESC LIMIT 1) b ON true
     WHERE c.kill_switch_armed AND c.stage <> 'shadow'
       AND ($1 IS NULL OR c.name = $1)
       AND coalesce(current_setting('llm_canary.fleet_role', true), '') <> 'member'
     ORDER BY c.name
$$;
COMMENT ON FUNCTION canary_check_age(text) IS
    'Per rollout the kill switch checks (armed, not in shadow; none on a fleet member): its last check (NULL: never), the seconds since that check or since the rollout last became checkable (created, re-armed, out of shadow), whichever is later, and the age past which the checks count as stopped (10 x llm_canary.check_interval, at least 600)';
