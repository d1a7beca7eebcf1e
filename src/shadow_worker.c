/*-------------------------------------------------------------------------
 *
 * shadow_worker.c
 *	  Shadow mode, the worker side: the background worker takes the queued
 *	  shadow jobs (shadow.c), sends each prompt to the new model with libcurl
 *	  multi, and writes a row to canary_shadow once both the old and the new
 *	  answer are in.
 *
 * Integration with the worker loop (worker.c).  A job's transfers (the new
 * model's answer, then maybe the embeddings of both answers) run on the
 * worker's multi loop (transfers.c), up to llm_canary.shadow_concurrency at
 * once; each transfer's end comes back through ShadowTransferDone.  The
 * loop calls ShadowWorkerStep once per iteration (take queued jobs, write
 * finished rows) and bounds its sleep by ShadowWorkerTimeoutMs.
 *
 * Ownership.  Every job has its own memory context; a reset callback on it
 * releases the job's easy handle, header list and response buffer (which
 * libcurl's write callback grows with malloc, never palloc).  Deleting the
 * job's context is therefore the one way a job ends, on every path.
 *
 * Response cache.  With llm_canary.response_cache_ttl > 0 (the server's
 * value), a fresh answer of the new model in canary_response_cache (cache.c)
 * finishes the job without a transfer (new_cached), and the answers the new
 * model gives are stored there when their row is written.
 *
 * Semantic similarity.  When the rollout names a shadow_embedding_model and
 * both answers are in, the job makes a second transfer on the same multi
 * handle, POST {base_url}/embeddings with both texts, and its row carries
 * the cosine of the two vectors (similarity_method 'embedding').  A
 * synchronous call would stall the loop (metrics writes, every other shadow
 * transfer) for up to the embeddings model's timeout_ms; on the multi handle
 * it costs the loop nothing.  If the embeddings call fails, the row gets the
 * lexical similarity of canary_shadow_fill (similarity_method 'lexical').
 *
 * Writes.  Finished jobs are written in one transaction per step, with one
 * parameterised INSERT ... SELECT FROM ROWS FROM (unnest($1), .. unnest($22)).  A failed INSERT
 * is logged and its rows are counted as lost rather than retried forever.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/ilist.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "cache.h"
#include "config.h"
#include "fleet.h"
#include "http.h"
#include "provider.h"
#include "shadow.h"
#include "shadow_internal.h"
#include "transfers.h"

#define SHADOW_INSERT_COLUMNS 22
#define SHADOW_LIVENESS_POLL_MS 1000

/* The semantic-similarity step of a job. */
typedef enum ShadowEmbedState
{
	SHADOW_EMBED_NONE,			/* no embeddings model, or not started yet */
	SHADOW_EMBED_RUNNING,		/* the embeddings transfer is in the multi */
	SHADOW_EMBED_DONE,			/* similarity is set */
	SHADOW_EMBED_FAILED			/* lexical similarity instead */
} ShadowEmbedState;

typedef struct ShadowJob
{
	dlist_node	node;
	MemoryContext cxt;			/* the job and all it owns */
	int			slotno;
	uint64		seq;

	/* copied from the slot */
	char		new_model[NAMEDATALEN];
	char	   *prompt;
	Size		prompt_len;
	CanaryRequest req;			/* the prompt, or the chat request parsed */

	/* the transfer */
	CanaryModel model;			/* strings in cxt */
	CURL	   *easy;
	struct curl_slist *headers;
	HttpRequest request;		/* URL and body, in cxt */
	CanaryBody	response;		/* malloc'd by the write callback */
	char		errbuf[CURL_ERROR_SIZE];
	TimestampTz started;

	/* the new half */
	bool		done;
	TimestampTz done_at;
	char	   *new_text;
	Jsonb	   *new_answer;		/* a chat answer (RequestParseResponse), or NULL */
	int			new_tokens;		/* -1: NULL */
	int			new_latency_ms; /* -1: NULL */
	bool		new_provider_refusal;
	char		new_error[CANARY_ERROR_MAX];	/* "": NULL */
	bool		new_cached;		/* the answer came from the response cache */
	bool		use_cache;		/* cache_key is set: store the answer */
	CacheKey	cache_key;

	/* semantic similarity (embedding_model set at take time) */
	bool		has_embed_model;
	CanaryModel embed_model;	/* strings in cxt */
	ShadowEmbedState embed_state;
	double		similarity;
} ShadowJob;

static bool shadow_worker_ready = false;	/* ShadowWorkerInit ran */
static MemoryContext ShadowWorkerContext = NULL;
static dlist_head shadow_jobs = DLIST_STATIC_INIT(shadow_jobs);
static int	shadow_running = 0;	/* jobs with an easy handle in the multi */
static int	shadow_scan_from = 0;

static void ShadowTransferDone(CURL *easy, CURLcode rc, void *arg);

/* ---------------------------------------------------------------------
 * jobs
 * ---------------------------------------------------------------------
 */

/* Release what libcurl owns for this job; idempotent. */
static void
ShadowJobReleaseCurl(ShadowJob *job)
{
	if (job->easy != NULL)
	{
		TransferRemove(job->easy);
		curl_easy_cleanup(job->easy);
		job->easy = NULL;
		shadow_running--;
	}
	if (job->headers != NULL)
	{
		curl_slist_free_all(job->headers);
		job->headers = NULL;
	}
	CanaryBodyReset(&job->response, 0);
}

/* Memory context callback: the job's context goes, so do its curl objects. */
static void
ShadowJobContextCallback(void *arg)
{
	ShadowJobReleaseCurl((ShadowJob *) arg);
}

/* A new job for a slot the worker just took; in its own context. */
static ShadowJob *
ShadowJobCreate(int slotno, uint64 seq)
{
	MemoryContext cxt = AllocSetContextCreate(ShadowWorkerContext,
											  "llm_canary shadow job",
											  ALLOCSET_SMALL_SIZES);
	ShadowJob  *job = MemoryContextAllocZero(cxt, sizeof(ShadowJob));
	MemoryContextCallback *cb = MemoryContextAlloc(cxt, sizeof(MemoryContextCallback));

	job->cxt = cxt;
	job->slotno = slotno;
	job->seq = seq;
	job->new_tokens = -1;
	job->new_latency_ms = -1;
	cb->func = ShadowJobContextCallback;
	cb->arg = job;
	MemoryContextRegisterResetCallback(cxt, cb);
	dlist_push_tail(&shadow_jobs, &job->node);
	return job;
}

/*
 * The chat request of a job dispatched by canary_chat: its prompt is the
 * normalised request's JSON text (made by chat.c, so valid), parsed in the
 * job's context.
 */
static Jsonb *
ShadowJobChatRequest(ShadowJob *job)
{
	MemoryContext old = MemoryContextSwitchTo(job->cxt);
	Jsonb	   *chat = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(job->prompt)));

	MemoryContextSwitchTo(old);
	return chat;
}

static void
ShadowJobDestroy(ShadowJob *job)
{
	dlist_delete(&job->node);
	MemoryContextDelete(job->cxt);	/* runs ShadowJobContextCallback */
}

/* The new half is over: record it, without an answer unless text is set. */
static void
ShadowJobFinish(ShadowJob *job, const char *error, TimestampTz now)
{
	job->done = true;
	job->done_at = now;
	if (error)
		strlcpy(job->new_error, error, sizeof(job->new_error));
	if (job->started != 0 && job->new_latency_ms < 0)
	{
		long		secs;
		int			usecs;

		TimestampDifference(job->started, now, &secs, &usecs);
		job->new_latency_ms = (int) (secs * 1000 + usecs / 1000);
	}
}

static char *
JobStrdup(ShadowJob *job, const char *s)
{
	return s ? MemoryContextStrdup(job->cxt, s) : NULL;
}

/* Copy a cached model into the job: the cache may be rebuilt any time. */
static void
ShadowJobCopyModel(ShadowJob *job, CanaryModel *dst, const CanaryModel *m)
{
	*dst = *m;
	dst->base_url = JobStrdup(job, m->base_url);
	dst->model = JobStrdup(job, m->model);
	dst->system_prompt = JobStrdup(job, m->system_prompt);
	dst->api_key_env = JobStrdup(job, m->api_key_env);
}

/*
 * ShadowJobStart
 *		Start the transfer of a job to model m, whose URL and body are set
 *		(the new model's answer, or the embeddings of both answers).
 *		Returns NULL, or the error code when it could not start.  Allocates
 *		in the job's context; raises nothing.
 */
static const char *
ShadowJobStart(ShadowJob *job, const CanaryModel *m)
{
	HttpPost	post;
	const char *err;

	/* the key policy, the key and the headers: the one HTTP layer (http.h) */
	err = HttpModelHeaders(m, job->request.url, &job->headers, NULL);
	if (err != NULL)
		return err;
	job->easy = curl_easy_init();
	if (job->easy == NULL)
	{
		ShadowJobReleaseCurl(job);
		return "out_of_memory";
	}
	shadow_running++;			/* balanced in ShadowJobReleaseCurl */
	CanaryBodyReset(&job->response, HttpMaxResponseBytes());

	memset(&post, 0, sizeof(post));
	post.url = job->request.url;
	post.body = job->request.body;
	post.body_len = job->request.body_len;
	post.headers = job->headers;
	post.connect_timeout_ms = m->connect_timeout_ms;
	post.timeout_ms = m->timeout_ms;
	post.response = &job->response;
	post.errbuf = job->errbuf;

	if (job->started == 0)
		job->started = GetCurrentTimestamp();
	if (!HttpEasySetup(job->easy, &post))
	{
		ShadowJobReleaseCurl(job);
		return "out_of_memory";
	}
	if (!TransferAdd(job->easy, ShadowTransferDone, job))
	{
		/* not in the multi: release it as a plain easy handle */
		curl_easy_cleanup(job->easy);
		job->easy = NULL;
		shadow_running--;
		ShadowJobReleaseCurl(job);
		return "out_of_memory";
	}
	return NULL;
}

/*
 * The embeddings transfer of a job completed (or failed): compute the
 * cosine, or fall back to the lexical similarity.  Raises nothing (but out
 * of memory); allocates in the job's context.
 */
static void
ShadowEmbedCompleted(ShadowJob *job, CURLcode rc)
{
	long		status = 0;
	const char *err;
	const char *detail = NULL;
	MemoryContext old;

	if (rc != CURLE_OK)
	{
		err = HttpErrorCode(rc, &job->response);
		detail = job->errbuf[0] ? job->errbuf : NULL;
	}
	else
	{
		curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);
		old = MemoryContextSwitchTo(job->cxt);
		err = ProviderParseEmbeddings((int) status, job->response.data ? job->response.data : "",
									  job->response.len, &job->similarity, &detail);
		MemoryContextSwitchTo(old);
	}
	ShadowJobReleaseCurl(job);
	job->embed_state = err ? SHADOW_EMBED_FAILED : SHADOW_EMBED_DONE;
	if (err)
		ereport(LOG,
				(errmsg("llm_canary shadow similarity of request with model \"%s\" is lexical: the embeddings call failed (%s)",
						job->embed_model.name, err),
				 detail ? errdetail_internal("%s", detail) : 0));
}

/*
 * Start the embeddings transfer of a job whose two answers are in: old
 * is the old model's answer.  On failure the job falls back to the lexical
 * similarity.  Allocates in the job's context; raises nothing (but out of
 * memory).
 */
static void
ShadowEmbedStart(ShadowJob *job, const char *old)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);
	const char *err;

	bool		built = ProviderBuildEmbeddingsRequest(&job->embed_model, old,
													   job->new_text, &job->request);

	MemoryContextSwitchTo(oldcxt);
	job->embed_state = SHADOW_EMBED_RUNNING;
	err = built ? ShadowJobStart(job, &job->embed_model) : "request_build";
	if (err)
	{
		job->embed_state = SHADOW_EMBED_FAILED;
		ereport(LOG,
				(errmsg("llm_canary shadow similarity with model \"%s\" is lexical: the embeddings call could not start (%s)",
						job->embed_model.name, err)));
	}
}

/*
 * A transfer completed (or failed): parse the answer, release the transfer.
 * Outside any transaction; a parse error is caught and recorded as
 * "malformed_response".
 */
static void
ShadowJobCompleted(ShadowJob *job, CURLcode rc)
{
	TimestampTz now = GetCurrentTimestamp();
	long		status = 0;

	if (job->embed_state == SHADOW_EMBED_RUNNING)
	{
		ShadowEmbedCompleted(job, rc);
		return;
	}

	if (rc != CURLE_OK)
	{
		const char *code = HttpErrorCode(rc, &job->response);

		ShadowJobReleaseCurl(job);
		ShadowJobFinish(job, code, now);
		return;
	}

	curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);
	{
		MemoryContext old = MemoryContextSwitchTo(job->cxt);
		CanaryAttempt a;

		memset(&a, 0, sizeof(a));
		a.prompt_tokens = -1;
		a.completion_tokens = -1;
		PG_TRY();
		{
			RequestParseResponse(&job->model, &job->req, (int) status,
								 job->response.data ? job->response.data : "", job->response.len, &a);
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(job->cxt);
			FlushErrorState();
			memset(&a, 0, sizeof(a));
			a.completion_tokens = -1;
			a.error = "malformed_response";
		}
		PG_END_TRY();
		/* canary_shadow and the cache must never hold the key, even if the upstream echoes it */
		RequestRedactKey(&job->model, &a);
		MemoryContextSwitchTo(old);

		ShadowJobReleaseCurl(job);
		job->new_text = a.text;
		job->new_answer = a.answer;
		job->new_tokens = a.completion_tokens;
		job->new_provider_refusal = a.provider_refusal;
		ShadowJobFinish(job, a.error, now);
	}
}

/* ---------------------------------------------------------------------
 * the step
 * ---------------------------------------------------------------------
 */

/*
 * ShadowRecoverError
 *		In the PG_CATCH of a per-job lookup inside ShadowTakeJobs' transaction:
 *		copy the error into cxt, abort the transaction and start a new one
 *		(with a snapshot) so that the other jobs' lookups go on.  Returns
 *		the error for the caller to log.
 */
static ErrorData *
ShadowRecoverError(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	return edata;
}

/*
 * Take PENDING slots, up to the free concurrency, and start their calls.
 * Looks the new models up in one transaction.
 */
static void
ShadowTakeJobs(void)
{
	int			want = shadow_concurrency - shadow_running;
	int		   *taken;
	uint64	   *seqs;
	int			ntaken = 0;
	dsa_area   *area = ShadowArea(true);
	List	   *started = NIL;
	ListCell   *lc;
	MemoryContext oldcxt;

	if (want <= 0)
		return;
	taken = palloc(sizeof(int) * want);
	seqs = palloc(sizeof(uint64) * want);

	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	for (int n = 0; n < ShadowState->nslots && ntaken < want && ShadowState->npending > 0; n++)
	{
		int			i = (shadow_scan_from + n) % ShadowState->nslots;
		ShadowSlot *slot = &ShadowState->slots[i];

		if (slot->state != SHADOW_SLOT_PENDING)
			continue;
		slot->state = SHADOW_SLOT_RUNNING;
		ShadowState->npending--;
		taken[ntaken] = i;
		seqs[ntaken] = slot->seq;
		ntaken++;
		shadow_scan_from = (i + 1) % ShadowState->nslots;
	}
	LWLockRelease(ShadowState->lock);

	if (ntaken == 0)
	{
		pfree(taken);
		pfree(seqs);
		return;
	}

	/* a RUNNING slot's request fields are ours to read without the lock */
	for (int k = 0; k < ntaken; k++)
	{
		ShadowSlot *slot = &ShadowState->slots[taken[k]];
		ShadowJob  *job = ShadowJobCreate(taken[k], seqs[k]);

		strlcpy(job->new_model, slot->new_model, sizeof(job->new_model));
		job->prompt_len = slot->prompt_len;
		job->prompt = MemoryContextAlloc(job->cxt, slot->prompt_len + 1);
		memcpy(job->prompt, dsa_get_address(area, slot->prompt), slot->prompt_len + 1);
		job->req.prompt = slot->is_chat ? NULL : job->prompt;
		job->req.chat = slot->is_chat ? ShadowJobChatRequest(job) : NULL;
		strlcpy(job->embed_model.name, slot->embedding_model, sizeof(job->embed_model.name));
		started = lappend(started, job);
	}
	pfree(taken);
	pfree(seqs);

	oldcxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	foreach(lc, started)
	{
		ShadowJob  *job = (ShadowJob *) lfirst(lc);

		PG_TRY();
		{
			const CanaryModel *m = ConfigGetModel(job->new_model);
			MemoryContext txcxt = MemoryContextSwitchTo(job->cxt);

			ShadowJobCopyModel(job, &job->model, m);
			/* built once: the cache key and the transfer use the same request */
			ProviderBuildRequest(&job->model, &job->req, &job->request);

			/* a fresh answer in the response cache: no transfer */
			if (CacheEnabled())
			{
				CanaryAttempt hit;

				CacheComputeKey(&job->req, &job->request, &job->cache_key);
				job->use_cache = true;
				job->started = GetCurrentTimestamp();
				if (CacheLookup(&job->model, &job->cache_key, &hit))
				{
					job->new_text = hit.text;
					job->new_tokens = hit.completion_tokens;
					job->new_provider_refusal = hit.provider_refusal;
					job->new_cached = true;
					ShadowJobFinish(job, NULL, GetCurrentTimestamp());
				}
			}
			MemoryContextSwitchTo(txcxt);
		}
		PG_CATCH();
		{
			ErrorData  *edata = ShadowRecoverError(job->cxt);

			ereport(LOG,
					(errmsg("llm_canary shadow call to model \"%s\" not started", job->new_model),
					 errdetail_internal("%s", edata->message)));
			ShadowJobFinish(job, edata->sqlerrcode == ERRCODE_UNDEFINED_OBJECT ?
							"unknown_model" : "request_build", GetCurrentTimestamp());
		}
		PG_END_TRY();

		/* the embeddings model: when it is gone, the similarity is lexical */
		if (job->embed_model.name[0] != '\0' && !job->new_error[0])
		{
			PG_TRY();
			{
				const CanaryModel *m = ConfigGetModel(job->embed_model.name);
				MemoryContext txcxt = MemoryContextSwitchTo(job->cxt);

				ShadowJobCopyModel(job, &job->embed_model, m);
				job->has_embed_model = m->provider == CANARY_PROVIDER_OPENAI;
				MemoryContextSwitchTo(txcxt);
			}
			PG_CATCH();
			{
				ErrorData  *edata = ShadowRecoverError(job->cxt);

				ereport(LOG,
						(errmsg("llm_canary shadow similarity with model \"%s\" is lexical",
								job->embed_model.name),
						 errdetail_internal("%s", edata->message)));
				job->has_embed_model = false;
			}
			PG_END_TRY();
		}
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);

	foreach(lc, started)
	{
		ShadowJob  *job = (ShadowJob *) lfirst(lc);
		const char *err;

		/* queued before this member started failing safe: not sent */
		if (!job->done && FleetFailSafeActive())
			ShadowJobFinish(job, "fail_safe", GetCurrentTimestamp());
		else if (!job->done && (err = ShadowJobStart(job, &job->model)) != NULL)
			ShadowJobFinish(job, err, GetCurrentTimestamp());
	}
	list_free(started);
}

/*
 * The transfer of a job ended (transfers.c calls this from TransfersRun):
 * record it, and tell a backend completing the old half that we are
 * waiting for it.
 */
static void
ShadowTransferDone(CURL *easy, CURLcode rc, void *arg)
{
	ShadowJob  *job = (ShadowJob *) arg;

	Assert(job->easy == easy);
	ShadowJobCompleted(job, rc);
	if (job->done)
	{
		LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
		ShadowState->slots[job->slotno].new_done = true;
		LWLockRelease(ShadowState->lock);
	}
}

/* Add a text (or NULL) to an array being built. */
static ArrayBuildState *
AccumText(ArrayBuildState *st, const char *s, int len)
{
	if (s == NULL)
		return accumArrayResult(st, (Datum) 0, true, TEXTOID, CurrentMemoryContext);
	if (len < 0)
		len = strlen(s);
	return accumArrayResult(st, PointerGetDatum(cstring_to_text_with_len(s, len)),
							false, TEXTOID, CurrentMemoryContext);
}

static ArrayBuildState *
AccumInt(ArrayBuildState *st, int v, bool isnull)
{
	return accumArrayResult(st, Int32GetDatum(v), isnull, INT4OID, CurrentMemoryContext);
}

/*
 * Write the rows of jobs (a List of ShadowJob, their slots WRITING) in one
 * transaction with one INSERT.  Returns the number of rows written; a
 * failure is logged, never raised.
 */
static int
ShadowInsertRows(List *jobs)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile int written = 0;
	dsa_area   *area = ShadowArea(true);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		static const Oid elemtypes[SHADOW_INSERT_COLUMNS] = {
			UUIDOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
			TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID, BOOLOID, TEXTOID,
			TEXTOID, INT4OID, INT4OID, BOOLOID, TEXTOID, BOOLOID, FLOAT8OID,
			TEXTOID
		};
		ArrayBuildState *st[SHADOW_INSERT_COLUMNS];
		Oid			argtypes[SHADOW_INSERT_COLUMNS];
		Datum		values[SHADOW_INSERT_COLUMNS];
		StringInfoData sql;
		ListCell   *lc;
		int			ret;

		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		for (int c = 0; c < SHADOW_INSERT_COLUMNS; c++)
		{
			st[c] = initArrayResult(elemtypes[c], CurrentMemoryContext, false);
			argtypes[c] = get_array_type(elemtypes[c]);
		}

		foreach(lc, jobs)
		{
			ShadowJob  *job = (ShadowJob *) lfirst(lc);
			ShadowSlot *slot = &ShadowState->slots[job->slotno];
			const char *new_text = job->new_text;
			const char *new_error = job->new_error[0] ? job->new_error : NULL;
			bool		new_refusal;

			/* the text type takes only valid strings of the database encoding */
			if (new_text && !pg_verifymbstr(new_text, strlen(new_text), true))
			{
				new_text = NULL;
				new_error = "malformed_response";
			}
			/* a provider's refusal may come without any text */
			new_refusal = new_error == NULL &&
				(job->new_provider_refusal || CanaryIsRefusal(false, new_text));

			st[0] = accumArrayResult(st[0], UUIDPGetDatum(&slot->request_id), false, UUIDOID, CurrentMemoryContext);
			st[1] = accumArrayResult(st[1], TimestampTzGetDatum(slot->ts), false, TIMESTAMPTZOID, CurrentMemoryContext);
			st[2] = AccumText(st[2], slot->canary, -1);
			st[3] = AccumText(st[3], slot->user_id, -1);
			st[4] = AccumText(st[4], slot->prompt_hash, -1);
			st[5] = AccumText(st[5], slot->store_prompt ? job->prompt : NULL,
							  slot->store_prompt ?
							  pg_mbcharcliplen(job->prompt, job->prompt_len, SHADOW_PROMPT_STORED_CHARS) : 0);
			st[6] = AccumText(st[6], slot->has_prompt_class ? slot->prompt_class : NULL, -1);
			st[7] = AccumText(st[7], slot->old_model[0] ? slot->old_model : NULL, -1);
			st[8] = AccumText(st[8], slot->new_model, -1);
			st[9] = AccumText(st[9], DsaPointerIsValid(slot->old_text) ?
							  (char *) dsa_get_address(area, slot->old_text) : NULL,
							  (int) slot->old_text_len);
			st[10] = AccumInt(st[10], slot->old_tokens, slot->old_tokens < 0);
			st[11] = AccumInt(st[11], slot->old_latency_ms, slot->old_latency_ms < 0);
			/* refusal is NULL when there was no answer to judge */
			st[12] = accumArrayResult(st[12], BoolGetDatum(slot->old_refusal),
									  slot->old_error[0] != '\0' &&
									  strcmp(slot->old_error, "not_stored") != 0,
									  BOOLOID, CurrentMemoryContext);
			st[13] = AccumText(st[13], slot->old_error[0] ? slot->old_error : NULL, -1);
			st[14] = AccumText(st[14], new_text, -1);
			st[15] = AccumInt(st[15], job->new_tokens, job->new_tokens < 0);
			st[16] = AccumInt(st[16], job->new_latency_ms, job->new_latency_ms < 0);
			st[17] = accumArrayResult(st[17], BoolGetDatum(new_refusal),
									  new_error != NULL, BOOLOID, CurrentMemoryContext);
			st[18] = AccumText(st[18], new_error, -1);
			st[19] = accumArrayResult(st[19], BoolGetDatum(job->new_cached),
									  new_error != NULL, BOOLOID, CurrentMemoryContext);
			/* an embedding similarity, or NULL: the trigger computes the lexical one */
			st[20] = accumArrayResult(st[20], Float8GetDatum(job->similarity),
									  job->embed_state != SHADOW_EMBED_DONE,
									  FLOAT8OID, CurrentMemoryContext);
			st[21] = AccumText(st[21], job->embed_state == SHADOW_EMBED_DONE ?
							   "embedding" : NULL, -1);
		}
		for (int c = 0; c < SHADOW_INSERT_COLUMNS; c++)
			values[c] = makeArrayResult(st[c], CurrentMemoryContext);

		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "INSERT INTO %s.canary_shadow (request_id, ts, canary, user_id, prompt_hash,"
						 " prompt, prompt_class, old_model, new_model, old_text, old_tokens,"
						 " old_latency_ms, old_refusal, old_error, new_text, new_tokens,"
						 " new_latency_ms, new_refusal, new_error, new_cached, similarity,"
						 " similarity_method)"
						 " SELECT * FROM ROWS FROM (",
						 ConfigSchemaName());
		/* the multi-argument unnest() shorthand cannot be schema-qualified */
		for (int c = 1; c <= SHADOW_INSERT_COLUMNS; c++)
			appendStringInfo(&sql, "%spg_catalog.unnest($%d)", c > 1 ? ", " : "", c);
		appendStringInfoChar(&sql, ')');
		ret = SPI_execute_with_args(sql.data, SHADOW_INSERT_COLUMNS, argtypes, values,
									NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not insert into canary_shadow: SPI error %d", ret);
		written = (int) SPI_processed;
		SPI_finish();

		/* the new model's fresh answers, for the response cache */
		foreach(lc, jobs)
		{
			ShadowJob  *job = (ShadowJob *) lfirst(lc);
			CanaryAttempt a;

			if (!job->use_cache || job->new_cached || job->new_error[0] ||
				job->new_text == NULL ||
				!pg_verifymbstr(job->new_text, strlen(job->new_text), true))
				continue;
			memset(&a, 0, sizeof(a));
			a.outcome = job->new_provider_refusal ? CANARY_OUTCOME_REFUSAL : CANARY_OUTCOME_OK;
			a.text = job->new_text;
			a.answer = job->new_answer; /* a chat hit needs the whole answer */
			a.prompt_tokens = -1;
			a.completion_tokens = job->new_tokens;
			a.provider_refusal = job->new_provider_refusal;
			CacheStore(&job->model, &job->cache_key, &a);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("could not write %d rows to canary_shadow", list_length(jobs)),
				 errdetail_internal("%s", edata->message)));
		FreeErrorData(edata);
		written = 0;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	return written;
}

/*
 * Write the rows of finished jobs whose old half is in, or will not come:
 * the grace period is over, the dispatching backend is gone, or final
 * (shutdown).
 */
static void
ShadowWriteFinished(bool final)
{
	TimestampTz now = GetCurrentTimestamp();
	List	   *ready = NIL;
	List	   *gone = NIL;
	List	   *embed = NIL;
	dlist_mutable_iter it;
	ListCell   *lc;
	int			written;

	/* backends that went away without closing their old half */
	dlist_foreach_modify(it, &shadow_jobs)
	{
		ShadowJob  *job = dlist_container(ShadowJob, node, it.cur);
		ShadowSlot *slot = &ShadowState->slots[job->slotno];

		if (job->done && !final && !slot->old_done &&
			BackendPidGetProc(slot->backend_pid) == NULL)
			gone = lappend(gone, job);
	}

	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	dlist_foreach_modify(it, &shadow_jobs)
	{
		ShadowJob  *job = dlist_container(ShadowJob, node, it.cur);
		ShadowSlot *slot = &ShadowState->slots[job->slotno];

		if (!job->done || job->embed_state == SHADOW_EMBED_RUNNING)
			continue;
		if (!slot->old_done &&
			(final || list_member_ptr(gone, job) ||
			 TimestampDifferenceExceeds(job->done_at, now, shadow_grace_ms)))
		{
			slot->old_done = true;
			slot->old_tokens = -1;
			slot->old_latency_ms = -1;
			strlcpy(slot->old_error, SHADOW_OLD_MISSING, sizeof(slot->old_error));
		}
		if (!slot->old_done)
			continue;
		/* both answers in: first their embeddings, when the rollout wants them */
		if (!final && job->has_embed_model && job->embed_state == SHADOW_EMBED_NONE &&
			job->new_text != NULL && !job->new_error[0] &&
			DsaPointerIsValid(slot->old_text) && !slot->old_error[0])
		{
			embed = lappend(embed, job);
			continue;
		}
		slot->state = SHADOW_SLOT_WRITING;
		ready = lappend(ready, job);
	}
	LWLockRelease(ShadowState->lock);
	list_free(gone);

	/* the slots stay RUNNING: their old answers are ours to read */
	foreach(lc, embed)
	{
		ShadowJob  *job = (ShadowJob *) lfirst(lc);
		ShadowSlot *slot = &ShadowState->slots[job->slotno];
		const char *old = dsa_get_address(ShadowArea(true), slot->old_text);

		if (pg_verifymbstr(old, slot->old_text_len, true) &&
			pg_verifymbstr(job->new_text, strlen(job->new_text), true))
			ShadowEmbedStart(job, old);
		else
			job->embed_state = SHADOW_EMBED_FAILED;
	}
	list_free(embed);

	if (ready == NIL)
		return;

	written = ShadowInsertRows(ready);

	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	foreach(lc, ready)
		ShadowFreeSlot(&ShadowState->slots[((ShadowJob *) lfirst(lc))->slotno]);
	ShadowState->rows_written += written;
	ShadowState->rows_lost += list_length(ready) - written;
	LWLockRelease(ShadowState->lock);

	foreach(lc, ready)
		ShadowJobDestroy((ShadowJob *) lfirst(lc));
	list_free(ready);
}

/* ---------------------------------------------------------------------
 * the worker interface (shadow.h)
 * ---------------------------------------------------------------------
 */

/*
 * Process exit: nobody serves the queue any more, unless a newer worker
 * already does (then the flag is its, not ours to clear).
 */
static void
ShadowWorkerExit(int code, Datum arg)
{
	if (ShadowState == NULL)
		return;
	if (!shadow_worker_ready)
		return;
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	if (ShadowState->serving_pid == MyProcPid)
	{
		ShadowState->worker_serving = false;
		ShadowState->serving_pid = 0;
	}
	LWLockRelease(ShadowState->lock);
}

/*
 * ShadowWorkerInit
 *		Set up the shadow side of the background worker: the DSA area, and
 *		mark the queue as served (backends wake us through the worker's
 *		identity in the metrics queue; the multi loop, transfers.c, is the
 *		worker's).  Jobs a
 *		previous worker left RUNNING (it died without recording them) are
 *		queued again; jobs it left WRITING may have been written and are
 *		counted as lost rather than risk a duplicate row.  Call once, after
 *		the worker connected to its database, outside a transaction.
 */
void
ShadowWorkerInit(void)
{
	if (ShadowState == NULL)
		return;

	ShadowWorkerContext = AllocSetContextCreate(TopMemoryContext,
												"llm_canary shadow worker",
												ALLOCSET_DEFAULT_SIZES);
	(void) ShadowArea(true);

	before_shmem_exit(ShadowWorkerExit, (Datum) 0);
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	for (int i = 0; i < ShadowState->nslots; i++)
	{
		ShadowSlot *slot = &ShadowState->slots[i];

		if (slot->state == SHADOW_SLOT_RUNNING)
		{
			slot->state = SHADOW_SLOT_PENDING;
			slot->new_done = false;
			ShadowState->npending++;
		}
		else if (slot->state == SHADOW_SLOT_WRITING)
		{
			ShadowFreeSlot(slot);
			ShadowState->rows_lost++;
		}
	}
	ShadowState->worker_serving = true;
	ShadowState->serving_pid = MyProcPid;
	LWLockRelease(ShadowState->lock);
	shadow_worker_ready = true;
}

/*
 * ShadowWorkerStep
 *		Do what can be done without waiting: take queued jobs up to
 *		llm_canary.shadow_concurrency (their transfers start on the worker's
 *		multi loop, whose completions arrive through ShadowTransferDone),
 *		and write the rows of finished jobs.  Caller must not be in a
 *		transaction.
 */
void
ShadowWorkerStep(void)
{
	if (!shadow_worker_ready)
		return;
	Assert(!IsTransactionState());
	ShadowTakeJobs();
	ShadowWriteFinished(false);
}

/*
 * ShadowWorkerTimeoutMs
 *		How long the worker may sleep: default_ms, or less when libcurl has
 *		a timer due or a finished job waits for its old half.
 */
long
ShadowWorkerTimeoutMs(long default_ms)
{
	long		t = default_ms;
	dlist_iter	it;

	if (!shadow_worker_ready)
		return t;

	/*
	 * Queued jobs and room to start them: do not sleep.  Backends set our
	 * latch when they queue a job, but once a burst is queued nobody does,
	 * and sleeping the default interval between takes capped the drain at
	 * shadow_concurrency jobs per interval.  An unlocked read of an int is
	 * enough for a hint; ShadowTakeJobs takes the lock.
	 */
	if (shadow_running < shadow_concurrency && ShadowState->npending > 0)
		t = 0;
	dlist_foreach(it, &shadow_jobs)
	{
		ShadowJob  *job = dlist_container(ShadowJob, node, it.cur);

		if (job->done)
		{
			/* poll for a vanished backend; the grace period bounds it */
			t = Min(t, SHADOW_LIVENESS_POLL_MS);
			break;
		}
	}
	return Max(t, 0);
}

/*
 * ShadowWorkerShutdown
 *		Record every job the worker holds: transfers still running as
 *		new_error "shutdown", queued jobs too (nobody would run them), old
 *		halves not in as "missing".  Call from the worker loop on a shutdown
 *		request, outside a transaction, before TransfersShutdown.
 */
void
ShadowWorkerShutdown(void)
{
	TimestampTz now;
	dlist_iter	it;
	int			ntaken = 0;
	int		   *pending;
	uint64	   *seqs;
	dsa_area   *area;

	if (!shadow_worker_ready)
		return;

	/* collect what finished meanwhile, then stop the rest */
	TransfersRun(NULL, 0);
	now = GetCurrentTimestamp();
	dlist_foreach(it, &shadow_jobs)
	{
		ShadowJob  *job = dlist_container(ShadowJob, node, it.cur);

		if (!job->done)
		{
			ShadowJobReleaseCurl(job);
			ShadowJobFinish(job, "shutdown", now);
		}
		else if (job->embed_state == SHADOW_EMBED_RUNNING)
		{
			ShadowJobReleaseCurl(job);
			job->embed_state = SHADOW_EMBED_FAILED;
		}
	}

	/* queued jobs: record them, no one else would (nothing allocated under the lock) */
	area = ShadowArea(true);
	pending = palloc(sizeof(int) * ShadowState->nslots);
	seqs = palloc(sizeof(uint64) * ShadowState->nslots);
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	ShadowState->worker_serving = false;	/* jobs queue for the next worker */
	ShadowState->serving_pid = 0;
	for (int i = 0; i < ShadowState->nslots; i++)
	{
		ShadowSlot *slot = &ShadowState->slots[i];

		if (slot->state != SHADOW_SLOT_PENDING)
			continue;
		slot->state = SHADOW_SLOT_RUNNING;
		slot->new_done = true;
		ShadowState->npending--;
		pending[ntaken] = i;
		seqs[ntaken] = slot->seq;
		ntaken++;
	}
	dlist_foreach(it, &shadow_jobs)
	{
		ShadowJob  *job = dlist_container(ShadowJob, node, it.cur);

		ShadowState->slots[job->slotno].new_done = true;
	}
	LWLockRelease(ShadowState->lock);

	for (int k = 0; k < ntaken; k++)
	{
		ShadowSlot *slot = &ShadowState->slots[pending[k]];
		ShadowJob  *job = ShadowJobCreate(pending[k], seqs[k]);

		strlcpy(job->new_model, slot->new_model, sizeof(job->new_model));
		job->prompt_len = slot->prompt_len;
		job->prompt = MemoryContextAlloc(job->cxt, slot->prompt_len + 1);
		memcpy(job->prompt, dsa_get_address(area, slot->prompt), slot->prompt_len + 1);
		ShadowJobFinish(job, "shutdown", now);
	}

	ShadowWriteFinished(true);

	/* every job was written (or lost) and destroyed */
	Assert(dlist_is_empty(&shadow_jobs));
	MemoryContextDelete(ShadowWorkerContext);
	ShadowWorkerContext = NULL;
	shadow_worker_ready = false;
	if (ntaken > 0)
		elog(LOG, "llm_canary recorded %d queued shadow jobs as \"shutdown\"", ntaken);
}
