/*
 * The counters of the rollups, defined once.  canary_rollups,
 * canary_rollup_totals and their fleet-combined copies
 * (33_fleet_combined.sql) share these columns after their keys; the
 * statements that treat all of them alike are built from this list:
 * canary_rollup_rebuild's zeroing (32_rollups.sql) and canary_fleet_combine's
 * sums (33) when they run, the fleet combine trigger's function
 * (34_fleet_combine_trigger.sql) when it is created.  A histogram (int8[],
 * src/rollups.c) adds with canary_hist_merge and sums with canary_hist_sum;
 * the others with + and sum.  Counters only canary_rollups has are not in
 * the totals.
 *
 * Adding a counter takes, besides its line here: its column at the end of
 * canary_rollups, canary_fleet_rollups and (if in the totals)
 * canary_rollup_totals and canary_fleet_rollup_totals; counting it in
 * canary_rollup_statement (32_rollups.sql) and, for a request counter, in
 * src/rollups_writer.c (RollupCounterNames: the metrics worker's batches;
 * 032_rollups.pl compares the two lists); the views canary_rollup_source
 * and canary_rollup_totals_source (33), which list the columns by hand;
 * and recreating the combine trigger's function, whose text is generated
 * once: the update script includes 34_fleet_combine_trigger.sql (linked,
 * as sql/updates/1.0--1.1/ does) after this part and the new columns.
 * Readers of a single counter (the summaries, the Prometheus export,
 * canary_check in src/) use it where they need it.
 *
 * STABLE, not IMMUTABLE: format() is STABLE, and a session must not keep
 * the list of an older version of these functions folded into a plan.
 */
CREATE OR REPLACE FUNCTION canary_rollup_counters()
RETURNS TABLE (counter text, hist boolean, in_totals boolean)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.counter, c.hist, c.in_totals
      FROM (VALUES (1, 'requests', false, true),
                   (2, 'outcome_ok', false, true),
                   (3, 'outcome_refusal', false, true),
                   (4, 'outcome_error', false, true),
                   (5, 'outcome_timeout', false, true),
                   (6, 'refusals', false, true),
                   (7, 'thumbs_down', false, true),
                   (8, 'verdicts', false, true),
                   (9, 'prompt_tokens', false, true),
                   (10, 'completion_tokens', false, true),
                   (11, 'completions', false, true),
                   (12, 'cost', false, true),
                   (13, 'latency_count', false, true),
                   (14, 'latency_sum', false, true),
                   (15, 'latency_hist', true, true),
                   (16, 'tokens_hist', true, true),
                   (17, 'new_users', false, false)) c (o, counter, hist, in_totals)
     ORDER BY c.o
$$;
COMMENT ON FUNCTION canary_rollup_counters() IS
    'The counter columns of the rollups in column order: whether each is a histogram, whether canary_rollup_totals has it';
REVOKE ALL ON FUNCTION canary_rollup_counters() FROM PUBLIC;

/*
 * canary_rollup_counter_list: one text per counter, joined with sep:
 * format(plain, counter, schema) for a counter, format(hist, counter,
 * schema) for a histogram (%1$s is the name, unquoted: every counter is a
 * plain lowercase identifier; %2$I the extension's schema, never written
 * into a format; a NULL format skips those counters), the totals' counters
 * only when totals.
 */
CREATE OR REPLACE FUNCTION canary_rollup_counter_list(plain text, hist text, totals boolean DEFAULT false,
                                                      sep text DEFAULT ', ')
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(format(CASE WHEN c.hist THEN $2 ELSE $1 END, c.counter, s.nsp),
                      $4 ORDER BY c.o)
      FROM @extschema@.canary_rollup_counters() WITH ORDINALITY AS c (counter, hist, in_totals, o),
           (SELECT @extschema@.canary_schema_name() AS nsp) s
     WHERE c.in_totals OR NOT $3
$$;
COMMENT ON FUNCTION canary_rollup_counter_list(text, text, boolean, text) IS
    'The counters of the rollups (or of the totals), each formatted with plain or hist, joined with sep';
REVOKE ALL ON FUNCTION canary_rollup_counter_list(text, text, boolean, text) FROM PUBLIC;
