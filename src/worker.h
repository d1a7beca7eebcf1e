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

/* Register the worker; call from _PG_init while preloading. */
extern void WorkerRegister(void);

/* webhook.c: deliver pending alerts (worker transaction, SPI connected) */
extern void WebhookDeliverPending(const char *schema);

/* Entry point, named in the BackgroundWorker registration. */
extern PGDLLEXPORT void CanaryWorkerMain(Datum main_arg);

#endif							/* LLM_CANARY_WORKER_H */
