/*-------------------------------------------------------------------------
 *
 * srm_writer.c
 *	  The sample-ratio users of the metrics worker's batches
 *	  (canary_srm_users, canary_rollups.new_users), recorded by the worker
 *	  itself so that a batch of known users costs no primary-key probe.
 *
 * The trigger canary_requests_srm records the users of every INSERT into
 * canary_requests (sql/parts/52_decisions.sql, 53_srm_writer.sql); for the
 * worker's own batches it does nothing (canary_worker_batch is true
 * during their INSERT, metrics_write.c) and the worker calls canary_srm_record with the rows
 * of the batch it cannot skip.  A row can be skipped when its rollout's
 * users are not recorded at all (not armed, percent_new 0 or 100), or when
 * its user is in the cache: recorded in the rollout's current state.
 *
 * The cache: per rollout (at most SRM_MAX_ROLLOUTS names), the version of
 * its canary_config row (xmin, '' when the row does not exist) and whether
 * its users are recorded, as the last canary_srm_record saw them; and one
 * set of (rollout state id, user id), in two generations so that it stays
 * bounded (SRM_GENERATION_BYTES each; when the newer one is full, the older
 * one is dropped and a user found there moves to the newer one).  A
 * rollout whose version changes gets a new state id, so the users it had
 * are never matched again.  Users enter the cache only after their batch
 * committed (SrmWriterEndBatch), so that the database stays the truth:
 * the cache skips only inserts that are known to be done.  Each call of
 * canary_srm_record answers with the version it saw for each rollout of
 * the batch; when a rollout's version is not the one the skip assumed, the
 * skipped rows of that rollout are sent in a second call, in the same
 * transaction.  A restart (or a crash) starts with an empty cache.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "srm_writer.h"

#define SRM_MAX_ROLLOUTS		64
#define SRM_VERSION_MAX			16	/* an xid as text, or '' */
#define SRM_GENERATION_BYTES	(4 * 1024 * 1024)

#define SRM_RECORD_ARGS			9

/* One rollout as the last canary_srm_record saw it. */
typedef struct SrmRollout
{
	char		name[NAMEDATALEN];
	char		version[SRM_VERSION_MAX];
	bool		recording;		/* its users are recorded */
	uint32		id;				/* its users' key in the cache */
	bool		skipped;		/* this call skipped rows on that state */
	bool		resend;			/* ... and the state was not current */
} SrmRollout;

typedef struct SrmUserKey
{
	uint32		rollout;		/* SrmRollout.id */
	const char *user_id;
} SrmUserKey;

typedef struct SrmUser
{
	SrmUserKey	key;
	uint32		hash;
	char		status;
} SrmUser;

#define SH_PREFIX				srmusers
#define SH_ELEMENT_TYPE			SrmUser
#define SH_KEY_TYPE				SrmUserKey
#define SH_KEY					key
#define SH_HASH_KEY(tb, k)		hash_combine((k).rollout, \
											 hash_bytes((const unsigned char *) (k).user_id, \
														strlen((k).user_id)))
#define SH_EQUAL(tb, a, b)		((a).rollout == (b).rollout && strcmp((a).user_id, (b).user_id) == 0)
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a)		((a)->hash)
#define SH_SCOPE				static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* A generation of the cache: its users and the context that holds them. */
typedef struct SrmGeneration
{
	MemoryContext cxt;
	srmusers_hash *users;
} SrmGeneration;

static SrmRollout Rollouts[SRM_MAX_ROLLOUTS];
static int	NumRollouts = 0;
static uint32 NextRolloutId = 1;
static SrmGeneration Newer = {NULL, NULL};
static SrmGeneration Older = {NULL, NULL};

/* Users recorded by the batch in progress: (rollout id, user) in PendingContext. */
static MemoryContext PendingContext = NULL;
static List *Pending = NIL;

/* The batch's rows to send, and those skipped (transaction memory). */
static bool *Send = NULL;
static bool *Skipped = NULL;

/* A new, empty generation. */
static void
SrmGenerationNew(SrmGeneration *g)
{
	g->cxt = AllocSetContextCreate(TopMemoryContext, "llm_canary sample-ratio users",
								   ALLOCSET_DEFAULT_SIZES);
	g->users = srmusers_create(g->cxt, 1024, NULL);
}

/* Drop the older generation; the newer one becomes it. */
static void
SrmRotate(void)
{
	if (Older.cxt != NULL)
		MemoryContextDelete(Older.cxt);
	Older = Newer;
	SrmGenerationNew(&Newer);
}

/* Add a user to the newer generation (rotating first when it is full). */
static void
SrmCacheAdd(SrmUserKey key)
{
	SrmUser    *u;
	bool		found;

	if (Newer.cxt == NULL)
		SrmGenerationNew(&Newer);
	else if (MemoryContextMemAllocated(Newer.cxt, false) >= SRM_GENERATION_BYTES)
		SrmRotate();
	u = srmusers_insert(Newer.users, key, &found);
	if (!found)
		u->key.user_id = MemoryContextStrdup(Newer.cxt, key.user_id);
}

/* Is the user known recorded in that rollout state?  Moves it to the newer generation. */
static bool
SrmCacheHas(uint32 rollout, const char *user_id)
{
	SrmUserKey	key = {rollout, user_id};

	if (Newer.cxt != NULL && srmusers_lookup(Newer.users, key) != NULL)
		return true;
	if (Older.cxt == NULL || srmusers_lookup(Older.users, key) == NULL)
		return false;
	SrmCacheAdd(key);
	return true;
}

/*
 * The rollout of that name; a new unknown one (id 0) when missing; NULL
 * when the table is full (its rows are then always sent, never cached).
 */
static SrmRollout *
SrmRolloutGet(const char *name)
{
	static int	last = 0;

	if (last < NumRollouts && strcmp(Rollouts[last].name, name) == 0)
		return &Rollouts[last];
	for (int i = 0; i < NumRollouts; i++)
		if (strcmp(Rollouts[i].name, name) == 0)
			return &Rollouts[last = i];
	if (NumRollouts == SRM_MAX_ROLLOUTS)
		return NULL;
	MemSet(&Rollouts[NumRollouts], 0, sizeof(SrmRollout));
	strlcpy(Rollouts[NumRollouts].name, name, NAMEDATALEN);
	return &Rollouts[last = NumRollouts++];
}

static bool
SrmCohortCounted(const char *cohort)
{
	return strcmp(cohort, "canary") == 0 || strcmp(cohort, "control") == 0;
}

/* Text datum of a buffer; NULL when empty and empty_is_null. */
static Datum
SrmText(const char *s, bool empty_is_null, bool *isnull)
{
	*isnull = empty_is_null && s[0] == '\0';
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

/*
 * Read the answer of canary_srm_record (or of the state query, which has
 * the same columns): the rollouts' states first (a changed state gets a
 * new id, and is marked resend when rows were skipped on the old one),
 * then the users recorded, in their rollout's current state, to
 * PendingContext.
 */
static void
SrmReadAnswer(void)
{
	for (int pass = 0; pass < 2; pass++)
	{
		for (uint64 row = 0; row < SPI_processed; row++)
		{
			HeapTuple	tup = SPI_tuptable->vals[row];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
			char	   *version = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
			bool		recording = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
			Datum		user = SPI_getbinval(tup, desc, 4, &isnull);
			SrmRollout *ro = SrmRolloutGet(name);

			if (ro == NULL)
				continue;
			if (pass == 0 && isnull)
			{
				if (ro->id != 0 && strcmp(ro->version, version) == 0 && ro->recording == recording)
					continue;
				if (ro->skipped)
					ro->resend = true;
				strlcpy(ro->version, version, SRM_VERSION_MAX);
				ro->recording = recording;
				ro->id = NextRolloutId++;
			}
			else if (pass == 1 && !isnull && ro->id != 0 && strcmp(ro->version, version) == 0)
			{
				MemoryContext oldcxt = MemoryContextSwitchTo(PendingContext);
				SrmUserKey *key = palloc(sizeof(SrmUserKey));

				key->rollout = ro->id;
				key->user_id = TextDatumGetCString(user);
				Pending = lappend(Pending, key);
				MemoryContextSwitchTo(oldcxt);
			}
		}
	}
}

/*
 * Call canary_srm_record with the rows of recs whose send[] is set and the
 * rollout names[0 .. nnames - 1], and read its answer.
 */
static void
SrmRecordCall(const char *schema, const CanaryMetricRecord *recs, int n, const bool *send,
			  const char **names, int nnames)
{
	static const Oid elemtypes[SRM_RECORD_ARGS] = {
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, BOOLOID, BOOLOID
	};
	static const Oid argtypes[SRM_RECORD_ARGS] = {
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID, BOOLARRAYOID
	};
	Datum	   *values[SRM_RECORD_ARGS];
	bool	   *nulls[SRM_RECORD_ARGS];
	Datum		args[SRM_RECORD_ARGS];
	int			counts[SRM_RECORD_ARGS];
	int			m = 0;
	char	   *sql;

	for (int c = 0; c < SRM_RECORD_ARGS; c++)
	{
		values[c] = palloc(sizeof(Datum) * Max(n, nnames));
		nulls[c] = palloc0(sizeof(bool) * Max(n, nnames));
	}
	for (int i = 0; i < nnames; i++)
		values[0][i] = CStringGetTextDatum(names[i]);
	for (int i = 0; i < n; i++)
	{
		const CanaryMetricRecord *r = &recs[i];

		if (!send[i])
			continue;
		values[1][m] = CStringGetTextDatum(r->canary);
		values[2][m] = CStringGetTextDatum(r->user_id);
		values[3][m] = CStringGetTextDatum(r->cohort);
		values[4][m] = TimestampTzGetDatum(r->ts);
		values[5][m] = SrmText(r->stage, true, &nulls[5][m]);
		values[6][m] = SrmText(r->model, true, &nulls[6][m]);
		values[7][m] = BoolGetDatum(r->fallback);
		values[8][m] = BoolGetDatum(r->cached);
		m++;
	}
	counts[0] = nnames;
	for (int c = 1; c < SRM_RECORD_ARGS; c++)
		counts[c] = m;
	for (int c = 0; c < SRM_RECORD_ARGS; c++)
		args[c] = MetricsMakeArray(elemtypes[c], values[c], nulls[c], counts[c]);

	sql = psprintf("SELECT * FROM %s.canary_srm_record($1, $2, $3, $4, $5, $6, $7, $8, $9)", schema);
	if (SPI_execute_with_args(sql, SRM_RECORD_ARGS, (Oid *) argtypes, args, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "could not record the sample-ratio users");
	SrmReadAnswer();
}

/*
 * The distinct rollouts of the rows of recs where pick[] is set (or of every
 * row with a counted cohort, when pick is NULL), into names; returns how
 * many.
 */
static int
SrmRolloutNames(const CanaryMetricRecord *recs, int n, const bool *pick, const char **names)
{
	int			nnames = 0;

	for (int i = 0; i < n; i++)
	{
		bool		seen = false;

		if (pick != NULL ? !pick[i] : !SrmCohortCounted(recs[i].cohort))
			continue;
		for (int j = nnames - 1; j >= 0 && !seen; j--)
			seen = strcmp(names[j], recs[i].canary) == 0;
		if (!seen)
			names[nnames++] = recs[i].canary;
	}
	return nnames;
}

/*
 * Read the current state of the rollouts names[0 .. nnames - 1] (their
 * canary_config rows) into Rollouts: a changed state gets a new id.
 */
static void
SrmReadStates(const char *schema, const char **names, int nnames)
{
	static SPIPlanPtr plan = NULL;
	static char *plan_schema = NULL;
	Datum	   *elems = palloc(sizeof(Datum) * nnames);
	Datum		args[1];

	if (plan == NULL || strcmp(plan_schema, schema) != 0)
	{
		Oid			argtypes[1] = {TEXTARRAYOID};
		SPIPlanPtr	p;

		if (plan != NULL)
		{
			SPI_freeplan(plan);
			pfree(plan_schema);
			plan = NULL;
		}
		p = SPI_prepare(psprintf("SELECT n.name, coalesce(c.xmin::text, ''),"
									" coalesce(c.kill_switch_armed AND c.percent_new > 0 AND c.percent_new < 100, false),"
									" NULL::text"
									" FROM unnest($1::text[]) n(name) LEFT JOIN %s.canary_config c ON c.name = n.name",
									schema), 1, argtypes);
		if (p == NULL || SPI_keepplan(p) != 0)
			elog(ERROR, "could not prepare the rollouts' sample-ratio states: %s",
				 SPI_result_code_string(SPI_result));
		plan_schema = MemoryContextStrdup(TopMemoryContext, schema);
		plan = p;
	}
	for (int i = 0; i < nnames; i++)
		elems[i] = CStringGetTextDatum(names[i]);
	args[0] = MetricsMakeArray(TEXTOID, elems, NULL, nnames);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the rollouts' sample-ratio states");
	SrmReadAnswer();
}

/*
 * SrmWriterBegin
 *		Before the INSERT of the batch recs[0 .. n - 1], whose users the
 *		worker records (metrics_write.c): read the states of the batch's
 *		rollouts and decide which rows to send (the others are skipped:
 *		their rollout is not recorded, or their user is known recorded in
 *		the rollout's state).  Caller: the worker's batch transaction, SPI
 *		connected; allocates in the current (transaction) memory context.
 */
void
SrmWriterBegin(const char *schema, const CanaryMetricRecord *recs, int n)
{
	const char **names;
	int			nnames;

	if (PendingContext == NULL)
		PendingContext = AllocSetContextCreate(TopMemoryContext,
											   "llm_canary sample-ratio users of a batch",
											   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(PendingContext);
	Pending = NIL;

	/* names of rollouts deleted long ago fill the table: start it afresh */
	if (NumRollouts == SRM_MAX_ROLLOUTS)
		NumRollouts = 0;
	Send = palloc0(sizeof(bool) * n);
	Skipped = palloc0(sizeof(bool) * n);
	names = palloc(sizeof(char *) * n);
	nnames = SrmRolloutNames(recs, n, NULL, names);
	if (nnames > 0)
		SrmReadStates(schema, names, nnames);
	for (int i = 0; i < n; i++)
	{
		const CanaryMetricRecord *r = &recs[i];
		SrmRollout *ro;

		if (!SrmCohortCounted(r->cohort))
			continue;			/* never recorded */
		ro = SrmRolloutGet(r->canary);
		if (ro == NULL || ro->id == 0)
			Send[i] = true;		/* no room to remember it */
		else if (!ro->recording || SrmCacheHas(ro->id, r->user_id))
			Skipped[i] = true;
		else
			Send[i] = true;
	}
}

/*
 * SrmWriterRecord
 *		After the INSERT of the batch: send the rows SrmWriterBegin chose to
 *		canary_srm_record, and, when it saw another state than the one a
 *		skip assumed, the rows skipped in that rollout.  Same caller and
 *		context as SrmWriterBegin.
 */
void
SrmWriterRecord(const char *schema, const CanaryMetricRecord *recs, int n)
{
	const char **names = palloc(sizeof(char *) * n);
	bool	   *resend = palloc0(sizeof(bool) * n);
	bool	   *either = palloc0(sizeof(bool) * n);
	int			nsend = 0;
	int			nresend = 0;

	for (int i = 0; i < n; i++)
	{
		either[i] = Send[i] || Skipped[i];
		nsend += Send[i];
	}
	if (nsend == 0)
		return;					/* every skip stands on the states read in this transaction */
	for (int i = 0; i < NumRollouts; i++)
		Rollouts[i].skipped = Rollouts[i].resend = false;
	for (int i = 0; i < n; i++)
	{
		SrmRollout *ro;

		if (Skipped[i] && (ro = SrmRolloutGet(recs[i].canary)) != NULL)
			ro->skipped = true;
	}
	SrmRecordCall(schema, recs, n, Send, names, SrmRolloutNames(recs, n, either, names));

	/* rows skipped on a state that was no longer current: send them now */
	for (int i = 0; i < n; i++)
	{
		SrmRollout *ro;

		if (Skipped[i] && (ro = SrmRolloutGet(recs[i].canary)) != NULL && ro->resend)
			resend[i] = true, nresend++;
	}
	for (int i = 0; i < NumRollouts; i++)
		Rollouts[i].skipped = false;
	if (nresend > 0)
		SrmRecordCall(schema, recs, n, resend, names, SrmRolloutNames(recs, n, resend, names));
}

/*
 * SrmWriterEndBatch
 *		The batch's transaction ended: its users enter the cache if it
 *		committed, and are forgotten otherwise.
 */
void
SrmWriterEndBatch(bool committed)
{
	ListCell   *lc;

	Send = Skipped = NULL;
	if (committed)
	{
		foreach(lc, Pending)
			SrmCacheAdd(*(SrmUserKey *) lfirst(lc));
	}
	Pending = NIL;
	if (PendingContext != NULL)
		MemoryContextReset(PendingContext);
}
