/*
 * The fleet's combined rollups, on the control database (src/fleet.c has
 * the fleet; sql/parts/80_fleet.sql its publications).
 *
 * Every member publishes its rows of canary_rollups and
 * canary_rollup_totals, keyed by member.  On the control, a row trigger
 * ENABLEd ALWAYS (it fires in the subscription's apply worker, which runs
 * as a replica, and for the control's own writes) adds each applied row's
 * change, NEW less OLD, histograms included, into one row per key without
 * the member: canary_fleet_rollups and canary_fleet_rollup_totals (the
 * trigger's function is 34_fleet_combine_trigger.sql, generated from the
 * counter list; the triggers 34_fleet_combine_trigger_attach.sql).  The
 * trigger runs in the apply transaction, which also advances the
 * subscription's origin: a change replayed after an apply worker or server
 * restart was either committed with its delta or not at all, so each is
 * counted exactly once.  A DELETE (a member's retention, a removed
 * member's rows) takes nothing out: the combined rows are the fleet's
 * history.  A member's canary_rollup_rebuild rewrites its rows with UPDATEs
 * (to zero, then to the recount), so the control follows it.
 *
 * Every reader picks its source by role: canary_check reads
 * FleetRollupsTable(), SQL reads the views canary_rollup_source and
 * canary_rollup_totals_source.  On the control they read the combined rows
 * once (a check costs the same with 2 or 50 members); elsewhere
 * canary_rollups, exactly as a standalone database always did.
 */

CREATE FUNCTION canary_fleet_is_control() RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_fleet_is_control' LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_fleet_is_control() IS
    'Whether this database is the fleet''s control database (llm_canary.fleet_role = control, preloaded)';

CREATE FUNCTION canary_hist_subtract(int8[], int8[]) RETURNS int8[]
AS 'MODULE_PATHNAME', 'canary_hist_subtract' LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_subtract(int8[], int8[]) IS
    'The values of the first histogram less those of the second, bucket by bucket, never below zero';
CREATE FUNCTION canary_hist_valid(int8[]) RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_hist_valid' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION canary_hist_valid(int8[]) IS
    'Whether the array is a histogram: a one-dimensional int8[] without NULLs of (bucket, count) pairs, valid buckets, non-negative counts';

/*
 * A row of the rollups with a histogram the histogram functions refuse
 * is refused where it is written (an administrator's backfill or COPY),
 * not where it is read.  Not on the control: it must take whatever its
 * apply worker brings (a member's constraint dropped, another version),
 * since an error there stalls the fleet's replication; the combine
 * trigger (34_fleet_combine_trigger.sql) skips such histograms with a
 * WARNING.
 */
ALTER TABLE canary_rollups ADD CONSTRAINT canary_rollups_hist_check
    CHECK (canary_fleet_is_control() OR (canary_hist_valid(latency_hist) AND canary_hist_valid(tokens_hist)));
ALTER TABLE canary_rollup_totals ADD CONSTRAINT canary_rollup_totals_hist_check
    CHECK (canary_fleet_is_control() OR (canary_hist_valid(latency_hist) AND canary_hist_valid(tokens_hist)));

CREATE TABLE canary_fleet_rollups (
    canary              text NOT NULL,
    bucket_end          timestamptz NOT NULL,
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
    PRIMARY KEY (canary, bucket_end, stage, cohort, model, fallback, cached)
);
CREATE INDEX canary_fleet_rollups_bucket_end_idx ON canary_fleet_rollups (bucket_end);
COMMENT ON TABLE canary_fleet_rollups IS
    'On the fleet''s control database: canary_rollups summed over every member (the columns of canary_rollups but member), maintained as the members'' rows are applied';

CREATE TABLE canary_fleet_rollup_totals (
    canary              text NOT NULL,
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
    PRIMARY KEY (canary, model, cohort, fallback)
);
COMMENT ON TABLE canary_fleet_rollup_totals IS
    'On the fleet''s control database: canary_rollup_totals summed over every member, maintained as the members'' rows are applied';

/*
 * The sources every summary reads: the combined rows on the control, the
 * rows of canary_rollups elsewhere.  The condition has no column, so each
 * branch is planned behind a one-time filter and only one of them is read.
 */
CREATE VIEW canary_rollup_source AS
SELECT canary, bucket_end, stage, cohort, model, fallback, cached, requests, outcome_ok,
       outcome_refusal, outcome_error, outcome_timeout, refusals, thumbs_down, verdicts,
       prompt_tokens, completion_tokens, completions, cost, latency_count, latency_sum,
       latency_hist, tokens_hist, new_users
  FROM canary_rollups
 WHERE NOT canary_fleet_is_control()
UNION ALL
SELECT canary, bucket_end, stage, cohort, model, fallback, cached, requests, outcome_ok,
       outcome_refusal, outcome_error, outcome_timeout, refusals, thumbs_down, verdicts,
       prompt_tokens, completion_tokens, completions, cost, latency_count, latency_sum,
       latency_hist, tokens_hist, new_users
  FROM canary_fleet_rollups
 WHERE canary_fleet_is_control();
COMMENT ON VIEW canary_rollup_source IS
    'The rollups this database''s summaries read: the fleet''s combined rows on a control database, canary_rollups (every member''s rows) elsewhere';

CREATE VIEW canary_rollup_totals_source AS
SELECT canary, model, cohort, fallback, requests, outcome_ok, outcome_refusal, outcome_error,
       outcome_timeout, refusals, thumbs_down, verdicts, prompt_tokens, completion_tokens,
       completions, cost, latency_count, latency_sum, latency_hist, tokens_hist
  FROM canary_rollup_totals
 WHERE NOT canary_fleet_is_control()
UNION ALL
SELECT canary, model, cohort, fallback, requests, outcome_ok, outcome_refusal, outcome_error,
       outcome_timeout, refusals, thumbs_down, verdicts, prompt_tokens, completion_tokens,
       completions, cost, latency_count, latency_sum, latency_hist, tokens_hist
  FROM canary_fleet_rollup_totals
 WHERE canary_fleet_is_control();
COMMENT ON VIEW canary_rollup_totals_source IS
    'The counters the Prometheus export reads: the fleet''s combined totals on a control database, canary_rollup_totals elsewhere';

/*
 * canary_fleet_combine: recompute the combined rows of the buckets in
 * (since, until] from the rows canary_rollups holds now, and all the
 * combined totals from canary_rollup_totals.  For a database that becomes
 * the control with rollups already in it, after a restore, or to take a
 * removed member's rows out (delete them first).  Contributions of rows
 * no longer in canary_rollups (a member's retention deleted them) are lost
 * from the range.  Blocks the writers of the rollups while it runs.
 * Returns the combined rows of the range.
 */
CREATE FUNCTION canary_fleet_combine(since timestamptz, until timestamptz DEFAULT 'infinity')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    nsp constant name := @extschema@.canary_schema_name();
BEGIN
    IF NOT @extschema@.canary_fleet_is_control() THEN
        RAISE EXCEPTION 'canary_fleet_combine runs on the fleet''s control database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Only a control database reads the combined rollups.',
                  HINT = 'Set llm_canary.fleet_role to control first.';
    END IF;
    IF since IS NULL OR until IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN since IS NULL THEN 'since' ELSE 'until' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    LOCK TABLE @extschema@.canary_rollups, @extschema@.canary_rollup_totals IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM @extschema@.canary_fleet_rollups r WHERE r.bucket_end > since AND r.bucket_end <= until;
    -- every counter (31_rollup_counters.sql) summed
    EXECUTE format($q$
    INSERT INTO %1$I.canary_fleet_rollups (canary, bucket_end, stage, cohort, model, fallback, cached, %2$s)
    SELECT r.canary, r.bucket_end, r.stage, r.cohort, r.model, r.fallback, r.cached, %3$s
      FROM %1$I.canary_rollups r
     WHERE r.bucket_end > $1 AND r.bucket_end <= $2
     GROUP BY 1, 2, 3, 4, 5, 6, 7$q$, nsp,
                   @extschema@.canary_rollup_counter_list('%1$s', '%1$s'),
                   @extschema@.canary_rollup_counter_list('sum(r.%1$s)', '%2$I.canary_hist_sum(r.%1$s)'))
        USING since, until;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM @extschema@.canary_fleet_rollup_totals;
    EXECUTE format($q$
    INSERT INTO %1$I.canary_fleet_rollup_totals (canary, model, cohort, fallback, %2$s)
    SELECT t.canary, t.model, t.cohort, t.fallback, %3$s
      FROM %1$I.canary_rollup_totals t
     GROUP BY 1, 2, 3, 4$q$, nsp,
                   @extschema@.canary_rollup_counter_list('%1$s', '%1$s', true),
                   @extschema@.canary_rollup_counter_list('sum(t.%1$s)', '%2$I.canary_hist_sum(t.%1$s)', true));
    RETURN n;
END;
$$;
COMMENT ON FUNCTION canary_fleet_combine(timestamptz, timestamptz) IS
    'On the fleet''s control database: recompute the combined rollups of the buckets in (since, until] and the combined totals from every member''s rows; returns the combined rows of the range';
REVOKE ALL ON FUNCTION canary_fleet_combine(timestamptz, timestamptz) FROM PUBLIC;
