/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The one outbound HTTP layer (http.h): the set-up of a libcurl easy
 *	  handle for one POST, a model's request headers and API key, the key
 *	  policy, redaction, the classification of libcurl errors, and the
 *	  backend's blocking call of one model with retries.
 *
 * Every POST is set up by HttpEasySetup (or, for a handle reused with
 * changing options, HttpSetupHandle): both apply the same safety options.
 * HttpAfterTry judges a try (retry or not) for the blocking transport here
 * and the concurrent one of canary_batch (batch.c) alike.
 *
 * Each backend keeps one easy handle and one multi handle for its whole
 * life, so that keep-alive connections, the DNS cache and TLS sessions are
 * reused from one call to the next.  libcurl allocates with malloc, never
 * palloc.
 *
 * The backend drives its one transfer through the multi handle and waits
 * for it at most HTTP_POLL_MS at a time, so that between two waits, outside
 * every libcurl callback, CHECK_FOR_INTERRUPTS can run: a cancel
 * (statement_timeout, pg_cancel_backend) raises 57014, a termination
 * 57P01, and a ProcSignalBarrier (DROP DATABASE, ALTER DATABASE SET
 * TABLESPACE, ...) is absorbed at once instead of waiting for the model.
 * The callbacks themselves never ereport, palloc or CHECK_FOR_INTERRUPTS:
 * the body goes into a malloc'd buffer, and whatever a call holds is
 * released in PG_FINALLY.
 *
 * The key policy and the headers that carry the key are in http_policy.c.
 *
 *-------------------------------------------------------------------------
 */
#ifdef LLM_CANARY_FORCE_OLD_CURL
/* the libcurl < 7.85 options are deprecated in newer headers */
#define CURL_DISABLE_DEPRECATION
#endif

#include "postgres.h"

#include <arpa/inet.h>
#include <math.h>

#include "common/pg_prng.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "http.h"
#include "provider.h"

/*
 * CURLOPT_PROTOCOLS_STR came with libcurl 7.85 and deprecated
 * CURLOPT_PROTOCOLS; older libcurl (Ubuntu 22.04, RHEL 9, Debian 11) has
 * only the latter.  LLM_CANARY_FORCE_OLD_CURL builds the fallback with a
 * newer libcurl, so that CI compiles and tests it.
 */
#if LIBCURL_VERSION_NUM >= 0x075500 && !defined(LLM_CANARY_FORCE_OLD_CURL)
#define HTTP_PROTOCOLS_STR 1
#endif

/* settings */
static int	http_max_response_bytes = 8 * 1024 * 1024;

/* first backoff wait; doubled for every further retry */
#define HTTP_BACKOFF_BASE_MS	100
/* Retry-After values above this are not waited for (the budget decides) */
#define HTTP_RETRY_AFTER_MAX_MS (600 * 1000)
/* longest wait for the transfer between two interrupt checks */
#define HTTP_POLL_MS			100

/* SQLSTATEs of a failed model call (README, "Errors") */
#define ERRCODE_LLM_CANARY_MODEL_TIMEOUT	MAKE_SQLSTATE('3','8','L','0','1')
#define ERRCODE_LLM_CANARY_MODEL_UNREACHABLE MAKE_SQLSTATE('3','8','L','0','2')

/*
 * Per-backend state.  Static, so that PG_FINALLY can free whatever a call
 * left behind without volatile locals.
 */
static CURL *HttpHandle = NULL;
static CURLM *HttpMulti = NULL;
static bool HttpInMulti = false;
static struct curl_slist *HttpHeaders = NULL;
static HttpResponse HttpResp;
static char HttpErrorBuffer[CURL_ERROR_SIZE];

/* ----------------------------------------------------------------------
 * Settings
 * ----------------------------------------------------------------------
 */

/*
 * HttpInit
 *		Define the settings of the HTTP layer.  Called from _PG_init, before
 *		the prefix is reserved.
 */
void
HttpInit(void)
{
	DefineCustomIntVariable("llm_canary.max_response_bytes",
							"Sets the largest response body accepted from a model.",
							"A longer answer is cut off and the call fails with the error response_too_large.",
							&http_max_response_bytes,
							8 * 1024 * 1024,
							1024,
							(int) MaxAllocSize,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	HttpPolicyInit();
}

/* llm_canary.max_response_bytes */
size_t
HttpMaxResponseBytes(void)
{
	return (size_t) http_max_response_bytes;
}

static void HttpAtExit(int code, Datum arg);

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

/* The write callback of a POST whose answer is not needed, only its status. */
static size_t
HttpDiscard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	return size * nmemb;
}

/*
 * HttpHeaderCallback
 *		libcurl header callback into the HttpResponse in userdata: picks up
 *		Retry-After (seconds, possibly fractional; an HTTP-date is ignored).
 */
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

/*
 * HttpProgressCallback
 *		Abort the transfer when the backend was asked to cancel or to exit
 *		(for transports that stay inside libcurl for long, canary_batch's).
 */
int
HttpProgressCallback(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
					 curl_off_t ultotal, curl_off_t ulnow)
{
	if (InterruptPending && (QueryCancelPending || ProcDiePending))
		return 1;				/* CURLE_ABORTED_BY_CALLBACK */
	return 0;
}

/* ----------------------------------------------------------------------
 * One easy handle, one POST
 * ----------------------------------------------------------------------
 */

/*
 * HttpEasySetup
 *		Apply every option of one POST to easy, a new or curl_easy_reset
 *		handle: the safety rules shared by all callers and what post gives.
 *		Returns false if libcurl refused an option (out of memory).  Never
 *		raises.  The caller may set further options (CURLOPT_PRIVATE, a
 *		header callback) afterwards.
 */
#define SETOPT(opt, val) (ok = ok && curl_easy_setopt(easy, opt, val) == CURLE_OK)

/*
 * The options every outbound transfer has, whoever makes it.  Returns false
 * if libcurl refused one.  Never raises.
 */
static bool
HttpSafetyOptions(CURL *easy)
{
	bool		ok = true;

	SETOPT(CURLOPT_NOSIGNAL, 1L);
#ifdef HTTP_PROTOCOLS_STR
	SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	SETOPT(CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
	SETOPT(CURLOPT_REDIR_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	/* a redirect would re-send the body (and the key) somewhere else */
	SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
	SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
	SETOPT(CURLOPT_VERBOSE, 0L);
	SETOPT(CURLOPT_USERAGENT, "llm_canary/1.1");
	/* every encoding this libcurl can decode; the size cap counts decoded bytes */
	SETOPT(CURLOPT_ACCEPT_ENCODING, "");
	return ok;
}

bool
HttpEasySetup(CURL *easy, const HttpPost *post)
{
	bool		ok = HttpSafetyOptions(easy);

	SETOPT(CURLOPT_CONNECTTIMEOUT_MS, Max(post->connect_timeout_ms, 1L));
	SETOPT(CURLOPT_TIMEOUT_MS, Max(post->timeout_ms, 1L));
	SETOPT(CURLOPT_URL, post->url);
	SETOPT(CURLOPT_POST, 1L);
	SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) post->body_len);
	SETOPT(CURLOPT_POSTFIELDS, post->body);
	SETOPT(CURLOPT_HTTPHEADER, post->headers);
	if (post->response != NULL)
	{
		SETOPT(CURLOPT_WRITEFUNCTION, CanaryBodyWrite);
		SETOPT(CURLOPT_WRITEDATA, post->response);
	}
	else
		SETOPT(CURLOPT_WRITEFUNCTION, HttpDiscard);
	if (post->errbuf != NULL)
	{
		post->errbuf[0] = '\0';
		SETOPT(CURLOPT_ERRORBUFFER, post->errbuf);
	}
	return ok;
}

/*
 * HttpSetupHandle
 *		For a handle that is set up once and then reused with per-request
 *		options (URL, body, headers, timeouts) set by its caller
 *		(canary_batch): the safety options of HttpEasySetup, the
 *		cancel-aware progress callback, and the callbacks that collect the
 *		response into resp and libcurl's error text into errbuf
 *		(CURL_ERROR_SIZE bytes).  resp and errbuf must live as long as the
 *		handle is used.  Never raises.
 */
void
HttpSetupHandle(CURL *easy, HttpResponse *resp, char *errbuf)
{
	bool		ok = HttpSafetyOptions(easy);

	SETOPT(CURLOPT_NOPROGRESS, 0L);
	SETOPT(CURLOPT_XFERINFOFUNCTION, HttpProgressCallback);
	SETOPT(CURLOPT_WRITEFUNCTION, CanaryBodyWrite);
	SETOPT(CURLOPT_WRITEDATA, &resp->body);
	SETOPT(CURLOPT_HEADERFUNCTION, HttpHeaderCallback);
	SETOPT(CURLOPT_HEADERDATA, resp);
	SETOPT(CURLOPT_ERRORBUFFER, errbuf);
	(void) ok;					/* these options fail only for out of memory */
}
#undef SETOPT

/*
 * HttpJsonHeaders
 *		The headers of every POST with a JSON body: Content-Type, and an
 *		empty Expect (no 100-continue round trip).  malloc'd by libcurl
 *		(curl_slist_free_all); NULL on out of memory.  Never raises.
 */
struct curl_slist *
HttpJsonHeaders(void)
{
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	struct curl_slist *l;

	if (h == NULL)
		return NULL;
	if ((l = curl_slist_append(h, "Expect:")) == NULL)
	{
		curl_slist_free_all(h);
		return NULL;
	}
	return l;
}

/*
 * HttpErrorCode
 *		The short error code of a failed transfer (rc != CURLE_OK), in the
 *		vocabulary of canary_requests.error: response_too_large,
 *		out_of_memory, timeout, connect, tls or transport.
 */
const char *
HttpErrorCode(CURLcode rc, const CanaryBody *response)
{
	if (response != NULL && response->too_large)
		return "response_too_large";
	if (response != NULL && response->no_memory)
		return "out_of_memory";
	switch (rc)
	{
		case CURLE_OPERATION_TIMEDOUT:
			return "timeout";
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
			return "tls";
		default:
			return HttpErrorRetryable(rc) ? "connect" : "transport";
	}
}

/* Is rc a connection that failed or broke, worth another try? */
bool
HttpErrorRetryable(CURLcode rc)
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

/* ----------------------------------------------------------------------
 * The backend's call of one model
 * ----------------------------------------------------------------------
 */

static void
HttpAtExit(int code, Datum arg)
{
	if (HttpMulti != NULL && HttpHandle != NULL && HttpInMulti)
		curl_multi_remove_handle(HttpMulti, HttpHandle);
	HttpInMulti = false;
	if (HttpHandle != NULL)
		curl_easy_cleanup(HttpHandle);
	HttpHandle = NULL;
	if (HttpMulti != NULL)
		curl_multi_cleanup(HttpMulti);
	HttpMulti = NULL;
}

static void
HttpResponseFree(void)
{
	CanaryBodyReset(&HttpResp.body, 0);
	HttpResp.retry_after_ms = -1;
}

/*
 * Whatever a call (maybe one that raised an error) left: the handle out of
 * the multi, the headers and the response freed.  Never raises.
 */
static void
HttpCallCleanup(void)
{
	if (HttpInMulti)
		curl_multi_remove_handle(HttpMulti, HttpHandle);
	HttpInMulti = false;
	HttpResponseFree();
	if (HttpHandle != NULL)
		curl_easy_setopt(HttpHandle, CURLOPT_HTTPHEADER, NULL);
	if (HttpHeaders != NULL)
		curl_slist_free_all(HttpHeaders);
	HttpHeaders = NULL;
}

/*
 * The backend's easy and multi handles, created on first use.  Raises
 * ERROR (58000, or out of memory) if libcurl cannot start.
 */
static void
HttpGetHandles(void)
{
	if (HttpHandle != NULL && HttpMulti != NULL)
		return;
	HttpInitLibcurl();
	if (HttpHandle == NULL)
		HttpHandle = curl_easy_init();
	if (HttpMulti == NULL)
		HttpMulti = curl_multi_init();
	if (HttpHandle == NULL || HttpMulti == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
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
 * way on both; libcurl errors are classified by HttpErrorCode, as for the
 * shadow worker.  Strings are palloc'd in the current memory context.
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
	else
	{
		const char *code = HttpErrorCode(rc, &resp->body);

		attempt->outcome = strcmp(code, "timeout") == 0 ?
			CANARY_OUTCOME_TIMEOUT : CANARY_OUTCOME_ERROR;
		attempt->error = pstrdup(code);
		if (resp->body.too_large)
			attempt->error_detail =
				psprintf("The response is longer than llm_canary.max_response_bytes (%d bytes).",
						 http_max_response_bytes);
		else
			attempt->error_detail = CurlErrorText(rc, errbuf);
		/* a connect timeout may leave budget for another try */
		if (n >= model->max_retries ||
			(rc != CURLE_OPERATION_TIMEDOUT && !HttpErrorRetryable(rc)))
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
 * One HTTP request through the backend's multi handle.  Between waits of
 * at most HTTP_POLL_MS, interrupts are processed: a cancel or termination
 * raises (the caller's PG_FINALLY cleans up), a signal barrier is absorbed.
 * On return the response (if any) is in HttpResp and *status holds its
 * HTTP status (0 if none).
 */
static CURLcode
HttpPerform(const HttpRequest *http, const CanaryModel *model,
			long budget_left_ms, long *status)
{
	HttpPost	post;
	CURLcode	rc = CURLE_OK;
	CURLMsg    *msg;
	int			running = 1;
	int			left;

	HttpResponseFree();
	HttpResp.body.limit = HttpMaxResponseBytes();

	memset(&post, 0, sizeof(post));
	post.url = http->url;
	post.body = http->body;
	post.body_len = http->body_len;
	post.headers = HttpHeaders;
	post.connect_timeout_ms = model->connect_timeout_ms;
	post.timeout_ms = budget_left_ms;
	post.response = &HttpResp.body;
	post.errbuf = HttpErrorBuffer;

	/* reset keeps the connections, the DNS cache and the TLS sessions */
	curl_easy_reset(HttpHandle);
	if (!HttpEasySetup(HttpHandle, &post) ||
		curl_easy_setopt(HttpHandle, CURLOPT_HEADERFUNCTION, HttpHeaderCallback) != CURLE_OK ||
		curl_easy_setopt(HttpHandle, CURLOPT_HEADERDATA, &HttpResp) != CURLE_OK ||
		curl_multi_add_handle(HttpMulti, HttpHandle) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Failed to set up the request to model \"%s\".", model->name)));
	HttpInMulti = true;

	while (running > 0)
	{
		int			nfds;

		if (curl_multi_perform(HttpMulti, &running) != CURLM_OK || running == 0)
			break;
		(void) curl_multi_wait(HttpMulti, NULL, 0, HTTP_POLL_MS, &nfds);
		/* outside libcurl: cancels raise, signal barriers are absorbed */
		CHECK_FOR_INTERRUPTS();
	}
	while ((msg = curl_multi_info_read(HttpMulti, &left)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			rc = msg->data.result;

	curl_multi_remove_handle(HttpMulti, HttpHandle);
	HttpInMulti = false;
	/* the handle must not keep pointers into memory freed after the call */
	curl_easy_setopt(HttpHandle, CURLOPT_POSTFIELDS, NULL);
	curl_easy_setopt(HttpHandle, CURLOPT_HTTPHEADER, NULL);

	*status = 0;
	curl_easy_getinfo(HttpHandle, CURLINFO_RESPONSE_CODE, status);
	return rc;
}

/*
 * HttpCallModel
 *		Send prompt to model and wait for the answer (HttpCallModelRequest
 *		with a one-prompt request, built here).
 */
void
HttpCallModel(const CanaryModel *model, const char *prompt,
			  CanaryAttempt *attempt)
{
	CanaryRequest req;
	HttpRequest http;

	memset(&req, 0, sizeof(req));
	req.prompt = prompt;
	ProviderBuildRequest(model, &req, &http);
	HttpCallModelRequest(model, &req, &http, attempt);
}

/*
 * HttpCallModelRequest
 *		Send req to model as http (its URL and body, ProviderBuildRequest)
 *		and wait for the answer, with the retries of HttpAfterTry, all
 *		within model->timeout_ms.
 *
 * Fills every field of attempt; strings are palloc'd in the current memory
 * context.  Never raises an error for what the upstream does, nor for the
 * key policy (attempt->error is then an HTTP_ERR_* code, see
 * HttpPolicyError); raises the usual errors when the statement is canceled
 * (57014) or the backend is terminated (57P01), and for out of memory.
 */
void
HttpCallModelRequest(const CanaryModel *model, const CanaryRequest *req,
					 const HttpRequest *http, CanaryAttempt *attempt)
{
	instr_time	start;
	const char *keyerr;
	char	   *keydetail = NULL;

	INSTR_TIME_SET_CURRENT(start);
	memset(attempt, 0, sizeof(*attempt));
	attempt->outcome = CANARY_OUTCOME_ERROR;
	attempt->prompt_tokens = -1;
	attempt->completion_tokens = -1;

	HttpGetHandles();
	/* whatever an earlier call that raised an error left behind */
	HttpCallCleanup();

	PG_TRY();
	{
		keyerr = HttpModelHeaders(model, http->url, &HttpHeaders, &keydetail);
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

			rc = HttpPerform(http, model, (long) left, &status);
			attempt->tries++;
			attempt->http_status = (int) status;
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
		HttpCallCleanup();
	}
	PG_END_TRY();

	/* what the upstream sent back must not carry the key any further */
	RequestRedactKey(model, attempt);

	attempt->latency_ms = (int) ElapsedMs(start);
}

/*
 * Did the attempt fail in the transport (no HTTP response, or a connection
 * that broke or was cut in the middle of the body)?
 */
static bool
AttemptTransportFailure(const CanaryAttempt *a)
{
	if (a->http_status == 0)
		return true;
	return a->error != NULL &&
		(strcmp(a->error, "connect") == 0 ||
		 strcmp(a->error, "transport") == 0 ||
		 strcmp(a->error, "tls") == 0);
}

/*
 * HttpReportFailure
 *		Raise the error for an attempt of model that got no usable answer:
 *		42501 for the key policy, 38L01 for a timeout, 38L02 when the model
 *		could not be reached or the connection broke, 38000 when the model
 *		answered with an error or an unusable body.  Never class 08 or
 *		57P0x: connection pools read those as a broken database connection.
 */
void
HttpReportFailure(const CanaryModel *model, const CanaryAttempt *a)
{
	bool		transport = AttemptTransportFailure(a);
	int			code = transport ? ERRCODE_LLM_CANARY_MODEL_UNREACHABLE :
		ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;

	if (HttpPolicyError(a->error))
		HttpReportPolicy(model->name, a->error, a->error_detail);
	if (a->outcome == CANARY_OUTCOME_TIMEOUT)
		ereport(ERROR,
				(errcode(ERRCODE_LLM_CANARY_MODEL_TIMEOUT),
				 errmsg("could not get an answer from model \"%s\" within %d ms",
						model->name, model->timeout_ms),
				 errdetail("The request timed out after %d tries.", a->tries),
				 errhint("Raise timeout_ms in canary_models if the model is slow, or check that it is reachable.")));
	if (a->http_status != 0 && transport)
		ereport(ERROR,
				(errcode(code),
				 errmsg("could not get an answer from model \"%s\"", model->name),
				 errdetail("The connection failed after HTTP status %d (%s)%s%s", a->http_status,
						   a->error ? a->error : "error",
						   a->error_detail ? ": " : ".",
						   a->error_detail ? a->error_detail : ""),
				 errhint("The attempt is recorded in canary_requests.")));
	if (a->http_status != 0)
		ereport(ERROR,
				(errcode(code),
				 errmsg("could not get an answer from model \"%s\"", model->name),
				 errdetail("HTTP status %d (%s)%s%s", a->http_status,
						   a->error ? a->error : "error",
						   a->error_detail ? ": " : ".",
						   a->error_detail ? a->error_detail : ""),
				 errhint("The attempt is recorded in canary_requests.")));
	ereport(ERROR,
			(errcode(code),
			 errmsg("could not reach model \"%s\"", model->name),
			 errdetail("%s%s%s", a->error ? a->error : "error",
					   a->error_detail ? ": " : ".",
					   a->error_detail ? a->error_detail : ""),
			 errhint("Check base_url in canary_models and that the server is reachable from the database server.")));
}
