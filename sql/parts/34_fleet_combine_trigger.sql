/*
 * The fleet combine trigger's function (the tables, the CHECKs and
 * canary_fleet_combine are in 33_fleet_combined.sql; the triggers that
 * call it in 34_fleet_combine_trigger_attach.sql): adds NEW less OLD of a
 * row of canary_rollups or canary_rollup_totals into its combined row.  An
 * UPDATE that changes the key takes OLD out of the old key's combined row
 * and adds NEW to the new key's.  A histogram the histogram functions
 * would refuse (see the CHECKs of 33) is skipped, both NEW's and OLD's,
 * with a WARNING: raising here would stop the apply worker on every retry.
 * SECURITY DEFINER: whoever may write the rollups need not write the
 * combined rows.
 *
 * Its statements name every counter (31_rollup_counters.sql): the function
 * is created here from a template, one branch per table, with the lists
 * filled in, so that it runs plain statements whose plans PL/pgSQL keeps
 * for the session (the apply worker's), as a hand-written one would.
 * In the branch: {row} holds OLD when an UPDATE keeps the key (NULL
 * otherwise, so nothing is taken from NEW); hists_ok is false when a
 * histogram of NEW or OLD is invalid (then none is combined).
 *
 * This part only (re)creates the function (CREATE OR REPLACE, then its
 * comment and privileges), so that an update script that changes the
 * counters includes it, linked, as sql/updates/1.0--1.1/ does.  No
 * backslash in a literal here: the install runs with the database's
 * standard_conforming_strings, which may be off.  The templates write
 * {nsp} where the schema goes (never @extschema@ or format()'s %I): it is
 * replaced last, with the quoted name, so that no {...} replace runs over
 * a name such as "{keys}" (01_schema_name.sql).
 */
DO $do$
DECLARE
    branch constant text := $t$
        hists_ok := {hists_valid};
        IF NOT hists_ok THEN
            RAISE WARNING 'skipping the histograms of a row of % with an invalid histogram', TG_TABLE_NAME
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('Rollout %s, member %s: its counters are combined, its histograms are not.',
                                      NEW.canary, NEW.member),
                      HINT = 'Fix the row where it was written; canary_hist_valid tells a valid histogram.';
        END IF;
        IF TG_OP = 'UPDATE' AND ({old_keys}) = ({new_keys}) THEN
            {row} := OLD;
        ELSIF TG_OP = 'UPDATE' THEN
            UPDATE {nsp}.{combined} t
               SET {take}
             WHERE ({t_keys}) = ({old_keys});
        END IF;
        INSERT INTO {nsp}.{combined} AS t ({keys}, {cols})
        VALUES ({new_keys},
                {delta})
        ON CONFLICT ({keys}) DO UPDATE
           SET {add};$t$;
    nh constant text := 'CASE WHEN hists_ok THEN NEW.%1$s END';
    -- one counter a line in the function's text
    nl constant text := ',' || chr(10) || repeat(' ', 16);
    body text := $t$
DECLARE
    o  {nsp}.canary_rollups;
    ot {nsp}.canary_rollup_totals;
    hists_ok boolean;
BEGIN
    IF TG_TABLE_NAME = 'canary_rollups' THEN{canary_rollups}
        -- a change applied late (a member catching up after an outage, a
        -- late verdict): the kill switch's evidence recounts from its
        -- bucket (canary_collect_evidence recounts the last two minutes
        -- anyway)
        IF NEW.bucket_end < now() - interval '1 minute' THEN
            -- (appended: a check consumes marks with SKIP LOCKED, never waits)
            INSERT INTO {nsp}.canary_verdict_marks (canary, bucket_end)
            VALUES (NEW.canary, NEW.bucket_end);
        END IF;
    ELSE{canary_rollup_totals}
    END IF;
    RETURN NULL;
END;
$t$;
    b text;
    oh text;
    p text;
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('canary_rollups', 'canary_fleet_rollups', 'o', false,
                                    ARRAY['canary', 'bucket_end', 'stage', 'cohort', 'model', 'fallback', 'cached']),
                                   ('canary_rollup_totals', 'canary_fleet_rollup_totals', 'ot', true,
                                    ARRAY['canary', 'model', 'cohort', 'fallback'])) v (tab, combined, r, totals, keys)
    LOOP
        oh := 'CASE WHEN hists_ok THEN ' || t.r || '.%1$s END';
        b := replace(replace(replace(replace(branch, '{row}', t.r), '{combined}', t.combined),
                             '{keys}', array_to_string(t.keys, ', ')),
                     '{cols}', @extschema@.canary_rollup_counter_list('%1$s', '%1$s', t.totals));
        -- {old_keys}: OLD.canary, OLD.bucket_end, ...; {new_keys}, {t_keys}
        FOREACH p IN ARRAY ARRAY['OLD', 'NEW', 't']
        LOOP
            b := replace(b, '{' || lower(p) || '_keys}',
                         (SELECT string_agg(p || '.' || k.k, ', ' ORDER BY k.n)
                            FROM unnest(t.keys) WITH ORDINALITY k (k, n)));
        END LOOP;
        b := replace(b, '{hists_valid}', @extschema@.canary_rollup_counter_list(
            NULL, '{nsp}.canary_hist_valid(coalesce(NEW.%1$s, ''{}''))'
                  ' AND {nsp}.canary_hist_valid(coalesce(OLD.%1$s, ''{}''))', t.totals,
            chr(10) || repeat(' ', 12) || 'AND '));
        b := replace(b, '{take}', @extschema@.canary_rollup_counter_list(
            '%1$s = t.%1$s - OLD.%1$s',
            '%1$s = {nsp}.canary_hist_subtract(t.%1$s, CASE WHEN hists_ok THEN OLD.%1$s END)', t.totals, nl));
        b := replace(b, '{delta}', @extschema@.canary_rollup_counter_list(
            'NEW.%1$s - coalesce(' || t.r || '.%1$s, 0)',
            '{nsp}.canary_hist_subtract(' || nh || ', ' || oh || ')', t.totals, nl));
        b := replace(b, '{add}', @extschema@.canary_rollup_counter_list(
            '%1$s = t.%1$s + excluded.%1$s',
            '%1$s = {nsp}.canary_hist_subtract({nsp}.canary_hist_merge(t.%1$s, ' || nh || '), ' || oh || ')',
            t.totals, nl));
        body := replace(body, '{' || t.tab || '}', b);
    END LOOP;
    -- the schema last: nothing is replaced in the text after the name is in
    -- (a schema named "{keys}" stays a name)
    body := replace(body, '{nsp}', quote_ident(@extschema@.canary_schema_name()));
    EXECUTE format($f$
    CREATE OR REPLACE FUNCTION %1$I.canary_fleet_combine_trigger() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS %2$L$f$, @extschema@.canary_schema_name(), body);
END;
$do$;
COMMENT ON FUNCTION canary_fleet_combine_trigger() IS
    'On the fleet''s control database: adds the change of a row of canary_rollups or canary_rollup_totals (NEW less OLD) to its combined row';
REVOKE ALL ON FUNCTION canary_fleet_combine_trigger() FROM PUBLIC;
