/*-------------------------------------------------------------------------
 *
 * shadow.c
 *	  Shadow mode (see shadow.h).  Placeholder until the shadow worker
 *	  lands: dispatch does nothing, so the shadow stage serves the old model
 *	  and records it like any other call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "shadow.h"

void
ShadowMaybeDispatch(const CanaryRollout *rollout, const pg_uuid_t *request_id,
					const char *user_id, int user_len, const char *prompt,
					const char *prompt_class, const char *prompt_hash)
{
}

void
ShadowCompleteOld(const pg_uuid_t *request_id, const CanaryModel *old_model,
				  const CanaryAttempt *old_attempt)
{
}
