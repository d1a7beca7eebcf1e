/*
 * The fleet's privileges, as sql/parts/90_roles.sql gives them on a fresh
 * install (80_fleet.sql is the part itself, linked): nothing for PUBLIC,
 * everything for llm_canary_admin, the fleet's state for llm_canary_app.
 */
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = '@extschema@'::regnamespace AND p.proname ~ '^canary_fleet'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_admin', fn);
        IF (SELECT proname FROM pg_catalog.pg_proc WHERE oid = fn)
           IN ('canary_fleet', 'canary_fleet_local', 'canary_fleet_prometheus', 'canary_fleet_evidence') THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO llm_canary_app', fn);
        END IF;
    END LOOP;
END;
$$;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE canary_fleet_heartbeat, canary_fleet_members
    TO llm_canary_admin;
GRANT SELECT ON TABLE canary_fleet_heartbeat, canary_fleet_members TO llm_canary_app;
