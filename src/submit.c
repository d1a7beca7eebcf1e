/*-------------------------------------------------------------------------
 *
 * submit.c
 *	  Calls that do not hold a connection: canary_submit's check (the rest
 *	  of canary_submit and canary_result are SQL, sql/parts/48_submit.sql)
 *	  and the "llm_canary submissions" background worker that answers them.
 *
 * The queue is the table canary_submissions.  A submission is a row
 * inserted by the caller's transaction: it exists once that commits, and
 * then survives anything a committed row survives.  At commit, a
 * transaction callback sets the worker's latch, so the worker usually
 * starts within a millisecond; it also looks every second.
 *
 * The worker is its own process (not a step of the metrics worker), so a
 * slow model never delays metric writes.  Its loop:
 *	 - in a transaction: settle what the engine finished (record, fall back,
 *	   finish; batch.c), write finished results into their rows and NOTIFY
 *	   llm_canary_result with each request id; claim up to
 *	   llm_canary.submit_concurrency minus what is open, oldest first, with
 *	   FOR UPDATE SKIP LOCKED (state running, attempts + 1) and begin their
 *	   calls; once a minute canary_submissions_purge();
 *	 - outside any transaction: drive the transfers (BatchPump) for up to
 *	   50 ms, or sleep on the latch when nothing is in flight.
 * A row claimed when the server stopped or the worker died is "running"
 * without a process: the worker makes it pending again when it starts, so
 * its call is made again (at least once, never lost); after
 * SUBMIT_MAX_CLAIMS claims it is failed (XX000) instead, so a row that
 * kills the worker cannot make it call the model forever.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "batch.h"
#include "chat.h"
#include "config.h"
#include "extension.h"
#include "metrics.h"
#include "routing.h"
#include "shadow.h"
#include "submit.h"
#include "worker.h"

#define SUBMIT_IDLE_WAIT_MS		1000
#define SUBMIT_PUMP_MS			50
#define SUBMIT_PURGE_EVERY_MS	(60 * 1000)
#define SUBMIT_ENGINE_ITEMS		4096	/* items per engine before recycling it */
/*
 * A row claimed this often without finishing (the worker died each time,
 * say on a result it cannot write) is failed rather than called again
 * forever.
 */
#define SUBMIT_MAX_CLAIMS		5

/* settings */
static int	canary_submit_concurrency = 64;
static int	canary_submit_retention = 86400;

/* backend: wake the worker when the submitting transaction commits */
static bool SubmitCallbackRegistered = false;
static bool SubmitWakePending = false;

/*
 * SubmitInit
 *		Define the settings; the launcher (launcher.c) starts the worker.
 *		Caller: _PG_init.
 */
void
SubmitInit(void)
{

	DefineCustomIntVariable("llm_canary.submit_concurrency",
							"Sets how many submitted requests the submission worker answers at once.",
							NULL,
							&canary_submit_concurrency,
							64, 1, 1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("llm_canary.submit_retention",
							"Sets how long finished submissions are kept in canary_submissions.",
							"canary_maintenance() and the submission worker delete older ones.",
							&canary_submit_retention,
							86400, 60, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	/* the worker is started by the launcher (launcher.c), like the others */
}

/* ----------------------------------------------------------------------
 * Backend side
 * ----------------------------------------------------------------------
 */

/* Set the worker's latch, if it runs.  Never raises. */
static void
SubmitWakeWorker(void)
{
	int			pid = BatchSubmitWorkerPid();
	PGPROC	   *proc;

	if (pid == 0)
		return;
	proc = BackendPidGetProc(pid);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

static void
SubmitXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (SubmitWakePending)
				SubmitWakeWorker();
			SubmitWakePending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			SubmitWakePending = false;
			break;
		default:
			break;
	}
}

/*
 * canary_submit_check(request, user_id, canary)
 *		Validate a submission as canary_chat / canary_call would before any
 *		HTTP (22004, 22023, 54000, 0A000, 42704 for an unknown rollout), and
 *		arrange for the worker to be woken when the transaction commits.
 */
PG_FUNCTION_INFO_V1(canary_submit_check);
Datum
canary_submit_check(PG_FUNCTION_ARGS)
{
	CanaryRequest req;

	ChatRequestFromJsonb(PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0), &req);
	RoutingCheckUserId(PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1), PG_ARGISNULL(1));
	CallRequireNotNull(PG_ARGISNULL(2), "rollout name");
	MetricsRequireWorkerDatabase();
	(void) ConfigGetRollout(text_to_cstring(PG_GETARG_TEXT_PP(2)));

	if (!SubmitCallbackRegistered)
	{
		RegisterXactCallback(SubmitXactCallback, NULL);
		SubmitCallbackRegistered = true;
	}
	SubmitWakePending = true;
	PG_RETURN_VOID();
}

/* ----------------------------------------------------------------------
 * The worker
 * ----------------------------------------------------------------------
 */

/* What the worker keeps per claimed row. */
typedef struct Submission
{
	pg_uuid_t	id;
	bool		written;
} Submission;

static BatchEngine *Engine = NULL;
static BatchItem **EngineItems = NULL;	/* every item of Engine */
static int	EngineNItems = 0;
static int	EngineCap = 0;

/* Run sql with args; raises on failure.  Caller: connected to SPI. */
static void
SubmitExec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
		   bool read_only)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, nulls, read_only, 0);

	if (ret < 0)
		elog(ERROR, "SPI_execute_with_args returned %s", SPI_result_code_string(ret));
}

static Datum
MakeArray(Datum *values, bool *nulls, int n, Oid type)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int16		len;
	bool		byval;
	char		align;

	get_typlenbyvalalign(type, &len, &byval, &align);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, type,
											  len, byval, align));
}

/*
 * Write every finished, unwritten result into its row and announce it.
 * Caller: in a transaction, connected to SPI.
 */
static void
WriteResults(const char *schema)
{
	int			n = 0;
	Datum	   *ids = palloc(sizeof(Datum) * Max(EngineNItems, 1));
	Datum	   *states = palloc(sizeof(Datum) * Max(EngineNItems, 1));
	Datum	   *results = palloc(sizeof(Datum) * Max(EngineNItems, 1));
	Datum	   *codes = palloc(sizeof(Datum) * Max(EngineNItems, 1));
	Datum	   *errors = palloc(sizeof(Datum) * Max(EngineNItems, 1));
	bool	   *nores = palloc(sizeof(bool) * Max(EngineNItems, 1));
	bool	   *noerr = palloc(sizeof(bool) * Max(EngineNItems, 1));
	bool	   *never = palloc0(sizeof(bool) * Max(EngineNItems, 1));
	Oid			types[5] = {UUIDARRAYOID, TEXTARRAYOID, JSONBARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[5];
	char	   *sql;

	for (int i = 0; i < EngineNItems; i++)
	{
		BatchItem  *item = EngineItems[i];
		Submission *sub = (Submission *) item->arg;

		if (item->state != BATCH_ITEM_DONE || sub->written)
			continue;
		ids[n] = UUIDPGetDatum(&sub->id);
		states[n] = CStringGetTextDatum(item->error ? "failed" : "done");
		nores[n] = item->result == NULL;
		results[n] = nores[n] ? (Datum) 0 : JsonbPGetDatum(item->result);
		noerr[n] = item->error == NULL;
		codes[n] = noerr[n] ? (Datum) 0 :
			CStringGetTextDatum(unpack_sql_state(item->error->sqlerrcode));
		errors[n] = noerr[n] ? (Datum) 0 :
			CStringGetTextDatum(item->error->message ? item->error->message : "");
		sub->written = true;
		n++;
	}
	if (n == 0)
		return;

	args[0] = MakeArray(ids, never, n, UUIDOID);
	args[1] = MakeArray(states, never, n, TEXTOID);
	args[2] = MakeArray(results, nores, n, JSONBOID);
	args[3] = MakeArray(codes, noerr, n, TEXTOID);
	args[4] = MakeArray(errors, noerr, n, TEXTOID);
	sql = psprintf("UPDATE %s.canary_submissions AS s SET state = u.st,"
				   " finished_at = pg_catalog.clock_timestamp(), result = u.res,"
				   " sqlstate = u.ss, error = u.err"
				   " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
				   "                 pg_catalog.unnest($4), pg_catalog.unnest($5)) AS u(id, st, res, ss, err)"
				   " WHERE s.request_id OPERATOR(pg_catalog.=) u.id"
				   " AND s.state OPERATOR(pg_catalog.=) 'running'",
				   quote_identifier(schema));
	SubmitExec(sql, 5, types, args, NULL, false);
	SubmitExec("SELECT pg_catalog.pg_notify('llm_canary_result', id::text)"
			   " FROM pg_catalog.unnest($1) AS id",
			   1, types, args, NULL, false);
}

/*
 * Claim up to n pending rows, oldest first, and begin their calls.
 * Caller: in a transaction, connected to SPI.  Returns how many.
 */
static int
ClaimPending(const char *schema, int n)
{
	Oid			types[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(n)};
	char	   *sql;
	uint64		got;
	MemoryContext spicxt;

	sql = psprintf("UPDATE %s.canary_submissions AS s SET state = 'running',"
				   " started_at = pg_catalog.clock_timestamp(), attempts = s.attempts + 1"
				   " FROM (SELECT request_id FROM %s.canary_submissions"
				   "       WHERE state OPERATOR(pg_catalog.=) 'pending'"
				   "       ORDER BY submitted_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS c"
				   " WHERE s.request_id OPERATOR(pg_catalog.=) c.request_id"
				   " RETURNING s.request_id, s.request, s.user_id, s.canary, s.prompt_class, s.session_id",
				   quote_identifier(schema), quote_identifier(schema));
	SubmitExec(sql, 1, types, args, NULL, false);
	got = SPI_processed;
	for (uint64 i = 0; i < got; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull[6];
		Datum		d[6];
		BatchItem  *item;
		Submission *sub;
		MemoryContext itemcxt = BatchMemoryContext(Engine);

		for (int c = 0; c < 6; c++)
			d[c] = SPI_getbinval(tup, desc, c + 1, &isnull[c]);
		spicxt = MemoryContextSwitchTo(itemcxt);
		item = palloc0(sizeof(BatchItem));
		sub = palloc0(sizeof(Submission));
		memcpy(&sub->id, DatumGetUUIDP(d[0]), sizeof(pg_uuid_t));
		item->arg = sub;
		item->ord = EngineNItems + 1;
		item->preset_request_id = &sub->id;
		if (EngineNItems == EngineCap)
		{
			EngineCap = Max(EngineCap * 2, 256);
			EngineItems = EngineItems ? repalloc(EngineItems, sizeof(BatchItem *) * EngineCap) :
				palloc(sizeof(BatchItem *) * EngineCap);
		}
		EngineItems[EngineNItems++] = item;
		{
			Jsonb	   *request = DatumGetJsonbPCopy(d[1]);
			text	   *user = DatumGetTextPCopy(d[2]);
			char	   *canary = TextDatumGetCString(d[3]);
			char	   *pclass = isnull[4] ? NULL : TextDatumGetCString(d[4]);
			char	   *session = isnull[5] ? NULL : TextDatumGetCString(d[5]);

			MemoryContextSwitchTo(spicxt);
			BatchItemBegin(Engine, item, request, user, canary, pclass, session);
		}
	}
	return (int) got;
}

/* The open items of the engine: claimed and not written yet. */
static int
OpenItems(void)
{
	int			open = 0;

	for (int i = 0; i < EngineNItems; i++)
		if (!((Submission *) EngineItems[i]->arg)->written)
			open++;
	return open;
}

/*
 * One transaction of the worker: settle, write, claim, purge.  Returns
 * false when llm_canary is not installed in the database.
 */
static bool
SubmitTransaction(bool *recovered, TimestampTz *last_purge, int *claimed)
{
	const char *schema;
	Oid			extoid;
	bool		installed;

	*claimed = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "llm_canary: submissions");
	extoid = get_extension_oid(LLM_CANARY_EXTNAME, true);
	installed = OidIsValid(extoid) &&
		get_relname_relid("canary_submissions", CanaryExtensionNamespace(extoid)) != InvalidOid;
	if (installed)
	{
		schema = get_namespace_name(CanaryExtensionNamespace(extoid));
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "could not connect to SPI");
		if (!*recovered)
		{
			char	   *sql = psprintf("UPDATE %s.canary_submissions SET"
									   " state = CASE WHEN attempts OPERATOR(pg_catalog.>=) %d"
									   "   THEN 'failed' ELSE 'pending' END,"
									   " finished_at = CASE WHEN attempts OPERATOR(pg_catalog.>=) %d"
									   "   THEN pg_catalog.clock_timestamp() END,"
									   " sqlstate = CASE WHEN attempts OPERATOR(pg_catalog.>=) %d"
									   "   THEN 'XX000' END,"
									   " error = CASE WHEN attempts OPERATOR(pg_catalog.>=) %d"
									   "   THEN 'the submission was claimed %d times and never finished' END"
									   " WHERE state OPERATOR(pg_catalog.=) 'running'",
									   quote_identifier(schema), SUBMIT_MAX_CLAIMS, SUBMIT_MAX_CLAIMS,
									   SUBMIT_MAX_CLAIMS, SUBMIT_MAX_CLAIMS, SUBMIT_MAX_CLAIMS);

			SubmitExec(sql, 0, NULL, NULL, NULL, false);
			if (SPI_processed > 0)
				ereport(LOG,
						(errmsg("llm_canary submissions: %llu requests claimed before a restart are pending again",
								(unsigned long long) SPI_processed)));
			*recovered = true;
		}
		(void) BatchSettle(Engine);
		WriteResults(schema);
		if (EngineNItems < SUBMIT_ENGINE_ITEMS)
		{
			int			room = canary_submit_concurrency - OpenItems();

			if (room > 0)
			{
				*claimed = ClaimPending(schema, room);
				(void) BatchSettle(Engine);
				WriteResults(schema);
			}
		}
		if (TimestampDifferenceExceeds(*last_purge, GetCurrentTimestamp(), SUBMIT_PURGE_EVERY_MS))
		{
			char	   *sql = psprintf("SELECT %s.canary_submissions_purge()",
									   quote_identifier(schema));

			SubmitExec(sql, 0, NULL, NULL, NULL, false);
			*last_purge = GetCurrentTimestamp();
		}
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return installed;
}

/*
 * CanarySubmitWorkerMain
 *		Entry point of the "llm_canary submissions" worker.
 */
void
CanarySubmitWorkerMain(Datum main_arg)
{
	bool		recovered = false;
	TimestampTz last_purge = 0;
	MemoryContext engine_parent;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(WorkerDatabaseName(), NULL, 0);
	BatchSetSubmitWorkerPid(MyProcPid);
	/* a call begins in one transaction and ends in a later one */
	ShadowKeepOpenJobsAtCommit();
	engine_parent = AllocSetContextCreate(TopMemoryContext, "llm_canary submissions",
										  ALLOCSET_DEFAULT_SIZES);

	/* a new launcher starts a new worker: this one must not run twice */
	while (!ShutdownRequestPending && !WorkerLauncherGone(main_arg))
	{
		int			claimed;
		bool		installed;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (Engine == NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(engine_parent);

			Engine = BatchCreate(canary_submit_concurrency);
			MemoryContextSwitchTo(old);
		}

		installed = SubmitTransaction(&recovered, &last_purge, &claimed);

		/* a spent engine with nothing open is replaced (bounded memory) */
		if (EngineNItems >= SUBMIT_ENGINE_ITEMS && OpenItems() == 0)
		{
			BatchDestroy(Engine);
			Engine = NULL;
			EngineItems = NULL;
			EngineNItems = EngineCap = 0;
			MemoryContextReset(engine_parent);
			continue;
		}

		if (OpenItems() > 0)
			(void) BatchPump(Engine, SUBMIT_PUMP_MS);
		else
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 installed ? SUBMIT_IDLE_WAIT_MS : 5 * SUBMIT_IDLE_WAIT_MS,
							 PG_WAIT_EXTENSION);
	}
	BatchSetSubmitWorkerPid(0);
	/* exit code 0 would unregister the worker: pg_terminate_backend must not stop it for good */
	proc_exit(1);
}
