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

#include "config.h"
#include "llm_canary.h"
#include "shadow.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		canary_preloaded = false;

/* settings */
char	   *canary_database_name = NULL;

/*
 * Shadow mode's shared memory (shadow.c).  Its own links in the hook chains,
 * so it stays independent of the other users of these hooks.
 */
static shmem_request_hook_type shadow_prev_shmem_request_hook = NULL;
static shmem_startup_hook_type shadow_prev_shmem_startup_hook = NULL;

static void
shadow_shmem_request(void)
{
	if (shadow_prev_shmem_request_hook)
		shadow_prev_shmem_request_hook();
	ShadowRequestShmem();
}

static void
shadow_shmem_startup(void)
{
	if (shadow_prev_shmem_startup_hook)
		shadow_prev_shmem_startup_hook();
	ShadowInitShmem();
}

void
_PG_init(void)
{
	canary_preloaded = process_shared_preload_libraries_in_progress;

	DefineCustomStringVariable("llm_canary.database_name",
							   "Sets the database the llm_canary background worker writes metrics to.",
							   "canary_call works only in this database, since the worker records its metrics there.",
							   &canary_database_name,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	ShadowDefineSettings();

	MarkGUCPrefixReserved("llm_canary");

	if (process_shared_preload_libraries_in_progress)
	{
		shadow_prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = shadow_shmem_request;
		shadow_prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = shadow_shmem_startup;
	}

	ConfigCacheInit();
}
