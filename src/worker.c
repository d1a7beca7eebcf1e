/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The llm_canary background worker.
 *
 * One worker per cluster, connected to llm_canary.database_name.  Its loop,
 * in the pg_cron style (one memory context reset per iteration, writes as
 * StartTransactionCommand / SPI / CommitTransactionCommand):
 *
 *	 - write the metrics queue to canary_requests, up to WORKER_BATCH_MAX
 *	   records per transaction, with ONE parameterised INSERT ... SELECT FROM
 *	   unnest($1, ..., $20) per batch.  Records leave the queue only after
 *	   their transaction committed: a failed write (counted in write_errors)
 *	   keeps them queued and is retried with backoff, so records are neither
 *	   lost nor written twice;
 *	 - while llm_canary is not installed in the database, leave the records
 *	   queued (state waiting_for_extension) and look again every second;
 *	 - once a day, and when it first finds the extension, run
 *	   canary_maintenance() (partitions ahead, retention);
 *	 - every llm_canary.check_interval, run canary_check() (the kill switch);
 *	 - about once a second, deliver pending alerts to the webhook (webhook.c);
 *	 - drive the shadow calls (see WorkerShadowCalls);
 *	 - sleep until the latch is set (queue a quarter full, canary_flush) or
 *	   llm_canary.flush_interval_ms passed.
 *
 * SIGHUP rereads the configuration; SIGTERM drains the whole queue, then
 * exits with code 1, so that a worker terminated by an administrator is
 * restarted after bgw_restart_time (at shutdown nothing is restarted).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procsignal.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "extension.h"
#include "fleet.h"
#include "metrics.h"
#include "shadow.h"
#include "webhook.h"
#include "worker.h"

#define WORKER_BATCH_MAX			2000	/* records per transaction */
#define WORKER_EXTENSION_RECHECK_MS 1000
#define WORKER_BACKOFF_MIN_MS		100
#define WORKER_BACKOFF_MAX_MS		5000
#define WORKER_DRAIN_ATTEMPTS		3	/* failed writes tolerated at exit */
#define WORKER_MAINTENANCE_RETRY_MS (10 * 60 * 1000)
#define WORKER_MAX_EVENTS			64	/* latch, postmaster, sockets */

/* Result of one write transaction. */
typedef enum WriteResult
{
	WRITE_OK,
	WRITE_NO_EXTENSION,			/* llm_canary is not installed here */
	WRITE_FAILED				/* the transaction raised an error */
} WriteResult;

#define CANARY_REQUESTS_COLUMNS \
	"request_id, ts, canary, stage, user_id, cohort, model, outcome, " \
	"http_status, latency_ms, prompt_tokens, completion_tokens, " \
	"response_chars, refusal, prompt_class, prompt_hash, fallback, error, cost, " \
	"cached"
#define CANARY_REQUESTS_NCOLUMNS 20

static volatile sig_atomic_t got_sigterm = false;

static MemoryContext LoopContext = NULL;
static CanaryMetricRecord *Batch = NULL;	/* WORKER_BATCH_MAX records */
static WaitEvent ReadyEvents[WORKER_MAX_EVENTS];
static int	NumReadyEvents = 0;

/* SIGTERM: ask the loop to drain and exit. */
static void
WorkerSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* settings */
static char *canary_database_name = NULL;
static int	canary_flush_interval_ms = 100;
static int	canary_check_interval = 30;
static int	canary_retention_days = 30;

/*
 * WorkerInit
 *		Define the worker's settings and, while shared_preload_libraries is
 *		being processed, register the worker with the postmaster.  Caller:
 *		_PG_init.  The database can only be chosen while preloading; loaded
 *		later, the library leaves that setting undefined.
 */
void
WorkerInit(void)
{
	BackgroundWorker worker;

	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("llm_canary.database_name",
								   "Sets the database the llm_canary background worker writes metrics to.",
								   "canary_call works only in this database, since the worker records its metrics there.",
								   &canary_database_name,
								   "postgres",
								   PGC_POSTMASTER,
								   0,
								   NULL, NULL, NULL);

	DefineCustomIntVariable("llm_canary.flush_interval_ms",
							"Sets how often the background worker writes queued metrics.",
							"The worker also writes as soon as the queue is a quarter full or canary_flush() is called.",
							&canary_flush_interval_ms,
							100, 10, 60000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm_canary.check_interval",
							"Sets how often the background worker runs canary_check, in seconds.",
							"0 disables the worker's check; pg_cron's minute job still runs.",
							&canary_check_interval,
							30, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	/* read by canary_maintenance(), which this worker runs daily */
	DefineCustomIntVariable("llm_canary.retention_days",
							"Sets how many days of metrics, shadow rows and kill-switch window summaries canary_maintenance() keeps.",
							"Older daily partitions are dropped and older window summaries deleted; 0 keeps everything.",
							&canary_retention_days,
							30, 0, 36500,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* metrics are written, so not before the server accepts writes */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	strlcpy(worker.bgw_library_name, LLM_CANARY_EXTNAME, BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "CanaryWorkerMain", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "llm_canary worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "llm_canary worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

const char *
WorkerDatabaseName(void)
{
	return canary_database_name;
}

/* A one-dimensional array of n elements of type elemtype. */
static Datum
MakeArray(Oid elemtype, Datum *values, bool *nulls, int n)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1];
	int			lbs[1] = {1};

	dims[0] = n;
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}

/* Text datum of a NUL-terminated buffer; "" is NULL when empty_is_null. */
static void
SetText(Datum *value, bool *isnull, const char *s, bool empty_is_null)
{
	*isnull = (empty_is_null && s[0] == '\0');
	*value = *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

static void
SetInt(Datum *value, bool *isnull, int32 v, bool null_cond)
{
	*isnull = null_cond;
	*value = Int32GetDatum(v);
}

/*
 * WorkerInsertBatch
 *		INSERT n records into <schema>.canary_requests with one statement.
 *		Caller must be in a transaction with SPI connected and a snapshot;
 *		allocates in the current (transaction) memory context.
 */
static void
WorkerInsertBatch(const char *schema, const CanaryMetricRecord *recs, int n)
{
	static const Oid elemtypes[CANARY_REQUESTS_NCOLUMNS] = {
		UUIDOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID, BOOLOID,
		TEXTOID, TEXTOID, BOOLOID, TEXTOID, FLOAT8OID, BOOLOID
	};
	static const Oid argtypes[CANARY_REQUESTS_NCOLUMNS] = {
		UUIDARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		INT4ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, BOOLARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID,
		BOOLARRAYOID
	};
	Datum	   *values[CANARY_REQUESTS_NCOLUMNS];
	bool	   *nulls[CANARY_REQUESTS_NCOLUMNS];
	Datum		args[CANARY_REQUESTS_NCOLUMNS];
	char	   *sql;
	int			ret;

	for (int c = 0; c < CANARY_REQUESTS_NCOLUMNS; c++)
	{
		values[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
	}

	for (int i = 0; i < n; i++)
	{
		const CanaryMetricRecord *r = &recs[i];

		values[0][i] = UUIDPGetDatum(&r->request_id);
		values[1][i] = TimestampTzGetDatum(r->ts);
		SetText(&values[2][i], &nulls[2][i], r->canary, false);
		SetText(&values[3][i], &nulls[3][i], r->stage, true);
		SetText(&values[4][i], &nulls[4][i], r->user_id, false);
		SetText(&values[5][i], &nulls[5][i], r->cohort, true);
		SetText(&values[6][i], &nulls[6][i], r->model, true);
		SetText(&values[7][i], &nulls[7][i],
				CanaryOutcomeName((CanaryOutcome) r->outcome), false);
		SetInt(&values[8][i], &nulls[8][i], r->http_status, r->http_status == 0);
		SetInt(&values[9][i], &nulls[9][i], r->latency_ms, false);
		SetInt(&values[10][i], &nulls[10][i], r->prompt_tokens, r->prompt_tokens < 0);
		SetInt(&values[11][i], &nulls[11][i], r->completion_tokens, r->completion_tokens < 0);
		SetInt(&values[12][i], &nulls[12][i], r->response_chars, r->response_chars < 0);
		values[13][i] = BoolGetDatum(r->refusal);
		SetText(&values[14][i], &nulls[14][i], r->prompt_class, true);
		SetText(&values[15][i], &nulls[15][i], r->prompt_hash, true);
		values[16][i] = BoolGetDatum(r->fallback);
		SetText(&values[17][i], &nulls[17][i], r->error, true);
		values[18][i] = Float8GetDatum(r->cost);
		values[19][i] = BoolGetDatum(r->cached);
	}
	for (int c = 0; c < CANARY_REQUESTS_NCOLUMNS; c++)
		args[c] = MakeArray(elemtypes[c], values[c], nulls[c], n);

	sql = psprintf("INSERT INTO %s.canary_requests (" CANARY_REQUESTS_COLUMNS ")"
				   " SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[],"
				   " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
				   " $9::int4[], $10::int4[], $11::int4[], $12::int4[], $13::int4[],"
				   " $14::bool[], $15::text[], $16::text[], $17::bool[], $18::text[],"
				   " $19::float8[], $20::bool[])",
				   schema);
	ret = SPI_execute_with_args(sql, CANARY_REQUESTS_NCOLUMNS, (Oid *) argtypes,
								args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not write metrics: SPI_execute_with_args returned %s",
			 SPI_result_code_string(ret));
}

/*
 * WorkerCheck
 *		Run <schema>.canary_check() for every rollout, so that detection does
 *		not wait for pg_cron's minute (llm_canary.check_interval).  A trip is
 *		logged; the alert itself is written by canary_check.
 *		Caller must be in a transaction with SPI connected and a snapshot.
 */
static void
WorkerCheck(const char *schema)
{
	char	   *sql;
	bool		isnull;
	Datum		reason;

	if (SPI_execute("SET LOCAL lock_timeout = '5s'", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set lock_timeout");
	sql = psprintf("SELECT %s.canary_check()", schema);
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run canary_check()");
	reason = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		ereport(LOG,
				(errmsg("llm_canary kill switch tripped: %s",
						TextDatumGetCString(reason))));
}

/*
 * WorkerMaintain
 *		Run <schema>.canary_maintenance() with a lock timeout, so that a busy
 *		table delays partition creation rather than the metrics.  Returns the
 *		start of the next day (in the server's time zone).
 *		Caller must be in a transaction with SPI connected and a snapshot.
 */
static TimestampTz
WorkerMaintain(const char *schema)
{
	char	   *sql;
	bool		isnull;
	Datum		next;

	if (SPI_execute("SET LOCAL lock_timeout = '5s'", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set lock_timeout");
	sql = psprintf("SELECT count(*) FROM %s.canary_maintenance()", schema);
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run canary_maintenance()");
	if (SPI_execute("SELECT (current_date + 1)::timestamptz", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not compute the next maintenance time");
	next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return DatumGetTimestampTz(next);
}

/*
 * WorkerTransaction
 *		One transaction of the worker: resolve the extension's schema, then
 *		write the n records in recs (n may be 0: only look for the
 *		extension), or run one of the periodic jobs instead.
 *
 * Errors are reported to the log and swallowed: the transaction is aborted
 * and WRITE_FAILED returned.  Returns with CurrentMemoryContext set to
 * LoopContext.  *next_maintenance is set after a successful maintenance.
 */
/* What one worker transaction does besides looking for the extension. */
typedef enum WorkerJob
{
	WORKER_JOB_WRITE,			/* write a batch of metrics */
	WORKER_JOB_MAINTAIN,		/* canary_maintenance() */
	WORKER_JOB_CHECK,			/* canary_check() */
	WORKER_JOB_WEBHOOK,			/* deliver pending alerts */
	WORKER_JOB_FLEET			/* fleet heartbeat or member report */
} WorkerJob;

static WriteResult
WorkerTransaction(const CanaryMetricRecord *recs, int n, WorkerJob job,
				  TimestampTz *next_maintenance)
{
	volatile WriteResult result = WRITE_OK;

	SetCurrentStatementStartTimestamp();
	PG_TRY();
	{
		Oid			extoid;
		Oid			nspoid = InvalidOid;

		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING,
							   job == WORKER_JOB_MAINTAIN ? "llm_canary: partition maintenance" :
							   job == WORKER_JOB_CHECK ? "llm_canary: kill-switch check" :
							   job == WORKER_JOB_WEBHOOK ? "llm_canary: alert webhook" :
							   job == WORKER_JOB_FLEET ? "llm_canary: fleet heartbeat" :
							   "llm_canary: writing metrics");

		extoid = get_extension_oid(LLM_CANARY_EXTNAME, true);
		if (OidIsValid(extoid))
			nspoid = CanaryExtensionNamespace(extoid);
		if (!OidIsValid(nspoid))
			result = WRITE_NO_EXTENSION;
		else
		{
			const char *schema = quote_identifier(get_namespace_name(nspoid));

			if (job == WORKER_JOB_MAINTAIN)
				*next_maintenance = WorkerMaintain(schema);
			else if (job == WORKER_JOB_CHECK)
				WorkerCheck(schema);
			else if (job == WORKER_JOB_WEBHOOK)
				WebhookDeliverPending(schema);
			else if (job == WORKER_JOB_FLEET)
				FleetWorkerStep(schema);
			else if (n > 0)
				WorkerInsertBatch(schema, recs, n);
		}

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(LoopContext);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		result = WRITE_FAILED;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(LoopContext);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return result;
}

/*
 * WorkerWriteQueued
 *		Write the queue in batches until it is empty or a write does not
 *		succeed; records are consumed only after their batch committed.
 */
static WriteResult
WorkerWriteQueued(void)
{
	for (;;)
	{
		int			n = MetricsQueueFetch(Batch, WORKER_BATCH_MAX);
		WriteResult result;

		if (n == 0)
			return WRITE_OK;
		result = WorkerTransaction(Batch, n, WORKER_JOB_WRITE, NULL);
		if (result != WRITE_OK)
		{
			if (result == WRITE_FAILED)
				MetricsQueueWriteFailed();
			return result;
		}
		MetricsQueueConsume(n);
		if (n < WORKER_BATCH_MAX)
			return WRITE_OK;
	}
}

/*
 * Shadow calls (shadow_worker.c) run from this same loop, so that shadow
 * requests never block the metrics writes:
 *	 - WorkerShadowAddWaitEvents() is called before each sleep; it adds the
 *	   sockets libcurl wants watched and shortens *timeout_ms to libcurl's
 *	   timer;
 *	 - WorkerShadowCalls() is called once per iteration: it starts newly
 *	   queued shadow requests, drives the transfers and writes finished rows.
 */
static void
WorkerShadowAddWaitEvents(WaitEventSet *set, long *timeout_ms)
{
	ShadowWorkerAddWaitEvents(set);
	*timeout_ms = ShadowWorkerTimeoutMs(*timeout_ms);
}

static void
WorkerShadowCalls(const WaitEvent *ready, int nready)
{
	ShadowWorkerStep();
}

/*
 * WorkerWait
 *		Sleep until the latch is set, a watched socket is ready or timeout_ms
 *		passed; exit if the postmaster dies.  The wait-event set lives in
 *		LoopContext and is freed here (it holds a kernel descriptor).
 */
static void
WorkerWait(long timeout_ms)
{
	WaitEventSet *set = CreateWaitEventSet(LoopContext,
										   2 + ShadowWorkerWaitEventCount());

	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	WorkerShadowAddWaitEvents(set, &timeout_ms);
	NumReadyEvents = WaitEventSetWait(set, timeout_ms, ReadyEvents,
									  Min(WORKER_MAX_EVENTS, 2 + ShadowWorkerWaitEventCount()),
									  PG_WAIT_EXTENSION);
	FreeWaitEventSet(set);
	ResetLatch(MyLatch);

	/*
	 * The loop has no CHECK_FOR_INTERRUPTS (SIGTERM has a handler of its
	 * own), so absorb barriers here: DROP DATABASE and DROP TABLESPACE wait
	 * for every backend to absorb theirs, forever while this one sleeps.
	 */
	if (ProcSignalBarrierPending)
		ProcessProcSignalBarrier();
}

/* Write what is left at SIGTERM; give up after a few failed writes. */
static void
WorkerDrain(bool extension_known)
{
	int			failures = 0;
	uint64		left;

	MetricsWorkerSetState(CANARY_WORKER_STOPPING);
	for (;;)
	{
		WriteResult result = WorkerWriteQueued();

		if (result == WRITE_OK || result == WRITE_NO_EXTENSION ||
			++failures >= WORKER_DRAIN_ATTEMPTS)
			break;
		pg_usleep(WORKER_BACKOFF_MIN_MS * 1000L);
	}
	left = MetricsQueueDepth();
	if (left > 0)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_canary worker is exiting with %llu unwritten metric records",
						(unsigned long long) left),
				 errdetail("The records were lost: %s.",
						   extension_known ? "writing them failed" :
						   "the extension llm_canary is not installed in the worker's database")));
}

/*
 * CanaryWorkerMain
 *		Entry point of the worker; see the file header.
 */
void
CanaryWorkerMain(Datum main_arg)
{
	bool		extension_known = false;
	TimestampTz next_extension_check = 0;
	TimestampTz next_retry = 0;
	TimestampTz next_maintenance = 0;
	TimestampTz next_check = 0;
	TimestampTz next_webhook = 0;
	TimestampTz next_fleet = 0;
	int			backoff_ms = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, WorkerSigterm);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(canary_database_name, NULL, 0);
	MetricsWorkerAttach(MyDatabaseId);
	ShadowWorkerInit();
	pgstat_report_appname("llm_canary worker");

	LoopContext = AllocSetContextCreate(TopMemoryContext,
										"llm_canary worker loop",
										ALLOCSET_DEFAULT_SIZES);
	Batch = MemoryContextAlloc(TopMemoryContext,
							   sizeof(CanaryMetricRecord) * WORKER_BATCH_MAX);
	ereport(LOG,
			(errmsg("llm_canary worker started, writing metrics to database \"%s\"",
					canary_database_name)));

	while (!got_sigterm)
	{
		TimestampTz now;
		bool		flush_requested;

		MemoryContextReset(LoopContext);
		MemoryContextSwitchTo(LoopContext);

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		now = GetCurrentTimestamp();
		flush_requested = MetricsTakeFlushRequest();

		/* is the extension (still) there? */
		if (!extension_known && (now >= next_extension_check || flush_requested))
		{
			if (WorkerTransaction(NULL, 0, WORKER_JOB_WRITE, NULL) == WRITE_OK)
			{
				extension_known = true;
				backoff_ms = 0;
				next_maintenance = 0;	/* maintain as soon as it appears */
				MetricsWorkerSetState(CANARY_WORKER_RUNNING);
			}
			else
			{
				MetricsWorkerSetState(CANARY_WORKER_WAITING_FOR_EXTENSION);
				next_extension_check =
					TimestampTzPlusMilliseconds(now, WORKER_EXTENSION_RECHECK_MS);
			}
		}

		/* the metrics */
		if (extension_known &&
			(backoff_ms == 0 || now >= next_retry || flush_requested))
		{
			switch (WorkerWriteQueued())
			{
				case WRITE_OK:
					backoff_ms = 0;
					break;
				case WRITE_NO_EXTENSION:
					extension_known = false;
					MetricsWorkerSetState(CANARY_WORKER_WAITING_FOR_EXTENSION);
					next_extension_check =
						TimestampTzPlusMilliseconds(now, WORKER_EXTENSION_RECHECK_MS);
					break;
				case WRITE_FAILED:
					backoff_ms = Min(Max(backoff_ms * 2, WORKER_BACKOFF_MIN_MS),
									 WORKER_BACKOFF_MAX_MS);
					next_retry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 backoff_ms);
					ereport(LOG,
							(errmsg("llm_canary worker could not write metrics, retrying in %d ms",
									backoff_ms),
							 errdetail("%llu records stay queued until a write succeeds.",
									   (unsigned long long) MetricsQueueDepth())));
					break;
			}
		}

		/* partitions, once a day */
		if (extension_known && GetCurrentTimestamp() >= next_maintenance)
		{
			if (WorkerTransaction(NULL, 0, WORKER_JOB_MAINTAIN, &next_maintenance) != WRITE_OK)
				next_maintenance = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															   WORKER_MAINTENANCE_RETRY_MS);
		}

		/* the fleet: heartbeat on the control, state report on a member */
		if (extension_known && FleetWorkerIntervalMs() > 0 &&
			GetCurrentTimestamp() >= next_fleet)
		{
			(void) WorkerTransaction(NULL, 0, WORKER_JOB_FLEET, NULL);
			next_fleet = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 FleetWorkerIntervalMs());
		}

		/* the kill switch, every llm_canary.check_interval (not on a fleet member) */
		if (extension_known && canary_check_interval > 0 && FleetJudgesRollouts() &&
			GetCurrentTimestamp() >= next_check)
		{
			(void) WorkerTransaction(NULL, 0, WORKER_JOB_CHECK, NULL);
			next_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 canary_check_interval * 1000L);
		}

		/* alert webhooks, about once a second, after the trips committed */
		if (extension_known && GetCurrentTimestamp() >= next_webhook)
		{
			(void) WorkerTransaction(NULL, 0, WORKER_JOB_WEBHOOK, NULL);
			next_webhook = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}

		WorkerShadowCalls(ReadyEvents, NumReadyEvents);

		if (!got_sigterm)
			WorkerWait(canary_flush_interval_ms);
	}

	ShadowWorkerShutdown();
	WorkerDrain(extension_known);
	ereport(LOG,
			(errmsg("llm_canary worker stopped")));
	proc_exit(1);
}
