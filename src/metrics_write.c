/*-------------------------------------------------------------------------
 *
 * metrics_write.c
 *	  One metric record (CanaryMetricRecord, metrics.h) as one row of
 *	  canary_requests: the column list, the types and the batch INSERT the
 *	  background worker runs for each batch it takes from the queue.  A new
 *	  field of the record gets its column here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "metrics.h"
#include "rollups_writer.h"
#include "srm_writer.h"

#define CANARY_REQUESTS_COLUMNS \
	"request_id, ts, canary, stage, user_id, cohort, model, outcome, " \
	"http_status, latency_ms, prompt_tokens, completion_tokens, " \
	"response_chars, refusal, prompt_class, prompt_hash, fallback, error, cost, " \
	"cached"
#define CANARY_REQUESTS_NCOLUMNS 20

/*
 * The triggers of canary_requests whose work the worker does for the batch
 * it is inserting: canary_worker_batch(name) is true for them, and only
 * during that INSERT.
 */
static bool BatchRollups = false;
static bool BatchUsers = false;
static bool InBatchInsert = false;

PG_FUNCTION_INFO_V1(canary_worker_batch);
Datum
canary_worker_batch(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_BOOL(InBatchInsert &&
				   ((BatchRollups && strcmp(name, "canary_requests_rollup") == 0) ||
					(BatchUsers && strcmp(name, "canary_requests_srm") == 0)));
}

/*
 * Which triggers' work the worker does for a batch: those enabled (the
 * benchmark and an operator may disable them), when the catalog has
 * canary_worker_batch (not a 1.0 catalog).  Sets BatchRollups, BatchUsers.
 * Read from the relation cache and the catalog caches, without a query.
 */
static void
MetricsBatchTriggers(const char *schema)
{
	Oid			textoid = TEXTOID;
	Oid			relid;
	Relation	rel;

	BatchRollups = BatchUsers = InBatchInsert = false;
	if (!OidIsValid(LookupFuncName(stringToQualifiedNameList(psprintf("%s.canary_worker_batch", schema)),
								   1, &textoid, true)))
		return;
	relid = RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(psprintf("%s.canary_requests",
																						   schema))),
							 AccessShareLock, true);
	if (!OidIsValid(relid))
		return;
	rel = table_open(relid, NoLock);
	for (int i = 0; rel->trigdesc != NULL && i < rel->trigdesc->numtriggers; i++)
	{
		const Trigger *t = &rel->trigdesc->triggers[i];

		if (t->tgenabled != TRIGGER_FIRES_ON_ORIGIN && t->tgenabled != TRIGGER_FIRES_ALWAYS)
			continue;
		if (strcmp(t->tgname, "canary_requests_rollup") == 0)
			BatchRollups = true;
		else if (strcmp(t->tgname, "canary_requests_srm") == 0)
			BatchUsers = true;
	}
	table_close(rel, NoLock);
}

/* A one-dimensional array of n elements of type elemtype. */
Datum
MetricsMakeArray(Oid elemtype, Datum *values, bool *nulls, int n)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1];
	int			lbs[1] = {1};

	dims[0] = n;
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}

/* Text datum of a NUL-terminated buffer; "" is NULL when empty_is_null. */
static void
SetText(Datum *value, bool *isnull, const char *s, bool empty_is_null)
{
	*isnull = (empty_is_null && s[0] == '\0');
	*value = *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

static void
SetInt(Datum *value, bool *isnull, int32 v, bool null_cond)
{
	*isnull = null_cond;
	*value = Int32GetDatum(v);
}

/*
 * MetricsWriteBatch
 *		INSERT n records into <schema>.canary_requests with one statement:
 *		one parameterised INSERT ... SELECT FROM unnest($1, ..., $20), one
 *		array per column; then the batch's rollups and sample-ratio users,
 *		when their triggers are enabled.  Caller (the worker's metric-write step) must be in
 *		a transaction with SPI connected and a snapshot; allocates in the
 *		current (transaction) memory context.
 */
void
MetricsWriteBatch(const char *schema, const CanaryMetricRecord *recs, int n)
{
	static const Oid elemtypes[CANARY_REQUESTS_NCOLUMNS] = {
		UUIDOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID, INT4OID, BOOLOID,
		TEXTOID, TEXTOID, BOOLOID, TEXTOID, FLOAT8OID, BOOLOID
	};
	static const Oid argtypes[CANARY_REQUESTS_NCOLUMNS] = {
		UUIDARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
		INT4ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, BOOLARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID,
		BOOLARRAYOID
	};
	Datum	   *values[CANARY_REQUESTS_NCOLUMNS];
	bool	   *nulls[CANARY_REQUESTS_NCOLUMNS];
	Datum		args[CANARY_REQUESTS_NCOLUMNS];
	char	   *sql;
	volatile int ret = 0;

	for (int c = 0; c < CANARY_REQUESTS_NCOLUMNS; c++)
	{
		values[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
	}

	for (int i = 0; i < n; i++)
	{
		const CanaryMetricRecord *r = &recs[i];

		values[0][i] = UUIDPGetDatum(&r->request_id);
		values[1][i] = TimestampTzGetDatum(r->ts);
		SetText(&values[2][i], &nulls[2][i], r->canary, false);
		SetText(&values[3][i], &nulls[3][i], r->stage, true);
		SetText(&values[4][i], &nulls[4][i], r->user_id, false);
		SetText(&values[5][i], &nulls[5][i], r->cohort, true);
		SetText(&values[6][i], &nulls[6][i], r->model, true);
		SetText(&values[7][i], &nulls[7][i],
				CanaryOutcomeName((CanaryOutcome) r->outcome), false);
		SetInt(&values[8][i], &nulls[8][i], r->http_status, r->http_status == 0);
		SetInt(&values[9][i], &nulls[9][i], r->latency_ms, false);
		SetInt(&values[10][i], &nulls[10][i], r->prompt_tokens, r->prompt_tokens < 0);
		SetInt(&values[11][i], &nulls[11][i], r->completion_tokens, r->completion_tokens < 0);
		SetInt(&values[12][i], &nulls[12][i], r->response_chars, r->response_chars < 0);
		values[13][i] = BoolGetDatum(r->refusal);
		SetText(&values[14][i], &nulls[14][i], r->prompt_class, true);
		SetText(&values[15][i], &nulls[15][i], r->prompt_hash, true);
		values[16][i] = BoolGetDatum(r->fallback);
		SetText(&values[17][i], &nulls[17][i], r->error, true);
		values[18][i] = Float8GetDatum(r->cost);
		values[19][i] = BoolGetDatum(r->cached);
	}
	for (int c = 0; c < CANARY_REQUESTS_NCOLUMNS; c++)
		args[c] = MetricsMakeArray(elemtypes[c], values[c], nulls[c], n);

	sql = psprintf("INSERT INTO %s.canary_requests (" CANARY_REQUESTS_COLUMNS ")"
				   " SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[],"
				   " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
				   " $9::int4[], $10::int4[], $11::int4[], $12::int4[], $13::int4[],"
				   " $14::bool[], $15::text[], $16::text[], $17::bool[], $18::text[],"
				   " $19::float8[], $20::bool[])",
				   schema);
	MetricsBatchTriggers(schema);
	if (BatchUsers)
		SrmWriterBegin(schema, recs, n);
	InBatchInsert = true;
	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, CANARY_REQUESTS_NCOLUMNS, (Oid *) argtypes,
									args, NULL, false, 0);
	}
	PG_FINALLY();
	{
		InBatchInsert = false;
	}
	PG_END_TRY();
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not write metrics: SPI_execute_with_args returned %s",
			 SPI_result_code_string(ret));
	if (BatchRollups)
		RollupsWriterAdd(schema, recs, n);
	if (BatchUsers)
		SrmWriterRecord(schema, recs, n);
}
