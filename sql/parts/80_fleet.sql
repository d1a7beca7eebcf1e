/*
 * The fleet: many application databases, one rollout, on PostgreSQL's
 * logical replication (src/fleet.c has the whole picture).
 *
 *   control  publishes llm_canary_config: canary_models, canary_config,
 *            canary_refusal_patterns, canary_fleet_heartbeat;
 *            subscribes to every member's llm_canary_evidence.
 *   member   subscribes to llm_canary_config; publishes llm_canary_evidence
 *            (canary_fleet_members, the rollups and the CSAT feed
 *            canary_csat_user_days, keyed by member; no TRUNCATE).  Raw
 *            rows stay on the member: the control judges by the rollups it
 *            combines (33_fleet_combined.sql) and the CSAT feed.
 *
 * The role is the setting llm_canary.fleet_role; the publications are made
 * by canary_fleet_publish(), since a publication is not a member of the
 * extension (DROP EXTENSION would leave it behind) and needs wal_level =
 * logical.
 */

-- Written by the control database's worker; replicated to every member.
CREATE TABLE canary_fleet_heartbeat (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    control_member    text NOT NULL,
    control_database  text NOT NULL,
    beat_at           timestamptz NOT NULL,
    received_at       timestamptz
);
COMMENT ON TABLE canary_fleet_heartbeat IS
    'The control database''s heartbeat: one row, written every llm_canary.fleet_heartbeat_interval by its worker, replicated to every member';
COMMENT ON COLUMN canary_fleet_heartbeat.beat_at IS 'When the control database wrote the row (its clock)';
COMMENT ON COLUMN canary_fleet_heartbeat.received_at IS
    'On a member: when the row was applied (the member''s clock); the fail-safe measures the lag from it';

-- One row per member, written by the member's worker; replicated to the control.
CREATE TABLE canary_fleet_members (
    member            text PRIMARY KEY CHECK (member <> ''),
    reported_at       timestamptz NOT NULL,
    heard_at          timestamptz,
    control_beat_at   timestamptz,
    fail_safe         boolean NOT NULL DEFAULT false,
    fail_safe_routes  bigint NOT NULL DEFAULT 0,
    routing           jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE canary_fleet_members IS
    'Each fleet member''s state as it reports it every llm_canary.fleet_heartbeat_interval; canary_fleet() reads it';
COMMENT ON COLUMN canary_fleet_members.control_beat_at IS
    'beat_at of the last heartbeat the member applied: the control database''s own clock, echoed back';
COMMENT ON COLUMN canary_fleet_members.routing IS
    'Per rollout, the stage, percent_new and kill-switch state the member routes by';

CREATE FUNCTION canary_fleet_local(OUT role text, OUT member text, OUT heard_at timestamptz,
                                   OUT lag_ms bigint, OUT fail_safe boolean,
                                   OUT fail_safe_routes bigint, OUT max_lag_ms integer)
RETURNS record
AS 'MODULE_PATHNAME', 'canary_fleet_local'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_fleet_local() IS
    'This database''s fleet role and name; on a member, when it last heard from the control database and whether it fails safe';

-- Per rollout, what routing follows: compared across the fleet by canary_fleet().
CREATE FUNCTION canary_fleet_routing()
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(c.name, jsonb_build_object(
               'stage', c.stage, 'percent_new', c.percent_new, 'armed', c.kill_switch_armed)), '{}')
      FROM @extschema@.canary_config c
$$;

-- The control database's worker: one heartbeat.  Internal.
CREATE FUNCTION canary_fleet_beat(control text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.canary_fleet_heartbeat AS h (id, control_member, control_database, beat_at)
    VALUES (true, control, current_database(), clock_timestamp())
    ON CONFLICT (id) DO UPDATE
       SET control_member = EXCLUDED.control_member,
           control_database = EXCLUDED.control_database,
           beat_at = EXCLUDED.beat_at
$$;

-- A member's worker: its state, for the control database.  Internal.
CREATE FUNCTION canary_fleet_report(member text, heard_at timestamptz, fail_safe boolean,
                                    fail_safe_routes bigint)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @extschema@.canary_fleet_members AS m
           (member, reported_at, heard_at, control_beat_at, fail_safe, fail_safe_routes, routing)
    VALUES (member, clock_timestamp(), heard_at,
            (SELECT max(h.beat_at) FROM @extschema@.canary_fleet_heartbeat h),
            fail_safe, fail_safe_routes, @extschema@.canary_fleet_routing())
    ON CONFLICT (member) DO UPDATE
       SET reported_at = EXCLUDED.reported_at, heard_at = EXCLUDED.heard_at,
           control_beat_at = EXCLUDED.control_beat_at, fail_safe = EXCLUDED.fail_safe,
           fail_safe_routes = EXCLUDED.fail_safe_routes, routing = EXCLUDED.routing
$$;

/*
 * On a member, the configuration is the control database's: a statement
 * trigger refuses the member's own writes.  The apply worker of the
 * subscription runs with session_replication_role = replica, where this
 * ordinary trigger does not fire, so replicated rows are applied.
 */
CREATE FUNCTION canary_fleet_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hb record;
BEGIN
    IF coalesce(current_setting('llm_canary.fleet_role', true), '') <> 'member'
       OR coalesce(current_setting('llm_canary_internal.fleet_join', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO hb FROM @extschema@.canary_fleet_heartbeat LIMIT 1;
    RAISE EXCEPTION 'cannot change table "%" on fleet member "%"',
                    TG_TABLE_NAME, current_setting('llm_canary.member', true)
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = CASE WHEN hb.id IS NULL
                  THEN format('Table "%s" is replicated from the fleet''s control database, which this member has not heard from yet.', TG_TABLE_NAME)
                  ELSE format('Table "%s" is replicated from the control database "%s" (fleet member "%s"), last heard from at %s.',
                              TG_TABLE_NAME, hb.control_database, hb.control_member, hb.received_at)
              END,
              HINT = 'Make the change on the control database: every member applies it within seconds.';
END;
$$;

CREATE FUNCTION canary_fleet_heard()
RETURNS trigger
AS 'MODULE_PATHNAME', 'canary_fleet_heard'
LANGUAGE C;

/*
 * Rows applied by the subscription fire no ordinary trigger, so the cache
 * invalidation (canary_invalidate_cache) is repeated in triggers that fire
 * only there (ENABLE REPLICA): an applied trip reaches every backend's next
 * routing decision.  The apply worker fires row triggers for INSERT, UPDATE
 * and DELETE and statement triggers for TRUNCATE.
 */
DO $$
DECLARE
    t text;
    nsp constant name := @extschema@.canary_schema_name();
BEGIN
    FOREACH t IN ARRAY ARRAY['canary_config', 'canary_models', 'canary_refusal_patterns'] LOOP
        EXECUTE format('CREATE TRIGGER %1$I BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %3$I.%2$I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION %3$I.canary_fleet_guard()',
                       t || '_fleet_guard', t, nsp);
        EXECUTE format('CREATE TRIGGER %1$I AFTER INSERT OR UPDATE OR DELETE ON %3$I.%2$I'
                       ' FOR EACH ROW EXECUTE FUNCTION %3$I.canary_invalidate_cache()',
                       t || '_fleet_applied', t, nsp);
        EXECUTE format('CREATE TRIGGER %1$I AFTER TRUNCATE ON %3$I.%2$I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION %3$I.canary_invalidate_cache()',
                       t || '_fleet_truncated', t, nsp);
        EXECUTE format('ALTER TABLE %4$I.%1$I ENABLE REPLICA TRIGGER %2$I, ENABLE REPLICA TRIGGER %3$I',
                       t, t || '_fleet_applied', t || '_fleet_truncated', nsp);
    END LOOP;
END;
$$;
CREATE TRIGGER canary_fleet_heartbeat_heard
    BEFORE INSERT OR UPDATE ON canary_fleet_heartbeat
    FOR EACH ROW EXECUTE FUNCTION canary_fleet_heard();
ALTER TABLE canary_fleet_heartbeat ENABLE REPLICA TRIGGER canary_fleet_heartbeat_heard;

/*
 * canary_fleet_publish: create (or bring up to date) this database's
 * publications for its role.  Returns their names, as CREATE SUBSCRIPTION
 * on the other side lists them.
 */
CREATE FUNCTION canary_fleet_publish()
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role text := coalesce(current_setting('llm_canary.fleet_role', true), 'standalone');
    pub text;
    tables text;
    options text := '';
    nsp constant name := @extschema@.canary_schema_name();
BEGIN
    IF role = 'control' THEN
        pub := 'llm_canary_config';
        tables := format('%1$I.canary_models, %1$I.canary_config, '
                         '%1$I.canary_refusal_patterns, %1$I.canary_fleet_heartbeat', nsp);
    ELSIF role = 'member' THEN
        IF coalesce(current_setting('llm_canary.member', true), '') = '' THEN
            RAISE EXCEPTION 'llm_canary.member is not set'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Give every member a name unique in the fleet: ALTER SYSTEM SET llm_canary.member = ''eu1''; SELECT pg_reload_conf();';
        END IF;
        pub := 'llm_canary_evidence';
        -- the rollups and the CSAT feed, where this tree has them (their
        -- key holds the member)
        SELECT string_agg(format('%I.%I', nsp, t), ', ' ORDER BY t) INTO tables
          FROM unnest(ARRAY['canary_fleet_members', 'canary_rollups', 'canary_rollup_totals',
                            'canary_csat_user_days']) t
         WHERE to_regclass(format('%I.%I', nsp, t)) IS NOT NULL;
        -- a member's rollup retention and rebuilds reach the control; a
        -- TRUNCATE on a member does not
        options := ' WITH (publish = ''insert, update, delete'')';
    ELSE
        RAISE EXCEPTION 'database "%" is not in a fleet', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set llm_canary.fleet_role to control or member first: ALTER SYSTEM SET llm_canary.fleet_role = ''control''; SELECT pg_reload_conf();';
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'a fleet needs wal_level = logical (it is %)', current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER SYSTEM SET wal_level = logical; then restart the server.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.pubname = pub) THEN
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', pub, tables);
    ELSE
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s%s', pub, tables, options);
    END IF;
    IF role = 'member' THEN
        /*
         * Raw rows are no longer published: the control judges by the
         * rollups.  A publication llm_canary_requests made by an earlier
         * build is emptied rather than dropped, so that a control whose
         * subscription still lists it keeps receiving the evidence (RUNBOOK
         * §12 has the steps that drop it).
         */
        FOR tables IN
            SELECT r.prrelid::pg_catalog.regclass::text
              FROM pg_catalog.pg_publication_rel r
              JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
             WHERE p.pubname = 'llm_canary_requests'
        LOOP
            EXECUTE format('ALTER PUBLICATION llm_canary_requests DROP TABLE %s', tables);
        END LOOP;
    END IF;
    RETURN pub;
END;
$$;
COMMENT ON FUNCTION canary_fleet_publish() IS
    'Create this database''s fleet publication for its role: llm_canary_config on the control; llm_canary_evidence on a member';

/*
 * canary_fleet_join: on a new member, before CREATE SUBSCRIPTION, empty the
 * tables the control database's copy fills (the rows a fresh install puts
 * there would collide with it).  Returns the number of rows removed.
 */
CREATE FUNCTION canary_fleet_join()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    total bigint := 0;
BEGIN
    IF coalesce(current_setting('llm_canary.fleet_role', true), '') <> 'member' THEN
        RAISE EXCEPTION 'database "%" is not a fleet member', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'canary_fleet_join() removes this database''s rollouts and models, to be replaced by the control database''s.',
                  HINT = 'ALTER SYSTEM SET llm_canary.fleet_role = ''member''; SELECT pg_reload_conf(); then run it again.';
    END IF;
    PERFORM set_config('llm_canary_internal.fleet_join', 'on', true);
    DELETE FROM @extschema@.canary_config;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.canary_models;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.canary_refusal_patterns;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM @extschema@.canary_fleet_heartbeat;
    PERFORM set_config('llm_canary_internal.fleet_join', '', true);
    RETURN total;
END;
$$;
COMMENT ON FUNCTION canary_fleet_join() IS
    'On a new fleet member, before subscribing: empty the configuration tables the control database''s copy fills';

/*
 * canary_fleet_evidence: per member, the newest rollup bucket and the
 * requests within the last 'since' (read through the rollups' bucket_end
 * index, so the cost is that of the period, not of the retention).  The
 * rows this database writes itself have member '' unless llm_canary.member
 * is set.  Empty where the tree has no rollups.
 */
CREATE FUNCTION canary_fleet_evidence(since interval, canary text DEFAULT NULL)
RETURNS TABLE (member text, last_evidence timestamptz, requests bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nsp constant name := @extschema@.canary_schema_name();
BEGIN
    IF to_regclass(format('%I.canary_rollups', nsp)) IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT r.member, max(r.bucket_end), sum(r.requests)::bigint'
        ' FROM %I.canary_rollups r'
        ' WHERE r.bucket_end > now() - $1 AND ($2 IS NULL OR r.canary = $2)'
        ' GROUP BY r.member ORDER BY r.member', nsp)
        USING since, canary;
END;
$$;
COMMENT ON FUNCTION canary_fleet_evidence(interval, text) IS
    'Per fleet member: the newest rollup and the requests within the given period (of one rollout, or all)';

/*
 * canary_fleet_alert_members: what an alert adds to its payload in a fleet,
 * {"members": [...]}: the members whose traffic of the rollout is in the
 * last window; {} on a standalone database.
 */
CREATE FUNCTION canary_fleet_alert_members(canary text, window_seconds integer)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN coalesce(current_setting('llm_canary.fleet_role', true), 'standalone') = 'standalone'
                THEN '{}'::jsonb
                ELSE jsonb_build_object('members', coalesce(
                    (SELECT jsonb_agg(e.member ORDER BY e.member)
                       FROM @extschema@.canary_fleet_evidence(make_interval(secs => window_seconds), canary) e
                      WHERE e.requests > 0), '[]'::jsonb))
           END
$$;

/*
 * canary_fleet: on the control database, one row per member.
 *   config_lag   how old the newest heartbeat the member has applied and
 *                reported back is, on the control's own clock (down and up:
 *                no clock skew)
 *   state        ok; catching_up (its routing differs from the control's
 *                configuration); fail_safe (it routes everyone to the old
 *                model); silent (no report within llm_canary.fleet_max_lag:
 *                the member, or its link with the control, is down)
 */
CREATE FUNCTION canary_fleet()
RETURNS TABLE (member text, state text, config_lag interval, reported_at timestamptz,
               last_evidence timestamptz, fail_safe boolean, fail_safe_routes bigint,
               routing jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- silent: no report within llm_canary.fleet_max_lag (30 s when the fail-safe is off)
    max_lag interval := (SELECT make_interval(secs => coalesce(nullif(l.max_lag_ms, 0), 30000) / 1000.0)
                           FROM @extschema@.canary_fleet_local() l);
    here jsonb := @extschema@.canary_fleet_routing();
BEGIN
    RETURN QUERY
    SELECT m.member,
           CASE WHEN m.fail_safe THEN 'fail_safe'
                WHEN m.control_beat_at IS NULL OR now() - m.control_beat_at > max_lag THEN 'silent'
                WHEN m.routing IS DISTINCT FROM here THEN 'catching_up'
                ELSE 'ok' END,
           now() - m.control_beat_at,
           m.reported_at,
           e.last_evidence,
           m.fail_safe, m.fail_safe_routes, m.routing
      FROM @extschema@.canary_fleet_members m
      LEFT JOIN @extschema@.canary_fleet_evidence(interval '1 day') e ON e.member = m.member
     ORDER BY m.member;
END;
$$;
COMMENT ON FUNCTION canary_fleet() IS
    'On the control database: each fleet member''s lag, last evidence and routing state';

/*
 * canary_fleet_prometheus: this database's fleet gauges in the Prometheus
 * text format ('' when standalone).
 */
CREATE FUNCTION canary_fleet_prometheus()
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN l.role = 'standalone' THEN '' ELSE
        format(E'# HELP llm_canary_fleet_fail_safe 1 while this fleet member routes every user to the old model because it has not heard from the control database.\n'
               '# TYPE llm_canary_fleet_fail_safe gauge\n'
               'llm_canary_fleet_fail_safe{member="%1$s",role="%2$s"} %3$s\n'
               '# HELP llm_canary_fleet_control_lag_seconds Seconds since this fleet member last heard from the control database (-1: never).\n'
               '# TYPE llm_canary_fleet_control_lag_seconds gauge\n'
               'llm_canary_fleet_control_lag_seconds{member="%1$s",role="%2$s"} %4$s\n'
               '# HELP llm_canary_fleet_fail_safe_routes_total Routing decisions the fail-safe turned to the old model since the server started.\n'
               '# TYPE llm_canary_fleet_fail_safe_routes_total counter\n'
               'llm_canary_fleet_fail_safe_routes_total{member="%1$s",role="%2$s"} %5$s\n',
               l.member, l.role, CASE WHEN l.fail_safe THEN 1 ELSE 0 END,
               coalesce(round(l.lag_ms / 1000.0, 3)::text, '-1'), l.fail_safe_routes)
    END
      FROM @extschema@.canary_fleet_local() l
$$;
COMMENT ON FUNCTION canary_fleet_prometheus() IS
    'This database''s fleet gauges (fail-safe, lag, fail-safe routing decisions) in the Prometheus text format';
