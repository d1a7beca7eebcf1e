/*
 * Schema names and string literals (sql/parts/01_schema_name.sql, the part
 * itself, linked, makes canary_schema_name for every fragment after it).
 *
 * canary_schedule: 1.0 quoted the already quoted @extschema@ again, as its
 * shadow partitions did (so 1.0 did not install into a schema whose name
 * needs quotes: its install stopped at the first partition, and no job of
 * 1.0 names such a schema).  It names the schema with %I of
 * canary_schema_name now, as every statement built by a function does.
 *
 * No backslash in a plain literal of a function body: with
 * standard_conforming_strings = off in the calling session, 1.0's
 * canary_shadow_compare read '[^\w''’]+' as '[^w''’]+' (its words were
 * runs of w and apostrophes) and '\s+' as 's+', and canary_unschedule's
 * LIKE pattern lost its escapes (its _ matched any character: other jobs
 * were removed).  The classes are spelled [:alnum:]_ and [:space:]; the
 * job names are matched with starts_with.
 */
CREATE OR REPLACE FUNCTION canary_schedule(check_schedule text DEFAULT '* * * * *',
                                csat_schedule text DEFAULT '15 0 * * *',
                                maintenance_schedule text DEFAULT '5 0 * * *')
RETURNS TABLE (jobname text, schedule text, command text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cron_db text := current_setting('cron.database_name', true);
    nsp constant name := @extschema@.canary_schema_name();
    jobs text[][] := ARRAY[
        ARRAY['llm_canary_check', check_schedule, format('SELECT %I.canary_check()', nsp)],
        ARRAY['llm_canary_csat', csat_schedule, format('SELECT %I.canary_csat_check()', nsp)],
        ARRAY['llm_canary_maintenance', maintenance_schedule, format('SELECT %I.canary_maintenance()', nsp)]];
    hint text := '';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        FOR i IN 1..3 LOOP
            hint := hint || format(E'\nSELECT cron.schedule_in_database(%L, %L, %L, %L);',
                                   jobs[i][1], jobs[i][2], jobs[i][3], current_database());
        END LOOP;
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN cron_db IS NOT NULL AND cron_db <> current_database()
                              THEN format('pg_cron lives in database "%s". Run there:%s', cron_db, hint)
                              ELSE 'Install pg_cron (shared_preload_libraries = ''pg_cron,llm_canary'', cron.database_name = this database, CREATE EXTENSION pg_cron) or rely on the background worker, which runs canary_check every llm_canary.check_interval.'
                         END;
    END IF;
    FOR i IN 1..3 LOOP
        EXECUTE 'SELECT cron.schedule($1, $2, $3)' USING jobs[i][1], jobs[i][2], jobs[i][3];
        jobname := jobs[i][1]; schedule := jobs[i][2]; command := jobs[i][3];
        RETURN NEXT;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION canary_unschedule()
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer := 0;
    j text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run cron.unschedule(''llm_canary_check'') and the like in the database where pg_cron lives.';
    END IF;
    FOR j IN EXECUTE 'SELECT jobname FROM cron.job WHERE starts_with(jobname, ''llm_canary_'') AND username = current_user' LOOP
        EXECUTE 'SELECT cron.unschedule($1)' USING j;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

CREATE OR REPLACE FUNCTION canary_shadow_compare(old_text text, new_text text,
                                      equivalence_threshold float8 DEFAULT 0.8,
                                      OUT verdict text, OUT similarity float8,
                                      OUT old_opening text, OUT new_opening text,
                                      OUT length_ratio float8)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_words text[];
    new_words text[];
    common    bigint;
    total     bigint;
BEGIN
    -- the split leaves '' at either end when a text starts or ends with a separator
    old_words := array_remove(regexp_split_to_array(lower(old_text), '[^[:alnum:]_''’]+'), '');
    old_opening := array_to_string(old_words[1:5], ' ');
    IF length(old_text) > 0 THEN
        length_ratio := length(new_text)::float8 / length(old_text);
    END IF;
    -- equal texts, frequent in shadow traffic, need one split and no more
    IF old_text = new_text THEN
        new_opening := old_opening;
        verdict := 'identical';
        similarity := 1;
        RETURN;
    END IF;
    new_words := array_remove(regexp_split_to_array(lower(new_text), '[^[:alnum:]_''’]+'), '');
    new_opening := array_to_string(new_words[1:5], ' ');
    IF old_text IS NULL OR new_text IS NULL THEN
        RETURN;
    END IF;

    -- equal words are necessary for identical texts: test that first, it is cheap
    IF old_words = new_words
       AND btrim(regexp_replace(old_text, '[[:space:]]+', ' ', 'g'), ' ')
           = btrim(regexp_replace(new_text, '[[:space:]]+', ' ', 'g'), ' ') THEN
        verdict := 'identical';
        similarity := 1;
        RETURN;
    END IF;

    total := cardinality(old_words) + cardinality(new_words);
    IF total = 0 THEN
        similarity := 1;
    ELSE
        SELECT count(*) INTO common
          FROM (SELECT unnest(old_words) INTERSECT ALL SELECT unnest(new_words)) s;
        similarity := common::float8 / (total - common);
    END IF;
    verdict := CASE WHEN similarity >= equivalence_threshold THEN 'equivalent' ELSE 'different' END;
END;
$$;

-- the privileges sql/parts/90_roles.sql gives canary_schema_name on a
-- fresh install (the reports call it as the application)
GRANT EXECUTE ON FUNCTION canary_schema_name() TO llm_canary_admin, llm_canary_app;
