/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  Talking to an upstream model: building a provider request (OpenAI chat
 *	  completions or Anthropic messages, embeddings) and reading its answer
 *	  (provider.c, chat.c: pure functions, no network).  The transport is
 *	  the outbound HTTP layer, http.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_PROVIDER_H
#define LLM_CANARY_PROVIDER_H

#include "utils/jsonb.h"

#include "config.h"
#include "http.h"
#include "metrics.h"

/*
 * What is sent to a model: one prompt (canary_call), or a whole chat
 * request (canary_chat), validated and normalised by chat.c (an OpenAI
 * chat-completions body without "model"; provider.c/chat.c build each
 * dialect's body from it).
 */
typedef struct CanaryRequest
{
	const char *prompt;			/* a single user prompt, or NULL */
	Jsonb	   *chat;			/* a normalised chat request, or NULL */
	const struct pg_uuid_t *request_id; /* the call's id (canary_submit), or
										 * NULL: a new one */
} CanaryRequest;

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
	Jsonb	   *answer;			/* chat requests: {"content", "tool_calls",
								 * "finish_reason"} in OpenAI's shape, or
								 * NULL */
} CanaryAttempt;

/* provider.c */
extern char *ProviderRequestUrl(const CanaryModel *model);
extern char *ProviderRequestBody(const CanaryModel *model, const char *prompt);
extern void ProviderBuildRequest(const CanaryModel *model, const CanaryRequest *req,
								 HttpRequest *request);
extern void ProviderParseResponse(const CanaryModel *model, int http_status,
								  const char *body, size_t len,
								  CanaryAttempt *attempt);
extern bool ProviderBuildEmbeddingsRequest(const CanaryModel *model,
										   const char *a, const char *b,
										   HttpRequest *request);
extern char *ProviderBodyToServer(const char *body, size_t len);
extern const char *ProviderParseEmbeddings(int http_status, const char *body,
										   size_t len, double *cosine,
										   const char **detail);

/* chat.c: one request, either kind */
extern char *RequestBody(const CanaryModel *model, const CanaryRequest *req);
extern void RequestParseResponse(const CanaryModel *model, const CanaryRequest *req,
								 int http_status, const char *body, size_t len,
								 CanaryAttempt *attempt);
extern void RequestRedactKey(const CanaryModel *model, CanaryAttempt *attempt);

#endif							/* LLM_CANARY_PROVIDER_H */
