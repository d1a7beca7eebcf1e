/*
 * Rollups (issue 12), generated from sql/parts/32_rollups.sql: the tables,
 * the histogram functions, the triggers; the changed readers
 * (canary_maintenance, canary_summary, canary_prometheus and the Prometheus
 * series); the grants sql/parts/90_roles.sql gives; and the rollups of the
 * rows 1.0 already has.
 */
CREATE TABLE canary_rollups (
    canary              text NOT NULL,
    bucket_end          timestamptz NOT NULL,
    member              text NOT NULL DEFAULT '',
    stage               text NOT NULL,
    cohort              text NOT NULL,
    model               text NOT NULL,
    fallback            boolean NOT NULL,
    cached              boolean NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    outcome_ok          bigint NOT NULL DEFAULT 0,
    outcome_refusal     bigint NOT NULL DEFAULT 0,
    outcome_error       bigint NOT NULL DEFAULT 0,
    outcome_timeout     bigint NOT NULL DEFAULT 0,
    refusals            bigint NOT NULL DEFAULT 0,
    thumbs_down         bigint NOT NULL DEFAULT 0,
    verdicts            bigint NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    completions         bigint NOT NULL DEFAULT 0,
    cost                numeric NOT NULL DEFAULT 0,
    latency_count       bigint NOT NULL DEFAULT 0,
    latency_sum         bigint NOT NULL DEFAULT 0,
    latency_hist        int8[] NOT NULL DEFAULT '{}',
    tokens_hist         int8[] NOT NULL DEFAULT '{}',
    new_users           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (canary, bucket_end, member, stage, cohort, model, fallback, cached)
);
CREATE INDEX canary_rollups_bucket_end_idx ON canary_rollups (bucket_end);
COMMENT ON TABLE canary_rollups IS
    '30-second rollups of canary_requests and canary_feedback, written with the raw rows; kept llm_canary.rollup_retention_days days';
COMMENT ON COLUMN canary_rollups.canary IS 'Rollout (canary_config.name)';
COMMENT ON COLUMN canary_rollups.bucket_end IS
    'End of the 30-second bucket: the attempts with ts in (bucket_end - 30 s, bucket_end]';
COMMENT ON COLUMN canary_rollups.member IS
    'Fleet member that wrote the rows ('''' on a single server)';
COMMENT ON COLUMN canary_rollups.stage IS 'Stage of the attempts ('''' when not recorded)';
COMMENT ON COLUMN canary_rollups.cohort IS 'canary or control ('''' when not recorded)';
COMMENT ON COLUMN canary_rollups.model IS 'Model of the attempts ('''' when not recorded)';
COMMENT ON COLUMN canary_rollups.fallback IS 'Attempts that served a canary user with the old model after the new model failed';
COMMENT ON COLUMN canary_rollups.cached IS 'Attempts answered from canary_response_cache';
COMMENT ON COLUMN canary_rollups.requests IS 'Attempts (rows of canary_requests)';
COMMENT ON COLUMN canary_rollups.outcome_ok IS 'Attempts with outcome ok';
COMMENT ON COLUMN canary_rollups.outcome_refusal IS 'Attempts with outcome refusal';
COMMENT ON COLUMN canary_rollups.outcome_error IS 'Attempts with outcome error';
COMMENT ON COLUMN canary_rollups.outcome_timeout IS 'Attempts with outcome timeout';
COMMENT ON COLUMN canary_rollups.refusals IS 'Attempts whose answer was a refusal (canary_requests.refusal)';
COMMENT ON COLUMN canary_rollups.thumbs_down IS
    'Thumbs-down verdicts on the attempts of this row (counted in the bucket of the request, not of the verdict)';
COMMENT ON COLUMN canary_rollups.verdicts IS 'All verdicts (thumbs down or not) on the attempts of this row';
COMMENT ON COLUMN canary_rollups.prompt_tokens IS 'Sum of prompt_tokens';
COMMENT ON COLUMN canary_rollups.completion_tokens IS 'Sum of completion_tokens';
COMMENT ON COLUMN canary_rollups.completions IS 'Attempts with completion_tokens recorded';
COMMENT ON COLUMN canary_rollups.cost IS 'Sum of cost';
COMMENT ON COLUMN canary_rollups.latency_count IS 'Attempts with latency_ms recorded';
COMMENT ON COLUMN canary_rollups.latency_sum IS 'Sum of latency_ms';
COMMENT ON COLUMN canary_rollups.latency_hist IS
    'Histogram of latency_ms: {bucket, count, ...}, log-linear buckets (canary_hist_quantile reads it)';
COMMENT ON COLUMN canary_rollups.tokens_hist IS
    'Histogram of completion_tokens, same scheme as latency_hist';
COMMENT ON COLUMN canary_rollups.new_users IS
    'Users whose first attempt of the rollout''s evidence period is in this row (canary_srm_users): what the sample-ratio check counts';

CREATE TABLE canary_rollup_totals (
    canary              text NOT NULL,
    member              text NOT NULL DEFAULT '',
    model               text NOT NULL,
    cohort              text NOT NULL,
    fallback            boolean NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    outcome_ok          bigint NOT NULL DEFAULT 0,
    outcome_refusal     bigint NOT NULL DEFAULT 0,
    outcome_error       bigint NOT NULL DEFAULT 0,
    outcome_timeout     bigint NOT NULL DEFAULT 0,
    refusals            bigint NOT NULL DEFAULT 0,
    thumbs_down         bigint NOT NULL DEFAULT 0,
    verdicts            bigint NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    completions         bigint NOT NULL DEFAULT 0,
    cost                numeric NOT NULL DEFAULT 0,
    latency_count       bigint NOT NULL DEFAULT 0,
    latency_sum         bigint NOT NULL DEFAULT 0,
    latency_hist        int8[] NOT NULL DEFAULT '{}',
    tokens_hist         int8[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (canary, member, model, cohort, fallback)
);
COMMENT ON TABLE canary_rollup_totals IS
    'The counters of canary_rollups summed since install per rollout, member, model, cohort and fallback (never pruned): the Prometheus counters';
COMMENT ON COLUMN canary_rollup_totals.member IS
    'Fleet member that wrote the rows ('''' on a single server)';

/* Histograms (src/rollups.c). */
CREATE FUNCTION canary_hist_accum(internal, integer) RETURNS internal
AS 'MODULE_PATHNAME', 'canary_hist_accum' LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION canary_hist_accum_hist(internal, int8[]) RETURNS internal
AS 'MODULE_PATHNAME', 'canary_hist_accum_hist' LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION canary_hist_final(internal) RETURNS int8[]
AS 'MODULE_PATHNAME', 'canary_hist_final' LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE;

CREATE AGGREGATE canary_hist_agg(integer) (
    SFUNC = canary_hist_accum, STYPE = internal, SSPACE = 2048, FINALFUNC = canary_hist_final
);
COMMENT ON AGGREGATE canary_hist_agg(integer) IS
    'Histogram of the values (NULLs skipped), as stored in canary_rollups.latency_hist';
CREATE AGGREGATE canary_hist_sum(int8[]) (
    SFUNC = canary_hist_accum_hist, STYPE = internal, SSPACE = 2048, FINALFUNC = canary_hist_final
);
COMMENT ON AGGREGATE canary_hist_sum(int8[]) IS 'The histogram of all the values of the histograms';

CREATE FUNCTION canary_hist_merge(int8[], int8[]) RETURNS int8[]
AS 'MODULE_PATHNAME', 'canary_hist_merge' LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_merge(int8[], int8[]) IS 'The histogram of the values of both histograms';
CREATE FUNCTION canary_hist_quantile(hist int8[], q float8) RETURNS float8
AS 'MODULE_PATHNAME', 'canary_hist_quantile' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_quantile(int8[], float8) IS
    'percentile_cont(q) of the values of the histogram, within 1/64 (1.6 %) of the exact one; NULL when empty';
CREATE FUNCTION canary_hist_count_over(hist int8[], x float8) RETURNS bigint
AS 'MODULE_PATHNAME', 'canary_hist_count_over' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_count_over(int8[], float8) IS
    'How many values of the histogram exceed x (exact up to 64; otherwise values within 1/64 of x may be misplaced)';
CREATE FUNCTION canary_hist_le() RETURNS float8[]
AS 'MODULE_PATHNAME', 'canary_hist_le' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_le() IS
    'The finite bucket bounds ("le") of the Prometheus histograms: 1 .. 131072, 8 per power of two above 32';
CREATE FUNCTION canary_hist_cumulative(hist int8[]) RETURNS int8[]
AS 'MODULE_PATHNAME', 'canary_hist_cumulative' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_cumulative(int8[]) IS
    'For each bound of canary_hist_le(), how many values of the histogram are at most that bound';

/*
 * The bucket of a timestamp: its end, the first multiple of 30 seconds
 * since 2000-01-01 UTC at or after it, so that the bucket holds
 * (bucket_end - 30 s, bucket_end].  Inlined into the queries that use it.
 */
CREATE FUNCTION canary_rollup_bucket(ts timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.date_bin('30 seconds', ts - interval '1 microsecond', timestamptz '2000-01-01 00:00:00+00')
       + interval '30 seconds';
COMMENT ON FUNCTION canary_rollup_bucket(timestamptz) IS
    'The rollup bucket of a timestamp: the end of the 30-second bucket (bucket_end - 30 s, bucket_end] that holds it';

/* The member column of the rows this server writes ('' on a single server). */
CREATE FUNCTION canary_request_time(request_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE WHEN pg_catalog.substr(request_id::text, 15, 1) = '7'
            THEN pg_catalog.to_timestamp(('x' || pg_catalog.substr(pg_catalog.replace(request_id::text, '-', ''), 1, 12))
                                         ::bit(48)::bigint / 1000.0) END;
COMMENT ON FUNCTION canary_request_time(uuid) IS
    'The time a time-ordered (version 7) request id was made, to the millisecond; NULL for other ids';
REVOKE ALL ON FUNCTION canary_request_time(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_request_time(uuid) TO llm_canary_admin;

/* A new request id as canary_call makes them (version 7: canary_submit). */
CREATE FUNCTION canary_new_request_id() RETURNS uuid
AS 'MODULE_PATHNAME', 'canary_new_request_id' LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION canary_new_request_id() IS
    'A new time-ordered (version 7) request id, as canary_call makes them';
REVOKE ALL ON FUNCTION canary_new_request_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_new_request_id() TO llm_canary_admin;

CREATE FUNCTION canary_rollup_member() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce(pg_catalog.current_setting('llm_canary.member', true), '');
COMMENT ON FUNCTION canary_rollup_member() IS
    'The fleet member this server writes rollups as (llm_canary.member, empty when not set)';

/*
 * canary_rollup_statement: the one statement that adds a set of raw rows to
 * the rollups (and, when totals, to canary_rollup_totals).  kind is
 * requests (rows shaped like canary_requests) or feedback (shaped like
 * canary_feedback); source names a relation or a parenthesised query.
 * A verdict counts in the bucket and under the key of its request's first
 * attempt (the new model's own answer when a fallback followed), or, when
 * that attempt is no longer kept, in the bucket of the verdict with the
 * cohort and model the verdict carries.  Rows go in key order, so that
 * concurrent writers lock the rollup rows in the same order.
 */
CREATE FUNCTION canary_rollup_statement(kind text, source text, totals boolean)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keys constant text := 'canary, bucket_end, member, stage, cohort, model, fallback, cached';
    total_keys constant text := 'canary, member, model, cohort, fallback';
    counters text[];
    hists text[] := '{}';
    agg text;
    cols text;
    sets text;
    sums text;
    rollup text;
    nsp constant name := @extschema@.canary_schema_name();
BEGIN
    IF kind IN ('requests', 'request_counts') THEN
        counters := ARRAY['requests', 'outcome_ok', 'outcome_refusal', 'outcome_error', 'outcome_timeout',
                          'refusals', 'prompt_tokens', 'completion_tokens', 'completions', 'cost',
                          'latency_count', 'latency_sum'];
        hists := ARRAY['latency_hist', 'tokens_hist'];
    END IF;
    IF kind = 'request_counts' THEN
        -- rows already counted per key, with the columns of canary_rollups
        -- but member (the metrics worker's batches, src/rollups_writer.c)
        agg := format('SELECT p.canary, p.bucket_end, %1$I.canary_rollup_member() AS member, p.stage,'
                      ' p.cohort, p.model, p.fallback, p.cached, %2$s FROM %3$s p',
                      nsp, array_to_string(counters || hists, ', '), source);
    ELSIF kind = 'requests' THEN
        agg := format($q$
SELECT r.canary, %1$I.canary_rollup_bucket(r.ts) AS bucket_end,
       %1$I.canary_rollup_member() AS member, coalesce(r.stage, '') AS stage,
       coalesce(r.cohort, '') AS cohort, coalesce(r.model, '') AS model,
       coalesce(r.fallback, false) AS fallback, r.cached,
       count(*) AS requests,
       count(*) FILTER (WHERE r.outcome = 'ok') AS outcome_ok,
       count(*) FILTER (WHERE r.outcome = 'refusal') AS outcome_refusal,
       count(*) FILTER (WHERE r.outcome = 'error') AS outcome_error,
       count(*) FILTER (WHERE r.outcome = 'timeout') AS outcome_timeout,
       count(*) FILTER (WHERE r.refusal) AS refusals,
       coalesce(sum(r.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(r.completion_tokens), 0)::bigint AS completion_tokens,
       count(r.completion_tokens) AS completions,
       coalesce(sum(r.cost), 0) AS cost,
       count(r.latency_ms) AS latency_count,
       coalesce(sum(r.latency_ms), 0)::bigint AS latency_sum,
       %1$I.canary_hist_agg(r.latency_ms) AS latency_hist,
       %1$I.canary_hist_agg(r.completion_tokens) AS tokens_hist
  FROM %2$s r
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8$q$, nsp, source);
    ELSIF kind IN ('feedback', 'queue') THEN
        counters := ARRAY['thumbs_down', 'verdicts'];
        agg := format($q$
SELECT coalesce(a.canary, f.canary) AS canary,
       %1$I.canary_rollup_bucket(coalesce(a.ts, f.ts)) AS bucket_end,
       %1$I.canary_rollup_member() AS member, coalesce(a.stage, '') AS stage,
       coalesce(a.cohort, f.cohort, '') AS cohort, coalesce(a.model, f.model, '') AS model,
       coalesce(a.fallback, false) AS fallback, coalesce(a.cached, false) AS cached,
       count(*) FILTER (WHERE f.thumbs_down) AS thumbs_down,
       count(*) AS verdicts
  FROM %2$s f
  LEFT JOIN LATERAL ((SELECT q.canary, q.ts, q.stage, q.cohort, q.model, q.fallback, q.cached
                        FROM %1$I.canary_requests q
                       WHERE q.request_id = f.request_id
                         AND q.ts >= %1$I.canary_request_time(f.request_id) - interval '1 minute'
                         AND q.ts < %1$I.canary_request_time(f.request_id) + interval '1 day'
                       ORDER BY q.ts LIMIT 1)
                      UNION ALL
                      (SELECT q.canary, q.ts, q.stage, q.cohort, q.model, q.fallback, q.cached
                         FROM %1$I.canary_requests q
                        WHERE q.request_id = f.request_id
                        ORDER BY q.ts LIMIT 1)
                      LIMIT 1) a ON true
 WHERE coalesce(a.canary, f.canary) IS NOT NULL
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8$q$, nsp, source);
        IF kind = 'queue' THEN
            RETURN format('INSERT INTO %I.canary_feedback_pending (%s, thumbs_down, verdicts) %s',
                          nsp, keys, agg);
        END IF;
    ELSIF kind = 'verdicts' THEN
        counters := ARRAY['thumbs_down', 'verdicts'];
        agg := format($q$
SELECT p.canary, p.bucket_end, p.member, p.stage, p.cohort, p.model, p.fallback, p.cached,
       sum(p.thumbs_down)::bigint AS thumbs_down, sum(p.verdicts)::bigint AS verdicts
  FROM %s p
 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8$q$, source);
    ELSE
        RAISE EXCEPTION 'rollup kind "%" does not exist', kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The kinds are requests, request_counts, feedback, verdicts and queue.';
    END IF;

    cols := array_to_string(counters || hists, ', ');
    SELECT string_agg(CASE WHEN c = ANY (hists)
                           THEN format('%1$I = %2$I.canary_hist_merge(t.%1$I, excluded.%1$I)', c, nsp)
                           ELSE format('%1$I = t.%1$I + excluded.%1$I', c) END, ', ' ORDER BY o),
           string_agg(CASE WHEN c = ANY (hists) THEN format('%I.canary_hist_sum(%I)', nsp, c)
                           WHEN c = 'cost' THEN 'sum(cost)'
                           ELSE format('sum(%I)::bigint', c) END, ', ' ORDER BY o)
      INTO sets, sums
      FROM unnest(counters || hists) WITH ORDINALITY AS u(c, o);
    rollup := format('INSERT INTO %4$I.canary_rollups AS t (%1$s, %2$s) SELECT %1$s, %2$s FROM agg'
                     ' ORDER BY %1$s ON CONFLICT (%1$s) DO UPDATE SET %3$s', keys, cols, sets, nsp);
    IF NOT totals THEN
        RETURN format('WITH agg AS (%s) %s', agg, rollup);
    END IF;
    RETURN format('WITH agg AS (%1$s), rollup AS (%2$s)'
                  ' INSERT INTO %7$I.canary_rollup_totals AS t (%3$s, %4$s) SELECT %3$s, %5$s FROM agg'
                  ' GROUP BY %3$s ORDER BY %3$s ON CONFLICT (%3$s) DO UPDATE SET %6$s',
                  agg, rollup, total_keys, cols, sums, sets, nsp);
END;
$$;
COMMENT ON FUNCTION canary_rollup_statement(text, text, boolean) IS
    'The statement that adds the rows of source (kind requests or feedback) to canary_rollups and, when totals, to canary_rollup_totals';
REVOKE ALL ON FUNCTION canary_rollup_statement(text, text, boolean) FROM PUBLIC;

/*
 * The triggers: every INSERT or COPY into canary_requests or canary_feedback
 * through the parent table adds its rows to the rollups in the same
 * statement: exactly once, whoever writes the rows (the worker, a
 * backfill, the simulator, canary_feedback).  SECURITY DEFINER: a role that
 * may add raw rows need not be able to write the rollups.
 */
CREATE FUNCTION canary_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- TG_ARGV[0]: requests or feedback; the metrics worker counts its own
    -- batches (canary_worker_batch)
    IF NOT @extschema@.canary_worker_batch(TG_NAME) THEN
        EXECUTE @extschema@.canary_rollup_statement(CASE WHEN TG_ARGV[0] = 'feedback' THEN 'queue'
                                                         ELSE TG_ARGV[0] END, 'new_rows', true);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION canary_rollup_trigger() IS
    'Adds the rows an INSERT or COPY wrote to canary_requests to canary_rollups and canary_rollup_totals, and queues those written to canary_feedback in canary_feedback_pending';
REVOKE ALL ON FUNCTION canary_rollup_trigger() FROM PUBLIC;
CREATE TRIGGER canary_requests_rollup AFTER INSERT ON canary_requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION canary_rollup_trigger('requests');
CREATE TRIGGER canary_feedback_rollup AFTER INSERT ON canary_feedback
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION canary_rollup_trigger('feedback');

CREATE TABLE canary_feedback_pending (
    canary              text NOT NULL,
    bucket_end          timestamptz NOT NULL,
    member              text NOT NULL,
    stage               text NOT NULL,
    cohort              text NOT NULL,
    model               text NOT NULL,
    fallback            boolean NOT NULL,
    cached              boolean NOT NULL,
    thumbs_down         bigint NOT NULL,
    verdicts            bigint NOT NULL
);
COMMENT ON TABLE canary_feedback_pending IS
    'Verdicts written to canary_feedback and not yet added to canary_rollups and canary_rollup_totals (canary_feedback_fold adds them)';

CREATE TABLE canary_verdict_marks (
    canary              text NOT NULL,
    bucket_end          timestamptz NOT NULL
);
CREATE INDEX canary_verdict_marks_canary ON canary_verdict_marks (canary);
COMMENT ON TABLE canary_verdict_marks IS
    'Per rollout and fold, the rollup buckets whose thumbs-down the fold changed and the kill switch''s evidence has not recounted yet (appended, consumed by canary_check)';

CREATE FUNCTION canary_feedback_fold()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch @extschema@.canary_feedback_pending[];
BEGIN
    -- the rollups' lock before the queue's rows, as canary_rollup_rebuild
    LOCK TABLE @extschema@.canary_rollups IN ROW EXCLUSIVE MODE;
    WITH moved AS (
        DELETE FROM @extschema@.canary_feedback_pending p
         WHERE p.ctid = ANY (ARRAY(SELECT q.ctid FROM @extschema@.canary_feedback_pending q
                                    LIMIT 100000 FOR UPDATE SKIP LOCKED))
        RETURNING p.*
    )
    SELECT array_agg(ROW(m.*)::@extschema@.canary_feedback_pending) INTO batch FROM moved m;
    IF batch IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE @extschema@.canary_rollup_statement('verdicts', '(SELECT * FROM unnest($1))', true)
        USING batch;
    -- appended, never updated: a check that consumes marks holds none of
    -- these; only for the rollouts whose check recounts evidence; one per
    -- bucket changed (the check recounts the minutes marked, alone)
    INSERT INTO @extschema@.canary_verdict_marks (canary, bucket_end)
    SELECT DISTINCT b.canary, b.bucket_end FROM unnest(batch) b
      JOIN @extschema@.canary_config c ON c.name = b.canary
     WHERE b.thumbs_down > 0 AND c.kill_switch_armed AND c.decision_mode = 'sequential';
    RETURN (SELECT sum(b.verdicts) FROM unnest(batch) b);
END;
$$;
COMMENT ON FUNCTION canary_feedback_fold() IS
    'Adds the verdicts queued in canary_feedback_pending to canary_rollups and canary_rollup_totals, exactly once; returns how many';
REVOKE ALL ON FUNCTION canary_feedback_fold() FROM PUBLIC;

/*
 * canary_rollup_rebuild: recount this server's rollups of the buckets in
 * (since, until] from the raw rows still kept.  For rows written around the
 * triggers (into a partition directly, or with triggers disabled) or
 * deleted.  The totals are counters and stay as they are.  Blocks the
 * writers of the rollups while it runs.
 */
CREATE FUNCTION canary_rollup_rebuild(since timestamptz, until timestamptz DEFAULT 'infinity')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    nsp constant name := @extschema@.canary_schema_name();
    -- %1$I the schema, %2$s the time, %3$L since, %4$L until
    in_range constant text :=
        '%1$I.canary_rollup_bucket(%2$s) > %3$L AND %1$I.canary_rollup_bucket(%2$s) <= %4$L';
BEGIN
    IF since IS NULL OR until IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN since IS NULL THEN 'since' ELSE 'until' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- the rollups' lock first, then the queue's (the order of a backfill
    -- that writes requests then verdicts, and of the fold); a fold in
    -- progress finishes before.  Every queued verdict is folded (the fold
    -- takes at most 100,000 rows a call), so none is counted twice.
    LOCK TABLE @extschema@.canary_rollups IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE @extschema@.canary_feedback_pending IN SHARE ROW EXCLUSIVE MODE;
    LOOP
        EXIT WHEN @extschema@.canary_feedback_fold() = 0;
    END LOOP;
    -- rows locked in key order, as every batch locks them: no deadlock;
    -- every counter (31_rollup_counters.sql) set to zero
    EXECUTE format($q$
    WITH k AS (
        SELECT r.ctid FROM %1$I.canary_rollups r
         WHERE r.bucket_end > $1 AND r.bucket_end <= $2 AND r.member = %1$I.canary_rollup_member()
         ORDER BY r.canary, r.bucket_end, r.member, r.stage, r.cohort, r.model, r.fallback, r.cached
           FOR UPDATE)
    UPDATE %1$I.canary_rollups r SET %2$s FROM k WHERE r.ctid = k.ctid$q$, nsp,
                   @extschema@.canary_rollup_counter_list('%1$s = 0', '%1$s = ''{}'''))
        USING since, until;
    EXECUTE @extschema@.canary_rollup_statement('requests',
        format('(SELECT * FROM %1$I.canary_requests WHERE ' || in_range || ')', nsp, 'ts', since, until),
        false);
    EXECUTE @extschema@.canary_rollup_statement('feedback',
        format('(SELECT f.* FROM %1$I.canary_feedback f'
               ' CROSS JOIN LATERAL (SELECT coalesce((SELECT q.ts FROM %1$I.canary_requests q'
               '   WHERE q.request_id = f.request_id ORDER BY q.ts LIMIT 1), f.ts) AS ts) k WHERE '
               || in_range || ')', nsp, 'k.ts', since, until), false);
    DELETE FROM @extschema@.canary_rollups r
     WHERE r.bucket_end > since AND r.bucket_end <= until AND r.member = @extschema@.canary_rollup_member()
       AND r.requests = 0 AND r.verdicts = 0;
    SELECT count(*) INTO n FROM @extschema@.canary_rollups r
     WHERE r.bucket_end > since AND r.bucket_end <= until AND r.member = @extschema@.canary_rollup_member();
    RETURN n;
END;
$$;
COMMENT ON FUNCTION canary_rollup_rebuild(timestamptz, timestamptz) IS
    'Recounts this server''s canary_rollups of the buckets in (since, until] from the kept rows of canary_requests and canary_feedback; returns the rollup rows of the range';
REVOKE ALL ON FUNCTION canary_rollup_rebuild(timestamptz, timestamptz) FROM PUBLIC;

/*
 * Retention, called by canary_maintenance(): rollups whose bucket ended
 * before today - llm_canary.rollup_retention_days (UTC days) are deleted.
 */
CREATE FUNCTION canary_rollup_maintenance(today date DEFAULT (now() AT TIME ZONE 'UTC')::date)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    days integer := coalesce(nullif(current_setting('llm_canary.rollup_retention_days', true), '')::integer, 400);
    n bigint := 0;
BEGIN
    IF days > 0 THEN
        DELETE FROM @extschema@.canary_rollups r
         WHERE r.bucket_end < (today - days)::timestamp AT TIME ZONE 'UTC';
        GET DIAGNOSTICS n = ROW_COUNT;
        -- and a fleet control's combined rows (33_fleet_combined.sql)
        DELETE FROM @extschema@.canary_fleet_rollups r
         WHERE r.bucket_end < (today - days)::timestamp AT TIME ZONE 'UTC';
    END IF;
    RETURN n;
END;
$$;
COMMENT ON FUNCTION canary_rollup_maintenance(date) IS
    'Deletes the canary_rollups older than llm_canary.rollup_retention_days days; returns how many';
REVOKE ALL ON FUNCTION canary_rollup_maintenance(date) FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('canary_rollups', '');
SELECT pg_catalog.pg_extension_config_dump('canary_rollup_totals', '');
SELECT pg_catalog.pg_extension_config_dump('canary_feedback_pending', '');
SELECT pg_catalog.pg_extension_config_dump('canary_verdict_marks', '');

COMMENT ON FUNCTION canary_maintenance(integer, date) IS
    'Creates daily partitions of canary_requests, canary_feedback and canary_shadow from today through today + days_ahead (moving rows out of the DEFAULT partition), drops those older than llm_canary.retention_days, deletes answers of canary_response_cache older than llm_canary.response_cache_ttl and canary_rollups older than llm_canary.rollup_retention_days';
REVOKE ALL ON FUNCTION canary_maintenance(integer, date) FROM PUBLIC;
ALTER FUNCTION canary_maintenance(integer, date) SECURITY DEFINER;

COMMENT ON FUNCTION canary_summary(text, interval) IS
    'Per cohort, from canary_rollups: requests, error and refusal rates, p50/p95 latency, mean completion tokens, thumbs-down rate, cost';

/*
 * canary_prometheus_requests and canary_prometheus_series read the view
 * canary_rollup_totals_source: 84_fleet_combined_readers.sql creates them,
 * after the view.
 */

COMMENT ON FUNCTION canary_prometheus(text) IS
    'Prometheus exposition: llm_requests_total, llm_latency_ms, llm_completion_tokens, llm_refusals_total, llm_thumbs_down_total (counters since install, from canary_rollup_totals) and the extension''s health, with the age of each checked rollout''s last check (llm_canary_check_age_seconds) and the age past which its checks count as stopped (llm_canary_check_age_limit_seconds)';

/* grants, as sql/parts/90_roles.sql gives them */
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE
    ON TABLE canary_rollups, canary_rollup_totals, canary_feedback_pending, canary_verdict_marks TO llm_canary_admin;
GRANT SELECT ON TABLE canary_rollups, canary_rollup_totals, canary_feedback_pending, canary_verdict_marks
    TO llm_canary_app;
GRANT EXECUTE ON FUNCTION canary_feedback_fold() TO llm_canary_admin;
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_proc p ON p.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'llm_canary')
           -- (no backslash: the database may have standard_conforming_strings off)
           AND p.proname ~ '^canary_(hist|rollup|prometheus)_'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_admin', fn);
        IF (SELECT proname FROM pg_catalog.pg_proc WHERE oid = fn) = ANY (ARRAY[
                'canary_hist_accum_hist', 'canary_hist_final', 'canary_hist_sum', 'canary_hist_quantile',
        'canary_hist_le', 'canary_hist_cumulative', 'canary_prometheus_requests',
        'canary_prometheus_series']) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_app', fn);
        END IF;
    END LOOP;
END;
$$;

/* the rollups and totals of the rows 1.0 already has */
DO $$
BEGIN
    EXECUTE canary_rollup_statement('requests', 'canary_requests', true);
    EXECUTE canary_rollup_statement('feedback', 'canary_feedback', true);
END;
$$;
