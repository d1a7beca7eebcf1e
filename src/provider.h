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

#include "utils/jsonb.h"

#include "config.h"
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

/* The response of one request, collected by the callbacks (malloc'd). */
typedef struct HttpResponse
{
	CanaryBody	body;
	double		retry_after_ms; /* Retry-After of this response, -1 if none */
} HttpResponse;

/* http.c */
struct curl_slist;
extern size_t CanaryBodyWrite(char *ptr, size_t size, size_t nmemb, void *userdata);
extern void CanaryBodyReset(CanaryBody *body, size_t limit);
extern size_t HttpHeaderCallback(char *buffer, size_t size, size_t nitems, void *userdata);
extern int	HttpProgressCallback(void *clientp, int64 dltotal, int64 dlnow,
								 int64 ultotal, int64 ulnow);
extern void HttpDefineSettings(void);
extern void HttpInitLibcurl(void);
extern void HttpSetupHandle(void *curl_handle, HttpResponse *resp, char *errbuf);
extern struct curl_slist *HttpModelHeaders(const CanaryModel *model,
										   const char **err, char **detail);
extern double HttpAfterTry(const CanaryModel *model, const CanaryRequest *req,
						   int curl_code, long status, const HttpResponse *resp,
						   const char *errbuf, int n, double elapsed_ms,
						   CanaryAttempt *attempt);
extern void HttpTimedOut(const CanaryModel *model, CanaryAttempt *attempt);
extern size_t HttpMaxResponseBytes(void);
extern void HttpCallModel(const CanaryModel *model, const char *prompt,
						  CanaryAttempt *attempt);
extern void HttpCallModelRequest(const CanaryModel *model, const CanaryRequest *req,
								 CanaryAttempt *attempt);

/* chat.c: one request, either kind */
extern char *RequestBody(const CanaryModel *model, const CanaryRequest *req);
extern void RequestParseResponse(const CanaryModel *model, const CanaryRequest *req,
								 int http_status, const char *body, size_t len,
								 CanaryAttempt *attempt);
extern void RequestRedactKey(const CanaryModel *model, CanaryAttempt *attempt);

#endif							/* LLM_CANARY_PROVIDER_H */
