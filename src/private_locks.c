/*-------------------------------------------------------------------------
 *
 * private_locks.c
 *	  Advisory-style locks of the extension's own (private_locks.h lists
 *	  their locktag_field4 values), tried without waiting (or, where said,
 *	  waited for) and held to the end of the transaction (or of the
 *	  subtransaction that took them, if it aborts).
 *
 * The check lock.  A check of a rollout writes that rollout's evidence
 * (canary_collect_evidence) and sample-ratio state (canary_srm_check); two
 * checks writing them at once would add their sums twice, and one left
 * open in a transaction would hold the rows the next one writes.  So a
 * check takes the rollout's check lock first, without waiting: the check
 * that gets it does the writes, one that does not judges on what is
 * committed and says so in its decision (src/killswitch.c), with a
 * WARNING.  The trigger of canary_config that deletes a rollout's evidence
 * (a new evidence period) waits for it instead, and holds it until the
 * operator's transaction ends: checks meanwhile judge on what is committed
 * rather than wait for the rows it deleted.  Its key is a
 * hash of the rollout's name, apart from every application's advisory
 * locks by its locktag_field4.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/twophase.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "utils/builtins.h"

#include "private_locks.h"
#include "util.h"

/* The tag of the lock of key (len bytes) in the lock space field4. */
static void
PrivateLockTag(LOCKTAG *tag, const void *key, size_t len, uint16 field4)
{
	uint8		digest[CANARY_SHA256_LEN];
	uint32		k1,
				k2;

	CanarySha256(key, len, digest);
	memcpy(&k1, digest, sizeof(k1));
	memcpy(&k2, digest + sizeof(k1), sizeof(k2));
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, k1, k2, field4);
}

/*
 * CanaryPrivateLock
 *		Take the transaction-level lock of key (len bytes, hashed with
 *		SHA-256 into the two 32-bit fields of the tag) in the lock space
 *		field4; with wait, waiting for it (lock_timeout and the deadlock
 *		check apply, as to any lock), else only if it is free.  Returns
 *		whether this transaction holds it now (also when it held it
 *		already).  Caller must be in a transaction.
 */
bool
CanaryPrivateLock(const void *key, size_t len, uint16 field4, bool wait)
{
	LOCKTAG		tag;

	PrivateLockTag(&tag, key, len, field4);
	return LockAcquire(&tag, ExclusiveLock, false, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

/* CanaryPrivateLock without waiting. */
bool
CanaryTryPrivateLock(const void *key, size_t len, uint16 field4)
{
	return CanaryPrivateLock(key, len, field4, false);
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
 * CanaryCheckLockHolder
 *		The process of the transaction holding the check lock of a rollout,
 *		for a message: 0 for a prepared transaction (it has none), -1 when
 *		none is found (it ended meanwhile).  Looks at the one lock's entry
 *		(GetLockConflicts), not at the whole lock table as pg_locks does.
 *		Caller must be in a transaction; allocates in the current context.
 */
int
CanaryCheckLockHolder(const char *rollout)
{
	LOCKTAG		tag;
	VirtualTransactionId *holders;
	int			n;

	PrivateLockTag(&tag, rollout, strlen(rollout), CHECK_LOCK_FIELD4);
	holders = GetLockConflicts(&tag, ExclusiveLock, &n);
	for (int i = 0; i < n && VirtualTransactionIdIsValid(holders[i]); i++)
	{
		PGPROC	   *proc;
		bool		more;

		/*
		 * A prepared transaction keeps the virtual transaction id of the
		 * backend that prepared it (InvalidBackendId after a restart).
		 */
		if (holders[i].backendId == InvalidBackendId ||
			TransactionIdIsValid(TwoPhaseGetXidByVirtualXID(holders[i], &more)))
			return 0;
		proc = BackendIdGetProc(holders[i].backendId);
		/* unlocked read, for a message: the pid if it is still that transaction */
		if (proc != NULL && proc->lxid == holders[i].localTransactionId)
			return proc->pid;
	}
	return -1;
}

/*
 * canary_try_check_lock(canary text, wait boolean default false) returns boolean
 *		SQL access to the check lock: without wait (canary_collect_evidence,
 *		canary_srm_check) CanaryTryCheckLock; with it (the trigger of
 *		canary_config that deletes a rollout's evidence) waiting for it,
 *		and true when it returns.
 */
PG_FUNCTION_INFO_V1(canary_try_check_lock);
Datum
canary_try_check_lock(PG_FUNCTION_ARGS)
{
	text	   *rollout = PG_GETARG_TEXT_PP(0);
	bool		wait = PG_GETARG_BOOL(1);

	PG_RETURN_BOOL(CanaryPrivateLock(VARDATA_ANY(rollout), VARSIZE_ANY_EXHDR(rollout),
									 CHECK_LOCK_FIELD4, wait));
}
