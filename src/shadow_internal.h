/*-------------------------------------------------------------------------
 *
 * shadow_internal.h
 *	  Shared state of shadow mode, between the backend side (shadow.c) and
 *	  the worker side (shadow_worker.c).  Not for other files: they use
 *	  shadow.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SHADOW_INTERNAL_H
#define LLM_CANARY_SHADOW_INTERNAL_H

#include "datatype/timestamp.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/dsa.h"
#include "utils/uuid.h"

#include "metrics.h"

/*
 * Life of a slot.  FREE -> FILLING (a backend reserved it and copies the
 * prompt into the DSA area, without the lock) -> PENDING (waiting for the
 * worker) -> RUNNING (the worker took it and calls the new model) -> WRITING
 * (both halves closed, the worker writes its row) -> FREE.  Every reuse
 * bumps seq, so a late ShadowCompleteOld cannot touch another request.
 */
typedef enum ShadowSlotState
{
	SHADOW_SLOT_FREE = 0,
	SHADOW_SLOT_FILLING,
	SHADOW_SLOT_PENDING,
	SHADOW_SLOT_RUNNING,
	SHADOW_SLOT_WRITING
} ShadowSlotState;

#define SHADOW_PROMPT_STORED_CHARS	512 /* canary_shadow.prompt keeps these */
#define SHADOW_OLD_MISSING			"missing"

typedef struct ShadowSlot
{
	ShadowSlotState state;
	uint64		seq;
	int			backend_pid;	/* the dispatching backend */

	/* the request, set at dispatch */
	pg_uuid_t	request_id;
	TimestampTz ts;
	char		canary[NAMEDATALEN];
	char		old_model[NAMEDATALEN];
	char		new_model[NAMEDATALEN];
	char		embedding_model[NAMEDATALEN];	/* "": lexical similarity */
	char		user_id[CANARY_USER_ID_MAX];
	char		prompt_class[NAMEDATALEN];
	bool		has_prompt_class;
	char		prompt_hash[CANARY_PROMPT_HASH_LEN + 1];
	bool		store_prompt;
	dsa_pointer prompt;			/* the whole prompt, NUL-terminated */
	Size		prompt_len;
	bool		is_chat;		/* prompt is a normalised chat request (JSON) */

	/* the old half, set by ShadowCompleteOld (or the abort callback) */
	bool		old_done;
	bool		new_done;		/* set by the worker: wake it on old_done */
	dsa_pointer old_text;		/* InvalidDsaPointer: NULL */
	Size		old_text_len;
	int32		old_tokens;		/* -1: NULL */
	int32		old_latency_ms; /* -1: NULL */
	bool		old_refusal;
	char		old_error[CANARY_ERROR_MAX];	/* "": NULL */
} ShadowSlot;

typedef struct ShadowShared
{
	LWLock	   *lock;			/* protects everything below */
	int			dsa_tranche;
	dsa_handle	dsa;			/* DSM_HANDLE_INVALID until the worker ran */
	bool		worker_serving; /* a worker takes jobs; who it is and its
								 * latch: MetricsWakeWorker (metrics.h) */
	int			serving_pid;	/* who set worker_serving, for its exit */
	int			nslots;
	int			next_free;		/* where the next free-slot search starts */
	int			npending;
	uint64		next_seq;
	Size		bytes_in_use;	/* prompts + old answers in the DSA area */

	/* counters, since the server started */
	uint64		dispatched;
	uint64		dropped_queue_full;
	uint64		dropped_no_worker;
	uint64		dropped_memory;
	uint64		rows_written;
	uint64		rows_lost;		/* their INSERT failed */

	ShadowSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} ShadowShared;

extern ShadowShared *ShadowState;

/* settings */
extern int	shadow_queue_size;
extern int	shadow_max_bytes_mb;
extern bool shadow_store_prompt;
extern int	shadow_concurrency;
extern int	shadow_grace_ms;

extern dsa_area *ShadowArea(bool create);
extern void ShadowFreeSlot(ShadowSlot *slot);

#endif							/* LLM_CANARY_SHADOW_INTERNAL_H */
