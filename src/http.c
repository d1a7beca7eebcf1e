/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The blocking HTTP transport of a backend: one call of one model, with
 *	  retries, through libcurl.
 *
 * Each backend keeps one libcurl easy handle for its whole life, so that
 * keep-alive connections, the DNS cache and TLS sessions are reused from
 * one call to the next.  libcurl allocates with malloc, never palloc.
 *
 * libcurl's callbacks run inside curl_easy_perform and must not ereport,
 * palloc or CHECK_FOR_INTERRUPTS: the body is collected in a malloc'd
 * buffer, and a cancel (statement_timeout, pg_cancel_backend,
 * pg_terminate_backend) only makes the progress callback abort the
 * transfer.  Once curl_easy_perform has returned and everything is freed,
 * CHECK_FOR_INTERRUPTS raises the usual error (57014, 57P01).
 *
 * provider.c builds the request and reads the answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <curl/curl.h>

#include "common/pg_prng.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "provider.h"

/* settings */
static int	canary_max_response_bytes = 8 * 1024 * 1024;

/* first backoff wait; doubled for every further retry */
#define HTTP_BACKOFF_BASE_MS	100
/* Retry-After values above this are not waited for (the budget decides) */
#define HTTP_RETRY_AFTER_MAX_MS (600 * 1000)

/*
 * Per-backend state.  Static, so that PG_FINALLY can free whatever a call
 * left behind without volatile locals.
 */
static CURL *HttpHandle = NULL;
static struct curl_slist *HttpHeaders = NULL;
static HttpResponse HttpResp;
static char HttpErrorBuffer[CURL_ERROR_SIZE];

/*
 * HttpDefineSettings
 *		Define llm_canary.max_response_bytes.  Called from _PG_init, before
 *		the prefix is reserved.
 */
void
HttpDefineSettings(void)
{
	DefineCustomIntVariable("llm_canary.max_response_bytes",
							"Sets the largest response body accepted from a model.",
							"A longer answer is cut off and the call fails with the error response_too_large.",
							&canary_max_response_bytes,
							8 * 1024 * 1024,
							1024,
							(int) MaxAllocSize,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}

/* ----------------------------------------------------------------------
 * libcurl callbacks: no ereport, palloc or CHECK_FOR_INTERRUPTS in here
 * ----------------------------------------------------------------------
 */

/*
 * CanaryBodyWrite
 *		libcurl write callback appending to the CanaryBody in userdata, up to
 *		its limit (past it the transfer stops with CURLE_WRITE_ERROR and
 *		too_large is set).  Never raises; grows with realloc.
 */
size_t
CanaryBodyWrite(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	CanaryBody *body = (CanaryBody *) userdata;
	size_t		n = size * nmemb;

	if (n > body->limit || body->len > body->limit - n)
	{
		body->too_large = true;
		return 0;				/* CURLE_WRITE_ERROR */
	}
	if (body->len + n + 1 > body->cap)
	{
		size_t		newcap = Max(body->cap * 2, 16384);
		char	   *p;

		while (newcap < body->len + n + 1)
			newcap *= 2;
		if (newcap > body->limit + 1)
			newcap = body->limit + 1;
		p = realloc(body->data, newcap);
		if (p == NULL)
		{
			body->no_memory = true;
			return 0;
		}
		body->data = p;
		body->cap = newcap;
	}
	memcpy(body->data + body->len, ptr, n);
	body->len += n;
	body->data[body->len] = '\0';
	return n;
}

/* Free what body holds and make it empty, accepting up to limit bytes. */
void
CanaryBodyReset(CanaryBody *body, size_t limit)
{
	free(body->data);
	memset(body, 0, sizeof(*body));
	body->limit = limit;
}

/* Pick up Retry-After (seconds, possibly fractional; an HTTP-date is ignored). */
size_t
HttpHeaderCallback(char *buffer, size_t size, size_t nitems, void *userdata)
{
	HttpResponse *resp = (HttpResponse *) userdata;
	size_t		n = size * nitems;
	static const char name[] = "retry-after:";
	size_t		namelen = sizeof(name) - 1;

	/* a new response (after a 100 Continue, say) starts with its status line */
	if (n >= 5 && strncmp(buffer, "HTTP/", 5) == 0)
		resp->retry_after_ms = -1;

	if (n > namelen && n < 128 && pg_strncasecmp(buffer, name, namelen) == 0)
	{
		char		value[128];
		char	   *end;
		double		secs;

		memcpy(value, buffer + namelen, n - namelen);
		value[n - namelen] = '\0';
		errno = 0;
		secs = strtod(value, &end);
		while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
			end++;
		if (errno == 0 && end != value && *end == '\0' &&
			isfinite(secs) && secs >= 0)
			resp->retry_after_ms = Min(secs * 1000.0, HTTP_RETRY_AFTER_MAX_MS);
	}
	return n;
}

/* Abort the transfer when the backend was asked to cancel or to exit. */
int
HttpProgressCallback(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
					 curl_off_t ultotal, curl_off_t ulnow)
{
	if (InterruptPending && (QueryCancelPending || ProcDiePending))
		return 1;				/* CURLE_ABORTED_BY_CALLBACK */
	return 0;
}

/* ----------------------------------------------------------------------
 * The handle
 * ----------------------------------------------------------------------
 */

static void
HttpAtExit(int code, Datum arg)
{
	if (HttpHandle != NULL)
		curl_easy_cleanup(HttpHandle);
	HttpHandle = NULL;
}

static void
HttpResponseFree(void)
{
	CanaryBodyReset(&HttpResp.body, 0);
	HttpResp.retry_after_ms = -1;
}

/*
 * HttpSetupHandle
 *		Set the options of an easy handle that never change: http(s) only,
 *		no redirects, TLS verification, keep-alive, the cancel-aware progress
 *		callback, and the callbacks that collect the response into resp and
 *		libcurl's error text into errbuf (CURL_ERROR_SIZE bytes).  resp and
 *		errbuf must live as long as the handle is used.
 */
void
HttpSetupHandle(CURL *h, HttpResponse *resp, char *errbuf)
{
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500		/* 7.85.0 */
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
	curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "llm_canary/1.0");
	curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, HttpProgressCallback);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, CanaryBodyWrite);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp->body);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, HttpHeaderCallback);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, resp);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
}

/*
 * HttpInitLibcurl
 *		Initialise libcurl once per process.  Raises ERROR (58000) if it
 *		cannot start.
 */
void
HttpInitLibcurl(void)
{
	static bool global_done = false;

	if (global_done)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialize libcurl")));
	global_done = true;
	on_proc_exit(HttpAtExit, (Datum) 0);
}

/*
 * The backend's easy handle, created on first use with the options that
 * never change.  Raises ERROR (XX000 class 58000) if libcurl cannot start.
 */
static CURL *
HttpGetHandle(void)
{
	CURL	   *h;

	if (HttpHandle != NULL)
		return HttpHandle;

	HttpInitLibcurl();

	h = curl_easy_init();
	if (h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));

	HttpSetupHandle(h, &HttpResp, HttpErrorBuffer);
	HttpHandle = h;
	return h;
}

/* Append line to *list; false when out of memory (*list stays valid). */
static bool
HttpAppendHeader(struct curl_slist **list, const char *line)
{
	struct curl_slist *l = curl_slist_append(*list, line);

	if (l == NULL)
		return false;
	*list = l;
	return true;
}

/*
 * HttpModelHeaders
 *		The request headers of model, as a new libcurl list (the caller frees
 *		it with curl_slist_free_all).  Returns NULL with *err (and *detail)
 *		set when the API key cannot be used.  The key itself never goes
 *		anywhere but into the header list.  Raises only for out of memory.
 */
struct curl_slist *
HttpModelHeaders(const CanaryModel *model, const char **err, char **detail)
{
	const char *key = NULL;
	char	   *line;
	struct curl_slist *list;

	*err = NULL;
	if (model->api_key_env != NULL)
	{
		key = getenv(model->api_key_env);
		if (key == NULL || key[0] == '\0')
		{
			*detail = psprintf("The environment variable \"%s\" of the server is not set.",
							   model->api_key_env);
			*err = "api_key_missing";
			return NULL;
		}
		if (strpbrk(key, "\r\n") != NULL)
		{
			*detail = psprintf("The environment variable \"%s\" holds a line break.",
							   model->api_key_env);
			*err = "api_key_invalid";
			return NULL;
		}
	}

	list = curl_slist_append(NULL, "Content-Type: application/json");
	if (list == NULL || !HttpAppendHeader(&list, "Expect:"))
		goto oom;
	if (model->provider == CANARY_PROVIDER_ANTHROPIC &&
		!HttpAppendHeader(&list, "anthropic-version: 2023-06-01"))
		goto oom;
	if (key != NULL)
	{
		bool		ok;

		line = model->provider == CANARY_PROVIDER_ANTHROPIC ?
			psprintf("x-api-key: %s", key) :
			psprintf("Authorization: Bearer %s", key);
		ok = HttpAppendHeader(&list, line);
		explicit_bzero(line, strlen(line));
		pfree(line);
		if (!ok)
			goto oom;
	}
	return list;

oom:
	curl_slist_free_all(list);
	ereport(ERROR,
			(errcode(ERRCODE_OUT_OF_MEMORY),
			 errmsg("out of memory")));
	return NULL;				/* keep compiler quiet */
}

/* Milliseconds since start. */
static double
ElapsedMs(instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	return INSTR_TIME_GET_MILLISEC(now);
}

/*
 * Sleep ms milliseconds on the latch; a cancel or a termination raises its
 * error at once, postmaster death exits.
 */
static void
HttpSleep(double ms)
{
	instr_time	start;
	double		left = ms;

	INSTR_TIME_SET_CURRENT(start);
	while (left > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 (long) ceil(left), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		left = ms - ElapsedMs(start);
	}
}

/* curl results worth another try: the connection failed or broke */
static bool
HttpConnectionFailure(CURLcode rc)
{
	switch (rc)
	{
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_CONNECT:
		case CURLE_SEND_ERROR:
		case CURLE_RECV_ERROR:
		case CURLE_GOT_NOTHING:
		case CURLE_PARTIAL_FILE:
		case CURLE_SSL_CONNECT_ERROR:
			return true;
		default:
			return false;
	}
}

static char *
CurlErrorText(CURLcode rc, const char *errbuf)
{
	return pstrdup(errbuf[0] ? errbuf : curl_easy_strerror(rc));
}

/*
 * HttpAfterTry
 *		Judge try number n (0-based) of a request to model, which ended with
 *		rc, HTTP status and the response in resp (errbuf: libcurl's error
 *		text), elapsed_ms after the attempt started.  Fills attempt (the
 *		provider's verdict through RequestParseResponse when the attempt is
 *		over with a response) and returns the milliseconds to wait before the
 *		next try, or -1 when the attempt is over.  429, 5xx, broken
 *		connections and connect timeouts are retried up to
 *		model->max_retries times with exponential backoff (or the server's
 *		Retry-After), as long as the wait fits into model->timeout_ms.
 *
 * The caller handles CURLE_ABORTED_BY_CALLBACK (a cancel) and a body that
 * ran out of memory before calling this.  Shared by the blocking transport
 * below and the concurrent one (batch.c), so a request is retried the same
 * way on both.  Strings are palloc'd in the current memory context.
 */
double
HttpAfterTry(const CanaryModel *model, const CanaryRequest *req, int curl_code,
			 long status, const HttpResponse *resp, const char *errbuf,
			 int n, double elapsed_ms, CanaryAttempt *attempt)
{
	CURLcode	rc = (CURLcode) curl_code;
	double		wait_ms;

	attempt->http_status = (int) status;
	attempt->error = NULL;
	attempt->error_detail = NULL;
	attempt->outcome = CANARY_OUTCOME_ERROR;

	/* a complete answer: the provider's verdict, or a retryable status */
	if (rc == CURLE_OK)
	{
		bool		retryable = status == 429 || (status >= 500 && status <= 599);

		if (!retryable || n >= model->max_retries)
		{
			RequestParseResponse(model, req, (int) status, resp->body.data,
								 resp->body.len, attempt);
			return -1;
		}
	}
	else if (resp->body.too_large)
	{
		attempt->error = pstrdup("response_too_large");
		attempt->error_detail =
			psprintf("The response is longer than llm_canary.max_response_bytes (%d bytes).",
					 canary_max_response_bytes);
		return -1;
	}
	else if (rc == CURLE_OPERATION_TIMEDOUT)
	{
		attempt->outcome = CANARY_OUTCOME_TIMEOUT;
		attempt->error = pstrdup("timeout");
		attempt->error_detail = CurlErrorText(rc, errbuf);
		/* a connect timeout may leave budget for another try */
		if (n >= model->max_retries)
			return -1;
	}
	else if (HttpConnectionFailure(rc))
	{
		attempt->error = pstrdup("connect");
		attempt->error_detail = CurlErrorText(rc, errbuf);
		if (n >= model->max_retries)
			return -1;
	}
	else
	{
		attempt->error = pstrdup(rc == CURLE_PEER_FAILED_VERIFICATION ||
								 rc == CURLE_SSL_CACERT_BADFILE ||
								 rc == CURLE_SSL_CERTPROBLEM ?
								 "tls" : "transport");
		attempt->error_detail = CurlErrorText(rc, errbuf);
		return -1;
	}

	/* retry, if the wait fits into what is left of the budget */
	if (resp->retry_after_ms >= 0)
		wait_ms = resp->retry_after_ms;
	else
		wait_ms = HTTP_BACKOFF_BASE_MS * (double) (1 << Min(n, 16)) *
			(1.0 + 0.2 * pg_prng_double(&pg_global_prng_state));
	if (elapsed_ms + wait_ms >= model->timeout_ms)
	{
		if (rc == CURLE_OK)
			RequestParseResponse(model, req, (int) status, resp->body.data,
								 resp->body.len, attempt);
		return -1;
	}
	return wait_ms;
}

/*
 * HttpTimedOut
 *		Fill attempt as a timeout of model: its budget is spent.
 */
void
HttpTimedOut(const CanaryModel *model, CanaryAttempt *attempt)
{
	attempt->outcome = CANARY_OUTCOME_TIMEOUT;
	attempt->error = pstrdup("timeout");
	attempt->error_detail = psprintf("The model did not answer within %d ms.",
									 model->timeout_ms);
}

/*
 * One HTTP request.  On return the response (if any) is in HttpResp and
 * *status holds its HTTP status (0 if none).
 */
static CURLcode
HttpPerform(CURL *h, const char *url, const char *body, size_t body_len,
			const CanaryModel *model, long budget_left_ms, long *status)
{
	CURLcode	rc;

	HttpResponseFree();
	HttpResp.body.limit = (size_t) canary_max_response_bytes;
	HttpErrorBuffer[0] = '\0';

	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_len);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, HttpHeaders);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) model->connect_timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, budget_left_ms);

	rc = curl_easy_perform(h);

	/* the handle must not keep pointers into memory freed after the call */
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);

	*status = 0;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
	return rc;
}

/*
 * HttpMaxResponseBytes
 *		llm_canary.max_response_bytes, for the transports that collect
 *		response bodies.
 */
size_t
HttpMaxResponseBytes(void)
{
	return (size_t) canary_max_response_bytes;
}

/*
 * HttpCallModel
 *		Send prompt to model and wait for the answer (HttpCallModelRequest
 *		with a one-prompt request).
 */
void
HttpCallModel(const CanaryModel *model, const char *prompt,
			  CanaryAttempt *attempt)
{
	CanaryRequest req;

	memset(&req, 0, sizeof(req));
	req.prompt = prompt;
	HttpCallModelRequest(model, &req, attempt);
}

/*
 * HttpCallModelRequest
 *		Send req to model and wait for the answer, with the retries of
 *		HttpAfterTry, all within model->timeout_ms.
 *
 * Fills every field of attempt; strings are palloc'd in the current memory
 * context.  Never raises an error for what the upstream does; raises the
 * usual errors when the statement is canceled (57014) or the backend is
 * terminated (57P01), and for out of memory.
 */
void
HttpCallModelRequest(const CanaryModel *model, const CanaryRequest *req,
					 CanaryAttempt *attempt)
{
	instr_time	start;
	char	   *url;
	char	   *body;
	size_t		body_len;
	const char *keyerr = NULL;
	char	   *keydetail = NULL;

	INSTR_TIME_SET_CURRENT(start);
	memset(attempt, 0, sizeof(*attempt));
	attempt->outcome = CANARY_OUTCOME_ERROR;
	attempt->prompt_tokens = -1;
	attempt->completion_tokens = -1;

	(void) HttpGetHandle();
	url = ProviderRequestUrl(model);
	body = RequestBody(model, req);
	body_len = strlen(body);

	/* whatever an earlier call that raised an error left behind */
	HttpResponseFree();
	if (HttpHeaders != NULL)
	{
		curl_slist_free_all(HttpHeaders);
		HttpHeaders = NULL;
	}

	PG_TRY();
	{
		HttpHeaders = HttpModelHeaders(model, &keyerr, &keydetail);
		if (keyerr != NULL)
		{
			attempt->error = pstrdup(keyerr);
			attempt->error_detail = keydetail;
		}

		for (int n = 0; keyerr == NULL; n++)
		{
			double		left = model->timeout_ms - ElapsedMs(start);
			long		status;
			CURLcode	rc;
			double		wait_ms;

			if (left < 1)
			{
				HttpTimedOut(model, attempt);
				break;
			}

			rc = HttpPerform(HttpHandle, url, body, body_len, model, (long) left, &status);
			attempt->tries++;
			attempt->http_status = (int) status;

			if (rc == CURLE_ABORTED_BY_CALLBACK)
			{
				/* free before raising the cancel, then the caller's error */
				HttpResponseFree();
				CHECK_FOR_INTERRUPTS();
				attempt->error = pstrdup("canceled");
				attempt->error_detail = pstrdup("The request was interrupted.");
				break;
			}
			if (rc != CURLE_OK && HttpResp.body.no_memory)
				ereport(ERROR,
						(errcode(ERRCODE_OUT_OF_MEMORY),
						 errmsg("out of memory"),
						 errdetail("Failed to store the response of model \"%s\".",
								   model->name)));

			wait_ms = HttpAfterTry(model, req, rc, status, &HttpResp, HttpErrorBuffer,
								   n, ElapsedMs(start), attempt);
			if (wait_ms < 0)
				break;
			HttpResponseFree();
			attempt->outcome = CANARY_OUTCOME_ERROR;
			attempt->error = NULL;
			attempt->error_detail = NULL;
			HttpSleep(wait_ms);
		}
	}
	PG_FINALLY();
	{
		HttpResponseFree();
		if (HttpHeaders != NULL)
		{
			curl_easy_setopt(HttpHandle, CURLOPT_HTTPHEADER, NULL);
			curl_slist_free_all(HttpHeaders);
			HttpHeaders = NULL;
		}
	}
	PG_END_TRY();

	/* what the upstream sent back must not carry the key any further */
	RequestRedactKey(model, attempt);

	attempt->latency_ms = (int) ElapsedMs(start);
	pfree(url);
	pfree(body);
}
