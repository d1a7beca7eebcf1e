/*
 * Metrics: one row per model attempt in canary_requests, one row per user
 * verdict in canary_feedback.
 *
 * The call path does not write canary_requests itself: it copies each
 * record into a queue in shared memory and the llm_canary background worker
 * writes the queue in batches, in transactions of its own, so an attempt is
 * recorded even when the caller's transaction rolls back.  canary_flush()
 * waits for the worker; canary_stats() shows the queue.
 *
 * Both tables are partitioned by day (UTC days, partitions named
 * <table>_YYYYMMDD) with a DEFAULT partition, so a write never fails for a
 * missing partition; canary_maintenance() creates partitions ahead and drops
 * those older than llm_canary.retention_days.
 */

CREATE TABLE canary_requests (
    request_id          uuid NOT NULL,
    ts                  timestamptz NOT NULL,
    canary              text NOT NULL,
    stage               text,
    user_id             text,
    cohort              text,
    model               text,
    outcome             text,
    http_status         integer,
    latency_ms          integer,
    prompt_tokens       integer,
    completion_tokens   integer,
    response_chars      integer,
    refusal             boolean,
    prompt_class        text,
    prompt_hash         text,
    fallback            boolean NOT NULL DEFAULT false,
    error               text,
    cost                numeric,
    cached              boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (ts);
CREATE TABLE canary_requests_default PARTITION OF canary_requests DEFAULT;
CREATE INDEX canary_requests_canary_ts_idx ON canary_requests (canary, ts);
CREATE INDEX canary_requests_request_id_idx ON canary_requests (request_id);
COMMENT ON TABLE canary_requests IS
    'One row per model attempt, written by the llm_canary worker; partitioned by UTC day';
COMMENT ON COLUMN canary_requests.outcome IS 'ok, refusal, error or timeout';
COMMENT ON COLUMN canary_requests.cohort IS 'canary (new model) or control (old model)';
COMMENT ON COLUMN canary_requests.fallback IS
    'This attempt served a canary user with the old model after the new model failed';
COMMENT ON COLUMN canary_requests.cached IS
    'Answered from canary_response_cache without calling the model (latency: the lookup; cost 0); the kill switch does not count it';

CREATE TABLE canary_feedback (
    request_id          uuid NOT NULL,
    ts                  timestamptz NOT NULL DEFAULT now(),
    thumbs_down         boolean NOT NULL,
    user_id             text,
    canary              text,
    cohort              text,
    model               text
) PARTITION BY RANGE (ts);
CREATE TABLE canary_feedback_default PARTITION OF canary_feedback DEFAULT;
CREATE INDEX canary_feedback_canary_ts_idx ON canary_feedback (canary, ts);
CREATE INDEX canary_feedback_request_id_idx ON canary_feedback (request_id);
COMMENT ON TABLE canary_feedback IS
    'User verdicts on answers (canary_feedback()), with the rollout, cohort and model copied from the request';

/*
 * Partitions.  A day is a UTC day whatever the session's TimeZone, so that
 * partitions made by sessions in different time zones never overlap.
 *
 * canary_partition_days: the one partition maintainer, for canary_requests,
 * canary_feedback and canary_shadow (tables partitioned by ts with a DEFAULT
 * partition <parent>_default).  Creates the daily partitions
 * <parent>_YYYYMMDD of days UTC days from from_day on, skipping those that
 * exist; rows of such a day already in the DEFAULT partition move into the
 * new one (a partition cannot be added while the DEFAULT partition holds
 * rows of its range).  Returns one row per partition created.
 *
 * Locking: before the first partition it creates, it takes SHARE ROW
 * EXCLUSIVE on the parent, which waits for the writers in progress and
 * blocks new writes (not reads) until the caller's transaction ends: a row
 * inserted into the DEFAULT partition between the move and the ATTACH would
 * make the ATTACH fail.  The lock conflicts with itself, so two maintainers
 * never race for one partition (the second sees it made and skips it).
 * Caller must own the table (canary_maintenance and
 * canary_shadow_create_partitions run as the extension's owner).
 */
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

/*
 * canary_maintenance: the daily job (the worker runs it).  Partitions for
 * today .. today + days_ahead (today is the UTC day by default: partitions
 * are UTC days, whatever the session's TimeZone); retention: daily
 * partitions of days before today - llm_canary.retention_days are dropped
 * and canary_window_summaries (and canary_csat_user_days: on the control only
 * those of departed members, and any two days later) rows of those days
 * deleted; expired session pins and expired answers of
 * the response cache are deleted.  Every delete goes through an index.
 * canary_alerts and canary_stage_history are the audit trail (one row per
 * trip, alert or operator change) and are kept.
 */
CREATE FUNCTION canary_maintenance(days_ahead integer DEFAULT 7, today date DEFAULT (now() AT TIME ZONE 'UTC')::date)
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
REVOKE ALL ON FUNCTION canary_maintenance(integer, date) FROM PUBLIC;

/* The queue and the worker (src/metrics_queue.c, src/metrics_funcs.c). */
CREATE FUNCTION canary_flush(timeout interval DEFAULT '10 seconds')
RETURNS bigint
AS 'MODULE_PATHNAME', 'canary_flush'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_flush(interval) IS
    'Waits until the worker wrote every metric record queued before the call; returns the records written since server start';

CREATE FUNCTION canary_wait_metrics(timeout interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_wait_metrics'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION canary_wait_metrics(interval) IS
    'Waits at most timeout until the worker wrote every metric record queued before the call (not shadow jobs); false when it did not, never an error';

CREATE FUNCTION canary_record(canary text, user_id text, model text, cohort text, outcome text,
                              latency_ms integer, ts timestamptz DEFAULT now(),
                              refusal boolean DEFAULT false, http_status integer DEFAULT 200,
                              prompt_tokens integer DEFAULT NULL, completion_tokens integer DEFAULT NULL,
                              prompt_class text DEFAULT NULL, error text DEFAULT NULL,
                              stage text DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'canary_record'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_record(text, text, text, text, text, integer, timestamptz, boolean,
                                  integer, integer, integer, text, text, text) IS
    'Queues one synthetic model attempt through the metrics queue, as canary_call would; returns its request_id (NULL if the queue was full)';
REVOKE ALL ON FUNCTION canary_record(text, text, text, text, text, integer, timestamptz, boolean,
                                     integer, integer, integer, text, text, text) FROM PUBLIC;

CREATE FUNCTION canary_stats()
RETURNS TABLE (queue_capacity integer, queue_depth bigint, enqueued bigint, dropped bigint,
               written bigint, write_errors bigint, batches bigint, last_write_at timestamptz,
               worker_pid integer, worker_state text, database text)
AS 'MODULE_PATHNAME', 'canary_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_stats() IS
    'Counters of the metrics queue and the state of the llm_canary worker since server start';

CREATE FUNCTION canary_backend_stats()
RETURNS TABLE (pid integer, calls bigint)
AS 'MODULE_PATHNAME', 'canary_backend_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_backend_stats() IS
    'Calls recorded by each connected backend';

/*
 * The time a request id of canary_call carries: its first 48 bits when it
 * is a version 7 UUID (src/util.c), else NULL (ids of other origins, such as
 * a backfill's).  Lets a lookup by request id read the partitions of that
 * day only: the attempts of a call start after its id is made.
 */
CREATE FUNCTION canary_request_time(request_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE WHEN pg_catalog.substr(request_id::text, 15, 1) = '7'
            THEN pg_catalog.to_timestamp(('x' || pg_catalog.substr(pg_catalog.replace(request_id::text, '-', ''), 1, 12))
                                         ::bit(48)::bigint / 1000.0) END;
COMMENT ON FUNCTION canary_request_time(uuid) IS
    'The time a time-ordered (version 7) request id was made, to the millisecond; NULL for other ids';

/* A new request id as canary_call makes them (version 7: canary_submit). */
CREATE FUNCTION canary_new_request_id() RETURNS uuid
AS 'MODULE_PATHNAME', 'canary_new_request_id' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION canary_new_request_id() IS
    'A new time-ordered (version 7) request id, as canary_call makes them';

/*
 * Feedback.  SECURITY DEFINER so that an application role needs only
 * EXECUTE on this function, not privileges on the tables.  The request is
 * looked up in the day after the time its id carries (canary_request_time),
 * then, not found there, in every partition.
 */
CREATE FUNCTION canary_feedback(request_id uuid, thumbs_down boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    req record;
    written boolean := true;
    made constant timestamptz := @extschema@.canary_request_time(canary_feedback.request_id);
BEGIN
    IF canary_feedback.request_id IS NULL OR canary_feedback.thumbs_down IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
                        CASE WHEN canary_feedback.request_id IS NULL THEN 'request_id' ELSE 'thumbs_down' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;

    -- the last attempt of a call answered it (a fallback follows the failure)
    SELECT r.user_id, r.canary, r.cohort, r.model INTO req
      FROM @extschema@.canary_requests r
     WHERE r.request_id = canary_feedback.request_id
       AND r.ts >= made - interval '1 minute' AND r.ts < made + interval '1 day'
     ORDER BY r.ts DESC
     LIMIT 1;
    IF NOT FOUND THEN
        SELECT r.user_id, r.canary, r.cohort, r.model INTO req
          FROM @extschema@.canary_requests r
         WHERE r.request_id = canary_feedback.request_id
         ORDER BY r.ts DESC
         LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        -- a request just made may still be queued: let the worker write it,
        -- waiting briefly and for metric records only (never for shadow jobs)
        written := @extschema@.canary_wait_metrics(interval '2 seconds');
        SELECT r.user_id, r.canary, r.cohort, r.model INTO req
          FROM @extschema@.canary_requests r
         WHERE r.request_id = canary_feedback.request_id
         ORDER BY r.ts DESC
         LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request "%" does not exist', canary_feedback.request_id
            USING ERRCODE = 'no_data_found',
                  DETAIL = CASE WHEN written THEN 'No request with this id is recorded.'
                           ELSE 'The llm_canary worker had not written every queued metric record after 2 seconds.' END,
                  HINT = CASE WHEN written
                         THEN 'Pass a request_id returned by canary_call(); requests are kept for llm_canary.retention_days days.'
                         ELSE 'Try again in a moment; canary_stats() shows the queue.' END;
    END IF;

    INSERT INTO @extschema@.canary_feedback (request_id, thumbs_down, user_id, canary, cohort, model)
    VALUES (canary_feedback.request_id, canary_feedback.thumbs_down, req.user_id, req.canary, req.cohort, req.model);
END;
$$;
COMMENT ON FUNCTION canary_feedback(uuid, boolean) IS
    'Records a user''s verdict (thumbs down or not) on the answer to a request';
REVOKE ALL ON FUNCTION canary_feedback(uuid, boolean) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('canary_requests_default', '');
SELECT pg_catalog.pg_extension_config_dump('canary_feedback_default', '');
