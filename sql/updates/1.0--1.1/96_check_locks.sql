/*
 * The rollout's check lock (sql/parts/52_decisions.sql, src/private_locks.c):
 * canary_collect_evidence and canary_srm_check, changed where
 * 60_decisions.sql creates them, take it instead of an advisory lock in the
 * applications' key space; the plan's 'no breach' gate (65_plan.sql) stays
 * closed after a check that did not get it.  Then the grants
 * sql/parts/90_roles.sql gives the new function on a fresh install.
 */

/*
 * canary_try_check_lock: take the rollout's check lock without waiting
 * (src/private_locks.c), held to the end of the transaction: the
 * evidence and the sample-ratio state of a rollout are written by one
 * check at a time.  An advisory-style lock in a space of its own, apart
 * from the applications' advisory locks.  Internal.
 */
CREATE FUNCTION canary_try_check_lock(canary text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_try_check_lock'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION canary_try_check_lock(text) IS
    'Internal: try to take the check lock of a rollout (its evidence and sample-ratio state), without waiting, until the end of the transaction';

REVOKE ALL ON FUNCTION canary_try_check_lock(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_try_check_lock(text) TO llm_canary_admin;
