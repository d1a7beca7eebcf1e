/*-------------------------------------------------------------------------
 *
 * llm_canary.c
 *	  Module entry point: _PG_init calls each module's Init function, which
 *	  defines the settings that module uses, and chains the shared memory
 *	  hooks of the metrics queue and the shadow job slots.
 *
 * Routing works whether or not the library was preloaded; the metrics
 * queue, shadow calls and the worker need shared_preload_libraries.
 *
 * Where things are (one concern per file, one guarded header per subsystem):
 *	 llm_canary.c	 _PG_init and the shared memory hooks (this file)
 *	 extension.c	 the installed extension: preload check, schema, owner,
 *					 running SQL as the owner (extension.h)
 *	 util.c			 SHA-256, hex, prompt hash, request ids, clipping text
 *					 at a character boundary (util.h)
 *	 subxact.c		 ending an internal subtransaction: commit, or roll
 *					 back and copy the error (subxact.h)
 *	 config.c		 per-backend cache of canary_config and canary_models
 *					 (config.h)
 *	 routing.c		 which model serves a user: bucket, stage, session pins
 *					 (routing.h)
 *	 outcome.c		 how an attempt is judged: outcome names, the refusal
 *					 rule, the cost rule (outcome.h)
 *	 call.c			 one routed, recorded model call in steps; canary_call
 *					 (call.h)
 *	 chat.c			 chat requests: validation, provider dialects (chat.h)
 *	 batch.c		 canary_batch: many calls on one libcurl multi handle
 *					 (batch.h)
 *	 submit.c		 canary_submit's check and the "llm_canary submissions"
 *					 worker that answers submitted calls (submit.h)
 *	 provider.c		 provider URLs, request bodies, response parsing
 *					 (provider.h)
 *	 http.c			 the one outbound HTTP layer: libcurl set-up for every
 *					 POST, error classification, the backend's transfer
 *					 (http.h)
 *	 http_policy.c	 which variables may hold API keys, where keys may go
 *	 cache.c		 the optional response cache (cache.h)
 *	 probe.c		 canary_probe: one call of a model, nothing recorded
 *	 metrics_queue.c the shared-memory queue of metric records and the
 *					 worker's identity (metrics.h)
 *	 metrics_funcs.c canary_record, canary_flush, canary_wait_metrics,
 *					 canary_stats
 *	 metrics_write.c a batch of metric records as rows of canary_requests
 *					 (metrics.h)
 *	 shadow.c		 shadow mode, backend side: dispatch to the worker
 *					 (shadow.h, shadow_internal.h)
 *	 shadow_worker.c shadow mode, worker side: jobs and rows
 *	 launcher.c		 the launcher: waits for the database, starts and
 *					 restarts the workers (worker.h)
 *	 worker.c		 the metrics worker's loop and the workers' settings
 *					 (worker.h)
 *	 transfers.c	 the metrics worker's libcurl multi loop, driven by
 *					 curl_multi_socket_action (transfers.h)
 *	 monitor_worker.c the monitor: kill-switch check, webhooks, maintenance
 *	 webhook.c		 alert webhook delivery by the monitor (webhook.h)
 *	 killswitch.c	 canary_check: window summaries and the kill switch
 *	 sequential.c	 the kill switch's always-valid statistics (mixture
 *					 likelihood ratios) and the sample-ratio test
 *					 (sequential.h)
 *	 fleet.c		 many databases, one rollout: roles, fail-safe, heartbeat
 *	 rollups.c		 the rollups' histograms and their retention setting
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "batch.h"
#include "cache.h"
#include "chat.h"
#include "config.h"
#include "extension.h"
#include "fleet.h"
#include "http.h"
#include "metrics.h"
#include "provider.h"
#include "rollups.h"
#include "shadow.h"
#include "submit.h"
#include "webhook.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

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
	BatchRequestShmem();
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
	BatchInitShmem();
	FleetInitShmem();
}

/* Chain the shared memory hooks; only while preloading. */
static void
ShmemInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = CanaryShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = CanaryShmemStartup;
}

void
_PG_init(void)
{
	ExtensionInit();
	MetricsInit();
	WorkerInit();
	WebhookInit();
	FleetInit();
	HttpInit();
	ChatDefineSettings();
	BatchDefineSettings();
	SubmitInit();
	CacheDefineSettings();
	ShadowDefineSettings();
	RollupsInit();
	ShmemInit();
	MarkGUCPrefixReserved("llm_canary");
	ConfigCacheInit();
}
