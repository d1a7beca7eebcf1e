/*-------------------------------------------------------------------------
 *
 * rollups.c
 *	  Histograms of the rollups (canary_rollups, canary_rollup_totals):
 *	  building them, merging them, reading quantiles and Prometheus
 *	  buckets from them; the rollups' retention setting; and the call that
 *	  folds queued verdicts into the rollups.
 *
 * The rollups themselves are written in SQL (sql/parts/32_rollups.sql), by
 * statement-level triggers on canary_requests and canary_feedback (which
 * only queues the verdicts: canary_feedback_fold adds them, called by the
 * worker through RollupsFoldVerdicts); this file holds
 * what SQL cannot do cheaply.
 *
 * Bucket scheme (log-linear, for non-negative integers: milliseconds,
 * tokens; negative values count as 0, values above 2^31 - 1 cannot occur):
 *	  bucket i in 0 .. 64 holds exactly the value i;
 *	  above 64, with u = v - 1, k = floor(log2 u) (6 .. 30) and
 *	  s = (u >> (k - 5)) - 32 (0 .. 31), v goes to bucket
 *	  65 + 32 (k - 6) + s, which holds the values in (L, L + w] with
 *	  L = (32 + s) << (k - 5) and w = 1 << (k - 5): 32 buckets per power of
 *	  two, each of width at most 1/32 of its lower bound.
 * A bucket's value is the midpoint of the integers it holds,
 * L + (w + 1) / 2, within (w - 1) / 2 of any of them, so less than 1/64
 * (1.6 %) of it: the relative error bound of every value read back.
 * canary_hist_quantile(h, q) reads the two order statistics that
 * percentile_cont(q) interpolates between and interpolates their bucket
 * values the same way, so its result is within 1/64 of percentile_cont(q)
 * over the same values.  canary_hist_count_over(h, x) counts the values
 * whose bucket value exceeds x: exact below 65, and otherwise wrong only
 * for values within 1/64 of x.
 *
 * Representation: a sparse int8[] {bucket, count, bucket, count, ...} in
 * bucket order, without zero counts ('{}' when empty).  Arrays from SQL are
 * validated (a user who may update the tables could store anything): a
 * malformed one raises 22023, never reads out of bounds.
 *
 * The Prometheus export (canary_hist_le, canary_hist_cumulative) uses every
 * fourth bucket boundary above 32 (8 per power of two, 1 .. 131072) and
 * the powers of two below: a classic histogram of 98 finite buckets, where
 * Prometheus' histogram_quantile (linear interpolation within a bucket) is
 * within 1/8 (12.5 %) of the true quantile above 64.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/int.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "port/pg_bitutils.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "rollups.h"

#define HIST_EXACT_MAX		64	/* buckets 0 .. 64 hold one value each */
#define HIST_SUB_BITS		5	/* 32 buckets per power of two */
#define HIST_SUB			(1 << HIST_SUB_BITS)
#define HIST_FIRST_K		6	/* first power of two above the exact range */
#define HIST_LAST_K			30
#define HIST_NBUCKETS		(HIST_EXACT_MAX + 1 + (HIST_LAST_K - HIST_FIRST_K + 1) * HIST_SUB)
#define HIST_EXPORT_MAX		131072	/* largest finite Prometheus bucket */

int			canary_rollup_retention_days = 400;

/* Define the rollups' settings; called from _PG_init. */
void
RollupsInit(void)
{
	DefineCustomIntVariable("llm_canary.rollup_retention_days",
							"Sets how many days of canary_rollups canary_maintenance() keeps.",
							"Older rollups are deleted; 0 keeps every rollup.  The raw rows follow llm_canary.retention_days.",
							&canary_rollup_retention_days,
							400, 0, 36500,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
}

/* The bucket of value v. */
static inline int
HistBucket(int64 v)
{
	uint32		u;
	int			k;

	if (v <= HIST_EXACT_MAX)
		return v < 0 ? 0 : (int) v;
	if (v > PG_INT32_MAX)
		v = PG_INT32_MAX;
	u = (uint32) (v - 1);
	k = pg_leftmost_one_pos32(u);
	return HIST_EXACT_MAX + 1 + (k - HIST_FIRST_K) * HIST_SUB +
		(int) (u >> (k - HIST_SUB_BITS)) - HIST_SUB;
}

/* Lower bound L (exclusive) and width w of bucket i > HIST_EXACT_MAX. */
static inline void
HistBucketRange(int i, double *low, double *width)
{
	int			j = i - HIST_EXACT_MAX - 1;
	int			k = HIST_FIRST_K + j / HIST_SUB;
	int			s = j % HIST_SUB;

	*width = ldexp(1.0, k - HIST_SUB_BITS);
	*low = (HIST_SUB + s) * *width;
}

/* The value read back for bucket i: the midpoint of its integers. */
static double
HistBucketValue(int i)
{
	double		low,
				width;

	if (i <= HIST_EXACT_MAX)
		return i;
	HistBucketRange(i, &low, &width);
	return low + (width + 1) / 2;
}

/* The largest value of bucket i (its Prometheus "le"). */
static double
HistBucketUpper(int i)
{
	double		low,
				width;

	if (i <= HIST_EXACT_MAX)
		return i;
	HistBucketRange(i, &low, &width);
	return low + width;
}

/*
 * A dense histogram: counts[0 .. nused - 1], grown on demand.  Lives in the
 * memory context it was made in (the aggregate's context for a transition
 * state, the function's for a scratch copy).
 */
typedef struct DenseHist
{
	int			nused;
	int			nalloc;
	int64	   *counts;
} DenseHist;

static DenseHist *
DenseHistNew(MemoryContext cxt)
{
	DenseHist  *h = MemoryContextAllocZero(cxt, sizeof(DenseHist));

	h->nalloc = 128;
	h->counts = MemoryContextAllocZero(cxt, sizeof(int64) * h->nalloc);
	return h;
}

/*
 * Add n to a bucket, saturating at PG_INT64_MAX rather than wrapping: a
 * sum of hostile counts must not turn negative.
 */
static void
DenseHistAdd(DenseHist *h, int bucket, int64 n)
{
	if (bucket >= h->nalloc)
	{
		int			newalloc = Min(HIST_NBUCKETS, Max(bucket + 1, h->nalloc * 2));

		h->counts = repalloc(h->counts, sizeof(int64) * newalloc);
		memset(h->counts + h->nalloc, 0, sizeof(int64) * (newalloc - h->nalloc));
		h->nalloc = newalloc;
	}
	if (pg_add_s64_overflow(h->counts[bucket], n, &h->counts[bucket]))
		h->counts[bucket] = PG_INT64_MAX;
	if (bucket >= h->nused)
		h->nused = bucket + 1;
}

/*
 * Deconstruct a sparse histogram from SQL into *elems and *n.  Returns
 * NULL when it is one: a one-dimensional int8[] without NULLs of (bucket,
 * count) pairs with valid buckets and non-negative counts; otherwise why
 * not (an errdetail).
 */
static char *
HistSparseDeconstruct(ArrayType *a, Datum **elems, int *n)
{
	bool	   *nulls;

	*elems = NULL;
	*n = 0;
	if (ARR_NDIM(a) == 0)
		return NULL;
	if (ARR_NDIM(a) != 1 || ARR_ELEMTYPE(a) != INT8OID)
		return pstrdup("A histogram is a one-dimensional int8[] of bucket and count pairs.");
	deconstruct_array(a, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, elems, &nulls, n);
	if (*n % 2 != 0)
		return psprintf("A histogram has an even number of elements, not %d.", *n);
	for (int i = 0; i < *n; i += 2)
	{
		int64		bucket,
					count;

		if (nulls[i] || nulls[i + 1])
			return pstrdup("A histogram contains no NULL.");
		bucket = DatumGetInt64((*elems)[i]);
		count = DatumGetInt64((*elems)[i + 1]);
		if (bucket < 0 || bucket >= HIST_NBUCKETS || count < 0)
			return psprintf("Bucket %lld with count %lld is out of range.",
							(long long) bucket, (long long) count);
	}
	pfree(nulls);
	return NULL;
}

/* Add a sparse histogram from SQL to h.  Raises 22023 for an invalid one. */
static void
DenseHistAddSparse(DenseHist *h, ArrayType *a)
{
	Datum	   *elems;
	int			n;
	char	   *problem = HistSparseDeconstruct(a, &elems, &n);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid histogram"),
				 errdetail_internal("%s", problem)));
	for (int i = 0; i < n; i += 2)
		DenseHistAdd(h, (int) DatumGetInt64(elems[i]), DatumGetInt64(elems[i + 1]));
	if (elems != NULL)
		pfree(elems);
}

/*
 * canary_hist_valid(h int8[]): whether h is a histogram the functions
 * below accept (the CHECK of canary_rollups and canary_rollup_totals, so
 * that a bad row is refused where it is written, not where it is read or
 * replicated).
 */
PG_FUNCTION_INFO_V1(canary_hist_valid);
Datum
canary_hist_valid(PG_FUNCTION_ARGS)
{
	Datum	   *elems;
	int			n;

	PG_RETURN_BOOL(HistSparseDeconstruct(PG_GETARG_ARRAYTYPE_P(0), &elems, &n) == NULL);
}

/* The sparse int8[] of h, in the current memory context. */
static ArrayType *
DenseHistToSparse(const DenseHist *h)
{
	Datum	   *elems = palloc(sizeof(Datum) * 2 * Max(h->nused, 1));
	int			n = 0;

	for (int i = 0; i < h->nused; i++)
	{
		if (h->counts[i] == 0)
			continue;
		elems[n++] = Int64GetDatum(i);
		elems[n++] = Int64GetDatum(h->counts[i]);
	}
	return construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/* A scratch dense histogram of a sparse one, in the current context. */
static DenseHist *
DenseHistFromSparse(ArrayType *a)
{
	DenseHist  *h = DenseHistNew(CurrentMemoryContext);

	DenseHistAddSparse(h, a);
	return h;
}

/*
 * The transition state of a histogram aggregate (made in the aggregate's
 * context on the first call); switches to that context, returning the one
 * to switch back to.  Raises if not called as an aggregate.
 */
static DenseHist *
HistTransState(FunctionCallInfo fcinfo, MemoryContext *old)
{
	MemoryContext aggcxt;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "histogram aggregate function called in non-aggregate context");
	*old = MemoryContextSwitchTo(aggcxt);
	return PG_ARGISNULL(0) ? DenseHistNew(aggcxt) : (DenseHist *) PG_GETARG_POINTER(0);
}

/*
 * canary_hist_accum(internal, integer): transition of canary_hist_agg.
 * NULL values are skipped.
 */
PG_FUNCTION_INFO_V1(canary_hist_accum);
Datum
canary_hist_accum(PG_FUNCTION_ARGS)
{
	MemoryContext old;
	DenseHist  *h = HistTransState(fcinfo, &old);

	if (!PG_ARGISNULL(1))
		DenseHistAdd(h, HistBucket(PG_GETARG_INT32(1)), 1);
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(h);
}

/*
 * canary_hist_accum_hist(internal, int8[]): transition of canary_hist_sum.
 * NULL histograms are skipped.
 */
PG_FUNCTION_INFO_V1(canary_hist_accum_hist);
Datum
canary_hist_accum_hist(PG_FUNCTION_ARGS)
{
	MemoryContext old;
	DenseHist  *h = HistTransState(fcinfo, &old);

	if (!PG_ARGISNULL(1))
		DenseHistAddSparse(h, PG_GETARG_ARRAYTYPE_P(1));
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(h);
}

/* canary_hist_final(internal): the sparse histogram ('{}' when empty). */
PG_FUNCTION_INFO_V1(canary_hist_final);
Datum
canary_hist_final(PG_FUNCTION_ARGS)
{
	DenseHist	empty = {0, 0, NULL};

	if (!AggCheckCallContext(fcinfo, NULL))
		elog(ERROR, "histogram aggregate function called in non-aggregate context");
	PG_RETURN_ARRAYTYPE_P(DenseHistToSparse(PG_ARGISNULL(0) ? &empty :
											(DenseHist *) PG_GETARG_POINTER(0)));
}

/* canary_hist_merge(a int8[], b int8[]): the histogram of both. */
PG_FUNCTION_INFO_V1(canary_hist_merge);
Datum
canary_hist_merge(PG_FUNCTION_ARGS)
{
	DenseHist  *h = DenseHistNew(CurrentMemoryContext);

	if (!PG_ARGISNULL(0))
		DenseHistAddSparse(h, PG_GETARG_ARRAYTYPE_P(0));
	if (!PG_ARGISNULL(1))
		DenseHistAddSparse(h, PG_GETARG_ARRAYTYPE_P(1));
	PG_RETURN_ARRAYTYPE_P(DenseHistToSparse(h));
}

/*
 * canary_hist_subtract(a int8[], b int8[]): the values of a less those of b,
 * bucket by bucket, no bucket below zero (a NULL is empty).  The fleet's
 * combined rollups take an applied row's old histogram out with it
 * (sql/parts/33_fleet_combined.sql); clamping rather than raising keeps a
 * replication apply worker from stopping on an inconsistent row.
 */
PG_FUNCTION_INFO_V1(canary_hist_subtract);
Datum
canary_hist_subtract(PG_FUNCTION_ARGS)
{
	DenseHist  *h = DenseHistNew(CurrentMemoryContext);

	if (!PG_ARGISNULL(0))
		DenseHistAddSparse(h, PG_GETARG_ARRAYTYPE_P(0));
	if (!PG_ARGISNULL(1))
	{
		DenseHist  *b = DenseHistFromSparse(PG_GETARG_ARRAYTYPE_P(1));

		for (int i = 0; i < b->nused && i < h->nused; i++)
			h->counts[i] -= Min(b->counts[i], h->counts[i]);
	}
	PG_RETURN_ARRAYTYPE_P(DenseHistToSparse(h));
}

/* The bucket value of the rank-th smallest value (0-based) of h. */
static double
HistValueAtRank(const DenseHist *h, int64 rank)
{
	int64		seen = 0;

	for (int i = 0; i < h->nused; i++)
	{
		seen += h->counts[i];
		if (seen > rank)
			return HistBucketValue(i);
	}
	return HistBucketValue(h->nused - 1);	/* not reached for rank < total */
}

/*
 * canary_hist_quantile(h int8[], q float8): percentile_cont(q) read from
 * the histogram, within 1/64 of the exact one; NULL when h is empty.
 */
PG_FUNCTION_INFO_V1(canary_hist_quantile);
Datum
canary_hist_quantile(PG_FUNCTION_ARGS)
{
	DenseHist  *h = DenseHistFromSparse(PG_GETARG_ARRAYTYPE_P(0));
	double		q = PG_GETARG_FLOAT8(1);
	int64		total = 0;
	double		pos,
				frac,
				lo;
	int64		rank;

	if (isnan(q) || q < 0 || q > 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("quantile %g is not between 0 and 1", q)));
	for (int i = 0; i < h->nused; i++)
		total += h->counts[i];
	if (total == 0)
		PG_RETURN_NULL();
	pos = q * (total - 1);
	rank = (int64) floor(pos);
	frac = pos - rank;
	lo = HistValueAtRank(h, rank);
	if (frac > 0)
		PG_RETURN_FLOAT8(lo + frac * (HistValueAtRank(h, rank + 1) - lo));
	PG_RETURN_FLOAT8(lo);
}

/*
 * canary_hist_count_over(h int8[], x float8): how many values have a bucket
 * value above x.
 */
PG_FUNCTION_INFO_V1(canary_hist_count_over);
Datum
canary_hist_count_over(PG_FUNCTION_ARGS)
{
	DenseHist  *h = DenseHistFromSparse(PG_GETARG_ARRAYTYPE_P(0));
	double		x = PG_GETARG_FLOAT8(1);
	int64		n = 0;

	for (int i = 0; i < h->nused; i++)
		if (HistBucketValue(i) > x)
			n += h->counts[i];
	PG_RETURN_INT64(n);
}

/* Is bucket i's upper bound one of the exported "le" values? */
static bool
HistExported(int i)
{
	if (i <= HIST_EXACT_MAX)
		return i > 0 && (i <= 32 ? (i & (i - 1)) == 0 : i % 8 == 0);
	return ((i - HIST_EXACT_MAX - 1) % 4) == 3 && HistBucketUpper(i) <= HIST_EXPORT_MAX;
}

/* canary_hist_le(): the finite "le" bounds of the Prometheus export. */
PG_FUNCTION_INFO_V1(canary_hist_le);
Datum
canary_hist_le(PG_FUNCTION_ARGS)
{
	Datum		elems[HIST_NBUCKETS];
	int			n = 0;

	for (int i = 0; i < HIST_NBUCKETS; i++)
		if (HistExported(i))
			elems[n++] = Float8GetDatum(HistBucketUpper(i));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, FLOAT8OID, 8, FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}

/*
 * canary_hist_cumulative(h int8[]): for each bound of canary_hist_le(), the
 * number of values at most that bound (exact: the bounds are bucket
 * boundaries).
 */
PG_FUNCTION_INFO_V1(canary_hist_cumulative);
Datum
canary_hist_cumulative(PG_FUNCTION_ARGS)
{
	DenseHist  *h = DenseHistFromSparse(PG_GETARG_ARRAYTYPE_P(0));
	Datum		elems[HIST_NBUCKETS];
	int			n = 0;
	int64		seen = 0;

	for (int i = 0; i < HIST_NBUCKETS; i++)
	{
		if (i < h->nused)
			seen += h->counts[i];
		if (HistExported(i))
			elems[n++] = Int64GetDatum(seen);
	}
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL,
										  TYPALIGN_DOUBLE));
}

/*
 * Histograms built in C, for the metrics worker's batches
 * (rollups_writer.c): a new one in the current memory context, a value
 * added (as canary_hist_agg adds it), the sparse int8[] (as
 * canary_hist_final makes it).
 */
DenseHist *
RollupsHistNew(void)
{
	return DenseHistNew(CurrentMemoryContext);
}

void
RollupsHistAdd(DenseHist *h, int64 value)
{
	DenseHistAdd(h, HistBucket(value), 1);
}

ArrayType *
RollupsHistArray(const DenseHist *h)
{
	return DenseHistToSparse(h);
}

/*
 * RollupsFoldVerdicts
 *		Add the verdicts queued in canary_feedback_pending to the rollups
 *		(canary_feedback_fold() of sql/parts/32_rollups.sql) when the
 *		installed catalog has the function (a 1.0 catalog served by this
 *		library does not); returns the verdicts folded.  Caller: inside SPI,
 *		in a transaction; schema is quoted.
 */
int64
RollupsFoldVerdicts(const char *schema)
{
	char	   *sql;
	int			ret;
	bool		isnull;
	Datum		d;

	sql = psprintf("SELECT to_regprocedure(%s) IS NOT NULL",
				   quote_literal_cstr(psprintf("%s.canary_feedback_fold()", schema)));
	ret = SPI_execute(sql, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not look for canary_feedback_fold: SPI error %d", ret);
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		return 0;
	sql = psprintf("SELECT %s.canary_feedback_fold()", schema);
	ret = SPI_execute(sql, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not fold the queued verdicts: SPI error %d", ret);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(d);
}
