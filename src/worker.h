/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The llm_canary background processes (all connect to
 *	  llm_canary.database_name but the launcher):
 *
 *	  - launcher.c: "llm_canary launcher", registered at preload, connected
 *		to no database; waits (quietly) until the database exists, then
 *		starts the workers below and starts them again when they exit;
 *	  - worker.c: "llm_canary worker", the metrics queue to canary_requests
 *		and every outbound transfer on one libcurl multi loop (shadow calls);
 *	  - monitor_worker.c: "llm_canary monitor", the slow periodic jobs: the
 *		kill-switch check, alert webhooks, partition maintenance;
 *	  - submit.c: "llm_canary submissions", canary_submit's answers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_WORKER_H
#define LLM_CANARY_WORKER_H

#include "postgres.h"

#include <signal.h>

#define WORKER_EXTENSION_RECHECK_MS 1000	/* while llm_canary is not installed */
#define WORKER_RESTART_MS			5000	/* a worker that exited starts again */

/*
 * worker.c: define the workers' settings and, while preloading, register
 * the launcher; called from _PG_init.
 */
extern void WorkerInit(void);

/* llm_canary.database_name; NULL unless the library was preloaded. */
extern const char *WorkerDatabaseName(void);

/* launcher.c, monitor_worker.c: called by WorkerInit */
extern void LauncherRegister(void);
extern void MonitorDefineSettings(void);

/* llm_canary.check_interval, in seconds (monitor_worker.c) */
extern int	canary_check_interval;

/* worker.c: what every worker shares */
typedef enum WorkerStepResult
{
	WORKER_STEP_OK,
	WORKER_STEP_NO_EXTENSION,	/* llm_canary is not installed here */
	WORKER_STEP_FAILED			/* the transaction raised an error (logged) */
} WorkerStepResult;

typedef void (*WorkerStepFn) (const char *schema, void *arg);

extern volatile sig_atomic_t worker_got_sigterm;
extern void WorkerSigterm(SIGNAL_ARGS);
extern void WorkerConnect(const char *appname);
extern WorkerStepResult WorkerRunStep(const char *activity, WorkerStepFn fn, void *arg);
extern bool WorkerLauncherGone(Datum main_arg);

/* Entry points, named in the BackgroundWorker registrations. */
extern PGDLLEXPORT void CanaryLauncherMain(Datum main_arg);
extern PGDLLEXPORT void CanaryWorkerMain(Datum main_arg);
extern PGDLLEXPORT void CanaryMonitorMain(Datum main_arg);

#endif							/* LLM_CANARY_WORKER_H */
