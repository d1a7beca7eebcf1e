/*-------------------------------------------------------------------------
 *
 * metrics.h
 *	  The metrics queue: fixed-size records that the call path puts into
 *	  shared memory and the background worker writes to canary_requests in
 *	  batches, independent of the caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_METRICS_H
#define LLM_CANARY_METRICS_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/uuid.h"

#include "outcome.h"

#define CANARY_USER_ID_MAX		256 /* longer user ids are truncated */
#define CANARY_ERROR_MAX		256
#define CANARY_STAGE_MAX		16
#define CANARY_COHORT_MAX		8
#define CANARY_PROMPT_HASH_LEN	16

/* One model attempt, as written to one row of canary_requests. */
typedef struct CanaryMetricRecord
{
	pg_uuid_t	request_id;
	TimestampTz ts;
	Oid			dboid;			/* database of the caller */
	char		canary[NAMEDATALEN];
	char		stage[CANARY_STAGE_MAX];
	char		cohort[CANARY_COHORT_MAX];	/* "canary" or "control" */
	char		model[NAMEDATALEN];
	char		user_id[CANARY_USER_ID_MAX];
	char		prompt_class[NAMEDATALEN];	/* "" = NULL */
	char		prompt_hash[CANARY_PROMPT_HASH_LEN + 1];
	char		error[CANARY_ERROR_MAX];	/* "" = NULL */
	uint8		outcome;		/* CanaryOutcome */
	bool		refusal;
	bool		fallback;		/* this attempt served a canary user after
								 * the new model failed */
	bool		cached;			/* answered from canary_response_cache */
	int16		http_status;	/* 0 = NULL (no HTTP response) */
	int32		latency_ms;
	int32		prompt_tokens;	/* -1 = NULL */
	int32		completion_tokens;	/* -1 = NULL */
	int32		response_chars; /* -1 = NULL */
	double		cost;			/* from the model's prices; 0 if unknown */
} CanaryMetricRecord;

/* the queue's settings, called from _PG_init */
extern void MetricsInit(void);

/* shared memory set-up, called from the shmem hooks */
extern void MetricsRequestShmem(void);
extern void MetricsInitShmem(void);

/*
 * Put one record into the queue.  Never raises an error and never blocks for
 * longer than llm_canary.queue_full_wait_ms; returns false (and counts a
 * drop) when the queue stayed full.  Requires the library to be preloaded.
 */
extern bool MetricsEnqueue(const CanaryMetricRecord *rec);

/* Raise 55000 unless the worker serves this database. */
extern void MetricsRequireWorkerDatabase(void);

/*
 * Count one call of canary_call (or canary_record) for this backend, shown by
 * canary_backend_stats().  Never raises; a no-op without shared memory.
 */
extern void MetricsCountCall(void);

/* The background worker's life cycle, as shown by canary_stats(). */
typedef enum CanaryWorkerState
{
	CANARY_WORKER_STOPPED,		/* no worker process attached */
	CANARY_WORKER_STARTING,
	CANARY_WORKER_WAITING_FOR_EXTENSION,	/* llm_canary not installed in
											 * its database (yet) */
	CANARY_WORKER_RUNNING,
	CANARY_WORKER_STOPPING		/* SIGTERM: draining the queue */
} CanaryWorkerState;

extern const char *CanaryWorkerStateName(CanaryWorkerState state);

/* A consistent copy of the queue's counters (canary_stats). */
typedef struct MetricsQueueStats
{
	int			capacity;
	uint64		depth;			/* records queued, not yet written */
	uint64		enqueued;		/* records accepted since startup */
	uint64		dropped;		/* records refused because the queue was full */
	uint64		written;		/* records committed by the worker */
	uint64		write_errors;	/* failed batch writes (retried) */
	uint64		batches;		/* committed batches */
	TimestampTz last_write_at;	/* 0 = never */
	int			worker_pid;		/* 0 = not running */
	CanaryWorkerState worker_state;
	Oid			worker_dboid;
} MetricsQueueStats;

extern bool MetricsQueueGetStats(MetricsQueueStats *stats);
extern int	MetricsBackendCalls(int *pids, uint64 *calls, int max);
extern int	MetricsBackendSlots(void);

/*
 * Waiting for the worker (canary_flush): the number of records enqueued so
 * far, a request that the worker write now, and a wait until at least
 * target records were written or timeout_ms passed.
 */
extern uint64 MetricsEnqueuedSoFar(void);
extern void MetricsRequestFlush(void);
extern bool MetricsWaitWritten(uint64 target, long timeout_ms);

/* Wake the worker (the one record of its identity is the queue's). */
extern void MetricsWakeWorker(void);

/* The worker's side of the queue (worker.c).  Only the worker consumes. */
extern void MetricsWorkerAttach(Oid dboid);
extern void MetricsWorkerSetState(CanaryWorkerState state);
extern int	MetricsQueueFetch(CanaryMetricRecord *buf, int max);
extern void MetricsQueueConsume(int n);
extern void MetricsQueueWriteFailed(void);
extern uint64 MetricsQueueDepth(void);
extern bool MetricsTakeFlushRequest(void);

/* metrics_write.c: one batch of records as rows of <schema>.canary_requests */
extern Datum MetricsMakeArray(Oid elemtype, Datum *values, bool *nulls, int n);
extern void MetricsWriteBatch(const char *schema, const CanaryMetricRecord *recs, int n);

#endif							/* LLM_CANARY_METRICS_H */
