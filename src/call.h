/*-------------------------------------------------------------------------
 *
 * call.h
 *	  One routed, recorded model call (call.c), in steps, so that the
 *	  blocking path (canary_call, canary_chat) and the concurrent ones
 *	  (canary_batch, the submission worker) route, record, retry, fall back
 *	  and cache exactly alike:
 *
 *		CallBegin          validate the user, route, shadow dispatch
 *		CallCacheLookup    a cached answer instead of an HTTP attempt?
 *		  (the transport: HttpCallModelRequest, or batch.c's multi loop)
 *		CallAttemptDone    classify refusals, record, store in the cache
 *		CallNextModel      the old model to fall back to, or NULL
 *		CallResult / CallRaiseFailure
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_CALL_H
#define LLM_CANARY_CALL_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

#include "cache.h"
#include "config.h"
#include "metrics.h"
#include "provider.h"

/* One call: what it was asked, where it was routed, how it went. */
typedef struct CanaryCall
{
	/* the request and the caller */
	CanaryRequest req;
	char	   *user_id;		/* palloc'd */
	int			user_len;
	char	   *prompt_class;	/* NULL if none */
	char		prompt_hash[CANARY_PROMPT_HASH_LEN + 1];
	pg_uuid_t	request_id;
	TimestampTz start;

	/* the routing */
	char		canary[NAMEDATALEN];
	const char *stage;			/* static string */
	bool		canary_cohort;
	bool		shadow;			/* a shadow copy was handed to the worker */
	bool		fallback_enabled;
	char	   *old_model_name; /* NULL if none */
	CanaryModel *model;			/* the model of the current attempt (a copy) */

	/* the outcome */
	CanaryAttempt attempt;		/* the attempt that counts */
	bool		fallback;		/* the current attempt is the fallback */
	bool		done;
	CacheKey	cache_key;		/* of the current attempt, when caching */
	HttpRequest http;			/* the current attempt's request, built once
								 * (CallCacheLookup) for the cache key and
								 * the transfer */
} CanaryCall;

extern void CallBegin(CanaryCall *call, const CanaryRequest *req,
					  text *user_id, bool user_isnull, const char *canary,
					  const char *prompt_class, const char *session_id);
extern bool CallCacheLookup(CanaryCall *call, CanaryAttempt *a);
extern void CallAttemptDone(CanaryCall *call, CanaryAttempt *a);
extern void CallAttemptCanceled(CanaryCall *call, TimestampTz attempt_start);
extern void CallAttemptRecord(CanaryCall *call, const CanaryAttempt *a);
extern bool CallNextModel(CanaryCall *call);
extern bool CallFailed(const CanaryCall *call);
extern void CallRaiseFailure(const CanaryCall *call);
extern Jsonb *CallResult(const CanaryCall *call);
extern CanaryModel *CallCopyModel(const CanaryModel *model);
extern void CallRequireNotNull(bool isnull, const char *what);

#endif							/* LLM_CANARY_CALL_H */
