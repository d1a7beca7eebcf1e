/*-------------------------------------------------------------------------
 *
 * metrics_queue.c
 *	  The metrics queue: a fixed-size ring of CanaryMetricRecord in shared
 *	  memory, filled by the call path and emptied by the background worker.
 *
 * Recording a model attempt must not depend on the caller's transaction, so
 * the call path only copies its record into this ring (MetricsEnqueue) and
 * the worker (worker.c) writes the ring to canary_requests in batches, each
 * in a transaction of its own.
 *
 * The ring is addressed by two monotonic counters: head (records ever
 * enqueued) and tail (records ever written).  Slot i lives at
 * records[i % capacity].  Producers append at head under the exclusive lock;
 * the worker, the only consumer, copies records between tail and head under
 * the shared lock (no producer touches those slots) and advances tail only
 * after the batch committed, so a failed write leaves the records queued.
 * Hence written = tail and depth = head - tail.
 *
 * Two condition variables: space_cv wakes producers waiting on a full queue,
 * written_cv wakes canary_flush callers after each committed batch.
 *
 * Shared memory also holds the worker's identity (pid, latch, state,
 * database) and one call counter per backend (indexed by pgprocno).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "extension.h"
#include "metrics.h"
#include "worker.h"

#define METRICS_TRANCHE_NAME	"llm_canary_metrics"

/* One backend's call counter; pid 0 = slot unused. */
typedef struct BackendCallSlot
{
	pg_atomic_uint32 pid;
	pg_atomic_uint64 calls;
} BackendCallSlot;

/* The shared header; the slots and the ring follow it. */
typedef struct MetricsShared
{
	LWLock	   *lock;			/* protects everything below but the atomics */
	int			capacity;		/* records in the ring */
	int			nslots;			/* backend call slots */
	uint64		head;			/* records ever enqueued */
	uint64		tail;			/* records ever written (committed) */
	uint64		write_errors;
	uint64		batches;
	TimestampTz last_write_at;
	bool		flush_requested;
	/* the worker, written by the worker only */
	int			worker_pid;
	CanaryWorkerState worker_state;
	Latch	   *worker_latch;
	Oid			worker_dboid;
	ConditionVariable space_cv; /* records were consumed */
	ConditionVariable written_cv;	/* a batch committed, or the worker left */
	pg_atomic_uint64 dropped;
} MetricsShared;

static MetricsShared *Shared = NULL;
static BackendCallSlot *CallSlots = NULL;
static CanaryMetricRecord *Records = NULL;
static bool CallSlotClaimed = false;

static const char *const WorkerStateNames[] = {
	"stopped", "starting", "waiting_for_extension", "running", "stopping"
};

/* settings */
static int	canary_queue_size = 16384;
static int	canary_queue_full_wait_ms = 10;

/*
 * MetricsInit
 *		Define the queue's settings; called from _PG_init.  The size can only
 *		be defined while preloading (it sizes shared memory); loaded later,
 *		for routing only, the library leaves it undefined, as
 *		pg_stat_statements does.
 */
void
MetricsInit(void)
{
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("llm_canary.queue_size",
								"Sets the capacity, in records, of the shared memory queue of metrics waiting to be written.",
								"Each record takes about 800 bytes of shared memory; when the queue is full, new records are dropped and counted.",
								&canary_queue_size,
								16384, 16, 1048576,
								PGC_POSTMASTER,
								0,
								NULL, NULL, NULL);

	DefineCustomIntVariable("llm_canary.queue_full_wait_ms",
							"Sets how long a call waits for room in a full metrics queue before dropping its record.",
							NULL,
							&canary_queue_full_wait_ms,
							10, 0, 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

const char *
CanaryWorkerStateName(CanaryWorkerState state)
{
	if ((int) state < 0 || (int) state >= lengthof(WorkerStateNames))
		return "stopped";
	return WorkerStateNames[state];
}

/* Size of the header, the call slots and the ring, each MAXALIGNed. */
static Size
MetricsShmemSize(void)
{
	Size		size;

	size = MAXALIGN(sizeof(MetricsShared));
	size = add_size(size, MAXALIGN(mul_size(MaxBackends, sizeof(BackendCallSlot))));
	size = add_size(size, mul_size(canary_queue_size, sizeof(CanaryMetricRecord)));
	return size;
}

/*
 * MetricsRequestShmem
 *		Reserve the queue's shared memory and its lock.  Call from the
 *		shmem_request_hook (MaxBackends is known by then).
 */
void
MetricsRequestShmem(void)
{
	RequestAddinShmemSpace(MetricsShmemSize());
	RequestNamedLWLockTranche(METRICS_TRANCHE_NAME, 1);
}

/*
 * MetricsInitShmem
 *		Attach to (or create and initialize) the queue.  Call from the
 *		shmem_startup_hook; after a crash restart the queue starts empty.
 */
void
MetricsInitShmem(void)
{
	bool		found;
	char	   *base;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	base = ShmemInitStruct("llm_canary metrics queue", MetricsShmemSize(), &found);
	Shared = (MetricsShared *) base;
	CallSlots = (BackendCallSlot *) (base + MAXALIGN(sizeof(MetricsShared)));
	Records = (CanaryMetricRecord *)
		(base + MAXALIGN(sizeof(MetricsShared)) +
		 MAXALIGN(mul_size(MaxBackends, sizeof(BackendCallSlot))));
	if (!found)
	{
		memset(Shared, 0, sizeof(MetricsShared));
		Shared->lock = &(GetNamedLWLockTranche(METRICS_TRANCHE_NAME))->lock;
		Shared->capacity = canary_queue_size;
		Shared->nslots = MaxBackends;
		Shared->worker_state = CANARY_WORKER_STOPPED;
		ConditionVariableInit(&Shared->space_cv);
		ConditionVariableInit(&Shared->written_cv);
		pg_atomic_init_u64(&Shared->dropped, 0);
		for (int i = 0; i < MaxBackends; i++)
		{
			pg_atomic_init_u32(&CallSlots[i].pid, 0);
			pg_atomic_init_u64(&CallSlots[i].calls, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * QueueTryPut
 *		Append rec if there is room.  *wake is set to the worker's latch when
 *		the worker should be woken: the queue is full, or at least a quarter
 *		full after this record.
 */
static bool
QueueTryPut(const CanaryMetricRecord *rec, Latch **wake)
{
	uint64		depth;
	bool		put = false;

	*wake = NULL;
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	depth = Shared->head - Shared->tail;
	if (depth < (uint64) Shared->capacity)
	{
		memcpy(&Records[Shared->head % Shared->capacity], rec, sizeof(*rec));
		Shared->head++;
		depth++;
		put = true;
	}
	if (!put || depth >= (uint64) Max(Shared->capacity / 4, 1))
		*wake = Shared->worker_latch;
	LWLockRelease(Shared->lock);
	return put;
}

/*
 * MetricsEnqueue
 *		Copy one record into the queue; see metrics.h for the contract.
 *
 * When the queue is full the worker is woken and we wait on space_cv for at
 * most llm_canary.queue_full_wait_ms.  Interrupts are held during that
 * short wait so that a cancel cannot turn it into an ERROR: the pending
 * interrupt is served at the caller's next CHECK_FOR_INTERRUPTS.
 */
bool
MetricsEnqueue(const CanaryMetricRecord *rec)
{
	Latch	   *wake;
	TimestampTz deadline;
	bool		put;

	if (Shared == NULL)
		return false;

	put = QueueTryPut(rec, &wake);
	if (wake != NULL)
		SetLatch(wake);
	if (put)
		return true;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   canary_queue_full_wait_ms);
	HOLD_INTERRUPTS();
	ConditionVariablePrepareToSleep(&Shared->space_cv);
	for (;;)
	{
		long		remaining;

		put = QueueTryPut(rec, &wake);
		if (put)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		if (wake != NULL)
			SetLatch(wake);
		(void) ConditionVariableTimedSleep(&Shared->space_cv, remaining,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	RESUME_INTERRUPTS();

	if (wake != NULL)
		SetLatch(wake);
	if (!put)
		pg_atomic_fetch_add_u64(&Shared->dropped, 1);
	return put;
}

/*
 * MetricsRequireWorkerDatabase
 *		Raise 55000 unless the library is preloaded and the worker writes
 *		metrics to the current database.
 */
void
MetricsRequireWorkerDatabase(void)
{
	char	   *dbname;
	const char *worker_db = WorkerDatabaseName();

	CanaryRequirePreload("recording metrics");
	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || worker_db == NULL ||
		strcmp(dbname, worker_db) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot record llm_canary metrics in database \"%s\"",
						dbname ? dbname : "?"),
				 errdetail("The llm_canary background worker writes metrics only to database \"%s\" (llm_canary.database_name).",
						   worker_db ? worker_db : ""),
				 errhint("Use llm_canary in database \"%s\", or set llm_canary.database_name = '%s' in postgresql.conf and restart the server.",
						 worker_db ? worker_db : "",
						 dbname ? dbname : "")));
}

/* before_shmem_exit callback: free this backend's call slot. */
static void
CallSlotRelease(int code, Datum arg)
{
	BackendCallSlot *slot = &CallSlots[DatumGetInt32(arg)];

	pg_atomic_write_u32(&slot->pid, 0);
}

void
MetricsCountCall(void)
{
	BackendCallSlot *slot;

	if (Shared == NULL || MyProc == NULL || MyProc->pgprocno < 0 ||
		MyProc->pgprocno >= Shared->nslots)
		return;
	slot = &CallSlots[MyProc->pgprocno];
	if (!CallSlotClaimed)
	{
		/*
		 * The slot is ours alone while we live.  Register its release first
		 * (that can raise), then reset and publish, so a published slot
		 * always has a release.
		 */
		before_shmem_exit(CallSlotRelease, Int32GetDatum(MyProc->pgprocno));
		CallSlotClaimed = true;
		pg_atomic_write_u64(&slot->calls, 0);
		pg_write_barrier();
		pg_atomic_write_u32(&slot->pid, (uint32) MyProcPid);
	}
	pg_atomic_fetch_add_u64(&slot->calls, 1);
}

/* Number of call slots (0 without shared memory). */
int
MetricsBackendSlots(void)
{
	return Shared ? Shared->nslots : 0;
}

/*
 * MetricsBackendCalls
 *		Fill pids/calls with the live backends that counted calls; returns
 *		how many (at most max).
 */
int
MetricsBackendCalls(int *pids, uint64 *calls, int max)
{
	int			n = 0;

	if (Shared == NULL)
		return 0;
	for (int i = 0; i < Shared->nslots && n < max; i++)
	{
		uint32		pid = pg_atomic_read_u32(&CallSlots[i].pid);
		uint64		c;

		if (pid == 0)
			continue;
		pg_read_barrier();
		c = pg_atomic_read_u64(&CallSlots[i].calls);
		if (c == 0)
			continue;
		pids[n] = (int) pid;
		calls[n] = c;
		n++;
	}
	return n;
}

/* A consistent copy of the counters; false without shared memory. */
bool
MetricsQueueGetStats(MetricsQueueStats *stats)
{
	memset(stats, 0, sizeof(*stats));
	if (Shared == NULL)
		return false;
	LWLockAcquire(Shared->lock, LW_SHARED);
	stats->capacity = Shared->capacity;
	stats->depth = Shared->head - Shared->tail;
	stats->enqueued = Shared->head;
	stats->written = Shared->tail;
	stats->write_errors = Shared->write_errors;
	stats->batches = Shared->batches;
	stats->last_write_at = Shared->last_write_at;
	stats->worker_pid = Shared->worker_pid;
	stats->worker_state = Shared->worker_state;
	stats->worker_dboid = Shared->worker_dboid;
	LWLockRelease(Shared->lock);
	stats->dropped = pg_atomic_read_u64(&Shared->dropped);
	return true;
}

/* Records enqueued since startup (the head counter). */
uint64
MetricsEnqueuedSoFar(void)
{
	uint64		head;

	Assert(Shared != NULL);
	LWLockAcquire(Shared->lock, LW_SHARED);
	head = Shared->head;
	LWLockRelease(Shared->lock);
	return head;
}

/* Ask the worker to write what is queued now, even while backing off. */
void
MetricsRequestFlush(void)
{
	Latch	   *latch;

	Assert(Shared != NULL);
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Shared->flush_requested = true;
	latch = Shared->worker_latch;
	LWLockRelease(Shared->lock);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * MetricsWakeWorker
 *		Set the worker's latch, if a worker is attached; a no-op without
 *		shared memory (library not preloaded).  The worker's identity is
 *		kept here only: the shadow queue wakes the worker through this too,
 *		on every dispatch and from transaction callbacks, so it takes no
 *		lock and allocates nothing.  The pointer is read once, unlocked, as
 *		PostgreSQL reads walwriterLatch: it is a PGPROC's latch, in shared
 *		memory for good, so a stale one costs at most a spurious wakeup of
 *		the process that owns it now.
 */
void
MetricsWakeWorker(void)
{
	Latch	   *latch;

	if (Shared == NULL)
		return;
	latch = ((volatile MetricsShared *) Shared)->worker_latch;
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * MetricsWaitWritten
 *		Wait until at least target records were written and the worker is
 *		running (so that an empty queue also proves a worker serves it), at
 *		most timeout_ms.  Returns true when both hold.  Interruptible: a cancel raises 57014
 *		from inside the wait.  The worker is re-asked to flush every second,
 *		so a worker that (re)started during the wait is asked too.
 */
bool
MetricsWaitWritten(uint64 target, long timeout_ms)
{
	TimestampTz start = GetCurrentTimestamp();
	TimestampTz deadline = TimestampTzPlusMilliseconds(start, timeout_ms);
	TimestampTz next_ask = TimestampTzPlusMilliseconds(start, 1000);
	bool		done = false;

	Assert(Shared != NULL);
	ConditionVariablePrepareToSleep(&Shared->written_cv);
	for (;;)
	{
		TimestampTz now;
		long		remaining;

		LWLockAcquire(Shared->lock, LW_SHARED);
		done = Shared->tail >= target &&
			Shared->worker_state == CANARY_WORKER_RUNNING;
		LWLockRelease(Shared->lock);
		if (done)
			break;
		now = GetCurrentTimestamp();
		remaining = TimestampDifferenceMilliseconds(now, deadline);
		if (remaining <= 0)
			break;
		if (now >= next_ask)
		{
			MetricsRequestFlush();
			next_ask = TimestampTzPlusMilliseconds(now, 1000);
		}
		(void) ConditionVariableTimedSleep(&Shared->written_cv,
										   Min(remaining, 1000),
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return done;
}

/*
 * Worker side.  Caller must be the background worker (worker.c).
 */

/* before_shmem_exit callback of the worker: tell everyone it is gone. */
static void
WorkerDetach(int code, Datum arg)
{
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	if (Shared->worker_pid == MyProcPid)
	{
		Shared->worker_pid = 0;
		Shared->worker_latch = NULL;
		Shared->worker_state = CANARY_WORKER_STOPPED;
		Shared->worker_dboid = InvalidOid;
	}
	LWLockRelease(Shared->lock);
	ConditionVariableBroadcast(&Shared->written_cv);
}

/*
 * Publish this process as the worker serving database dboid.  The detach
 * callback is registered first (that can raise), so a published worker is
 * always unpublished when it exits.
 */
void
MetricsWorkerAttach(Oid dboid)
{
	before_shmem_exit(WorkerDetach, (Datum) 0);
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Shared->worker_pid = MyProcPid;
	Shared->worker_latch = MyLatch;
	Shared->worker_state = CANARY_WORKER_STARTING;
	Shared->worker_dboid = dboid;
	LWLockRelease(Shared->lock);
}

void
MetricsWorkerSetState(CanaryWorkerState state)
{
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Shared->worker_state = state;
	LWLockRelease(Shared->lock);
	ConditionVariableBroadcast(&Shared->written_cv);
}

/*
 * MetricsQueueFetch
 *		Copy up to max of the oldest queued records into buf, leaving them
 *		queued; returns how many.  Producers never write the slots between
 *		tail and head, so the shared lock suffices.
 */
int
MetricsQueueFetch(CanaryMetricRecord *buf, int max)
{
	uint64		n;
	uint64		first;
	uint64		chunk;
	int			cap;

	LWLockAcquire(Shared->lock, LW_SHARED);
	cap = Shared->capacity;
	n = Min(Shared->head - Shared->tail, (uint64) max);
	first = Shared->tail % cap;
	chunk = Min(n, (uint64) cap - first);
	memcpy(buf, &Records[first], chunk * sizeof(CanaryMetricRecord));
	if (chunk < n)
		memcpy(buf + chunk, &Records[0], (n - chunk) * sizeof(CanaryMetricRecord));
	LWLockRelease(Shared->lock);
	return (int) n;
}

/*
 * MetricsQueueConsume
 *		The n oldest records are committed: drop them from the queue and wake
 *		whoever waits for space or for a flush.
 */
void
MetricsQueueConsume(int n)
{
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Assert(Shared->head - Shared->tail >= (uint64) n);
	Shared->tail += n;
	Shared->batches++;
	Shared->last_write_at = GetCurrentTimestamp();
	LWLockRelease(Shared->lock);
	ConditionVariableBroadcast(&Shared->space_cv);
	ConditionVariableBroadcast(&Shared->written_cv);
}

void
MetricsQueueWriteFailed(void)
{
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Shared->write_errors++;
	LWLockRelease(Shared->lock);
}

uint64
MetricsQueueDepth(void)
{
	uint64		depth;

	LWLockAcquire(Shared->lock, LW_SHARED);
	depth = Shared->head - Shared->tail;
	LWLockRelease(Shared->lock);
	return depth;
}

/* True (once) when a backend asked for an immediate write. */
bool
MetricsTakeFlushRequest(void)
{
	bool		requested;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	requested = Shared->flush_requested;
	Shared->flush_requested = false;
	LWLockRelease(Shared->lock);
	return requested;
}
