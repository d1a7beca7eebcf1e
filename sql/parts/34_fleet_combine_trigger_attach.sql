/*
 * The fleet combine triggers (33_fleet_combined.sql tells what they do;
 * their function is 34_fleet_combine_trigger.sql, which a later update
 * may recreate alone): on every row written to canary_rollups or
 * canary_rollup_totals where this database is the control, ENABLEd
 * ALWAYS so that they fire in the subscription's apply worker too.
 */
CREATE TRIGGER canary_rollups_fleet_combine AFTER INSERT OR UPDATE ON canary_rollups
    FOR EACH ROW WHEN (canary_fleet_is_control())
    EXECUTE FUNCTION canary_fleet_combine_trigger();
CREATE TRIGGER canary_rollup_totals_fleet_combine AFTER INSERT OR UPDATE ON canary_rollup_totals
    FOR EACH ROW WHEN (canary_fleet_is_control())
    EXECUTE FUNCTION canary_fleet_combine_trigger();
ALTER TABLE canary_rollups ENABLE ALWAYS TRIGGER canary_rollups_fleet_combine;
ALTER TABLE canary_rollup_totals ENABLE ALWAYS TRIGGER canary_rollup_totals_fleet_combine;
