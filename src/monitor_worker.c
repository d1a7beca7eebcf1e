/*-------------------------------------------------------------------------
 *
 * monitor_worker.c
 *	  The llm_canary monitor: the periodic jobs that may take seconds, in a
 *	  process of their own so that they never delay a metric write or a
 *	  shadow transfer (the metrics worker, worker.c):
 *
 *	 - the kill switch: canary_check() every llm_canary.check_interval,
 *	   bounded by a statement timeout of the same length (at most
 *	   MONITOR_CHECK_TIMEOUT_MAX_MS) and a lock timeout, so that detection
 *	   does not wait for pg_cron's minute;
 *	 - alert webhooks (webhook.c), one alert at a time, about once a
 *	   second, never holding a row lock across the network;
 *	 - canary_maintenance() (partitions ahead, retention) once a day and
 *	   when it first finds the extension, with a lock timeout.
 *
 * A fleet member (fleet.c) does not judge its rollouts: no check there.
 *
 * Started by the launcher (launcher.c) like the metrics worker; SIGTERM
 * ends it after the step in progress (a webhook POST takes at most its
 * timeouts).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procsignal.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "fleet.h"
#include "webhook.h"
#include "worker.h"

#define MONITOR_TICK_MS				1000	/* webhooks are looked at this often */
#define MONITOR_CHECK_TIMEOUT_MAX_MS 60000
#define MONITOR_MAINTENANCE_RETRY_MS (10 * 60 * 1000)
#define MONITOR_ALERTS_PER_STEP		10

/* settings */
int			canary_check_interval = 30;	/* worker.h */
static int	canary_retention_days = 30;

static MemoryContext LoopContext = NULL;

static bool extension_known = false;
static TimestampTz next_extension_check = 0;
static TimestampTz next_maintenance = 0;
static TimestampTz next_check = 0;
static TimestampTz next_webhook = 0;

/*
 * MonitorDefineSettings
 *		Define the monitor's settings; called by WorkerInit.
 */
void
MonitorDefineSettings(void)
{
	DefineCustomIntVariable("llm_canary.check_interval",
							"Sets how often the background worker runs canary_check, in seconds.",
							"0 disables the worker's check; pg_cron's minute job still runs. It is also the check's statement timeout (at most 60 s).",
							&canary_check_interval,
							30, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	/* read by canary_maintenance(), which the monitor runs daily */
	DefineCustomIntVariable("llm_canary.retention_days",
							"Sets how many days of metrics, shadow rows and kill-switch window summaries canary_maintenance() keeps.",
							"Older daily partitions are dropped and older window summaries deleted; 0 keeps everything.",
							&canary_retention_days,
							30, 0, 36500,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
}

/*
 * The statement timeout of a step: SPI does not arm statement_timeout (only
 * the top-level command loop does), so the monitor arms it itself.
 */
static void
MonitorArmTimeout(int ms)
{
	enable_timeout_after(STATEMENT_TIMEOUT, ms);
}

static void
MonitorDisarmTimeout(void)
{
	disable_timeout(STATEMENT_TIMEOUT, false);
	/* a timeout that fired after the statement ended must not cancel the next */
	QueryCancelPending = false;
}

/* canary_check() for every rollout; a trip is logged (canary_check writes the alert). */
static void
CheckStep(const char *schema, void *arg)
{
	char	   *sql;
	bool		isnull;
	Datum		reason;

	if (SPI_execute("SET LOCAL lock_timeout = '5s'", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set lock_timeout");
	sql = psprintf("SELECT %s.canary_check()", schema);
	MonitorArmTimeout(*(int *) arg);
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run canary_check()");
	MonitorDisarmTimeout();
	reason = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		ereport(LOG,
				(errmsg("llm_canary kill switch tripped: %s",
						TextDatumGetCString(reason))));
}

/* canary_maintenance(); sets *arg to the start of the next day. */
static void
MaintainStep(const char *schema, void *arg)
{
	char	   *sql;
	bool		isnull;
	Datum		next;

	if (SPI_execute("SET LOCAL lock_timeout = '5s'", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set lock_timeout");
	sql = psprintf("SELECT count(*) FROM %s.canary_maintenance()", schema);
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run canary_maintenance()");
	/* partitions are UTC days: the next run is at the next UTC midnight */
	if (SPI_execute("SELECT ((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC'",
					true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not compute the next maintenance time");
	next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*(TimestampTz *) arg = DatumGetTimestampTz(next);
}

/* ---------------------------------------------------------------------
 * the steps of the loop
 * ---------------------------------------------------------------------
 */

/* Step: a new iteration: an empty memory context, the configuration. */
static void
MonitorBeginIteration(void)
{
	MemoryContextReset(LoopContext);
	MemoryContextSwitchTo(LoopContext);
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* Step: is the extension (still) there?  Looked for once a second. */
static void
MonitorLookForExtension(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (extension_known || now < next_extension_check)
		return;
	if (WorkerRunStep("llm_canary: looking for the extension", NULL, NULL) == WORKER_STEP_OK)
	{
		extension_known = true;
		next_maintenance = 0;	/* maintain as soon as it appears */
	}
	else
		next_extension_check = TimestampTzPlusMilliseconds(now, WORKER_EXTENSION_RECHECK_MS);
}

/* A step found the extension gone: look for it again before the next job. */
static void
MonitorStepDone(WorkerStepResult result)
{
	if (result == WORKER_STEP_NO_EXTENSION)
	{
		extension_known = false;
		next_extension_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   WORKER_EXTENSION_RECHECK_MS);
	}
}

/* Step: partitions and retention, once a day. */
static void
MonitorMaintainPartitions(void)
{
	WorkerStepResult result;
	TimestampTz next = 0;

	if (!extension_known || GetCurrentTimestamp() < next_maintenance)
		return;
	result = WorkerRunStep("llm_canary: partition maintenance", MaintainStep, &next);
	next_maintenance = result == WORKER_STEP_OK ? next :
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), MONITOR_MAINTENANCE_RETRY_MS);
	MonitorStepDone(result);
}

/* Step: the kill switch, every llm_canary.check_interval (not on a fleet member). */
static void
MonitorCheckKillSwitch(void)
{
	int			timeout_ms;

	if (!extension_known || canary_check_interval <= 0 || !FleetJudgesRollouts() ||
		GetCurrentTimestamp() < next_check)
		return;
	timeout_ms = (int) Min((int64) canary_check_interval * 1000, MONITOR_CHECK_TIMEOUT_MAX_MS);
	MonitorStepDone(WorkerRunStep("llm_canary: kill-switch check", CheckStep, &timeout_ms));
	MonitorDisarmTimeout();		/* when the check raised before disarming */
	next_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											 canary_check_interval * 1000L);
}

/*
 * Step: alert webhooks, about once a second, after the trips committed; a
 * few alerts per step, fewer when a check falls due or SIGTERM came.
 */
static void
MonitorDeliverAlerts(void)
{
	if (!extension_known || GetCurrentTimestamp() < next_webhook)
		return;
	for (int i = 0; i < MONITOR_ALERTS_PER_STEP && !worker_got_sigterm; i++)
	{
		if (!WebhookDeliverNext())
			break;
		if (canary_check_interval > 0 && GetCurrentTimestamp() >= next_check)
			break;
	}
	next_webhook = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), MONITOR_TICK_MS);
}

/* Milliseconds from now until due (0 when past), at most bound. */
static long
UntilDue(TimestampTz due, long bound)
{
	long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due);

	return Max(Min(ms, bound), 0);
}

/*
 * Step: sleep until the latch is set or the next check is due, at most a
 * tick.
 */
static void
MonitorWait(void)
{
	long		timeout = MONITOR_TICK_MS;

	if (worker_got_sigterm)
		return;
	if (extension_known && canary_check_interval > 0)
		timeout = UntilDue(next_check, timeout);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 timeout, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	if (ProcSignalBarrierPending)
		ProcessProcSignalBarrier();
}

/*
 * CanaryMonitorMain
 *		Entry point of the monitor (started by the launcher); see the file
 *		header.
 */
void
CanaryMonitorMain(Datum main_arg)
{
	WorkerConnect("llm_canary monitor");
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialize libcurl")));
	LoopContext = AllocSetContextCreate(TopMemoryContext,
										"llm_canary monitor loop",
										ALLOCSET_DEFAULT_SIZES);

	while (!worker_got_sigterm && !WorkerLauncherGone(main_arg))
	{
		MonitorBeginIteration();
		MonitorLookForExtension();
		MonitorMaintainPartitions();
		MonitorCheckKillSwitch();
		MonitorDeliverAlerts();
		MonitorWait();
	}

	curl_global_cleanup();
	proc_exit(1);
}
