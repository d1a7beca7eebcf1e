/*
 * The rollout's check lock (sql/parts/52_decisions.sql, src/private_locks.c):
 * canary_collect_evidence and canary_srm_check, changed where
 * 60_decisions.sql creates them, take it instead of an advisory lock in the
 * applications' key space; the plan's 'no breach' gate (65_plan.sql) stays
 * closed after a check that did not get it.  Then the grants
 * sql/parts/90_roles.sql gives the new function on a fresh install.
 */

-- the alert of checks that judged on older evidence for too long
-- (src/killswitch.c, CheckBlind)
ALTER TABLE canary_alerts
    DROP CONSTRAINT canary_alerts_kind_check,
    ADD CONSTRAINT canary_alerts_kind_check
        CHECK (kind IN ('kill_switch', 'manual_trip', 'csat_pin', 'sample_ratio',
                        'advance', 'decommission', 'check_blocked'));

/*
 * canary_try_check_lock: take the rollout's check lock without waiting
 * (src/private_locks.c), held to the end of the transaction: the
 * evidence and the sample-ratio state of a rollout are written by one
 * check at a time.  With wait (canary_config_evidence, before it deletes
 * the evidence), waiting for it.  An advisory-style lock in a space of
 * its own, apart from the applications' advisory locks.  Internal.
 */
CREATE FUNCTION canary_try_check_lock(canary text, wait boolean DEFAULT false)
RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_try_check_lock'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION canary_try_check_lock(text, boolean) IS
    'Internal: take the check lock of a rollout (its evidence and sample-ratio state) until the end of the transaction, without waiting unless wait';

REVOKE ALL ON FUNCTION canary_try_check_lock(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_try_check_lock(text, boolean) TO llm_canary_admin;
