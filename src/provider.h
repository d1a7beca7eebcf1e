/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  Talking to an upstream model: building a provider request (OpenAI chat
 *	  completions or Anthropic messages) and reading its answer (provider.c,
 *	  pure functions, no network), and the blocking HTTP transport used by
 *	  backends (http.c, libcurl).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_PROVIDER_H
#define LLM_CANARY_PROVIDER_H

#include "config.h"
#include "metrics.h"

/* The result of calling one model once (retries included). */
typedef struct CanaryAttempt
{
	CanaryOutcome outcome;
	int			http_status;	/* last HTTP status, 0 if none */
	int			latency_ms;		/* wall time of the whole attempt */
	int			prompt_tokens;	/* -1 if unknown */
	int			completion_tokens;	/* -1 if unknown */
	char	   *text;			/* the answer (palloc'd), NULL if none */
	bool		provider_refusal;	/* the provider signalled a refusal */
	char	   *error;			/* short code, NULL when ok: "timeout",
								 * "http_503", "connect", "malformed_response",
								 * "response_too_large", ... */
	char	   *error_detail;	/* provider message or curl error text */
	int			tries;			/* HTTP requests made (1 + retries) */
	bool		cached;			/* answered from the response cache (no HTTP) */
} CanaryAttempt;

/* provider.c */
extern char *ProviderRequestUrl(const CanaryModel *model);
extern char *ProviderRequestBody(const CanaryModel *model, const char *prompt);
extern void ProviderParseResponse(const CanaryModel *model, int http_status,
								  const char *body, size_t len,
								  CanaryAttempt *attempt);
extern void ProviderRedactKey(const CanaryModel *model, char *s);
extern char *ProviderEmbeddingsUrl(const CanaryModel *model);
extern char *ProviderEmbeddingsBody(const CanaryModel *model,
									const char *a, const char *b);
extern const char *ProviderParseEmbeddings(int http_status, const char *body,
										   size_t len, double *cosine,
										   const char **detail);

/*
 * A response body collected by a libcurl write callback.  malloc'd, never
 * palloc'd: libcurl callbacks must not raise errors.  Used by the backend
 * transport (http.c) and the shadow worker (shadow_worker.c).
 */
typedef struct CanaryBody
{
	char	   *data;			/* NUL-terminated, or NULL */
	size_t		len;
	size_t		cap;
	size_t		limit;			/* llm_canary.max_response_bytes */
	bool		too_large;		/* the write callback stopped the transfer */
	bool		no_memory;
} CanaryBody;

/* http.c */
extern size_t CanaryBodyWrite(char *ptr, size_t size, size_t nmemb, void *userdata);
extern void CanaryBodyReset(CanaryBody *body, size_t limit);
extern void HttpDefineSettings(void);
extern void HttpCallModel(const CanaryModel *model, const char *prompt,
						  CanaryAttempt *attempt);

#endif							/* LLM_CANARY_PROVIDER_H */
