/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The llm_canary metrics worker: writes the metrics queue to
 *	  canary_requests and runs every outbound transfer of the worker side
 *	  (shadow calls) on one libcurl multi loop.
 *
 * Processes (see launcher.c): the launcher starts this worker and the
 * monitor (monitor_worker.c) once llm_canary.database_name exists.  Nothing
 * here waits on anything slow: the kill-switch check, alert webhooks and
 * partition maintenance, which can take seconds, run in the monitor, so a
 * hanging webhook or a slow check never delays a metric write or a shadow
 * transfer.
 *
 * The loop, in the pg_cron style (one memory context reset per iteration,
 * writes as StartTransactionCommand / SPI / CommitTransactionCommand), is a
 * list of named steps; see CanaryWorkerMain.  Each step is bounded: the
 * metric write is one batch transaction at a time, libcurl only does what
 * its ready sockets allow, and the shadow step writes the rows of jobs that
 * finished.
 *
 * Metric records leave the queue only after their transaction committed: a
 * failed write (counted in write_errors) keeps them queued and is retried
 * with backoff, so records are neither lost nor written twice.  While
 * llm_canary is not installed in the database, the records stay queued
 * (state waiting_for_extension) and the worker looks again every second.
 *
 * SIGHUP rereads the configuration; SIGTERM drains the whole queue, then
 * exits with code 1 (the launcher starts a new worker after
 * WORKER_RESTART_MS; at shutdown nothing is restarted).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/xact.h"
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
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "extension.h"
#include "fleet.h"
#include "metrics.h"
#include "rollups.h"
#include "shadow.h"
#include "srm_writer.h"
#include "transfers.h"
#include "worker.h"

#define WORKER_BATCH_MAX			2000	/* records per transaction */
#define WORKER_BACKOFF_MIN_MS		100
#define WORKER_BACKOFF_MAX_MS		5000
#define WORKER_DRAIN_ATTEMPTS		3	/* failed writes tolerated at exit */
#define WORKER_MAX_EVENTS			64	/* latch, postmaster, sockets */

volatile sig_atomic_t worker_got_sigterm = false;

/* settings */
static char *canary_database_name = NULL;
static int	canary_flush_interval_ms = 100;

static MemoryContext LoopContext = NULL;
static CanaryMetricRecord *Batch = NULL;	/* WORKER_BATCH_MAX records */
static WaitEvent ReadyEvents[WORKER_MAX_EVENTS];
static int	NumReadyEvents = 0;

/* The loop's state between iterations. */
static bool extension_known = false;
static TimestampTz next_extension_check = 0;
static TimestampTz next_write_retry = 0;
static int	write_backoff_ms = 0;
static bool flush_requested = false;
static TimestampTz next_fleet = 0;
static TimestampTz next_fold = 0;

/*
 * WorkerInit
 *		Define the workers' settings and, while shared_preload_libraries is
 *		being processed, register the launcher (which starts the workers).
 *		Caller: _PG_init.  The database can only be chosen while preloading;
 *		loaded later, the library leaves that setting undefined.
 */
void
WorkerInit(void)
{
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

	MonitorDefineSettings();

	if (process_shared_preload_libraries_in_progress)
		LauncherRegister();
}

/* llm_canary.database_name; NULL unless the library was preloaded. */
const char *
WorkerDatabaseName(void)
{
	return canary_database_name;
}

/* SIGTERM: ask the loop to drain and exit. */
void
WorkerSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	worker_got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * WorkerConnect
 *		The start of every llm_canary worker: signal handlers, the
 *		connection to llm_canary.database_name (the launcher saw it exist),
 *		the application name.  bgw_main_arg is the launcher's pid (see
 *		WorkerLauncherGone).
 */
void
WorkerConnect(const char *appname)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, WorkerSigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(canary_database_name, NULL, 0);
	pgstat_report_appname(appname);
}

/*
 * WorkerRunStep
 *		Run fn(schema, arg) in a transaction of its own, with SPI connected
 *		and a snapshot, where schema is the quoted schema of llm_canary in
 *		this database; activity is shown in pg_stat_activity.  fn == NULL
 *		only looks for the extension.
 *
 * Errors are reported to the log and swallowed: the transaction is aborted
 * and WORKER_STEP_FAILED returned.  Returns in the caller's memory context,
 * which must outlive the transaction.
 */
WorkerStepResult
WorkerRunStep(const char *activity, WorkerStepFn fn, void *arg)
{
	MemoryContext callercxt = CurrentMemoryContext;
	volatile WorkerStepResult result = WORKER_STEP_OK;

	SetCurrentStatementStartTimestamp();
	PG_TRY();
	{
		Oid			extoid;
		Oid			nspoid = InvalidOid;

		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);

		extoid = get_extension_oid(LLM_CANARY_EXTNAME, true);
		if (OidIsValid(extoid))
			nspoid = CanaryExtensionNamespace(extoid);
		if (!OidIsValid(nspoid))
			result = WORKER_STEP_NO_EXTENSION;
		else if (fn != NULL)
			fn(quote_identifier(get_namespace_name(nspoid)), arg);

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(callercxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		result = WORKER_STEP_FAILED;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(callercxt);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return result;
}

/*
 * WorkerLauncherGone
 *		True when the launcher that started this worker (its pid is
 *		bgw_main_arg) has exited: a new launcher starts new workers, so this
 *		one must stop rather than run twice.
 */
bool
WorkerLauncherGone(Datum main_arg)
{
	int			pid = DatumGetInt32(main_arg);

	return pid != 0 && kill(pid, 0) != 0 && errno == ESRCH;
}

/* ---------------------------------------------------------------------
 * the steps of the loop
 * ---------------------------------------------------------------------
 */

/* Step: a new iteration: an empty memory context, the configuration. */
static void
WorkerBeginIteration(void)
{
	MemoryContextReset(LoopContext);
	MemoryContextSwitchTo(LoopContext);
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	flush_requested = MetricsTakeFlushRequest();
}

/* Step: is the extension (still) there?  Looked for once a second. */
static void
WorkerLookForExtension(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (extension_known || (now < next_extension_check && !flush_requested))
		return;
	if (WorkerRunStep("llm_canary: looking for the extension", NULL, NULL) == WORKER_STEP_OK)
	{
		extension_known = true;
		write_backoff_ms = 0;
		MetricsWorkerSetState(CANARY_WORKER_RUNNING);
	}
	else
	{
		MetricsWorkerSetState(CANARY_WORKER_WAITING_FOR_EXTENSION);
		next_extension_check = TimestampTzPlusMilliseconds(now, WORKER_EXTENSION_RECHECK_MS);
	}
}

typedef struct WriteBatchArgs
{
	const CanaryMetricRecord *recs;
	int			n;
} WriteBatchArgs;

static void
WriteBatchStep(const char *schema, void *arg)
{
	WriteBatchArgs *a = (WriteBatchArgs *) arg;

	MetricsWriteBatch(schema, a->recs, a->n);
}

/*
 * WorkerWriteQueued
 *		Write the queue in batches of WORKER_BATCH_MAX, one transaction each,
 *		until it is empty or a write does not succeed; records are consumed
 *		only after their batch committed.
 */
static WorkerStepResult
WorkerWriteQueued(void)
{
	for (;;)
	{
		WriteBatchArgs args;
		WorkerStepResult result;

		args.recs = Batch;
		args.n = MetricsQueueFetch(Batch, WORKER_BATCH_MAX);
		if (args.n == 0)
			return WORKER_STEP_OK;
		result = WorkerRunStep("llm_canary: writing metrics", WriteBatchStep, &args);
		SrmWriterEndBatch(result == WORKER_STEP_OK);
		if (result != WORKER_STEP_OK)
		{
			if (result == WORKER_STEP_FAILED)
				MetricsQueueWriteFailed();
			return result;
		}
		MetricsQueueConsume(args.n);
		if (args.n < WORKER_BATCH_MAX)
			return WORKER_STEP_OK;
	}
}

/* Step: the metrics queue to canary_requests, with backoff after a failure. */
static void
WorkerWriteMetrics(void)
{
	if (!extension_known ||
		(write_backoff_ms > 0 && GetCurrentTimestamp() < next_write_retry && !flush_requested))
		return;

	switch (WorkerWriteQueued())
	{
		case WORKER_STEP_OK:
			write_backoff_ms = 0;
			break;
		case WORKER_STEP_NO_EXTENSION:
			extension_known = false;
			MetricsWorkerSetState(CANARY_WORKER_WAITING_FOR_EXTENSION);
			next_extension_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															   WORKER_EXTENSION_RECHECK_MS);
			break;
		case WORKER_STEP_FAILED:
			write_backoff_ms = Min(Max(write_backoff_ms * 2, WORKER_BACKOFF_MIN_MS),
								   WORKER_BACKOFF_MAX_MS);
			next_write_retry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   write_backoff_ms);
			ereport(LOG,
					(errmsg("llm_canary worker could not write metrics, retrying in %d ms",
							write_backoff_ms),
					 errdetail("%llu records stay queued until a write succeeds.",
							   (unsigned long long) MetricsQueueDepth())));
			break;
	}
}

static void
FoldStep(const char *schema, void *arg)
{
	/* the fold holds hot rollup rows: it never waits long for another lock */
	if (SPI_execute("SET LOCAL lock_timeout = '1s'", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set lock_timeout");
	(void) RollupsFoldVerdicts(schema);
}

/*
 * Step: fold the verdicts that canary_feedback and backfills queued into
 * the rollups (canary_feedback_fold), every llm_canary.flush_interval_ms
 * or when canary_flush asks: in a transaction of the worker's, so that an
 * application transaction that gave a verdict and stays open holds no
 * rollup row the metric writes need.
 */
static void
WorkerFoldVerdicts(void)
{
	if (!extension_known ||
		(GetCurrentTimestamp() < next_fold && !flush_requested))
		return;
	(void) WorkerRunStep("llm_canary: folding verdicts", FoldStep, NULL);
	next_fold = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), canary_flush_interval_ms);
}

static void
FleetStep(const char *schema, void *arg)
{
	FleetWorkerStep(schema);
}

/*
 * Step: the fleet (fleet.c): the heartbeat of a control database, or the
 * state report of a member, every llm_canary.fleet_heartbeat_interval.
 * One short write, here rather than in the monitor, so that a hanging
 * webhook there never makes the members fail safe.
 */
static void
WorkerFleetHeartbeat(void)
{
	if (!extension_known || FleetWorkerIntervalMs() <= 0 ||
		GetCurrentTimestamp() < next_fleet)
		return;
	(void) WorkerRunStep("llm_canary: fleet heartbeat", FleetStep, NULL);
	next_fleet = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), FleetWorkerIntervalMs());
}

/*
 * Step: move the transfers whose sockets the last wait found ready (or
 * whose libcurl timer is due) and run the completion of those that ended.
 */
static void
WorkerRunTransfers(void)
{
	TransfersRun(ReadyEvents, NumReadyEvents);
	NumReadyEvents = 0;
}

/* Step: take queued shadow jobs (starting their transfers), write finished rows. */
static void
WorkerRunShadowJobs(void)
{
	ShadowWorkerStep();
}

/*
 * Step: sleep until the latch is set (queue a quarter full, canary_flush, a
 * shadow job queued), one of libcurl's sockets is ready, libcurl's timer or
 * a shadow deadline is due, or llm_canary.flush_interval_ms passed; exit if
 * the postmaster dies.  The wait-event set lives in LoopContext and is freed
 * here (it holds a kernel descriptor).
 */
static void
WorkerWaitForWork(void)
{
	long		timeout_ms = canary_flush_interval_ms;
	int			nevents = 2 + TransfersWaitEventCount();
	WaitEventSet *set;

	if (worker_got_sigterm)
		return;
	timeout_ms = TransfersTimeoutMs(ShadowWorkerTimeoutMs(timeout_ms));
	if (write_backoff_ms > 0)
		timeout_ms = Min(timeout_ms, write_backoff_ms);
	if (!extension_known)
		timeout_ms = Min(timeout_ms, WORKER_EXTENSION_RECHECK_MS);
	else if (FleetWorkerIntervalMs() > 0)
		timeout_ms = Min(timeout_ms,
						 Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_fleet), 0));

	set = CreateWaitEventSet(LoopContext, nevents);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	TransfersAddWaitEvents(set);
	NumReadyEvents = WaitEventSetWait(set, timeout_ms, ReadyEvents,
									  Min(WORKER_MAX_EVENTS, nevents),
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
WorkerDrain(void)
{
	int			failures = 0;
	uint64		left;

	MetricsWorkerSetState(CANARY_WORKER_STOPPING);
	for (;;)
	{
		WorkerStepResult result = WorkerWriteQueued();

		if (result == WORKER_STEP_OK || result == WORKER_STEP_NO_EXTENSION ||
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
 *		Entry point of the metrics worker (started by the launcher); see the
 *		file header.
 */
void
CanaryWorkerMain(Datum main_arg)
{
	TimestampTz next_launcher_check = 0;

	WorkerConnect("llm_canary worker");
	MetricsWorkerAttach(MyDatabaseId);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialize libcurl")));
	TransfersInit();
	ShadowWorkerInit();

	LoopContext = AllocSetContextCreate(TopMemoryContext,
										"llm_canary worker loop",
										ALLOCSET_DEFAULT_SIZES);
	Batch = MemoryContextAlloc(TopMemoryContext,
							   sizeof(CanaryMetricRecord) * WORKER_BATCH_MAX);
	ereport(LOG,
			(errmsg("llm_canary worker started, writing metrics to database \"%s\"",
					canary_database_name)));

	while (!worker_got_sigterm)
	{
		WorkerBeginIteration();
		WorkerLookForExtension();
		WorkerFoldVerdicts();
		WorkerWriteMetrics();
		WorkerFleetHeartbeat();
		WorkerRunTransfers();
		WorkerRunShadowJobs();
		WorkerWaitForWork();

		if (GetCurrentTimestamp() >= next_launcher_check)
		{
			if (WorkerLauncherGone(main_arg))
				break;
			next_launcher_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}
	}

	ShadowWorkerShutdown();
	TransfersShutdown();
	curl_global_cleanup();
	WorkerDrain();
	ereport(LOG,
			(errmsg("llm_canary worker stopped")));
	proc_exit(1);
}
