/*
 * Roles and privileges.  Runs last, so that it sees every function and table
 * the parts before it created (and those that parts added later create).
 *
 *   llm_canary_admin  operators: models, keys (the names of the environment
 *                     variables that hold them), stages, thresholds,
 *                     schedules, the kill switch, probes, maintenance.
 *   llm_canary_app    the application: canary_call, routing, feedback and
 *                     the reports.  It reads what routing and the reports
 *                     need and writes nothing directly; it cannot change a
 *                     model (so it cannot point one at another URL or at
 *                     another environment variable), a stage or a
 *                     threshold, and cannot read the prompts and answers
 *                     stored by shadow mode while they are private.
 *
 * GRANT llm_canary_app TO myapp; GRANT llm_canary_admin TO alice;
 * Both roles are NOLOGIN and cluster-wide: created here when missing, so that
 * installing into a second database reuses them, and left in place by DROP
 * EXTENSION (other databases may use them; DROP ROLE them by hand).
 * The privileges below are per database, recorded in pg_init_privs and so
 * dumped by pg_dump only where changed afterwards.
 */

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'llm_canary_admin') THEN
        CREATE ROLE llm_canary_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'llm_canary_app') THEN
        CREATE ROLE llm_canary_app NOLOGIN;
    END IF;
    -- an administrator can do what the application does
    IF NOT pg_catalog.pg_has_role('llm_canary_admin', 'llm_canary_app', 'MEMBER') THEN
        GRANT llm_canary_app TO llm_canary_admin;
    END IF;
END;
$$;
COMMENT ON ROLE llm_canary_admin IS
    'llm_canary operators: models, rollouts, stages, thresholds, kill switch, probes, schedules';
COMMENT ON ROLE llm_canary_app IS
    'llm_canary applications: canary_call, canary_route, canary_cohort, canary_bucket, canary_feedback, reports';

GRANT USAGE ON SCHEMA @extschema@ TO llm_canary_admin, llm_canary_app;

/*
 * Functions that must run as the extension's owner, each with its search_path
 * pinned (every SECURITY DEFINER function of the extension has SET
 * search_path = pg_catalog, pg_temp and schema-qualifies its own objects):
 *
 *  - the shadow reports but the openings: they aggregate prompt-free facts
 *    (verdicts, lengths, refusals) out of canary_shadow, whose prompt,
 *    old_text and new_text the application role may not read
 *    (see canary_set_shadow_private below).  Column privileges alone would
 *    break the reports for that role, because they compute over the texts;
 *    SECURITY DEFINER lets them compute while the role still gets 42501 for
 *    a SELECT of the texts.  They take only a rollout name, an interval and
 *    small integers, used as values, never as SQL text.
 *  - canary_raise_alert: it reads llm_canary.webhook_url, a superuser-only
 *    setting (the URL often embeds a token), and only learns whether it is
 *    set; without this a trip by a non-superuser administrator fails.
 *  - canary_maintenance, canary_shadow_create_partitions: attaching a
 *    partition requires owning the partitioned table.
 */
ALTER FUNCTION canary_shadow_report(text, interval) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_lengths(text, interval, integer) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_by_class(text, interval) SECURITY DEFINER;
ALTER FUNCTION canary_raise_alert(text, text, jsonb) SECURITY DEFINER;
ALTER FUNCTION canary_maintenance(integer, date) SECURITY DEFINER;
ALTER FUNCTION canary_shadow_create_partitions(date, integer) SECURITY DEFINER;

/*
 * Shadow texts, private or not.  The state is the privilege itself: while
 * private (the default), llm_canary_app may SELECT every column of
 * canary_shadow but prompt, old_text and new_text and the openings of both
 * answers (their first five words, old_opening and new_opening; so
 * canary_shadow_openings, which runs as its caller, refuses it too);
 * otherwise the whole table.
 * The partitions are never granted: the application reads through the
 * parent.  Returns the new state.
 */
CREATE FUNCTION canary_set_shadow_private(private boolean DEFAULT true)
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
COMMENT ON FUNCTION canary_set_shadow_private(boolean) IS
    'Hide (true) or show (false) the prompts and answers in canary_shadow to llm_canary_app; the shadow reports work either way';

CREATE FUNCTION canary_shadow_is_private()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT has_column_privilege('llm_canary_app', '@extschema@.canary_shadow', 'new_text', 'SELECT')
$$;
COMMENT ON FUNCTION canary_shadow_is_private() IS
    'Whether llm_canary_app is denied the prompts and answers stored in canary_shadow';

/*
 * Functions.  Nothing of the extension is executable by PUBLIC; every
 * function of this extension (and only of this extension: pg_depend
 * deptype 'e') is the administrator's, and the application gets the
 * functions named below, whichever of them exist (parts may add reports
 * such as canary_prometheus or canary_timeline).  Overloads share a grant.
 */
DO $$
DECLARE
    fn regprocedure;
    app_functions text[] := ARRAY[
        -- the call path and routing
        'canary_call', 'canary_route', 'canary_cohort', 'canary_bucket', 'canary_feedback',
        'canary_chat', 'canary_batch', 'canary_submit', 'canary_result',
        -- reports
        'canary_summary', 'canary_shadow_report', 'canary_shadow_openings',
        'canary_shadow_lengths', 'canary_shadow_by_class', 'canary_csat_report',
        'canary_stats', 'canary_shadow_stats', 'canary_prometheus', 'canary_timeline',
        'canary_check_age',
        'canary_shadow_is_private', 'canary_report_window', 'canary_schema_name',
        -- where a rollout stands in its plan (read-only), and what it calls
        'canary_plan', 'canary_plan_gates', 'canary_plan_dwell', 'canary_plan_next_stage',
        'canary_sequential_samples', 'canary_evidence_stage',
        -- the fleet's state, for the Prometheus export
        'canary_fleet', 'canary_fleet_local', 'canary_fleet_prometheus', 'canary_fleet_evidence',
        'canary_fleet_is_control',
        -- what the reports call: the rollups' histograms, the Prometheus series
        'canary_hist_accum_hist', 'canary_hist_final', 'canary_hist_sum', 'canary_hist_quantile',
        'canary_hist_le', 'canary_hist_cumulative', 'canary_prometheus_requests',
        'canary_prometheus_series'];
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_proc p ON p.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'llm_canary')
         ORDER BY p.oid
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_admin', fn);
        IF (SELECT proname FROM pg_catalog.pg_proc WHERE oid = fn) = ANY (app_functions) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_app', fn);
        END IF;
    END LOOP;
END;
$$;

/*
 * Tables and sequences.  The administrator may do anything to the rows of
 * every table of the extension (not to the tables themselves: they stay the
 * owner's).  The application may read every table but two:
 *   canary_sessions  nothing: routing reads and writes pins as the owner
 *                    (src/routing.c); a role that could write a pin could
 *                    put a session on the new model in any stage;
 *   canary_shadow    no prompts or answers while private (above).
 * canary_models holds nothing secret: api_key_env is the name of an
 * environment variable of the server, never the key, and canary_call reads
 * the models as the caller.  Partitions made later are not granted to
 * either role: queries go through the parent tables.
 */
DO $$
DECLARE
    rel regclass;
    kind "char";
BEGIN
    FOR rel, kind IN
        SELECT c.oid::regclass, c.relkind
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'llm_canary')
           AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
         ORDER BY c.relname
    LOOP
        IF kind = 'S' THEN
            EXECUTE format('GRANT USAGE, SELECT, UPDATE ON SEQUENCE %s TO llm_canary_admin', rel);
            CONTINUE;
        END IF;
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE %s TO llm_canary_admin', rel);
        CONTINUE WHEN rel IN ('@extschema@.canary_sessions'::regclass, '@extschema@.canary_shadow'::regclass,
                              '@extschema@.canary_response_cache'::regclass,
                              '@extschema@.canary_submissions'::regclass);
        -- default partitions are members of the extension (for pg_dump): reads go through the parent
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = rel);
        EXECUTE format('GRANT SELECT ON TABLE %s TO llm_canary_app', rel);
    END LOOP;
END;
$$;

SELECT canary_set_shadow_private(true);
