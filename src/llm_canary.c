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
#include "utils/guc.h"

#include "config.h"
#include "llm_canary.h"
#include "provider.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		canary_preloaded = false;

/* settings */
char	   *canary_database_name = NULL;

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

	HttpDefineSettings();
	MonitorDefineSettings();

	MarkGUCPrefixReserved("llm_canary");

	ConfigCacheInit();
}
