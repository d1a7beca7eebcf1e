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

typedef enum CanaryOutcome
{
	CANARY_OUTCOME_OK,
	CANARY_OUTCOME_REFUSAL,
	CANARY_OUTCOME_ERROR,
	CANARY_OUTCOME_TIMEOUT
} CanaryOutcome;

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
	int16		http_status;	/* 0 = NULL (no HTTP response) */
	int32		latency_ms;
	int32		prompt_tokens;	/* -1 = NULL */
	int32		completion_tokens;	/* -1 = NULL */
	int32		response_chars;
	double		cost;			/* from the model's prices; 0 if unknown */
} CanaryMetricRecord;

extern const char *CanaryOutcomeName(CanaryOutcome outcome);

/* shared memory set-up, called from _PG_init / shmem hooks */
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

#endif							/* LLM_CANARY_METRICS_H */
