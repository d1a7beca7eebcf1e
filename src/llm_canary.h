/*-------------------------------------------------------------------------
 *
 * llm_canary.h
 *	  Declarations shared by every part of llm_canary.
 *
 * The extension is layered so that data flows one way:
 *
 *	 config.c   (rollouts and models, cached per backend)
 *	   -> routing.c   (which model serves a user)
 *	   -> call.c      (canary_call: provider HTTP, fallback, metrics enqueue)
 *	   -> metrics queue in shared memory -> worker.c (batched writes, shadow calls)
 *	   -> killswitch.c (window summaries, kill switch, CSAT) reads the tables.
 *
 * llm_canary.c holds _PG_init and the settings; util.c small helpers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_H
#define LLM_CANARY_H

#include "postgres.h"

#define LLM_CANARY_EXTNAME	"llm_canary"

/* settings (llm_canary.c) */
extern char *canary_database_name;
extern int	canary_queue_size;
extern int	canary_queue_full_wait_ms;
extern int	canary_flush_interval_ms;
extern int	canary_retention_days;

/* killswitch.c */
extern int	canary_check_interval;
extern char *canary_webhook_url;
extern void MonitorDefineSettings(void);

/* util.c */
#define CANARY_SHA256_LEN 32
extern void CanarySha256(const void *data, size_t len, uint8 *digest);
extern void CanaryHex(const uint8 *bytes, int nbytes, char *out);
extern void CanaryPromptHash(const char *prompt, size_t len, char *out17);
extern bool CanaryLibraryPreloaded(void);
extern void CanaryRequirePreload(const char *what);
extern Oid	CanaryExtensionNamespace(Oid extoid);
extern Oid	CanaryExtensionOwner(Oid extoid);

struct pg_uuid_t;
extern void CanaryNewRequestId(struct pg_uuid_t *id);

#endif							/* LLM_CANARY_H */
