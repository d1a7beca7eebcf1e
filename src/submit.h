/*-------------------------------------------------------------------------
 *
 * submit.h
 *	  Calls that do not hold a connection (submit.c): canary_submit's check
 *	  and the "llm_canary submissions" background worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SUBMIT_H
#define LLM_CANARY_SUBMIT_H

#include "postgres.h"

extern void SubmitInit(void);

/* Entry point, named in the BackgroundWorker registration. */
extern PGDLLEXPORT void CanarySubmitWorkerMain(Datum main_arg);

#endif							/* LLM_CANARY_SUBMIT_H */
