/*-------------------------------------------------------------------------
 *
 * private_locks.c
 *	  Advisory-style locks of the extension's own (private_locks.h lists
 *	  their locktag_field4 values), tried without waiting and held to the
 *	  end of the transaction (or of the subtransaction that took them, if
 *	  it aborts).
 *
 * The check lock.  A check of a rollout writes that rollout's evidence
 * (canary_collect_evidence) and sample-ratio state (canary_srm_check); two
 * checks writing them at once would add their sums twice, and one left
 * open in a transaction would hold the rows the next one writes.  So a
 * check takes the rollout's check lock first, without waiting: the check
 * that gets it does the writes, one that does not judges on what is
 * committed and says so in its decision (src/killswitch.c).  Its key is a
 * hash of the rollout's name, apart from every application's advisory
 * locks by its locktag_field4.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"

#include "private_locks.h"
#include "util.h"

/*
 * CanaryTryPrivateLock
 *		Try to take the transaction-level lock of key (len bytes, hashed
 *		with SHA-256 into the two 32-bit fields of the tag) in the lock
 *		space field4, without waiting.  Returns whether this transaction
 *		holds it now (also when it held it already).  Caller must be in a
 *		transaction.
 */
bool
CanaryTryPrivateLock(const void *key, size_t len, uint16 field4)
{
	uint8		digest[CANARY_SHA256_LEN];
	uint32		k1,
				k2;
	LOCKTAG		tag;

	CanarySha256(key, len, digest);
	memcpy(&k1, digest, sizeof(k1));
	memcpy(&k2, digest + sizeof(k1), sizeof(k2));
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, k1, k2, field4);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * CanaryTryCheckLock
 *		Try to take the check lock of a rollout without waiting (see the
 *		file's header).  Caller must be in a transaction.
 */
bool
CanaryTryCheckLock(const char *rollout)
{
	return CanaryTryPrivateLock(rollout, strlen(rollout), CHECK_LOCK_FIELD4);
}

/*
 * canary_try_check_lock(canary text) returns boolean
 *		SQL access to CanaryTryCheckLock, for canary_collect_evidence and
 *		canary_srm_check.
 */
PG_FUNCTION_INFO_V1(canary_try_check_lock);
Datum
canary_try_check_lock(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(CanaryTryCheckLock(text_to_cstring(PG_GETARG_TEXT_PP(0))));
}
