/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The llm_canary background worker: writes the metrics queue to
 *	  canary_requests in batches and runs the daily partition maintenance.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_WORKER_H
#define LLM_CANARY_WORKER_H

#include "postgres.h"

/*
 * Define the worker's settings and, while preloading, register the worker;
 * called from _PG_init.
 */
extern void WorkerInit(void);

/* llm_canary.database_name; NULL unless the library was preloaded. */
extern const char *WorkerDatabaseName(void);

/* Entry point, named in the BackgroundWorker registration. */
extern PGDLLEXPORT void CanaryWorkerMain(Datum main_arg);

#endif							/* LLM_CANARY_WORKER_H */
