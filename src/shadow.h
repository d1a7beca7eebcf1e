/*-------------------------------------------------------------------------
 *
 * shadow.h
 *	  Shadow mode: in stage "shadow" the old model answers the user while
 *	  the background worker sends the same prompt to the new model; both
 *	  answers are written, compared, to canary_shadow.
 *
 *	  Backend side (called by call.c): ShadowMaybeDispatch hands a job to
 *	  the worker when the call starts, ShadowCompleteOld gives it the old
 *	  model's answer when that arrives.  Neither raises on a full queue or a
 *	  missing worker: shadow traffic never hurts the user's call.
 *
 *	  Worker side (called by worker.c's loop): ShadowWorkerStep accepts new
 *	  jobs (their transfers run on the worker's multi loop, transfers.h)
 *	  and writes finished rows.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SHADOW_H
#define LLM_CANARY_SHADOW_H

#include "storage/latch.h"
#include "utils/uuid.h"

#include "config.h"
#include "provider.h"

/* shared memory, from the shmem hooks */
extern void ShadowRequestShmem(void);
extern void ShadowInitShmem(void);
extern void ShadowDefineSettings(void);

/* backend side */
extern void ShadowMaybeDispatch(const CanaryRollout *rollout,
								const pg_uuid_t *request_id,
								const char *user_id, int user_len,
								const char *prompt, bool is_chat,
								const char *prompt_class, const char *prompt_hash);
extern void ShadowCompleteOld(const pg_uuid_t *request_id,
							  const CanaryModel *old_model,
							  const CanaryAttempt *old_attempt);

extern bool ShadowWaitIdle(long timeout_ms);
extern void ShadowKeepOpenJobsAtCommit(void);

/* worker side */
extern void ShadowWorkerInit(void);
extern void ShadowWorkerStep(void);
extern long ShadowWorkerTimeoutMs(long default_ms);
extern void ShadowWorkerShutdown(void);

#endif							/* LLM_CANARY_SHADOW_H */
