/*
 * The counter list of the rollups (31_rollup_counters.sql is the part
 * itself, linked, ahead of 83_fleet_combined_trigger.sql, the part
 * 34_fleet_combine_trigger.sql linked, whose function is built from it;
 * canary_rollup_rebuild in 30_rollups.sql and canary_fleet_combine in 83
 * read it too).  Here the privileges
 * sql/parts/90_roles.sql gives the new functions on a fresh install:
 * nothing for PUBLIC, EXECUTE for llm_canary_admin.
 */
GRANT EXECUTE ON FUNCTION canary_rollup_counters(), canary_rollup_counter_list(text, text, boolean, text)
    TO llm_canary_admin;
