/*-------------------------------------------------------------------------
 *
 * rollups_writer.c
 *	  The rollups of the metrics worker's batches, counted in C.
 *
 * The trigger canary_requests_rollup adds the rows of every INSERT into
 * canary_requests to the rollups (canary_rollup_statement, kind requests,
 * sql/parts/32_rollups.sql): an aggregate over the statement's rows and a
 * statement built and planned at each INSERT.  For the worker's own
 * batches it does nothing (canary_worker_batch, metrics_write.c); the
 * worker counts the batch per rollup key here, as that aggregate would
 * (the same columns, bucket, histograms and numeric cost sum), and adds
 * the few keyed rows with the statement of kind request_counts, planned
 * once per process (kept; a change of any function, such as an ALTER
 * EXTENSION UPDATE, makes it build and plan it again).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "metrics.h"
#include "rollups.h"
#include "rollups_writer.h"

#define BUCKET_USECS	INT64CONST(30000000)	/* canary_rollup_bucket: 30 s */

/* The key of a rollup row but member (zeroed before it is filled: hashed as bytes). */
typedef struct RollupKey
{
	char		canary[NAMEDATALEN];
	TimestampTz bucket_end;
	char		stage[CANARY_STAGE_MAX];
	char		cohort[CANARY_COHORT_MAX];
	char		model[NAMEDATALEN];
	bool		fallback;
	bool		cached;
} RollupKey;

/* The counters of canary_rollups, in the order of RollupCounterNames. */
enum
{
	RC_REQUESTS, RC_OK, RC_REFUSAL, RC_ERROR, RC_TIMEOUT, RC_REFUSALS,
	RC_PROMPT_TOKENS, RC_COMPLETION_TOKENS, RC_COMPLETIONS, RC_LATENCY_COUNT,
	RC_LATENCY_SUM, RC_NCOUNTERS
};
static const char *const RollupCounterNames[RC_NCOUNTERS] = {
	"requests", "outcome_ok", "outcome_refusal", "outcome_error", "outcome_timeout",
	"refusals", "prompt_tokens", "completion_tokens", "completions", "latency_count",
	"latency_sum"
};

typedef struct RollupGroup
{
	RollupKey	key;
	int64		counters[RC_NCOUNTERS];
	Datum		cost;			/* numeric; 0 when no cost */
	bool		has_cost;
	RollupsHist *latency;
	RollupsHist *tokens;
} RollupGroup;

/* key: 7 arrays, counters, cost, 2 histograms (as text) */
#define RW_NARGS		(7 + RC_NCOUNTERS + 3)

/* The element type of each array the statement takes, in order. */
static void
RollupsWriterTypes(Oid *types)
{
	int			a = 0;

	types[a++] = TEXTOID;		/* canary */
	types[a++] = TIMESTAMPTZOID;	/* bucket_end */
	types[a++] = TEXTOID;		/* stage */
	types[a++] = TEXTOID;		/* cohort */
	types[a++] = TEXTOID;		/* model */
	types[a++] = BOOLOID;		/* fallback */
	types[a++] = BOOLOID;		/* cached */
	for (int c = 0; c < RC_NCOUNTERS; c++)
		types[a++] = INT8OID;
	types[a++] = NUMERICOID;	/* cost */
	types[a++] = TEXTOID;		/* latency_hist, as text */
	types[a++] = TEXTOID;		/* tokens_hist, as text */
	Assert(a == RW_NARGS);
}

/* The kept plan of the statement, for one schema. */
static SPIPlanPtr KeptPlan = NULL;
static char *KeptSchema = NULL;
static bool PlanStale = false;
static bool CallbackRegistered = false;

/* A function changed (pg_proc): the statement may have changed too. */
static void
RollupsWriterInvalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	PlanStale = true;
}

/* The end of the 30-second bucket of ts, as canary_rollup_bucket computes it. */
static TimestampTz
RollupBucketEnd(TimestampTz ts)
{
	int64		t = ts - 1;
	int64		q = t / BUCKET_USECS;

	if (t < 0 && t % BUCKET_USECS != 0)
		q--;					/* floor, not truncation */
	return (q + 1) * BUCKET_USECS;
}

/*
 * The statement of kind request_counts over the 21 arrays of RollupsWriterAdd,
 * planned and kept (in the schema it was made for).
 */
static SPIPlanPtr
RollupsWriterPlan(const char *schema)
{
	Oid			argtypes[RW_NARGS];
	StringInfoData src;
	StringInfoData cols;
	char	   *sql;
	bool		isnull;
	SPIPlanPtr	plan;

	if (!CallbackRegistered)
	{
		CacheRegisterSyscacheCallback(PROCOID, RollupsWriterInvalidate, (Datum) 0);
		CallbackRegistered = true;
	}
	if (KeptPlan != NULL && !PlanStale && strcmp(KeptSchema, schema) == 0)
		return KeptPlan;
	if (KeptPlan != NULL)
	{
		SPI_freeplan(KeptPlan);
		KeptPlan = NULL;
		pfree(KeptSchema);
		KeptSchema = NULL;
	}
	PlanStale = false;

	/* the source: one row per key, the columns named as in canary_rollups */
	initStringInfo(&cols);
	appendStringInfoString(&cols, "canary, bucket_end, stage, cohort, model, fallback, cached");
	for (int c = 0; c < RC_NCOUNTERS; c++)
		appendStringInfo(&cols, ", %s", RollupCounterNames[c]);
	appendStringInfoString(&cols, ", cost, latency_text, tokens_text");
	RollupsWriterTypes(argtypes);
	for (int a = 0; a < RW_NARGS; a++)
		argtypes[a] = get_array_type(argtypes[a]);

	initStringInfo(&src);
	appendStringInfoString(&src, "(SELECT u.*, u.latency_text::int8[] AS latency_hist,"
						   " u.tokens_text::int8[] AS tokens_hist FROM unnest(");
	for (int i = 1; i <= RW_NARGS; i++)
		appendStringInfo(&src, "%s$%d", i > 1 ? ", " : "", i);
	appendStringInfo(&src, ") AS u(%s))", cols.data);

	sql = psprintf("SELECT %s.canary_rollup_statement('request_counts', %s, true)",
				   schema, quote_literal_cstr(src.data));
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not build the rollups statement");
	sql = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	plan = SPI_prepare(sql, RW_NARGS, argtypes);
	if (plan == NULL || SPI_keepplan(plan) != 0)
		elog(ERROR, "could not prepare the rollups statement: %s",
			 SPI_result_code_string(SPI_result));
	KeptSchema = MemoryContextStrdup(TopMemoryContext, schema);
	KeptPlan = plan;
	return KeptPlan;
}

/* The text of a histogram's sparse int8[]. */
static Datum
RollupHistText(const RollupsHist *h)
{
	return CStringGetTextDatum(OidOutputFunctionCall(F_ARRAY_OUT,
													 PointerGetDatum(RollupsHistArray(h))));
}

/*
 * RollupsWriterAdd
 *		Add the batch recs[0 .. n - 1], just inserted into canary_requests,
 *		to canary_rollups and canary_rollup_totals, as the trigger
 *		canary_requests_rollup would.  Caller: the worker's batch
 *		transaction, SPI connected, the trigger enabled (it skips the
 *		batch); allocates in the current (transaction) memory context.
 */
void
RollupsWriterAdd(const char *schema, const CanaryMetricRecord *recs, int n)
{
	HASHCTL		ctl;
	HTAB	   *groups;
	HASH_SEQ_STATUS seq;
	RollupGroup *g;
	Datum	   *values[RW_NARGS];
	Datum		args[RW_NARGS];
	Oid			elemtypes[RW_NARGS];
	int			ngroups;
	int			k = 0;
	SPIPlanPtr	plan = RollupsWriterPlan(schema);

	ctl.keysize = sizeof(RollupKey);
	ctl.entrysize = sizeof(RollupGroup);
	ctl.hcxt = CurrentMemoryContext;
	groups = hash_create("llm_canary rollups of a batch", 64, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	for (int i = 0; i < n; i++)
	{
		const CanaryMetricRecord *r = &recs[i];
		RollupKey	key;
		bool		found;

		MemSet(&key, 0, sizeof(key));
		strlcpy(key.canary, r->canary, sizeof(key.canary));
		key.bucket_end = RollupBucketEnd(r->ts);
		strlcpy(key.stage, r->stage, sizeof(key.stage));
		strlcpy(key.cohort, r->cohort, sizeof(key.cohort));
		strlcpy(key.model, r->model, sizeof(key.model));
		key.fallback = r->fallback;
		key.cached = r->cached;
		g = hash_search(groups, &key, HASH_ENTER, &found);
		if (!found)
		{
			MemSet(g->counters, 0, sizeof(g->counters));
			g->has_cost = false;
			g->latency = RollupsHistNew();
			g->tokens = RollupsHistNew();
		}
		g->counters[RC_REQUESTS]++;
		if (r->outcome <= CANARY_OUTCOME_TIMEOUT)
			g->counters[RC_OK + (r->outcome - CANARY_OUTCOME_OK)]++;
		if (r->refusal)
			g->counters[RC_REFUSALS]++;
		if (r->prompt_tokens >= 0)
			g->counters[RC_PROMPT_TOKENS] += r->prompt_tokens;
		if (r->completion_tokens >= 0)
		{
			g->counters[RC_COMPLETION_TOKENS] += r->completion_tokens;
			g->counters[RC_COMPLETIONS]++;
			RollupsHistAdd(g->tokens, r->completion_tokens);
		}
		g->counters[RC_LATENCY_COUNT]++;
		g->counters[RC_LATENCY_SUM] += r->latency_ms;
		RollupsHistAdd(g->latency, r->latency_ms);
		if (r->cost != 0)
		{
			/* the column is numeric: the row's value converted, then summed exactly */
			Datum		c = DirectFunctionCall1(float8_numeric, Float8GetDatum(r->cost));

			g->cost = g->has_cost ? DirectFunctionCall2(numeric_add, g->cost, c) : c;
			g->has_cost = true;
		}
	}

	ngroups = hash_get_num_entries(groups);
	for (int c = 0; c < RW_NARGS; c++)
		values[c] = palloc(sizeof(Datum) * ngroups);
	hash_seq_init(&seq, groups);
	while ((g = hash_seq_search(&seq)) != NULL)
	{
		int			a = 0;

		values[a++][k] = CStringGetTextDatum(g->key.canary);
		values[a++][k] = TimestampTzGetDatum(g->key.bucket_end);
		values[a++][k] = CStringGetTextDatum(g->key.stage);
		values[a++][k] = CStringGetTextDatum(g->key.cohort);
		values[a++][k] = CStringGetTextDatum(g->key.model);
		values[a++][k] = BoolGetDatum(g->key.fallback);
		values[a++][k] = BoolGetDatum(g->key.cached);
		for (int c = 0; c < RC_NCOUNTERS; c++)
			values[a++][k] = Int64GetDatum(g->counters[c]);
		values[a++][k] = g->has_cost ? g->cost : DirectFunctionCall1(int4_numeric, Int32GetDatum(0));
		values[a++][k] = RollupHistText(g->latency);
		values[a++][k] = RollupHistText(g->tokens);
		k++;
	}

	RollupsWriterTypes(elemtypes);
	for (int c = 0; c < RW_NARGS; c++)
		args[c] = MetricsMakeArray(elemtypes[c], values[c], NULL, ngroups);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not add the batch to the rollups");
}
