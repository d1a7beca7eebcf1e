/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The one outbound HTTP layer of llm_canary (http.c, http_policy.c):
 *	  the set-up of a libcurl easy handle for one POST, written once and
 *	  used by every path that talks to the network (the backend's blocking model calls,
 *	  the shadow worker's multi transfers, the webhook), the request
 *	  headers of a model with its API key, the key policy (which server
 *	  environment variables may hold keys, which hosts may be called, no
 *	  key over plain http:// to a host that is not loopback), redaction of
 *	  the key, and the classification of libcurl errors.
 *
 * What never changes from one caller to the next is applied by
 * HttpEasySetup: protocols http and https only (with the libcurl < 7.85
 * fallback), no redirects, TLS peer and host verification, NOSIGNAL,
 * keep-alive, one Accept-Encoding policy (every encoding libcurl
 * supports), the connect and total timeouts, the response size cap and
 * the error buffer.  The caller owns the easy handle, the header list and
 * the response buffer; libcurl allocates with malloc, never palloc, and
 * nothing here raises an error while libcurl holds a callback.
 *
 * provider.c builds what is sent (HttpRequest) and reads the answer.
 * Every transfer of a model request must take its headers from
 * HttpModelHeaders: it applies the key policy and is the only reader of
 * keys for sending.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_HTTP_H
#define LLM_CANARY_HTTP_H

#include <curl/curl.h>

#include "config.h"

struct CanaryAttempt;
struct CanaryRequest;

/*
 * A response body collected by CanaryBodyWrite.  malloc'd, never palloc'd:
 * libcurl callbacks must not raise errors.
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

/*
 * One request to a model, built once per call by provider.c and used for
 * both the response-cache key and the transfer.  palloc'd.
 */
typedef struct HttpRequest
{
	char	   *url;
	char	   *body;			/* JSON, UTF-8 */
	size_t		body_len;
} HttpRequest;

/* One POST, as HttpEasySetup applies it to an easy handle. */
typedef struct HttpPost
{
	const char *url;
	const char *body;
	size_t		body_len;
	struct curl_slist *headers; /* must outlive the transfer */
	long		connect_timeout_ms;
	long		timeout_ms;
	CanaryBody *response;		/* NULL: the response body is discarded */
	char	   *errbuf;			/* CURL_ERROR_SIZE bytes, or NULL */
} HttpPost;

/*
 * Error codes of the key policy (attempt->error, canary_shadow.new_error).
 * A call refused by the policy is raised as SQLSTATE 42501.
 */
#define HTTP_ERR_KEY_ENV_NOT_ALLOWED	"api_key_env_not_allowed"
#define HTTP_ERR_HOST_NOT_ALLOWED		"host_not_allowed"
#define HTTP_ERR_KEY_OVER_HTTP			"api_key_over_http"

/* http.c, http_policy.c: settings and process set-up */
extern void HttpInit(void);
extern void HttpPolicyInit(void);
extern void HttpInitLibcurl(void);
extern size_t HttpMaxResponseBytes(void);

/* http.c: one easy handle, one POST (never raise) */
extern bool HttpEasySetup(CURL *easy, const HttpPost *post);
extern void HttpSetupHandle(CURL *easy, HttpResponse *resp, char *errbuf);
extern struct curl_slist *HttpJsonHeaders(void);
extern size_t CanaryBodyWrite(char *ptr, size_t size, size_t nmemb, void *userdata);
extern void CanaryBodyReset(CanaryBody *body, size_t limit);
extern size_t HttpHeaderCallback(char *buffer, size_t size, size_t nitems,
								 void *userdata);
extern int	HttpProgressCallback(void *clientp, curl_off_t dltotal,
								 curl_off_t dlnow, curl_off_t ultotal,
								 curl_off_t ulnow);
extern const char *HttpErrorCode(CURLcode rc, const CanaryBody *response);
extern bool HttpErrorRetryable(CURLcode rc);

/* http_policy.c: a model's key and where it may go */
extern const char *HttpModelPolicy(const CanaryModel *model, const char *url,
								   char **detail);
extern bool HttpPolicyError(const char *error);
extern void HttpReportPolicy(const char *model_name, const char *err,
							 const char *detail) pg_attribute_noreturn();
extern const char *HttpModelHeaders(const CanaryModel *model, const char *url,
									struct curl_slist **headers, char **detail);
extern void HttpRedactKey(const CanaryModel *model, char *s);

/* http.c: retries (both transports), the backend's blocking call */
extern double HttpAfterTry(const CanaryModel *model, const struct CanaryRequest *req,
						   int curl_code, long status, const HttpResponse *resp,
						   const char *errbuf, int n, double elapsed_ms,
						   struct CanaryAttempt *attempt);
extern void HttpTimedOut(const CanaryModel *model, struct CanaryAttempt *attempt);
extern void HttpCallModel(const CanaryModel *model, const char *prompt,
						  struct CanaryAttempt *attempt);
extern void HttpCallModelRequest(const CanaryModel *model,
								 const struct CanaryRequest *req,
								 const HttpRequest *http,
								 struct CanaryAttempt *attempt);
extern void HttpReportFailure(const CanaryModel *model,
							  const struct CanaryAttempt *attempt) pg_attribute_noreturn();

#endif							/* LLM_CANARY_HTTP_H */
