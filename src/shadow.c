/*-------------------------------------------------------------------------
 *
 * shadow.c
 *	  Shadow mode, the backend side: the shared-memory job queue, its
 *	  settings, and the two calls canary_call makes (see shadow.h).  The
 *	  worker side, which calls the new model, is shadow_worker.c.
 *
 * Design.  A fixed array of llm_canary.shadow_queue_size job slots lives in
 * the main shared memory, protected by one LWLock.  Slots hold the
 * fixed-size facts of a request; the variable-length parts (the whole
 * prompt, up to megabytes, and later the old model's answer) live in a DSA
 * area, so the fixed memory stays small and a big prompt costs only what
 * it needs.  Whoever needs the area first (a backend, or the worker)
 * creates it and pins it for the server's life; the others attach lazily
 * and pin the mapping for their lifetime.  Payload bytes in the area are
 * counted under the lock and capped by llm_canary.shadow_max_bytes;
 * allocations run in a subtransaction of their own (ShadowTryCopy): shadow
 * traffic gives way, the user's call never fails because of it.  Every
 * drop is counted in shared memory.
 *
 * A job has two halves.  ShadowMaybeDispatch publishes it before the old
 * model is called and sets the worker's latch; ShadowCompleteOld adds the
 * old model's answer.  If the call is canceled or fails between the two,
 * a transaction-abort callback closes the old half as "missing", so the
 * worker never waits for an answer that cannot come; the worker also gives
 * up after llm_canary.shadow_grace_ms, or when the backend is gone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "common/pg_prng.h"
#include "mb/pg_wchar.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "extension.h"
#include "metrics.h"
#include "shadow.h"
#include "shadow_internal.h"
#include "subxact.h"
#include "util.h"

ShadowShared *ShadowState = NULL;

/* settings */
int			shadow_queue_size = 1024;
int			shadow_max_bytes_mb = 64;
bool		shadow_store_prompt = true;
int			shadow_concurrency = 16;
int			shadow_grace_ms = 300000;

/* llm_canary.debug_fail_shadow_alloc: a fault injection for the tests */
typedef enum ShadowAllocFault
{
	SHADOW_FAULT_OFF,
	SHADOW_FAULT_PROMPT,		/* the prompt's copy at dispatch raises */
	SHADOW_FAULT_OLD_ANSWER		/* the old answer's copy raises */
} ShadowAllocFault;

static const struct config_enum_entry shadow_fault_options[] = {
	{"off", SHADOW_FAULT_OFF, false},
	{"prompt", SHADOW_FAULT_PROMPT, false},
	{"old_answer", SHADOW_FAULT_OLD_ANSWER, false},
	{NULL, 0, false}
};
static int	shadow_debug_fail_alloc = SHADOW_FAULT_OFF;

#define SHADOW_LWLOCK_TRANCHE	"llm_canary_shadow"
#define SHADOW_DSA_TRANCHE		"llm_canary_shadow_area"

/* this process's attachment to the DSA area */
static dsa_area *shadow_area = NULL;

/*
 * Jobs this backend dispatched whose old half is still open.  canary_call
 * completes one before it dispatches the next; canary_batch opens one per
 * row, the submission worker one per submission in flight, so the array
 * grows (in TopMemoryContext, up to the queue's size); a job that does not
 * fit is still closed by the worker's grace period.  subid is the
 * subtransaction that opened the job (InvalidSubTransactionId for a job
 * kept across a commit), so that the abort of one batch row's
 * subtransaction closes that row's job only.
 */
typedef struct OpenJob
{
	pg_uuid_t	request_id;
	int			slot;
	uint64		seq;
	SubTransactionId subid;
} OpenJob;
static OpenJob *open_jobs = NULL;
static int	open_jobs_cap = 0;
static int	n_open_jobs = 0;
static bool callbacks_registered = false;
static bool keep_open_jobs_at_commit = false;
static bool in_alloc_subxact = false;	/* ShadowTryCopy's own subtransaction */

/*
 * ShadowDefineSettings
 *		Define the shadow settings; called from _PG_init.
 */
void
ShadowDefineSettings(void)
{
	if (process_shared_preload_libraries_in_progress)	/* PGC_POSTMASTER */
		DefineCustomIntVariable("llm_canary.shadow_queue_size",
								"Sets the number of shadow jobs that can wait for or run in the background worker.",
								"A sampled request finding the queue full is not shadowed (counted as a drop).",
								&shadow_queue_size,
								1024, 16, 1000000,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);
	DefineCustomIntVariable("llm_canary.shadow_max_bytes",
							"Sets the memory that prompts and old answers of queued shadow jobs may use.",
							"A job that does not fit is not shadowed; an old answer that does not fit is recorded as old_error \"not_stored\".",
							&shadow_max_bytes_mb,
							64, 1, INT_MAX / 2,
							PGC_SIGHUP,
							GUC_UNIT_MB,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("llm_canary.shadow_store_prompt",
							 "Sets whether canary_shadow keeps the first 512 characters of the prompt.",
							 "When off, only the prompt hash is stored.",
							 &shadow_store_prompt,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("llm_canary.shadow_concurrency",
							"Sets the number of shadow calls the background worker runs at once.",
							NULL,
							&shadow_concurrency,
							16, 1, 256,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("llm_canary.shadow_grace_ms",
							"Sets how long the worker waits for the old model's answer after the new model answered.",
							"After that the row is written with old_error \"missing\".",
							&shadow_grace_ms,
							300000, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomEnumVariable("llm_canary.debug_fail_shadow_alloc",
							 "Makes the shadow memory allocations of prompts or old answers raise an error (a fault injection for tests).",
							 "Simulates dynamic shared memory that cannot grow (/dev/shm full): the job is dropped or its old answer not stored; the call goes on.",
							 &shadow_debug_fail_alloc,
							 SHADOW_FAULT_OFF,
							 shadow_fault_options,
							 PGC_SUSET,
							 GUC_NOT_IN_SAMPLE,
							 NULL, NULL, NULL);
}

static Size
ShadowShmemSize(void)
{
	return add_size(offsetof(ShadowShared, slots),
					mul_size(shadow_queue_size, sizeof(ShadowSlot)));
}

/*
 * ShadowRequestShmem
 *		Reserve the slot array and the lock; from the shmem_request_hook.
 */
void
ShadowRequestShmem(void)
{
	RequestAddinShmemSpace(ShadowShmemSize());
	RequestNamedLWLockTranche(SHADOW_LWLOCK_TRANCHE, 1);
}

/*
 * ShadowInitShmem
 *		Create or find the slot array; from the shmem_startup_hook.  Takes
 *		AddinShmemInitLock unless the caller already holds it.
 */
void
ShadowInitShmem(void)
{
	bool		found;
	bool		take_lock = !LWLockHeldByMe(AddinShmemInitLock);

	if (take_lock)
		LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ShadowState = ShmemInitStruct("llm_canary shadow queue", ShadowShmemSize(), &found);
	if (!found)
	{
		memset(ShadowState, 0, ShadowShmemSize());
		ShadowState->lock = &(GetNamedLWLockTranche(SHADOW_LWLOCK_TRANCHE))->lock;
		ShadowState->dsa_tranche = LWLockNewTrancheId();
		ShadowState->dsa = DSM_HANDLE_INVALID;
		ShadowState->nslots = shadow_queue_size;
		ShadowState->next_seq = 1;
		for (int i = 0; i < shadow_queue_size; i++)
		{
			ShadowState->slots[i].prompt = InvalidDsaPointer;
			ShadowState->slots[i].old_text = InvalidDsaPointer;
		}
	}
	if (take_lock)
		LWLockRelease(AddinShmemInitLock);
}

/*
 * ShadowArea
 *		This process's attachment to the shadow DSA area, or NULL when none
 *		exists yet and create is false; with create, the first caller (a
 *		backend dispatching a job, or the worker) creates it.  The mapping
 *		is pinned: it lives as long as the process.  May raise ERROR if the
 *		DSM segments cannot be created or mapped.
 */
dsa_area *
ShadowArea(bool create)
{
	dsa_handle	handle;
	MemoryContext oldcxt;

	if (shadow_area != NULL)
		return shadow_area;

	/* the dsa_area struct is palloc'd: it must live as long as the process */
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	LWLockRegisterTranche(ShadowState->dsa_tranche, SHADOW_DSA_TRANCHE);
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	handle = ShadowState->dsa;
	if (handle == DSM_HANDLE_INVALID && create)
	{
		/* the area outlives its creator: it lives until the server stops */
		shadow_area = dsa_create(ShadowState->dsa_tranche);
		dsa_pin(shadow_area);
		dsa_pin_mapping(shadow_area);
		ShadowState->dsa = dsa_get_handle(shadow_area);
	}
	LWLockRelease(ShadowState->lock);

	if (shadow_area == NULL && handle != DSM_HANDLE_INVALID)
	{
		shadow_area = dsa_attach(handle);
		dsa_pin_mapping(shadow_area);
	}
	MemoryContextSwitchTo(oldcxt);
	return shadow_area;
}

/*
 * ShadowFreeSlot
 *		Give back a slot and its DSA chunks.  Caller must hold the lock
 *		exclusively and be attached to the area.
 */
void
ShadowFreeSlot(ShadowSlot *slot)
{
	Assert(shadow_area != NULL);
	if (DsaPointerIsValid(slot->prompt))
	{
		dsa_free(shadow_area, slot->prompt);
		ShadowState->bytes_in_use -= slot->prompt_len + 1;
	}
	if (DsaPointerIsValid(slot->old_text))
	{
		dsa_free(shadow_area, slot->old_text);
		ShadowState->bytes_in_use -= slot->old_text_len + 1;
	}
	if (slot->state == SHADOW_SLOT_PENDING)
		ShadowState->npending--;
	slot->prompt = InvalidDsaPointer;
	slot->old_text = InvalidDsaPointer;
	slot->prompt_len = slot->old_text_len = 0;
	slot->state = SHADOW_SLOT_FREE;
	slot->seq = 0;
}

/*
 * Close the old half of this backend's open jobs opened in subtransaction
 * from or later (InvalidSubTransactionId: all) as "missing": the call that
 * dispatched them ended without an answer from the old model.
 */
static void
CloseOpenJobs(SubTransactionId from)
{
	bool		wake = false;
	int			kept = 0;

	if (n_open_jobs == 0 || ShadowState == NULL)
		return;
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	for (int i = 0; i < n_open_jobs; i++)
	{
		ShadowSlot *slot = &ShadowState->slots[open_jobs[i].slot];

		if (open_jobs[i].subid < from)
		{
			open_jobs[kept++] = open_jobs[i];
			continue;
		}
		if (slot->seq != open_jobs[i].seq || slot->old_done ||
			(slot->state != SHADOW_SLOT_PENDING && slot->state != SHADOW_SLOT_RUNNING))
			continue;
		slot->old_done = true;
		slot->old_tokens = -1;
		slot->old_latency_ms = -1;
		strlcpy(slot->old_error, SHADOW_OLD_MISSING, sizeof(slot->old_error));
		if (slot->new_done)
			wake = true;
	}
	LWLockRelease(ShadowState->lock);
	n_open_jobs = kept;
	if (wake)
		MetricsWakeWorker();
}

/*
 * ShadowKeepOpenJobsAtCommit
 *		For a process whose calls outlive the transaction that began them
 *		(the submission worker): a commit keeps the open jobs, which
 *		ShadowCompleteOld completes in a later transaction.
 */
void
ShadowKeepOpenJobsAtCommit(void)
{
	keep_open_jobs_at_commit = true;
}

/*
 * Any end of a (sub)transaction with open jobs means the call that opened
 * them was interrupted: canary_call completes its job before it returns.
 * Runs in abort processing, after LWLockReleaseAll; takes the shadow
 * queue's lock briefly, allocates nothing, and wakes the worker without a
 * lock (MetricsWakeWorker).
 */
static void
ShadowXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && keep_open_jobs_at_commit)
	{
		/* subtransaction ids start again in the next transaction */
		for (int i = 0; i < n_open_jobs; i++)
			open_jobs[i].subid = InvalidSubTransactionId;
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
			 event == XACT_EVENT_COMMIT || event == XACT_EVENT_PREPARE)
		CloseOpenJobs(InvalidSubTransactionId);
}

static void
ShadowSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && !in_alloc_subxact)
		CloseOpenJobs(mySubid);
}

/*
 * ShadowTryCopy
 *		Copy len bytes of data and a NUL into a new chunk of the shadow DSA
 *		area, creating the area or attaching to it first.  Returns
 *		InvalidDsaPointer when that fails, for any reason.  what names the
 *		copy for llm_canary.debug_fail_shadow_alloc.
 *
 * DSA_ALLOC_NO_OOM does not stop dsm_create from raising (too many
 * segments, /dev/shm full), and a raise would leave the caller's slot and
 * byte reservation behind.  So the work runs in an internal subtransaction,
 * as PL/pgSQL runs an exception block: an ERROR inside is caught, logged,
 * and its locks and resources are released by the subtransaction's abort;
 * the user's call goes on (a cancel caught here is raised again at the
 * caller's next CHECK_FOR_INTERRUPTS, after the slot was given back).  Caller must be in a transaction, not in
 * parallel mode, and hold no LWLock.
 */
static dsa_pointer
ShadowTryCopy(const char *data, Size len, ShadowAllocFault what)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile dsa_pointer dp = InvalidDsaPointer;

	BeginInternalSubTransaction(NULL);
	in_alloc_subxact = true;	/* its abort is not the call's */
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		dsa_area   *area = ShadowArea(true);
		dsa_pointer p;

		if (shadow_debug_fail_alloc == what)
		{
			/* as dsm_create raising inside dsa_allocate, under the area's lock */
			LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not allocate shadow memory: injected fault"),
					 errdetail("llm_canary.debug_fail_shadow_alloc is on.")));
		}
		p = dsa_allocate_extended(area, len + 1, DSA_ALLOC_NO_OOM | DSA_ALLOC_HUGE);
		if (DsaPointerIsValid(p))
		{
			memcpy(dsa_get_address(area, p), data, len);
			((char *) dsa_get_address(area, p))[len] = '\0';
		}
		dp = p;
		CanarySubxactCommit(oldcxt, oldowner);
	}
	PG_CATCH();
	{
		ErrorData  *edata = CanarySubxactAbort(oldcxt, oldowner, oldcxt);

		/* a cancel or termination is not ours to swallow: raise it again soon */
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			QueryCancelPending = InterruptPending = true;
		else if (edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ProcDiePending = InterruptPending = true;
		else
			ereport(LOG,
					(errmsg("llm_canary could not store a shadow job in shared memory: %s",
							edata->message),
					 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
		FreeErrorData(edata);
		dp = InvalidDsaPointer;
	}
	PG_END_TRY();
	in_alloc_subxact = false;
	return dp;
}

/* Counted drop; never raises. */
static void
CountDrop(uint64 *counter)
{
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	(*counter)++;
	LWLockRelease(ShadowState->lock);
}

/*
 * ShadowMaybeDispatch
 *		Sample the request (rollout->shadow_sample_rate) and, if chosen,
 *		queue it for the worker, which sends the prompt to the new model.
 *
 * prompt is the prompt, or with is_chat the normalised chat request's
 * JSON text (canary_chat), which the worker sends in the new model's
 * dialect.  Called by canary_call before it calls the old model.  Never
 * raises because the queue is full, the memory budget is spent or shared
 * memory cannot grow: those drops are counted.  While no worker runs (the
 * seconds after a server start, a worker restart) jobs wait in the queue
 * like metric records; only a full queue drops them.  Allocates nothing in
 * the caller's context.
 */
void
ShadowMaybeDispatch(const CanaryRollout *rollout, const pg_uuid_t *request_id,
					const char *user_id, int user_len, const char *prompt,
					bool is_chat, const char *prompt_class, const char *prompt_hash)
{
	ShadowSlot *slot = NULL;
	int			slotno = -1;
	uint64		seq = 0;
	Size		prompt_len = strlen(prompt);
	Size		budget = (Size) shadow_max_bytes_mb * 1024 * 1024;
	dsa_pointer dp;

	if (ShadowState == NULL || rollout->new_model == NULL)
		return;
	if (!(rollout->shadow_sample_rate >= 1.0 ||
		  (rollout->shadow_sample_rate > 0.0 &&
		   pg_prng_double(&pg_global_prng_state) < rollout->shadow_sample_rate)))
		return;

	/* a shadow call needs a subtransaction of its own (ShadowTryCopy) */
	if (IsInParallelMode())
	{
		CountDrop(&ShadowState->dropped_memory);
		return;
	}

	if (!callbacks_registered)
	{
		RegisterXactCallback(ShadowXactCallback, NULL);
		RegisterSubXactCallback(ShadowSubXactCallback, NULL);
		callbacks_registered = true;
	}

	/* reserve a slot and the bytes of the prompt */
	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	if (ShadowState->bytes_in_use + prompt_len + 1 > budget)
	{
		ShadowState->dropped_memory++;
		LWLockRelease(ShadowState->lock);
		return;
	}
	for (int n = 0; n < ShadowState->nslots; n++)
	{
		int			i = (ShadowState->next_free + n) % ShadowState->nslots;

		if (ShadowState->slots[i].state == SHADOW_SLOT_FREE)
		{
			slotno = i;
			break;
		}
	}
	if (slotno < 0)
	{
		/* while no worker serves the queue, jobs wait: that is why it is full */
		if (!ShadowState->worker_serving)
			ShadowState->dropped_no_worker++;
		else
			ShadowState->dropped_queue_full++;
		LWLockRelease(ShadowState->lock);
		return;
	}
	slot = &ShadowState->slots[slotno];
	ShadowState->next_free = (slotno + 1) % ShadowState->nslots;
	seq = ShadowState->next_seq++;
	slot->state = SHADOW_SLOT_FILLING;
	slot->seq = seq;
	ShadowState->bytes_in_use += prompt_len + 1;
	LWLockRelease(ShadowState->lock);

	/*
	 * Fill the slot without the lock: nobody else touches a FILLING slot.
	 * Nothing below raises (ShadowTryCopy catches what the DSA raises, and
	 * if it cannot even start its subtransaction the slot is given back
	 * before the error goes on), so the slot is never left FILLING.
	 */
	PG_TRY();
	{
		dp = ShadowTryCopy(prompt, prompt_len, SHADOW_FAULT_PROMPT);
	}
	PG_CATCH();
	{
		/* not even a subtransaction could start: give the slot back */
		LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
		ShadowState->bytes_in_use -= prompt_len + 1;
		slot->state = SHADOW_SLOT_FREE;
		slot->seq = 0;
		LWLockRelease(ShadowState->lock);
		PG_RE_THROW();
	}
	PG_END_TRY();

	slot->backend_pid = MyProcPid;
	slot->request_id = *request_id;
	slot->ts = GetCurrentTimestamp();
	strlcpy(slot->canary, rollout->name, sizeof(slot->canary));
	strlcpy(slot->old_model, rollout->old_model ? rollout->old_model : "", sizeof(slot->old_model));
	strlcpy(slot->new_model, rollout->new_model, sizeof(slot->new_model));
	strlcpy(slot->embedding_model,
			rollout->shadow_embedding_model ? rollout->shadow_embedding_model : "",
			sizeof(slot->embedding_model));
	CanaryClipCopy(slot->user_id, sizeof(slot->user_id), user_id, user_len);
	slot->has_prompt_class = prompt_class != NULL;
	if (prompt_class)
		CanaryClipCopy(slot->prompt_class, sizeof(slot->prompt_class), prompt_class, strlen(prompt_class));
	strlcpy(slot->prompt_hash, prompt_hash, sizeof(slot->prompt_hash));
	slot->store_prompt = shadow_store_prompt;
	slot->prompt = dp;
	slot->prompt_len = prompt_len;
	slot->is_chat = is_chat;
	slot->old_done = false;
	slot->new_done = false;
	slot->old_text = InvalidDsaPointer;
	slot->old_text_len = 0;
	slot->old_tokens = -1;
	slot->old_latency_ms = -1;
	slot->old_refusal = false;
	slot->old_error[0] = '\0';

	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	if (!DsaPointerIsValid(dp))
	{
		ShadowState->bytes_in_use -= prompt_len + 1;
		ShadowState->dropped_memory++;
		slot->state = SHADOW_SLOT_FREE;
		slot->seq = 0;
		LWLockRelease(ShadowState->lock);
		return;
	}
	slot->state = SHADOW_SLOT_PENDING;
	ShadowState->npending++;
	ShadowState->dispatched++;
	LWLockRelease(ShadowState->lock);

	if (n_open_jobs == open_jobs_cap && open_jobs_cap < ShadowState->nslots)
	{
		/* grow without raising: a job that does not fit is only untracked */
		int			cap = Min(Max(open_jobs_cap * 2, 8), ShadowState->nslots);
		OpenJob    *grown = MemoryContextAllocExtended(TopMemoryContext,
													   sizeof(OpenJob) * cap,
													   MCXT_ALLOC_NO_OOM);

		if (grown != NULL)
		{
			if (n_open_jobs > 0)
				memcpy(grown, open_jobs, sizeof(OpenJob) * n_open_jobs);
			if (open_jobs != NULL)
				pfree(open_jobs);
			open_jobs = grown;
			open_jobs_cap = cap;
		}
	}
	if (n_open_jobs < open_jobs_cap)
	{
		open_jobs[n_open_jobs].request_id = *request_id;
		open_jobs[n_open_jobs].slot = slotno;
		open_jobs[n_open_jobs].seq = seq;
		open_jobs[n_open_jobs].subid = GetCurrentSubTransactionId();
		n_open_jobs++;
	}
	MetricsWakeWorker();
}

/*
 * ShadowCopyOldAnswer
 *		ShadowTryCopy of the old answer of the job (slotno, seq), whose
 *		text_len + 1 bytes the caller reserved and whose entry it took out
 *		of open_jobs.  If not even a subtransaction could start, give the
 *		bytes back and reopen the job before the error goes on, so that the
 *		abort closes its old half as "missing".
 */
static dsa_pointer
ShadowCopyOldAnswer(const char *text, Size text_len, const pg_uuid_t *request_id,
					int slotno, uint64 seq)
{
	dsa_pointer dp = InvalidDsaPointer;

	PG_TRY();
	{
		dp = ShadowTryCopy(text, text_len, SHADOW_FAULT_OLD_ANSWER);
	}
	PG_CATCH();
	{
		LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
		ShadowState->bytes_in_use -= text_len + 1;
		LWLockRelease(ShadowState->lock);
		Assert(n_open_jobs < open_jobs_cap);	/* its entry was just freed */
		open_jobs[n_open_jobs].request_id = *request_id;
		open_jobs[n_open_jobs].slot = slotno;
		open_jobs[n_open_jobs].seq = seq;
		open_jobs[n_open_jobs].subid = GetCurrentSubTransactionId();
		n_open_jobs++;
		PG_RE_THROW();
	}
	PG_END_TRY();
	return dp;
}

/*
 * ShadowCompleteOld
 *		Add the old model's answer to the job dispatched for request_id, if
 *		any.  Called by canary_call after the old model answered or failed.
 *		Never raises; an answer that does not fit the memory budget is
 *		recorded as old_error "not_stored".
 */
void
ShadowCompleteOld(const pg_uuid_t *request_id, const CanaryModel *old_model,
				  const CanaryAttempt *old_attempt)
{
	int			slotno = -1;
	uint64		seq = 0;
	Size		text_len = 0;
	dsa_pointer dp = InvalidDsaPointer;
	bool		not_stored = false;
	ShadowSlot *slot;
	bool		wake = false;

	for (int i = 0; i < n_open_jobs; i++)
	{
		if (memcmp(open_jobs[i].request_id.data, request_id->data, UUID_LEN) == 0)
		{
			slotno = open_jobs[i].slot;
			seq = open_jobs[i].seq;
			open_jobs[i] = open_jobs[--n_open_jobs];
			break;
		}
	}
	if (slotno < 0 || ShadowState == NULL || shadow_area == NULL)
		return;

	/* copy the answer into the area first, within the budget */
	if (old_attempt->text != NULL)
	{
		Size		budget = (Size) shadow_max_bytes_mb * 1024 * 1024;
		bool		reserved = false;

		text_len = strlen(old_attempt->text);
		LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
		if (ShadowState->bytes_in_use + text_len + 1 <= budget)
		{
			ShadowState->bytes_in_use += text_len + 1;
			reserved = true;
		}
		LWLockRelease(ShadowState->lock);
		if (reserved)
			dp = ShadowCopyOldAnswer(old_attempt->text, text_len, request_id, slotno, seq);
		not_stored = !DsaPointerIsValid(dp);
		if (reserved && not_stored)
		{
			LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
			ShadowState->bytes_in_use -= text_len + 1;
			LWLockRelease(ShadowState->lock);
		}
	}

	LWLockAcquire(ShadowState->lock, LW_EXCLUSIVE);
	slot = &ShadowState->slots[slotno];
	if (slot->seq != seq || slot->old_done ||
		(slot->state != SHADOW_SLOT_PENDING && slot->state != SHADOW_SLOT_RUNNING))
	{
		/* the worker gave up waiting: drop the copy */
		if (DsaPointerIsValid(dp))
		{
			dsa_free(shadow_area, dp);
			ShadowState->bytes_in_use -= text_len + 1;
		}
		LWLockRelease(ShadowState->lock);
		return;
	}
	slot->old_text = dp;
	slot->old_text_len = DsaPointerIsValid(dp) ? text_len : 0;
	slot->old_tokens = old_attempt->completion_tokens;
	slot->old_latency_ms = old_attempt->latency_ms;
	slot->old_refusal = old_attempt->outcome == CANARY_OUTCOME_REFUSAL;
	if (old_attempt->error)
		strlcpy(slot->old_error, old_attempt->error, sizeof(slot->old_error));
	else if (not_stored)
		strlcpy(slot->old_error, "not_stored", sizeof(slot->old_error));
	else
		slot->old_error[0] = '\0';
	slot->old_done = true;
	if (slot->new_done)
		wake = true;
	LWLockRelease(ShadowState->lock);
	if (wake)
		MetricsWakeWorker();
}

/*
 * ShadowWaitIdle
 *		Wait until every shadow job dispatched before the call has been
 *		written (or recorded as failed) by the worker, or timeout_ms passed.
 *		Returns false on timeout.  Used by canary_flush(), so that tests and
 *		reports see the shadow rows of the calls they just made.
 */
bool
ShadowWaitIdle(long timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	uint64		target;

	if (ShadowState == NULL)
		return true;
	LWLockAcquire(ShadowState->lock, LW_SHARED);
	target = ShadowState->next_seq;
	LWLockRelease(ShadowState->lock);

	for (;;)
	{
		bool		busy = false;

		LWLockAcquire(ShadowState->lock, LW_SHARED);
		for (int i = 0; i < ShadowState->nslots && !busy; i++)
		{
			ShadowSlot *slot = &ShadowState->slots[i];

			busy = slot->state != SHADOW_SLOT_FREE && slot->seq != 0 && slot->seq < target;
		}
		LWLockRelease(ShadowState->lock);
		if (!busy)
			return true;
		if (GetCurrentTimestamp() >= deadline)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * canary_shadow_stats(): the shadow queue's counters since server start.
 */
PG_FUNCTION_INFO_V1(canary_shadow_stats);
Datum
canary_shadow_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[9];
	bool		nulls[9] = {0};
	int			in_flight = 0;

	CanaryRequirePreload("canary_shadow_stats()");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	LWLockAcquire(ShadowState->lock, LW_SHARED);
	for (int i = 0; i < ShadowState->nslots; i++)
		if (ShadowState->slots[i].state != SHADOW_SLOT_FREE)
			in_flight++;
	values[0] = Int32GetDatum(ShadowState->nslots);
	values[1] = Int32GetDatum(in_flight);
	values[2] = Int64GetDatum((int64) ShadowState->dispatched);
	values[3] = Int64GetDatum((int64) ShadowState->dropped_queue_full);
	values[4] = Int64GetDatum((int64) ShadowState->dropped_no_worker);
	values[5] = Int64GetDatum((int64) ShadowState->dropped_memory);
	values[6] = Int64GetDatum((int64) ShadowState->rows_written);
	values[7] = Int64GetDatum((int64) ShadowState->rows_lost);
	values[8] = Int64GetDatum((int64) ShadowState->bytes_in_use);
	LWLockRelease(ShadowState->lock);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
