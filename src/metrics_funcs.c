/*-------------------------------------------------------------------------
 *
 * metrics_funcs.c
 *	  SQL functions of the metrics queue: canary_record (enqueue a synthetic
 *	  attempt through the real queue), canary_flush (wait for the worker),
 *	  canary_stats and canary_backend_stats (counters).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "config.h"
#include "extension.h"
#include "metrics.h"
#include "shadow.h"
#include "util.h"
#include "worker.h"

/* Copy a text argument into a fixed buffer, clipped at a character boundary. */
static void
CopyClipped(char *dst, int dstsize, text *src)
{
	CanaryClipCopy(dst, dstsize, VARDATA_ANY(src), VARSIZE_ANY_EXHDR(src));
}

/* Raise 22004 when argument argno (1-based, named name) is NULL. */
static void
RequireArg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno - 1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
}

/*
 * canary_record(canary, user_id, model, cohort, outcome, latency_ms, ts,
 *				 refusal, http_status, prompt_tokens, completion_tokens,
 *				 prompt_class, error, stage) RETURNS uuid
 *
 * Enqueue one synthetic model attempt through the real metrics queue, as
 * canary_call would after calling a model, and return its request_id; NULL
 * when the queue stayed full and the record was dropped.  outcome 'refusal'
 * implies refusal = true.
 */
PG_FUNCTION_INFO_V1(canary_record);
Datum
canary_record(PG_FUNCTION_ARGS)
{
	CanaryMetricRecord rec;
	char		buf[NAMEDATALEN];
	CanaryOutcome outcome;
	pg_uuid_t  *result;

	MetricsRequireWorkerDatabase();

	RequireArg(fcinfo, 1, "canary");
	RequireArg(fcinfo, 2, "user_id");
	RequireArg(fcinfo, 3, "model");
	RequireArg(fcinfo, 4, "cohort");
	RequireArg(fcinfo, 5, "outcome");
	RequireArg(fcinfo, 6, "latency_ms");
	RequireArg(fcinfo, 7, "ts");
	RequireArg(fcinfo, 8, "refusal");

	memset(&rec, 0, sizeof(rec));
	CanaryNewRequestId(&rec.request_id);
	rec.dboid = MyDatabaseId;
	CopyClipped(rec.canary, sizeof(rec.canary), PG_GETARG_TEXT_PP(0));
	CopyClipped(rec.user_id, sizeof(rec.user_id), PG_GETARG_TEXT_PP(1));
	CopyClipped(rec.model, sizeof(rec.model), PG_GETARG_TEXT_PP(2));

	CopyClipped(buf, sizeof(buf), PG_GETARG_TEXT_PP(3));
	if (strcmp(buf, "canary") != 0 && strcmp(buf, "control") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid cohort \"%s\"", buf),
				 errhint("Valid cohorts are: canary (served by the new model), control (served by the old model).")));
	strlcpy(rec.cohort, buf, sizeof(rec.cohort));

	CopyClipped(buf, sizeof(buf), PG_GETARG_TEXT_PP(4));
	if (!CanaryOutcomeFromName(buf, &outcome))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid outcome \"%s\"", buf),
				 errhint(CANARY_OUTCOME_NAMES_HINT)));
	rec.outcome = (uint8) outcome;

	rec.latency_ms = PG_GETARG_INT32(5);
	if (rec.latency_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("latency_ms must not be negative")));
	rec.ts = PG_GETARG_TIMESTAMPTZ(6);
	if (TIMESTAMP_NOT_FINITE(rec.ts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ts must be a finite timestamp")));
	rec.refusal = PG_GETARG_BOOL(7) || rec.outcome == CANARY_OUTCOME_REFUSAL;

	if (!PG_ARGISNULL(8))
	{
		int32		status = PG_GETARG_INT32(8);

		if (status < 100 || status > 599)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("http_status %d is out of range", status),
					 errhint("Use an HTTP status between 100 and 599, or NULL when no response arrived.")));
		rec.http_status = (int16) status;
	}
	rec.prompt_tokens = PG_ARGISNULL(9) ? -1 : PG_GETARG_INT32(9);
	rec.completion_tokens = PG_ARGISNULL(10) ? -1 : PG_GETARG_INT32(10);
	if ((!PG_ARGISNULL(9) && rec.prompt_tokens < 0) ||
		(!PG_ARGISNULL(10) && rec.completion_tokens < 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("token counts must not be negative")));
	if (!PG_ARGISNULL(11))
		CopyClipped(rec.prompt_class, sizeof(rec.prompt_class), PG_GETARG_TEXT_PP(11));
	if (!PG_ARGISNULL(12))
		CopyClipped(rec.error, sizeof(rec.error), PG_GETARG_TEXT_PP(12));
	if (!PG_ARGISNULL(13))
		CopyClipped(rec.stage, sizeof(rec.stage), PG_GETARG_TEXT_PP(13));
	rec.response_chars = -1;
	{
		const CanaryModel *m = ConfigLookupModel(rec.model, true);

		rec.cost = m ? CanaryAttemptCost(m, rec.prompt_tokens, rec.completion_tokens) : 0;
	}

	MetricsCountCall();
	if (!MetricsEnqueue(&rec))
		PG_RETURN_NULL();

	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &rec.request_id, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

/* Milliseconds of a non-negative interval (a month counts 30 days). */
static long
IntervalMs(Interval *iv)
{
	int64		ms;

	ms = iv->time / 1000 +
		((int64) iv->day + (int64) iv->month * DAYS_PER_MONTH) * (USECS_PER_DAY / 1000);
	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	return (long) Min(ms, (int64) INT_MAX);
}

/*
 * canary_flush(timeout interval) RETURNS bigint
 *
 * Wait until every record enqueued before the call was written by the
 * worker and the worker is running; return the records written since
 * startup.  55000 when the worker
 * does not serve this database or did not run during the wait, 57014 on
 * cancel or when the timeout passed first.
 */
PG_FUNCTION_INFO_V1(canary_flush);
Datum
canary_flush(PG_FUNCTION_ARGS)
{
	long		timeout_ms;
	uint64		target;
	MetricsQueueStats stats;

	RequireArg(fcinfo, 1, "timeout");
	timeout_ms = IntervalMs(PG_GETARG_INTERVAL_P(0));
	MetricsRequireWorkerDatabase();

	target = MetricsEnqueuedSoFar();
	MetricsRequestFlush();
	if (!MetricsWaitWritten(target, timeout_ms))
	{
		(void) MetricsQueueGetStats(&stats);
		if (stats.worker_pid == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the llm_canary background worker is not running"),
					 errdetail("%llu metric records are queued.",
							   (unsigned long long) stats.depth),
					 errhint("Check the server log: the worker is restarted 5 seconds after it exits.")));
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("timed out waiting for the llm_canary worker to write queued metrics"),
				 errdetail("%llu records are still queued; the worker is %s and has failed %llu writes.",
						   (unsigned long long) stats.depth,
						   CanaryWorkerStateName(stats.worker_state),
						   (unsigned long long) stats.write_errors),
				 errhint("Check the server log for errors of the llm_canary worker, or pass a longer timeout.")));
	}
	/* and the shadow rows of the calls made before this one */
	if (!ShadowWaitIdle(timeout_ms))
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("timed out waiting for the llm_canary worker to finish shadow calls"),
				 errhint("canary_shadow_stats() shows the jobs in flight; shadow calls wait up to the new model's timeout_ms.")));
	(void) MetricsQueueGetStats(&stats);
	PG_RETURN_INT64((int64) stats.written);
}

/*
 * canary_wait_metrics(timeout interval) RETURNS boolean
 *
 * Wait at most timeout until every metric record enqueued before the call
 * was written; unlike canary_flush, never for shadow jobs, and never an
 * error (but 57014 on cancel): false when the worker did not write them in
 * time or does not serve this database.  canary_feedback waits with it.
 */
PG_FUNCTION_INFO_V1(canary_wait_metrics);
Datum
canary_wait_metrics(PG_FUNCTION_ARGS)
{
	long		timeout_ms = IntervalMs(PG_GETARG_INTERVAL_P(0));
	char	   *dbname;
	uint64		target;

	if (!CanaryLibraryPreloaded())
		PG_RETURN_BOOL(false);
	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || WorkerDatabaseName() == NULL ||
		strcmp(dbname, WorkerDatabaseName()) != 0)
		PG_RETURN_BOOL(false);
	target = MetricsEnqueuedSoFar();
	MetricsRequestFlush();
	PG_RETURN_BOOL(MetricsWaitWritten(target, timeout_ms));
}

/*
 * canary_stats() RETURNS TABLE (queue_capacity, queue_depth, enqueued,
 *		dropped, written, write_errors, batches, last_write_at, worker_pid,
 *		worker_state, database)
 */
PG_FUNCTION_INFO_V1(canary_stats);
Datum
canary_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MetricsQueueStats s;
	Datum		values[11];
	bool		nulls[11];

	CanaryRequirePreload("canary_stats()");
	InitMaterializedSRF(fcinfo, 0);
	(void) MetricsQueueGetStats(&s);

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(s.capacity);
	values[1] = Int64GetDatum((int64) s.depth);
	values[2] = Int64GetDatum((int64) s.enqueued);
	values[3] = Int64GetDatum((int64) s.dropped);
	values[4] = Int64GetDatum((int64) s.written);
	values[5] = Int64GetDatum((int64) s.write_errors);
	values[6] = Int64GetDatum((int64) s.batches);
	values[7] = TimestampTzGetDatum(s.last_write_at);
	nulls[7] = (s.last_write_at == 0);
	values[8] = Int32GetDatum(s.worker_pid);
	nulls[8] = (s.worker_pid == 0);
	values[9] = CStringGetTextDatum(CanaryWorkerStateName(s.worker_state));
	values[10] = CStringGetTextDatum(WorkerDatabaseName() ? WorkerDatabaseName() : "");
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * canary_backend_stats() RETURNS TABLE (pid, calls)
 *		Calls counted per live backend since it started.
 */
PG_FUNCTION_INFO_V1(canary_backend_stats);
Datum
canary_backend_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			max;
	int		   *pids;
	uint64	   *calls;
	int			n;

	CanaryRequirePreload("canary_backend_stats()");
	InitMaterializedSRF(fcinfo, 0);
	max = MetricsBackendSlots();
	pids = palloc(sizeof(int) * Max(max, 1));
	calls = palloc(sizeof(uint64) * Max(max, 1));
	n = MetricsBackendCalls(pids, calls, max);
	for (int i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = Int32GetDatum(pids[i]);
		values[1] = Int64GetDatum((int64) calls[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
