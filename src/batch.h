/*-------------------------------------------------------------------------
 *
 * batch.h
 *	  Many calls at once from one process (batch.c): each a CanaryCall
 *	  (call.h) routed, recorded, retried and falling back exactly as a
 *	  single call, its HTTP transfers driven concurrently on one libcurl
 *	  multi handle.  Used by canary_batch (a backend) and by the submission
 *	  worker (submit.c).
 *
 *	  A BatchItem goes: BatchItemBegin (route; a failure ends it at once)
 *	  -> attempts, each from the cache or a transfer (BatchPump drives the
 *	  transfers with their retries and needs no transaction) -> after each
 *	  attempt BatchSettle (in a transaction: record, fall back or finish)
 *	  -> done, with a result or an error.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_BATCH_H
#define LLM_CANARY_BATCH_H

#include "nodes/pg_list.h"

#include "call.h"

typedef enum BatchItemState
{
	BATCH_ITEM_QUEUED,			/* waiting for a transfer slot or its backoff */
	BATCH_ITEM_RUNNING,			/* a transfer is in flight */
	BATCH_ITEM_SETTLE,			/* an attempt ended; BatchSettle decides */
	BATCH_ITEM_DONE
} BatchItemState;

typedef struct BatchItem
{
	int			ord;			/* caller's number (input order) */
	void	   *arg;			/* caller's pointer */
	pg_uuid_t  *preset_request_id;	/* the call's request id, or NULL: new */
	BatchItemState state;
	bool		began;			/* CallBegin succeeded */
	CanaryCall	call;
	CanaryAttempt attempt;		/* the current attempt */

	/* the current transfer (malloc'd libcurl state, see batch.c) */
	void	   *easy;
	struct curl_slist *headers;
	HttpResponse resp;
	char	   *errbuf;
	char	   *url;
	char	   *body;
	int			tries;
	double		attempt_start_ms;	/* on the engine's clock */
	double		retry_at_ms;	/* do not start before this */
	bool		holds_slot;		/* counted in the global limit */

	/* the outcome, once done */
	Jsonb	   *result;			/* NULL when failed */
	ErrorData  *error;			/* NULL when answered */
} BatchItem;

typedef struct BatchEngine BatchEngine;

extern void BatchDefineSettings(void);
extern void BatchRequestShmem(void);
extern void BatchInitShmem(void);

extern BatchEngine *BatchCreate(int concurrency);
extern void BatchItemBegin(BatchEngine *engine, BatchItem *item,
						   Jsonb *request, text *user_id,
						   const char *canary, const char *prompt_class,
						   const char *session_id);
extern void BatchItemFail(BatchItem *item, ErrorData *edata);
extern int	BatchPump(BatchEngine *engine, long timeout_ms);
extern int	BatchSettle(BatchEngine *engine);
extern int	BatchInFlight(BatchEngine *engine);
extern MemoryContext BatchMemoryContext(BatchEngine *engine);
extern int	BatchSubmitWorkerPid(void);
extern void BatchSetSubmitWorkerPid(int pid);
extern void BatchDestroy(BatchEngine *engine);

#endif							/* LLM_CANARY_BATCH_H */
