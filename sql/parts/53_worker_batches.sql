/*
 * The sample-ratio check's users (canary_srm_users, canary_rollups.new_users),
 * recorded as the requests are written: one statement, run either by the
 * trigger canary_requests_srm over the rows of an INSERT or COPY (a
 * backfill, the simulator, canary_ingest-like loads), or by the metrics
 * worker over the rows of its batches that it cannot skip.
 *
 * The worker keeps, per rollout, the users it has seen recorded in the
 * rollout's current state (src/srm_writer.c): a bounded cache, emptied
 * when the rollout's row of canary_config changes (its xmin: a new stage,
 * evidence_since, percent_new, a re-arm, a deletion), and lost at every
 * restart.  It sends only the users it does not know, and the statement
 * answers with the state it saw for each rollout of the batch; when that
 * state is not the one the worker assumed to skip a user, the worker sends
 * the skipped rows too.  The database stays the truth: the cache only skips
 * an insert that is known to have been done (ON CONFLICT DO NOTHING would
 * have skipped it), and a user enters it only after its batch committed.
 * While the worker writes its own batch, the trigger does nothing
 * (canary_worker_batch).  Rows of a rollout's current period deleted from
 * canary_srm_users (or a TRUNCATE) empty the worker's cache
 * (canary_srm_users_changed); deleting other periods' rows does not.
 */

/*
 * True only in the metrics worker, during the INSERT of one of its batches,
 * when it does the work of that trigger of canary_requests itself
 * (canary_requests_rollup: src/rollups_writer.c; canary_requests_srm:
 * src/srm_writer.c).
 */
CREATE FUNCTION canary_worker_batch(trigger_name text) RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_worker_batch'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION canary_worker_batch(text) IS
    'True only in the metrics worker while it inserts a batch whose work for that trigger of canary_requests it does itself';

/*
 * canary_srm_statement: the statement that records the users of source (a
 * relation or parenthesised query with the columns canary, user_id,
 * cohort, ts, stage, model, fallback, cached): for each armed rollout with
 * 0 < percent_new < 100, the users of its rows after evidence_since go into
 * canary_srm_users under that period (the cohort of their first row), and
 * those not seen before in the period are counted into the new_users of
 * the rollup row of that first row.  Primary-key probes, one per user;
 * nothing is scanned.  canaries: NULL, and the statement answers with one
 * row, the users added; or an expression of a text[] of rollout names, and
 * it answers with each user of source it found recorded (canary, the
 * version of the rollout's canary_config row, true, user_id) and, for each
 * name of canaries, (canary, version, whether its users are recorded,
 * NULL); version is '' for a rollout that does not exist.
 */
CREATE FUNCTION canary_srm_statement(source text, canaries text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN format($q$
WITH firsts AS (
    SELECT DISTINCT ON (r.canary, r.user_id)
           r.canary, r.user_id, r.cohort, coalesce(c.evidence_since, '-infinity') AS period,
           c.xmin::text AS version,
           %3$I.canary_rollup_bucket(r.ts) AS bucket_end, coalesce(r.stage, '') AS stage,
           coalesce(r.model, '') AS model, r.fallback, r.cached
      FROM %1$s r
      JOIN %3$I.canary_config c ON c.name = r.canary
     WHERE r.user_id IS NOT NULL AND r.cohort IN ('canary', 'control')
       AND c.kill_switch_armed AND c.percent_new > 0 AND c.percent_new < 100
       AND (c.evidence_since IS NULL OR r.ts > c.evidence_since)
     ORDER BY r.canary, r.user_id, r.ts
), added AS (
    INSERT INTO %3$I.canary_srm_users AS u (canary, user_id, cohort, period)
    SELECT f.canary, f.user_id, f.cohort, f.period FROM firsts f
     ORDER BY f.canary, f.period, f.user_id
    ON CONFLICT DO NOTHING
    RETURNING u.canary, u.user_id
), counted AS (
    INSERT INTO %3$I.canary_rollups AS t
        (canary, bucket_end, member, stage, cohort, model, fallback, cached, new_users)
    SELECT f.canary, f.bucket_end, %3$I.canary_rollup_member(), f.stage, f.cohort, f.model,
           f.fallback, f.cached, count(*)
      FROM added a JOIN firsts f ON f.canary = a.canary AND f.user_id = a.user_id
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
     ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (canary, bucket_end, member, stage, cohort, model, fallback, cached)
       DO UPDATE SET new_users = t.new_users + excluded.new_users
    RETURNING 1
)
%2$s$q$,
    source,
    CASE WHEN canaries IS NULL THEN 'SELECT count(*) FROM added'
         ELSE format($a$SELECT f.canary, f.version, true, f.user_id FROM firsts f
UNION ALL
SELECT n.name, coalesce(c.xmin::text, ''),
       coalesce(c.kill_switch_armed AND c.percent_new > 0 AND c.percent_new < 100, false), NULL
  FROM unnest(%1$s::text[]) n(name)
  LEFT JOIN %2$I.canary_config c ON c.name = n.name$a$, canaries, @extschema@.canary_schema_name()) END,
    @extschema@.canary_schema_name());
COMMENT ON FUNCTION canary_srm_statement(text, text) IS
    'The statement that records the sample-ratio users of source (canary_srm_users, canary_rollups.new_users)';

/*
 * canary_srm_record: the metrics worker's call (src/srm_writer.c): records
 * the users of the rows given as arrays, one element per row, and answers
 * as canary_srm_statement does for the rollouts p_canaries.
 * enable_nestloop off: see canary_srm_trigger.
 */
CREATE FUNCTION canary_srm_record(p_canaries text[], p_canary text[], p_user_id text[], p_cohort text[],
                                  p_ts timestamptz[], p_stage text[], p_model text[],
                                  p_fallback boolean[], p_cached boolean[])
RETURNS TABLE (canary text, version text, recording boolean, user_id text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_nestloop = off
AS $$
BEGIN
    RETURN QUERY EXECUTE @extschema@.canary_srm_statement(
        '(SELECT * FROM unnest($2, $3, $4, $5, $6, $7, $8, $9)'
        ' AS r(canary, user_id, cohort, ts, stage, model, fallback, cached))', '$1')
        USING p_canaries, p_canary, p_user_id, p_cohort, p_ts, p_stage, p_model, p_fallback, p_cached;
END;
$$;
COMMENT ON FUNCTION canary_srm_record(text[], text[], text[], text[], timestamptz[], text[], text[], boolean[], boolean[]) IS
    'Records the sample-ratio users of the metrics worker''s rows; answers with the users found recorded and the state of the rollouts named';

/*
 * canary_srm_users_changed: statement trigger on canary_srm_users, after a
 * DELETE that removed rows of a rollout's current evidence period, and after
 * every TRUNCATE: a relcache invalidation of the table, on which the metrics
 * worker empties its cache of recorded users (src/srm_writer.c).  The rows
 * of other periods, which every check deletes, leave the cache alone: it
 * holds only users of the rollouts' current state.
 */
CREATE FUNCTION canary_srm_users_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'canary_srm_users_changed'
LANGUAGE C
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION canary_srm_users_changed() IS
    'Trigger: makes the metrics worker forget the sample-ratio users it knows recorded, after a DELETE of a current period''s rows or a TRUNCATE of canary_srm_users';

CREATE TRIGGER canary_srm_users_deleted
    AFTER DELETE ON canary_srm_users REFERENCING OLD TABLE AS canary_srm_deleted
    FOR EACH STATEMENT EXECUTE FUNCTION canary_srm_users_changed();
CREATE TRIGGER canary_srm_users_truncated
    AFTER TRUNCATE ON canary_srm_users
    FOR EACH STATEMENT EXECUTE FUNCTION canary_srm_users_changed();
