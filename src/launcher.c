/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The llm_canary launcher: the one background worker registered at
 *	  preload.  It connects to no database, waits until
 *	  llm_canary.database_name exists, then starts the metrics worker
 *	  (worker.c), the monitor (monitor_worker.c) and the submissions worker
 *	  (submit.c) as dynamic background workers, and starts each again a
 *	  few seconds after it exits.
 *
 * Why a launcher: a worker connecting to a database that does not exist
 * exits FATAL and the postmaster restarts it, every few seconds, forever.
 * Connected to no database, the launcher can read pg_database (a shared
 * catalog) and wait quietly: one log line when it starts waiting, one when
 * the database appears (for example when pg_regress creates it).
 *
 * A worker must never run twice (two consumers of the metrics queue would
 * write records twice): the workers stop when the launcher that started
 * them is gone (WorkerLauncherGone), and a launcher starts a worker only
 * when no process of that type runs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procsignal.h"
#include "utils/backend_status.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "extension.h"
#include "worker.h"

#define LAUNCHER_TICK_MS	1000	/* the database is looked for this often */

/* A worker the launcher starts. */
typedef struct LauncherChild
{
	const char *name;			/* bgw_name and bgw_type */
	const char *function;		/* entry point */
	int			restart_ms;		/* started again this long after it exits */
	BackgroundWorkerHandle *handle; /* NULL: not started (or gone) */
	TimestampTz start_after;
} LauncherChild;

static LauncherChild children[] = {
	{"llm_canary worker", "CanaryWorkerMain", WORKER_RESTART_MS, NULL, 0},
	{"llm_canary monitor", "CanaryMonitorMain", WORKER_RESTART_MS, NULL, 0},
	/* submit.c: canary_submit's answers; callers wait for it, so sooner */
	{"llm_canary submissions", "CanarySubmitWorkerMain", 1000, NULL, 0},
};

/*
 * LauncherRegister
 *		Register the launcher with the postmaster.  Caller: WorkerInit,
 *		while shared_preload_libraries is being processed.
 */
void
LauncherRegister(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* metrics are written, so not before the server accepts writes */
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = WORKER_RESTART_MS / 1000;
	strlcpy(worker.bgw_library_name, LLM_CANARY_EXTNAME, BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "CanaryLauncherMain", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "llm_canary launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "llm_canary launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * Does llm_canary.database_name exist?  Connected to no database, only the
 * shared catalogs can be read, and without their indexes (which need
 * pg_class): a sequential scan of pg_database, as autovacuum's launcher
 * does; it holds a few rows.
 */
static bool
LauncherDatabaseExists(void)
{
	bool		exists = false;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!exists && (tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		exists = strcmp(NameStr(db->datname), WorkerDatabaseName()) == 0;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return exists;
}

/* Is a process of this background worker type running (say, a previous launcher's)? */
static bool
LauncherChildRuns(const char *type)
{
	int			n;
	bool		found = false;

	pgstat_clear_backend_activity_snapshot();
	n = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= n && !found; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);
		const char *t;

		if (local == NULL || local->backendStatus.st_backendType != B_BG_WORKER)
			continue;
		t = GetBackgroundWorkerTypeByPid(local->backendStatus.st_procpid);
		found = t != NULL && strcmp(t, type) == 0;
	}
	pgstat_clear_backend_activity_snapshot();
	return found;
}

/* Start a child; false when no slot was free (tried again later). */
static bool
LauncherStart(LauncherChild *child)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher does it */
	strlcpy(worker.bgw_library_name, LLM_CANARY_EXTNAME, BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, child->function, BGW_MAXLEN);
	strlcpy(worker.bgw_name, child->name, BGW_MAXLEN);
	strlcpy(worker.bgw_type, child->name, BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(MyProcPid);
	worker.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&worker, &child->handle);
}

/*
 * Step: start each child that is not running and whose restart delay
 * passed.  A child that exited is started again WORKER_RESTART_MS later.
 */
static void
LauncherStartChildren(bool *slots_logged)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < lengthof(children); i++)
	{
		LauncherChild *child = &children[i];
		pid_t		pid;

		if (child->handle != NULL)
		{
			if (GetBackgroundWorkerPid(child->handle, &pid) != BGWH_STOPPED)
				continue;
			pfree(child->handle);
			child->handle = NULL;
			child->start_after = TimestampTzPlusMilliseconds(now, child->restart_ms);
		}
		if (now < child->start_after || LauncherChildRuns(child->name))
			continue;
		if (!LauncherStart(child))
		{
			child->handle = NULL;
			if (!*slots_logged)
				ereport(LOG,
						(errmsg("llm_canary launcher could not start \"%s\": no background worker slot is free",
								child->name),
						 errhint("Raise max_worker_processes; llm_canary uses four.")));
			*slots_logged = true;
			child->start_after = TimestampTzPlusMilliseconds(now, WORKER_RESTART_MS);
		}
	}
}

/* SIGTERM: leave the loop. */
static volatile sig_atomic_t launcher_got_sigterm = false;

static void
LauncherSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	launcher_got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * CanaryLauncherMain
 *		Entry point of the launcher; see the file header.
 */
void
CanaryLauncherMain(Datum main_arg)
{
	bool		waiting_logged = false;
	bool		slots_logged = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, LauncherSigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("llm_canary launcher");

	while (!launcher_got_sigterm)
	{
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (!LauncherDatabaseExists())
		{
			if (!waiting_logged)
				ereport(LOG,
						(errmsg("llm_canary is waiting for database \"%s\" to be created",
								WorkerDatabaseName()),
						 errhint("Create the database, or set llm_canary.database_name to an existing database and restart the server.")));
			waiting_logged = true;
		}
		else
		{
			if (waiting_logged)
				ereport(LOG,
						(errmsg("llm_canary found database \"%s\", starting its workers",
								WorkerDatabaseName())));
			waiting_logged = false;
			LauncherStartChildren(&slots_logged);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_TICK_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ProcSignalBarrierPending)
			ProcessProcSignalBarrier();
	}
	proc_exit(1);
}
