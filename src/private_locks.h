/*-------------------------------------------------------------------------
 *
 * private_locks.h
 *	  The extension's own advisory-style locks (private_locks.c): taken
 *	  without waiting (or, where said, waiting), transaction-level, in a
 *	  lock space of their own.
 *
 * Advisory locks taken through SQL (pg_advisory_lock and friends) have
 * locktag_field4 1 (one bigint key) or 2 (two int4 keys).  Ours use the
 * values below, so no application's advisory lock can collide with them,
 * whatever keys it picks; pg_locks shows them as advisory locks with the
 * value in objsubid.  Every private value is listed here:
 *
 *   CACHE_LOCK_FIELD4  0x4C43 (19523): a response-cache write of (model,
 *                      prompt), src/cache.c;
 *   CHECK_LOCK_FIELD4  0x4C45 (19525): a check's writes of a rollout's
 *                      evidence and sample-ratio state, private_locks.c
 *                      (canary_try_check_lock).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_PRIVATE_LOCKS_H
#define LLM_CANARY_PRIVATE_LOCKS_H

#include "postgres.h"

#define CACHE_LOCK_FIELD4	0x4C43
#define CHECK_LOCK_FIELD4	0x4C45

extern bool CanaryPrivateLock(const void *key, size_t len, uint16 field4, bool wait);
extern bool CanaryTryPrivateLock(const void *key, size_t len, uint16 field4);
extern int	CanaryCheckLockHolder(const char *rollout);
extern bool CanaryTryCheckLock(const char *rollout);

#endif							/* LLM_CANARY_PRIVATE_LOCKS_H */
