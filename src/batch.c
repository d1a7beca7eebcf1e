/*-------------------------------------------------------------------------
 *
 * batch.c
 *	  Many calls at once from one process: the concurrent transport (one
 *	  libcurl multi handle, a concurrency limit per engine and a global one
 *	  across the server) and canary_batch, the set-returning function that
 *	  answers an array of prompts or chat requests from one backend.
 *
 * Every item is a CanaryCall (call.c): CallBegin routes it, each attempt
 * is answered from the response cache or by a transfer retried exactly as
 * HttpCallModelRequest retries (HttpAfterTry decides for both), and
 * CallAttemptDone / CallNextModel record it and fall back.  Only the
 * waiting differs: here the transfers of all items share one multi handle.
 *
 * The steps that touch the catalog (routing, the cache, recording, the
 * result) run per item in an internal subtransaction, so one item's error
 * (an invalid request, an unknown rollout) fails that item only; a cancel
 * or a termination is never swallowed.  BatchPump needs no transaction.
 *
 * Resources.  Easy handles, header lists and response bodies are
 * malloc'd by libcurl; the engine's memory context has a reset callback
 * that releases all of them (and the global slots), so an ERROR anywhere
 * (a cancel included) never leaks them.  A cancel (57014) or a termination
 * makes the progress callback abort every transfer; the pump then records
 * each interrupted attempt as "canceled", frees everything and raises.
 * Never ereport, palloc or CHECK_FOR_INTERRUPTS in a libcurl callback.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "portability/instr_time.h"
#include "storage/latch.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "batch.h"
#include "chat.h"
#include "subxact.h"

/* the longest a pump waits in libcurl before it looks at interrupts */
#define BATCH_POLL_MS		20
#define BATCH_CONCURRENCY_MAX	1024

/* settings */
static int	canary_max_concurrent_requests = 256;

/* Transfers in flight in the whole server (batches and submissions). */
typedef struct BatchShared
{
	pg_atomic_uint32 in_flight;
	pg_atomic_uint32 submit_worker_pid;	/* submit.c's worker, 0 if none */
} BatchShared;

static BatchShared *BatchState = NULL;

struct BatchEngine
{
	MemoryContext cxt;
	MemoryContextCallback cb;
	CURLM	   *multi;
	int			concurrency;
	int			running;
	List	   *items;			/* every BatchItem added */
	instr_time	clock0;
};

/*
 * BatchDefineSettings
 *		Define llm_canary.max_concurrent_requests; called from _PG_init.
 */
void
BatchDefineSettings(void)
{
	DefineCustomIntVariable("llm_canary.max_concurrent_requests",
							"Sets how many model requests canary_batch and the submission worker may have in flight in the whole server.",
							"Each batch also has its own limit (its concurrency argument); a transfer waits for a free slot.",
							&canary_max_concurrent_requests,
							256, 1, 65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
}

static Size
BatchShmemSize(void)
{
	return MAXALIGN(sizeof(BatchShared));
}

/* Reserve the global in-flight counter (shmem_request_hook). */
void
BatchRequestShmem(void)
{
	RequestAddinShmemSpace(BatchShmemSize());
}

/* Create or attach to the global in-flight counter (shmem_startup_hook). */
void
BatchInitShmem(void)
{
	bool		found;

	BatchState = ShmemInitStruct("llm_canary batch", BatchShmemSize(), &found);
	if (!found)
	{
		pg_atomic_init_u32(&BatchState->in_flight, 0);
		pg_atomic_init_u32(&BatchState->submit_worker_pid, 0);
	}
}

/* The pid of the submission worker (submit.c), 0 if none; in shared memory. */
int
BatchSubmitWorkerPid(void)
{
	return BatchState ? (int) pg_atomic_read_u32(&BatchState->submit_worker_pid) : 0;
}

void
BatchSetSubmitWorkerPid(int pid)
{
	if (BatchState)
		pg_atomic_write_u32(&BatchState->submit_worker_pid, (uint32) pid);
}

/*
 * The global slots this process holds.  An engine that is never destroyed
 * (the submission worker's lives in TopMemoryContext) gives its slots back
 * when the process exits, whatever way it exits (an ERROR in a worker, a
 * FATAL, SIGTERM): otherwise they would stay taken until the server
 * restarts, and a few such exits would leave no slot for anyone.
 */
static uint32 SlotsHeld = 0;

/* on_shmem_exit callback: give back whatever slots this process holds. */
static void
SlotsAtExit(int code, Datum arg)
{
	if (BatchState != NULL && SlotsHeld > 0)
		pg_atomic_fetch_sub_u32(&BatchState->in_flight, SlotsHeld);
	SlotsHeld = 0;
}

/* Take a global slot; false when the server-wide limit is reached. */
static bool
SlotAcquire(void)
{
	static bool exit_registered = false;

	if (BatchState == NULL)
		return true;
	if (!exit_registered)
	{
		on_shmem_exit(SlotsAtExit, (Datum) 0);
		exit_registered = true;
	}
	if (pg_atomic_fetch_add_u32(&BatchState->in_flight, 1) >=
		(uint32) canary_max_concurrent_requests)
	{
		pg_atomic_fetch_sub_u32(&BatchState->in_flight, 1);
		return false;
	}
	SlotsHeld++;
	return true;
}

/* Give back item's slot, unless SlotsAtExit already did.  Never raises. */
static void
SlotRelease(BatchItem *item)
{
	if (item->holds_slot && BatchState != NULL && SlotsHeld > 0)
	{
		pg_atomic_fetch_sub_u32(&BatchState->in_flight, 1);
		SlotsHeld--;
	}
	item->holds_slot = false;
}

static double
EngineNow(BatchEngine *e)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, e->clock0);
	return INSTR_TIME_GET_MILLISEC(now);
}

/* Free the current transfer of item, if any.  Never raises. */
static void
ReleaseTransfer(BatchEngine *e, BatchItem *item)
{
	if (item->easy != NULL)
	{
		if (e->multi != NULL)
			curl_multi_remove_handle(e->multi, item->easy);
		curl_easy_cleanup(item->easy);
		item->easy = NULL;
		e->running--;
	}
	CanaryBodyReset(&item->resp.body, 0);
	SlotRelease(item);
}

/* Free the header list of item's attempt.  Never raises. */
static void
ReleaseHeaders(BatchItem *item)
{
	if (item->headers != NULL)
		curl_slist_free_all(item->headers);
	item->headers = NULL;
}

/* Memory context reset callback: release every libcurl resource. */
static void
EngineCleanup(void *arg)
{
	BatchEngine *e = (BatchEngine *) arg;
	ListCell   *lc;

	foreach(lc, e->items)
	{
		BatchItem  *item = (BatchItem *) lfirst(lc);

		ReleaseTransfer(e, item);
		ReleaseHeaders(item);
	}
	if (e->multi != NULL)
		curl_multi_cleanup(e->multi);
	e->multi = NULL;
}

/*
 * BatchCreate
 *		A new engine allowing concurrency transfers at once, in a memory
 *		context under the current one; everything of the engine and its
 *		items is allocated there.  Raises if libcurl cannot start.
 */
BatchEngine *
BatchCreate(int concurrency)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "llm_canary batch",
											  ALLOCSET_DEFAULT_SIZES);
	BatchEngine *e = MemoryContextAllocZero(cxt, sizeof(BatchEngine));

	HttpInitLibcurl();
	e->cxt = cxt;
	e->concurrency = Max(concurrency, 1);
	INSTR_TIME_SET_CURRENT(e->clock0);
	e->cb.func = EngineCleanup;
	e->cb.arg = e;
	MemoryContextRegisterResetCallback(cxt, &e->cb);
	e->multi = curl_multi_init();
	if (e->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	curl_multi_setopt(e->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) e->concurrency);
	return e;
}

/* Destroy the engine and everything it holds. */
void
BatchDestroy(BatchEngine *e)
{
	MemoryContextDelete(e->cxt);
}

int
BatchInFlight(BatchEngine *e)
{
	return e->running;
}

/* The memory context of the engine (items may be allocated there). */
MemoryContext
BatchMemoryContext(BatchEngine *e)
{
	return e->cxt;
}

/*
 * BatchItemFail
 *		End item with the error edata (allocated in the engine's context).
 */
void
BatchItemFail(BatchItem *item, ErrorData *edata)
{
	ReleaseHeaders(item);
	item->error = edata;
	item->result = NULL;
	item->state = BATCH_ITEM_DONE;
}

/* ----------------------------------------------------------------------
 * Steps that need a transaction, each in its own subtransaction
 * ----------------------------------------------------------------------
 */

typedef void (*ItemStep) (BatchEngine *e, BatchItem *item, void *arg);

/*
 * Run step for item in an internal subtransaction, in the engine's memory
 * context.  An error fails the item (kept as its ErrorData), except a
 * cancel or a termination, which is raised.  Caller must be in a
 * transaction.
 */
static void
Guarded(BatchEngine *e, BatchItem *item, ItemStep step, void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(e->cxt);
	PG_TRY();
	{
		step(e, item, arg);
		CanarySubxactCommit(oldcxt, oldowner);
	}
	PG_CATCH();
	{
		/* kept in the engine's context: a failed row outlives this call */
		ErrorData  *edata = CanarySubxactAbort(oldcxt, oldowner, e->cxt);

		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		BatchItemFail(item, edata);
	}
	PG_END_TRY();
}

/*
 * Start the current attempt of item: from the cache (then it settles at
 * once), or queue its transfer.  The header list is made last, so that
 * nothing malloc'd is left behind by an error before it.
 */
static void
StartAttempt(BatchEngine *e, BatchItem *item)
{
	CanaryCall *call = &item->call;
	const char *err = NULL;
	char	   *detail = NULL;

	memset(&item->attempt, 0, sizeof(item->attempt));
	item->attempt.outcome = CANARY_OUTCOME_ERROR;
	item->attempt.prompt_tokens = -1;
	item->attempt.completion_tokens = -1;
	item->tries = 0;
	item->attempt_start_ms = EngineNow(e);
	item->retry_at_ms = 0;

	if (CallCacheLookup(call, &item->attempt))
	{
		item->state = BATCH_ITEM_SETTLE;
		return;
	}
	/* built once by CallCacheLookup, for the cache key and the transfer */
	item->url = call->http.url;
	item->body = call->http.body;
	if (item->errbuf == NULL)
		item->errbuf = palloc0(CURL_ERROR_SIZE);
	ReleaseHeaders(item);
	err = HttpModelHeaders(call->model, item->url, &item->headers, &detail);
	if (err != NULL)
	{
		item->attempt.error = pstrdup(err);
		item->attempt.error_detail = detail;
		item->state = BATCH_ITEM_SETTLE;
		return;
	}
	item->state = BATCH_ITEM_QUEUED;
}

typedef struct BeginArgs
{
	Jsonb	   *request;
	text	   *user_id;
	const char *canary;
	const char *prompt_class;
	const char *session_id;
} BeginArgs;

static void
BeginStep(BatchEngine *e, BatchItem *item, void *arg)
{
	BeginArgs  *a = (BeginArgs *) arg;
	CanaryRequest req;

	ChatRequestFromJsonb(a->request, &req);
	req.request_id = item->preset_request_id;
	CallBegin(&item->call, &req, a->user_id, a->user_id == NULL, a->canary,
			  a->prompt_class, a->session_id);
	item->began = true;
	StartAttempt(e, item);
}

/*
 * BatchItemBegin
 *		Add item to the engine and begin its call: request is a JSON string
 *		(a prompt) or object (a chat request); the rest as for canary_call.
 *		An invalid request or routing failure ends the item with its error.
 *		Caller must be in a transaction.
 */
void
BatchItemBegin(BatchEngine *e, BatchItem *item, Jsonb *request,
			   text *user_id, const char *canary, const char *prompt_class,
			   const char *session_id)
{
	BeginArgs	a;
	MemoryContext old = MemoryContextSwitchTo(e->cxt);

	e->items = lappend(e->items, item);
	MemoryContextSwitchTo(old);
	a.request = request;
	a.user_id = user_id;
	a.canary = canary;
	a.prompt_class = prompt_class;
	a.session_id = session_id;
	Guarded(e, item, BeginStep, &a);
}

static void
SettleStep(BatchEngine *e, BatchItem *item, void *arg)
{
	CanaryCall *call = &item->call;

	ReleaseHeaders(item);
	CallAttemptDone(call, &item->attempt);
	if (CallNextModel(call))
	{
		StartAttempt(e, item);
		return;
	}
	item->state = BATCH_ITEM_DONE;
	if (CallFailed(call))
		CallRaiseFailure(call);
	item->result = CallResult(call);
}

/*
 * BatchSettle
 *		For every item whose attempt ended: record it, fall back or finish
 *		(result, or the call's error).  Returns how many items are not done
 *		yet.  Caller must be in a transaction.
 */
int
BatchSettle(BatchEngine *e)
{
	ListCell   *lc;
	int			open = 0;

	foreach(lc, e->items)
	{
		BatchItem  *item = (BatchItem *) lfirst(lc);

		if (item->state == BATCH_ITEM_SETTLE)
			Guarded(e, item, SettleStep, NULL);
		if (item->state != BATCH_ITEM_DONE)
			open++;
	}
	return open;
}

/* ----------------------------------------------------------------------
 * The transfers (no transaction needed)
 * ----------------------------------------------------------------------
 */

/* Create item's transfer and add it to the multi handle. */
static bool
StartTransfer(BatchEngine *e, BatchItem *item, double now)
{
	const CanaryModel *model = item->call.model;
	double		left = model->timeout_ms - (now - item->attempt_start_ms);
	CURL	   *h;

	if (left < 1)
	{
		HttpTimedOut(model, &item->attempt);
		item->attempt.latency_ms = (int) (now - item->attempt_start_ms);
		item->attempt.tries = item->tries;
		item->state = BATCH_ITEM_SETTLE;
		return true;
	}
	if (!SlotAcquire())
		return false;
	item->holds_slot = true;

	h = curl_easy_init();
	if (h == NULL)
	{
		SlotRelease(item);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	}
	item->easy = h;
	e->running++;
	CanaryBodyReset(&item->resp.body, HttpMaxResponseBytes());
	item->resp.retry_after_ms = -1;
	item->errbuf[0] = '\0';
	HttpSetupHandle(h, &item->resp, item->errbuf);
	curl_easy_setopt(h, CURLOPT_PRIVATE, item);
	curl_easy_setopt(h, CURLOPT_URL, item->url);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, item->body);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(item->body));
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, item->headers);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) model->connect_timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long) left);
	if (curl_multi_add_handle(e->multi, h) != CURLM_OK)
	{
		ReleaseTransfer(e, item);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not add a transfer to the libcurl multi handle")));
	}
	item->state = BATCH_ITEM_RUNNING;
	return true;
}

/* Start queued transfers while there is room; returns the next retry time. */
static double
StartQueued(BatchEngine *e, double now)
{
	ListCell   *lc;
	double		next = -1;

	foreach(lc, e->items)
	{
		BatchItem  *item = (BatchItem *) lfirst(lc);

		if (item->state != BATCH_ITEM_QUEUED)
			continue;
		if (item->retry_at_ms > now)
		{
			if (next < 0 || item->retry_at_ms < next)
				next = item->retry_at_ms;
			continue;
		}
		if (e->running >= e->concurrency || !StartTransfer(e, item, now))
		{
			next = now + BATCH_POLL_MS;
			break;
		}
	}
	return next;
}

/* A transfer finished: judge it (retry or end the attempt). */
static void
TransferDone(BatchEngine *e, BatchItem *item, CURLcode rc)
{
	const CanaryModel *model = item->call.model;
	long		status = 0;
	double		now = EngineNow(e);
	double		wait_ms;

	curl_easy_getinfo(item->easy, CURLINFO_RESPONSE_CODE, &status);
	item->tries++;
	item->attempt.http_status = (int) status;
	if (rc == CURLE_ABORTED_BY_CALLBACK || (rc != CURLE_OK && item->resp.body.no_memory))
	{
		item->attempt.outcome = CANARY_OUTCOME_ERROR;
		item->attempt.error = pstrdup(rc == CURLE_ABORTED_BY_CALLBACK ? "canceled" : "out_of_memory");
		item->attempt.error_detail = pstrdup("The transfer was stopped.");
		wait_ms = -1;
	}
	else
		wait_ms = HttpAfterTry(model, &item->call.req, (int) rc, status, &item->resp,
							   item->errbuf, item->tries - 1,
							   now - item->attempt_start_ms, &item->attempt);
	ReleaseTransfer(e, item);
	if (wait_ms >= 0)
	{
		item->attempt.outcome = CANARY_OUTCOME_ERROR;
		item->attempt.error = NULL;
		item->attempt.error_detail = NULL;
		item->retry_at_ms = now + wait_ms;
		item->state = BATCH_ITEM_QUEUED;
		return;
	}
	item->attempt.tries = item->tries;
	item->attempt.latency_ms = (int) (now - item->attempt_start_ms);
	RequestRedactKey(model, &item->attempt);
	item->state = BATCH_ITEM_SETTLE;
}

/*
 * On a cancel or a termination: record every attempt in flight as
 * canceled, free every transfer, then raise the interrupt's error.
 */
static void
AbortForInterrupt(BatchEngine *e)
{
	ListCell   *lc;

	foreach(lc, e->items)
	{
		BatchItem  *item = (BatchItem *) lfirst(lc);

		if (!item->began || item->state == BATCH_ITEM_DONE)
			continue;
		if (item->state == BATCH_ITEM_SETTLE &&
			!(item->attempt.error && strcmp(item->attempt.error, "canceled") == 0))
		{
			/* an attempt that ended before the cancel: record it as it is */
			CallAttemptRecord(&item->call, &item->attempt);
		}
		else
		{
			TimestampTz start = GetCurrentTimestamp() -
				(int64) ((EngineNow(e) - item->attempt_start_ms) * 1000.0);

			ReleaseTransfer(e, item);
			CallAttemptCanceled(&item->call, start);
		}
		item->state = BATCH_ITEM_DONE;
	}
	CHECK_FOR_INTERRUPTS();
}

/*
 * BatchPump
 *		Drive the transfers for up to timeout_ms: start queued ones (within
 *		the engine's and the server's limits, after their backoff), wait for
 *		progress, judge finished ones.  Returns the number of items whose
 *		attempt ended (for BatchSettle).  Raises 57014 / 57P01 on a cancel
 *		or a termination, every transfer stopped and freed.
 */
int
BatchPump(BatchEngine *e, long timeout_ms)
{
	MemoryContext old = MemoryContextSwitchTo(e->cxt);
	double		deadline = EngineNow(e) + timeout_ms;
	int			settle = 0;
	ListCell   *lc;

	for (;;)
	{
		double		now = EngineNow(e);
		double		next_retry = StartQueued(e, now);
		long		wait_ms;
		int			still;
		CURLMsg    *msg;
		int			left;

		curl_multi_perform(e->multi, &still);
		while ((msg = curl_multi_info_read(e->multi, &left)) != NULL)
		{
			BatchItem  *item = NULL;

			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &item);
			TransferDone(e, item, msg->data.result);
		}
		if (InterruptPending && (QueryCancelPending || ProcDiePending))
			AbortForInterrupt(e);
		/* the rest (a signal barrier, a memory-context log request) at once */
		CHECK_FOR_INTERRUPTS();

		settle = 0;
		foreach(lc, e->items)
			if (((BatchItem *) lfirst(lc))->state == BATCH_ITEM_SETTLE)
			settle++;
		now = EngineNow(e);
		if (settle > 0 || now >= deadline)
			break;
		if (e->running == 0 && next_retry < 0)
			break;				/* nothing to wait for */

		wait_ms = (long) Min(deadline - now, BATCH_POLL_MS);
		if (next_retry >= 0)
			wait_ms = Min(wait_ms, (long) Max(next_retry - now, 0));
		if (e->running > 0)
			curl_multi_wait(e->multi, NULL, 0, (int) Max(wait_ms, 1), NULL);
		else
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Max(wait_ms, 1), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
	MemoryContextSwitchTo(old);
	return settle;
}

/* ----------------------------------------------------------------------
 * canary_batch
 * ----------------------------------------------------------------------
 */

/* The elements of a one-dimensional array argument (NULL: none). */
static int
ArrayElems(ArrayType *arr, Oid type, int16 len, bool byval, char align,
		   Datum **elems, bool **nulls, const char *what)
{
	int			n;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", what)));
	deconstruct_array(arr, type, len, byval, align, elems, nulls, &n);
	return n;
}

/*
 * canary_batch(requests jsonb[], user_ids text[], canary, prompt_class,
 *				concurrency, raise_on_error, session_ids text[])
 *		-> SETOF (ord, request_id, ok, result, sqlstate, error)
 *
 * Answers every request concurrently, up to concurrency transfers at once
 * (and llm_canary.max_concurrent_requests in the whole server); one row
 * per request, in input order.  A failed request gives a row with ok =
 * false and its error, unless raise_on_error, in which case the first
 * failure (in input order) is raised once every request is finished.
 */
PG_FUNCTION_INFO_V1(canary_batch);
Datum
canary_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum	   *reqs,
			   *users,
			   *sessions = NULL;
	bool	   *req_nulls,
			   *user_nulls,
			   *session_nulls = NULL;
	int			n,
				nusers,
				nsessions = 0;
	char	   *canary;
	char	   *prompt_class;
	int			concurrency;
	bool		raise_on_error;
	BatchEngine *e;
	BatchItem  *items;
	ErrorData  *first_error = NULL;

	CallRequireNotNull(PG_ARGISNULL(0), "requests");
	CallRequireNotNull(PG_ARGISNULL(1), "user_ids");
	CallRequireNotNull(PG_ARGISNULL(2), "rollout name");
	CallRequireNotNull(PG_ARGISNULL(4), "concurrency");
	concurrency = PG_GETARG_INT32(4);
	if (concurrency < 1 || concurrency > BATCH_CONCURRENCY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("concurrency must be between 1 and %d", BATCH_CONCURRENCY_MAX)));
	raise_on_error = !PG_ARGISNULL(5) && PG_GETARG_BOOL(5);
	canary = text_to_cstring(PG_GETARG_TEXT_PP(2));
	prompt_class = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));

	n = ArrayElems(PG_GETARG_ARRAYTYPE_P(0), JSONBOID, -1, false, TYPALIGN_INT,
				   &reqs, &req_nulls, "requests");
	nusers = ArrayElems(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT,
						&users, &user_nulls, "user_ids");
	if (nusers != n && nusers != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_ids must have one element, or as many as requests"),
				 errdetail("There are %d requests and %d user ids.", n, nusers)));
	if (!PG_ARGISNULL(6))
	{
		nsessions = ArrayElems(PG_GETARG_ARRAYTYPE_P(6), TEXTOID, -1, false, TYPALIGN_INT,
							   &sessions, &session_nulls, "session_ids");
		if (nsessions != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("session_ids must have as many elements as requests"),
					 errdetail("There are %d requests and %d session ids.", n, nsessions)));
	}

	InitMaterializedSRF(fcinfo, 0);

	e = BatchCreate(concurrency);
	items = MemoryContextAllocZero(e->cxt, sizeof(BatchItem) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		int			u = nusers == 1 ? 0 : i;

		items[i].ord = i + 1;
		BatchItemBegin(e, &items[i],
					   req_nulls[i] ? NULL : DatumGetJsonbP(reqs[i]),
					   user_nulls[u] ? NULL : DatumGetTextPP(users[u]),
					   canary, prompt_class,
					   (nsessions > 0 && !session_nulls[i]) ?
					   TextDatumGetCString(sessions[i]) : NULL);
	}

	while (BatchSettle(e) > 0)
		(void) BatchPump(e, 1000);

	for (int i = 0; i < n; i++)
	{
		BatchItem  *item = &items[i];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		values[0] = Int32GetDatum(item->ord);
		if (item->began)
			values[1] = UUIDPGetDatum(&item->call.request_id);
		else
			nulls[1] = true;
		values[2] = BoolGetDatum(item->error == NULL);
		if (item->result != NULL)
			values[3] = JsonbPGetDatum(item->result);
		else
			nulls[3] = true;
		if (item->error != NULL)
		{
			values[4] = CStringGetTextDatum(unpack_sql_state(item->error->sqlerrcode));
			values[5] = CStringGetTextDatum(item->error->message ? item->error->message : "");
			if (first_error == NULL)
				first_error = item->error;
		}
		else
			nulls[4] = nulls[5] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	/* the engine's context goes with the error; its callback frees libcurl */
	if (raise_on_error && first_error != NULL)
		ReThrowError(first_error);
	BatchDestroy(e);
	return (Datum) 0;
}
