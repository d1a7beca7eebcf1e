/*
 * Last step of the install: make the sequences the install advanced crash
 * safe under wal_level = minimal.
 *
 * With wal_level = minimal PostgreSQL writes no WAL for a relation created in
 * the current transaction and logs an image of it at commit instead.  A
 * nextval in that transaction (here: the history row of the 'default'
 * rollout, inserted by canary_config_history) leaves the sequence saying
 * that 32 values are already logged ahead, although none were.  The next 32
 * values are then handed out without WAL, and a crash rewinds the sequence:
 * the next canary_stage_history row after the restart fails with a duplicate
 * key.  setval resets that count, so the image logged at commit is exact and
 * the first nextval after the install writes its WAL record.
 *
 * Install script only: in an upgrade the sequences already exist (their
 * nextval calls write WAL), and live sessions may be taking values, which a
 * read-then-setval here could hand out twice.
 */
DO $$
DECLARE
    seq regclass;
    last_value bigint;
BEGIN
    FOR seq IN
        SELECT d.objid::regclass
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname = 'llm_canary')
           AND d.deptype = 'e'
           AND c.relkind = 'S'
    LOOP
        last_value := pg_catalog.pg_sequence_last_value(seq);
        IF last_value IS NOT NULL THEN
            PERFORM pg_catalog.setval(seq, last_value, true);
        END IF;
    END LOOP;
END
$$;
