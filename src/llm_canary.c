/*-------------------------------------------------------------------------
 *
 * llm_canary.c
 *	  Module entry point: settings, shared memory requests and the
 *	  background worker registration of llm_canary.
 *
 * Routing works whether or not the library was preloaded; the metrics
 * queue, shadow calls and the worker need shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "cache.h"
#include "config.h"
#include "fleet.h"
#include "llm_canary.h"
#include "metrics.h"
#include "provider.h"
#include "shadow.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		canary_preloaded = false;

/* settings */
char	   *canary_database_name = NULL;
int			canary_queue_size = 16384;
int			canary_queue_full_wait_ms = 10;
int			canary_flush_interval_ms = 100;
int			canary_retention_days = 30;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* shmem_request_hook: reserve the metrics queue and the shadow job slots. */
static void
CanaryShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	MetricsRequestShmem();
	ShadowRequestShmem();
	FleetRequestShmem();
}

/* shmem_startup_hook: create or attach to the metrics queue and shadow slots. */
static void
CanaryShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	MetricsInitShmem();
	ShadowInitShmem();
	FleetInitShmem();
}


void
_PG_init(void)
{
	canary_preloaded = process_shared_preload_libraries_in_progress;

	/*
	 * Settings that size shared memory or pick the worker's database can
	 * only be defined while preloading; loaded later (routing only), the
	 * library leaves them undefined, as pg_stat_statements does.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomStringVariable("llm_canary.database_name",
								   "Sets the database the llm_canary background worker writes metrics to.",
								   "canary_call works only in this database, since the worker records its metrics there.",
								   &canary_database_name,
								   "postgres",
								   PGC_POSTMASTER,
								   0,
								   NULL, NULL, NULL);

		DefineCustomIntVariable("llm_canary.queue_size",
								"Sets the capacity, in records, of the shared memory queue of metrics waiting to be written.",
								"Each record takes about 800 bytes of shared memory; when the queue is full, new records are dropped and counted.",
								&canary_queue_size,
								16384, 16, 1048576,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	}

	DefineCustomIntVariable("llm_canary.queue_full_wait_ms",
							"Sets how long a call waits for room in a full metrics queue before dropping its record.",
							NULL,
							&canary_queue_full_wait_ms,
							10, 0, 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm_canary.flush_interval_ms",
							"Sets how often the background worker writes queued metrics.",
							"The worker also writes as soon as the queue is a quarter full or canary_flush() is called.",
							&canary_flush_interval_ms,
							100, 10, 60000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm_canary.retention_days",
							"Sets how many days of daily partitions of canary_requests and canary_feedback canary_maintenance() keeps.",
							"Older partitions are dropped; 0 keeps every partition.",
							&canary_retention_days,
							30, 0, 36500,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	if (process_shared_preload_libraries_in_progress)
	{
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = CanaryShmemRequest;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = CanaryShmemStartup;
		WorkerRegister();
		FleetDefineSettings();
	}

	HttpDefineSettings();
	CacheDefineSettings();
	ShadowDefineSettings();
	MonitorDefineSettings();

	MarkGUCPrefixReserved("llm_canary");

	ConfigCacheInit();
}
