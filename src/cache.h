/*-------------------------------------------------------------------------
 *
 * cache.h
 *	  The optional response cache (canary_response_cache): answers of a
 *	  model to a prompt, served again within llm_canary.response_cache_ttl
 *	  without calling the model.  Used by canary_call (call.c) and by the
 *	  shadow worker (shadow_worker.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_CACHE_H
#define LLM_CANARY_CACHE_H

#include "config.h"
#include "provider.h"

/* llm_canary.response_cache_ttl, in seconds; 0 = off */
extern int	canary_response_cache_ttl;

/* What identifies one cached answer: hex SHA-256 digests. */
typedef struct CacheKey
{
	char		prompt_sha256[65];	/* of the prompt */
	char		request_sha256[65]; /* of the URL and the JSON body */
} CacheKey;

extern void CacheDefineSettings(void);
extern bool CacheEnabled(void);
extern void CacheComputeKey(const CanaryRequest *req, const HttpRequest *http,
							CacheKey *key);
extern bool CacheLookup(const CanaryModel *model, const CacheKey *key,
						CanaryAttempt *attempt);
extern void CacheStore(const CanaryModel *model, const CacheKey *key,
					   const CanaryAttempt *attempt);

#endif							/* LLM_CANARY_CACHE_H */
