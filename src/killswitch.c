/*-------------------------------------------------------------------------
 *
 * killswitch.c
 *	  canary_check: the kill switch.  Summarises the last window of
 *	  canary_rollups per cohort, stores the summaries, applies the
 *	  article's four rules with a noise guard, and trips the switch.
 *
 * Rules (thresholds from canary_config, baselines from the control cohort
 * of the same window):
 *	  error rate > error_rate_threshold (0.02)
 *	  p95 latency > p95_ratio_threshold (1.5) x control p95
 *	  refusal rate > control refusal rate + refusal_delta_threshold (0.05)
 *	  thumbs-down rate > thumbs_down_ratio_threshold (2.0) x control rate
 *
 * How a breach becomes a trip is the rollout's decision_mode:
 *	  sequential (the default): the counts since evidence_since go, minute by
 *		minute, into canary_evidence (canary_collect_evidence recounts the
 *		last minutes from canary_requests); each rule is tested over the
 *		stage and over segments of the last day (every minute start in
 *		the last hour, sparser before) with the always-valid
 *		mixture likelihood ratios of src/sequential.c (JudgeSequential);
 *	  confirm_windows: a breach of the window must be statistically
 *		credible at the rollout's significance (exact binomial test for the
 *		error rate and the slow share against 5 percent; one-sided
 *		Agresti-Caffo z tests for the refusal delta and thumbs-down ratio)
 *		and hold, for the same rule, in the confirm_windows - 1
 *		non-overlapping windows before (JudgeWindow, ConfirmWindows);
 *	  raw (or raw_rules): the plain comparisons on the window.
 * In every mode no rule trips with fewer than min_samples canary requests,
 * only traffic after evidence_since (the last re-arm or change of stage,
 * percentage or models) counts, and every rule's verdict is stored with
 * the canary summary (canary_window_summaries.decision).  Missing data
 * never trips.  At stage full the control cohort is empty: the baselines
 * come from the last stored control summary of the rollout.  After the
 * rules: the sample-ratio check (canary_srm_check) and the plan
 * (canary_advance), both in SQL.  A 1.0 catalog (before ALTER EXTENSION
 * UPDATE) is served in 1.0's way.
 *
 * Canary requests are the non-fallback attempts of the canary cohort (the
 * new model's own answers); control requests those of the control cohort.
 * Attempts answered from the response cache (canary_requests.cached) count
 * in neither: the kill switch judges what the models do now, and a cached
 * answer was counted once already, when the model gave it.  Its latency is
 * a table lookup and it cannot fail, so it would only dilute the error rate
 * and pull the p95 towards zero.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "config.h"
#include "fleet.h"
#include "private_locks.h"
#include "rollups.h"
#include "sequential.h"
#include "subxact.h"
#include "worker.h"

/* One cohort's window. */
typedef struct CohortWindow
{
	int64		samples;
	int64		errors;
	int64		refusals;
	int64		thumbs_down;
	int64		slow;			/* canary: slower than ratio x baseline p95 */
	double		p95;			/* NaN when no samples */
	bool		has_p95;
	double		paired[SEQ_NPAIRED];	/* sequential, canary: log paired
										 * statistics of the refusal rule */
} CohortWindow;

/* canary_config.decision_mode */
typedef enum DecisionMode
{
	MODE_SEQUENTIAL,
	MODE_CONFIRM_WINDOWS,
	MODE_RAW
} DecisionMode;

static const char *const decision_mode_names[] = {"sequential", "confirm_windows", "raw"};

typedef struct RolloutRules
{
	char		name[NAMEDATALEN];
	char		stage[16];
	int32		percent_x100;	/* percent_new * 100 */
	int			window_seconds;
	double		error_rate;
	double		p95_ratio;
	double		refusal_delta;
	double		thumbs_ratio;
	int64		min_samples;
	double		significance;
	DecisionMode mode;
	int			confirm_windows;	/* consecutive windows that must breach */
	bool		has_since;
	TimestampTz since;			/* evidence_since: count only traffic after */
	bool		catalog_1_1;	/* false: a 1.0 catalog not yet updated */
} RolloutRules;

/* The rules, for matching a breach across windows. */
typedef enum CanaryRule
{
	RULE_NONE,
	RULE_ERROR_RATE,
	RULE_P95,
	RULE_REFUSAL,
	RULE_THUMBS_DOWN
} CanaryRule;

static double
Rate(int64 k, int64 n)
{
	return n > 0 ? (double) k / (double) n : 0.0;
}

/*
 * Upper tail of the binomial distribution: P(X >= k) for X ~ Bin(n, p),
 * summed in log space (n is at most a few hundred thousand per window).
 */
static double
BinomialUpperTail(int64 k, int64 n, double p)
{
	double		sum = 0.0;
	double		lp = log(p);
	double		lq = log1p(-p);
	double		lnf = lgamma((double) n + 1);

	if (k <= 0)
		return 1.0;
	if (k > n)
		return 0.0;
	if (p <= 0.0)
		return 0.0;
	if (p >= 1.0)
		return 1.0;
	for (int64 i = k; i <= n; i++)
	{
		double		term = lnf - lgamma((double) i + 1) - lgamma((double) (n - i) + 1) +
			i * lp + (n - i) * lq;

		sum += exp(term);
		if (i > k + 50 && exp(term) < sum * 1e-15)
			break;
	}
	return sum > 1.0 ? 1.0 : sum;
}

/* P(Z >= z) for a standard normal Z. */
static double
NormalUpperTail(double z)
{
	return 0.5 * erfc(z / M_SQRT2);
}

/*
 * One-sided test of H0: p_c <= a * p_k + b, with the Agresti-Caffo adjusted
 * proportions.  Returns the p-value.
 */
static double
TwoSampleUpperPValue(int64 kc, int64 nc, int64 kk, int64 nk, double a, double b)
{
	double		pc = (kc + 1.0) / (nc + 2.0);
	double		pk = (kk + 1.0) / (nk + 2.0);
	double		var = pc * (1 - pc) / (nc + 2.0) + a * a * pk * (1 - pk) / (nk + 2.0);
	double		z;

	if (var <= 0)
		return 1.0;
	z = (pc - a * pk - b) / sqrt(var);
	return NormalUpperTail(z);
}

static int64
GetInt8(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

static double
GetFloat8(HeapTuple tup, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tup, desc, col, isnull);

	return *isnull ? 0.0 : DatumGetFloat8(d);
}

/*
 * 1.0's summary of one cohort over (at - window, at], from the raw
 * canary_requests and canary_feedback, for a 1.0 catalog not yet updated
 * (no canary_rollups), with the parameters of SummariseCohort.  Feedback
 * comes after its request, so bounding f.ts by the window changes no count
 * and lets the feedback partitions outside the window be pruned (1.0 probed
 * every partition for each request).
 */
static char *
RawWindowSql(const char *schema)
{
	return psprintf("SELECT count(*)::int8,"
					" count(*) FILTER (WHERE r.outcome IN ('error', 'timeout'))::int8,"
					" count(*) FILTER (WHERE r.refusal)::int8,"
					" count(*) FILTER (WHERE EXISTS (SELECT 1 FROM %s.canary_feedback f"
					"   WHERE f.request_id = r.request_id AND f.thumbs_down"
					"   AND f.ts > $2 - make_interval(secs => $3) AND f.ts <= $2))::int8,"
					" count(*) FILTER (WHERE $5 > 0 AND r.latency_ms > $5)::int8,"
					" percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms)::float8"
					" FROM %s.canary_requests r"
					" WHERE r.canary = $1 AND r.ts > $2 - make_interval(secs => $3) AND r.ts <= $2"
					" AND r.cohort = $4 AND NOT r.fallback AND NOT r.cached"
					" AND ($6::timestamptz IS NULL OR r.ts > $6)",
					schema, schema);
}

/*
 * Summarise one cohort over (at - window, at] from the rollups (the
 * fleet's combined rows on a control database, FleetRollupsTable): the
 * 30-second buckets that overlap it (exactly the window when at and the
 * window are multiples of 30 s; otherwise widened to the bucket boundaries
 * around it, so that the bucket still filling counts), so the cost depends
 * on the window, not on the traffic or the retained rows.  When
 * slow_over > 0, also count requests slower than that many milliseconds;
 * the p95 and that count come from the latency histogram (within 1/64 of
 * the exact values, src/rollups.c).
 */
static void
SummariseCohort(const char *schema, const RolloutRules *rr, TimestampTz at,
				const char *cohort, double slow_over, CohortWindow *w)
{
	StringInfoData sql;
	Oid			types[6] = {TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, FLOAT8OID,
	TIMESTAMPTZOID};
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	const char *queued = "0";

	/* verdicts still queued (1.1: canary_feedback_pending), read without a lock */
	if (rr->catalog_1_1)
		queued = psprintf("(SELECT coalesce(sum(q.thumbs_down), 0)::int8"
						  " FROM %s.canary_feedback_pending q"
						  " WHERE q.canary = $1 AND q.bucket_end > $2 - make_interval(secs => $3)"
						  " AND q.bucket_end < $2 + interval '30 seconds'"
						  " AND q.cohort = $4 AND NOT q.fallback AND NOT q.cached"
						  " AND ($6::timestamptz IS NULL OR q.bucket_end > $6))", schema);
	initStringInfo(&sql);
	if (!rr->catalog_1_1)
		appendStringInfo(&sql, "%s", RawWindowSql(schema));
	else
		appendStringInfo(&sql,
					 "SELECT coalesce(sum(r.requests), 0)::int8,"
					 " coalesce(sum(r.outcome_error + r.outcome_timeout), 0)::int8,"
					 " coalesce(sum(r.refusals), 0)::int8,"
					 " coalesce(sum(r.thumbs_down), 0)::int8 + %s,"
					 " CASE WHEN $5 > 0 THEN %s.canary_hist_count_over(%s.canary_hist_sum(r.latency_hist), $5)"
					 "  ELSE 0 END::int8,"
					 " %s.canary_hist_quantile(%s.canary_hist_sum(r.latency_hist), 0.95)"
					 " FROM %s.%s r"
					 " WHERE r.canary = $1 AND r.bucket_end > $2 - make_interval(secs => $3)"
					 " AND r.bucket_end < $2 + interval '30 seconds'"
					 " AND r.cohort = $4 AND NOT r.fallback AND NOT r.cached"
					 " AND ($6::timestamptz IS NULL OR r.bucket_end > $6)",
					 queued, schema, schema, schema, schema, schema, FleetRollupsTable());
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	args[2] = Int32GetDatum(rr->window_seconds);
	args[3] = CStringGetTextDatum(cohort);
	args[4] = Float8GetDatum(slow_over);
	args[5] = TimestampTzGetDatum(rr->since);
	if (!rr->has_since)
		nulls[5] = 'n';
	ret = SPI_execute_with_args(sql.data, 6, types, args, nulls, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not summarise canary_rollups: SPI error %d", ret);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	w->samples = GetInt8(tup, desc, 1);
	w->errors = GetInt8(tup, desc, 2);
	w->refusals = GetInt8(tup, desc, 3);
	w->thumbs_down = GetInt8(tup, desc, 4);
	w->slow = GetInt8(tup, desc, 5);
	w->p95 = GetFloat8(tup, desc, 6, &isnull);
	w->has_p95 = !isnull;
}

/*
 * The last stored control summary with traffic, for stage full (or a
 * window without control traffic).  One probe of the partial index
 * canary_window_summaries_baseline_idx (sql/parts/50_killswitch.sql), whose
 * predicate the WHERE clause repeats: at full the last such row may be
 * weeks old, and (canary, at) or (at) would read every summary since.  The
 * range on canary (the same rows as equality) with the order (canary, at)
 * leaves no plan that walks canary_window_summaries_at_idx.
 */
static bool
LastControlBaseline(const char *schema, const RolloutRules *rr, TimestampTz at,
					CohortWindow *w, TimestampTz *from)
{
	StringInfoData sql;
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT samples, errors, refusals, thumbs_down, p95_latency_ms, at"
					 " FROM %s.canary_window_summaries"
					 " WHERE canary >= $1 AND canary <= $1 AND cohort = 'control' AND samples > 0"
					 "   AND at <= $2"
					 " ORDER BY canary DESC, at DESC LIMIT 1", schema);
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	ret = SPI_execute_with_args(sql.data, 2, types, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read canary_window_summaries: SPI error %d", ret);
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	w->samples = GetInt8(tup, desc, 1);
	w->errors = GetInt8(tup, desc, 2);
	w->refusals = GetInt8(tup, desc, 3);
	w->thumbs_down = GetInt8(tup, desc, 4);
	w->p95 = GetFloat8(tup, desc, 5, &isnull);
	w->has_p95 = !isnull;
	*from = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
	return true;
}

static void
StoreSummary(const char *schema, const RolloutRules *rr, TimestampTz at,
			 const char *cohort, const CohortWindow *w, bool is_canary,
			 bool has_baseline_from, TimestampTz baseline_from, const char *decision)
{
	StringInfoData sql;
	Oid			types[15] = {TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTOID,
		INT8OID, INT8OID, FLOAT8OID, INT8OID, INT8OID, FLOAT8OID, TIMESTAMPTZOID, INT8OID,
	TEXTOID, TEXTOID};
	Datum		args[15];
	char		nulls[15];
	int			ret;

	memset(nulls, ' ', sizeof(nulls));
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s.canary_window_summaries"
					 " (canary, at, window_seconds, stage, cohort, samples, errors, error_rate,"
					 "  p95_latency_ms, refusals, refusal_rate, thumbs_down, thumbs_down_rate,"
					 "  slow_share, baseline_from%s)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7,"
					 "  CASE WHEN $6 > 0 THEN $7::float8 / $6 END, $8, $9,"
					 "  CASE WHEN $6 > 0 THEN $9::float8 / $6 END, $10,"
					 "  CASE WHEN $6 > 0 THEN $10::float8 / $6 END,"
					 "  CASE WHEN $6 > 0 AND $11 IS NOT NULL THEN $13::float8 / $6 END, $12%s)",
					 schema, rr->catalog_1_1 ? ", decision_mode, decision" : "",
					 rr->catalog_1_1 ? ", $14, $15::jsonb" : "");
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	args[2] = Int32GetDatum(rr->window_seconds);
	args[3] = CStringGetTextDatum(rr->stage);
	args[4] = CStringGetTextDatum(cohort);
	args[5] = Int64GetDatum(w->samples);
	args[6] = Int64GetDatum(w->errors);
	args[7] = Float8GetDatum(w->p95);
	if (!w->has_p95)
		nulls[7] = 'n';
	args[8] = Int64GetDatum(w->refusals);
	args[9] = Int64GetDatum(w->thumbs_down);
	args[10] = Float8GetDatum(0);
	if (!is_canary)
		nulls[10] = 'n';
	args[11] = TimestampTzGetDatum(baseline_from);
	if (!has_baseline_from)
		nulls[11] = 'n';
	args[12] = Int64GetDatum(w->slow);
	args[13] = CStringGetTextDatum(decision_mode_names[rr->mode]);
	args[14] = decision ? CStringGetTextDatum(decision) : (Datum) 0;
	if (decision == NULL)
		nulls[13] = nulls[14] = 'n';
	ret = SPI_execute_with_args(sql.data, rr->catalog_1_1 ? 15 : 13, types, args, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not write canary_window_summaries: SPI error %d", ret);
}

/* What each rule concluded, for the trip and for the summary row. */
typedef enum RuleVerdict
{
	VERDICT_NO_DATA,			/* no canary traffic, or no baseline */
	VERDICT_MIN_SAMPLES,		/* fewer than min_samples canary requests */
	VERDICT_BELOW,				/* the plain comparison holds: no breach */
	VERDICT_NOT_CREDIBLE,		/* a breach, but the statistical gate holds */
	VERDICT_UNCONFIRMED,		/* a credible breach, not in the windows before */
	VERDICT_TRIP
} RuleVerdict;

static const char *const verdict_names[] = {
	"no_data", "min_samples", "below_threshold", "not_credible", "unconfirmed", "trip"
};
static const char *const rule_names[] = {
	"none", "error_rate", "p95", "refusal", "thumbs_down"
};

#define NRULES 5				/* indexed by CanaryRule; 0 unused */

typedef struct RuleResult
{
	RuleVerdict verdict;
	double		observed;		/* the canary's rate, share or p95 */
	double		limit;			/* what the rule compares it with */
	int64		samples;		/* canary requests behind observed */
	double		evidence;		/* p-value (confirm_windows) or log evidence
								 * (sequential); NaN when none */
	double		needed;			/* significance, resp. log threshold */
	int			minutes;		/* sequential: segment length, 0 = the stage */
	char	   *reason;			/* for a breach: the trip reason */
} RuleResult;

typedef struct Decision
{
	RuleResult	r[NRULES];
	CanaryRule	tripped;
} Decision;

static void
SetResult(RuleResult *res, RuleVerdict v, double observed, double limit, int64 samples)
{
	res->verdict = v;
	res->observed = observed;
	res->limit = limit;
	res->samples = samples;
	res->evidence = NAN;
	res->needed = NAN;
	res->minutes = 0;
	res->reason = NULL;
}

/*
 * A plain breach, judged raw or with the one-window statistical gate
 * (p-value below significance).
 */
static void
GateWindow(const RolloutRules *rr, RuleResult *res, double pvalue, char *reason)
{
	res->reason = reason;
	if (rr->mode == MODE_RAW)
	{
		res->verdict = VERDICT_TRIP;
		return;
	}
	res->evidence = pvalue;
	res->needed = rr->significance;
	res->verdict = pvalue < rr->significance ? VERDICT_TRIP : VERDICT_NOT_CREDIBLE;
}

/*
 * JudgeWindow
 *		The article's four rules on one window (modes raw and
 *		confirm_windows): every rule gets a verdict; d->tripped is the
 *		first rule, in the article's order, whose verdict is trip.
 */
static void
JudgeWindow(const RolloutRules *rr, const CohortWindow *cw, const CohortWindow *base,
			bool has_base, Decision *d)
{
	double		err = Rate(cw->errors, cw->samples);
	bool		baseline = has_base && base->samples > 0;

	memset(d, 0, sizeof(*d));
	for (int i = 1; i < NRULES; i++)
		SetResult(&d->r[i], VERDICT_NO_DATA, NAN, NAN, cw->samples);
	if (cw->samples == 0)
		return;
	if (cw->samples < rr->min_samples)
	{
		for (int i = 1; i < NRULES; i++)
			d->r[i].verdict = VERDICT_MIN_SAMPLES;
		return;
	}

	/* 1. error rate, needs no baseline */
	SetResult(&d->r[RULE_ERROR_RATE], VERDICT_BELOW, err, rr->error_rate, cw->samples);
	if (err > rr->error_rate)
		GateWindow(rr, &d->r[RULE_ERROR_RATE],
				   BinomialUpperTail(cw->errors, cw->samples, rr->error_rate),
				   psprintf("new-model error_rate=%.3f > %g", err, rr->error_rate));

	/* 2. p95 latency: the canary's share slower than ratio x control p95 */
	if (baseline && cw->has_p95 && base->has_p95 && base->p95 > 0)
	{
		RuleResult *res = &d->r[RULE_P95];

		SetResult(res, VERDICT_BELOW, cw->p95, base->p95 * rr->p95_ratio, cw->samples);
		if (cw->p95 > base->p95 * rr->p95_ratio)
			GateWindow(rr, res,
					   Rate(cw->slow, cw->samples) > 0.05 ?
					   BinomialUpperTail(cw->slow, cw->samples, 0.05) : 1.0,
					   psprintf("new-model p95=%.0f > %gx baseline (%.0f)",
								cw->p95, rr->p95_ratio, base->p95));
	}

	if (!baseline)
		return;

	/* 3. refusal rate */
	{
		double		rc = Rate(cw->refusals, cw->samples);
		double		rk = Rate(base->refusals, base->samples);
		RuleResult *res = &d->r[RULE_REFUSAL];

		SetResult(res, VERDICT_BELOW, rc, rk + rr->refusal_delta, cw->samples);
		if (rc > rk + rr->refusal_delta)
			GateWindow(rr, res,
					   TwoSampleUpperPValue(cw->refusals, cw->samples,
											base->refusals, base->samples,
											1.0, rr->refusal_delta),
					   psprintf("refusal_rate=%.3f vs baseline %.3f", rc, rk));
	}

	/* 4. thumbs-down rate */
	{
		double		tc = Rate(cw->thumbs_down, cw->samples);
		double		tk = Rate(base->thumbs_down, base->samples);
		RuleResult *res = &d->r[RULE_THUMBS_DOWN];

		SetResult(res, VERDICT_BELOW, tc, tk * rr->thumbs_ratio, cw->samples);
		if (tc > tk * rr->thumbs_ratio && cw->thumbs_down > 0)
			GateWindow(rr, res,
					   TwoSampleUpperPValue(cw->thumbs_down, cw->samples,
											base->thumbs_down, base->samples,
											rr->thumbs_ratio, 0.0),
					   psprintf("thumbs_down_rate=%.3f > %gx baseline %.3f",
								tc, rr->thumbs_ratio, tk));
	}
}

/* The first rule whose verdict is trip, or RULE_NONE. */
static CanaryRule
FirstTrip(const Decision *d)
{
	for (int i = 1; i < NRULES; i++)
		if (d->r[i].verdict == VERDICT_TRIP)
			return (CanaryRule) i;
	return RULE_NONE;
}

/* Both cohorts of one window and the baseline the rules compare against. */
typedef struct WindowSummary
{
	CohortWindow control;
	CohortWindow canary;
	CohortWindow baseline;
	bool		has_base;
	bool		from_history;	/* baseline from a stored control summary */
	TimestampTz baseline_from;
} WindowSummary;

/*
 * The latency above which a canary request is slow: p95_ratio_threshold x
 * the baseline's p95; 0 without a baseline p95.
 */
static double
SlowOver(const RolloutRules *rr, const WindowSummary *w)
{
	return w->has_base && w->baseline.has_p95 ? w->baseline.p95 * rr->p95_ratio : 0;
}

/*
 * SummariseWindow
 *		Summarise the window ending at 'at': the control cohort, the baseline
 *		(the control cohort, or at stage full the last stored control
 *		summary), then the canary cohort with its slow share.
 */
static void
SummariseWindow(const char *schema, const RolloutRules *rr, TimestampTz at,
				WindowSummary *w)
{
	memset(w, 0, sizeof(*w));
	SummariseCohort(schema, rr, at, "control", 0, &w->control);
	if (w->control.samples > 0)
	{
		w->baseline = w->control;
		w->has_base = true;
	}
	else
	{
		w->has_base = LastControlBaseline(schema, rr, at, &w->baseline, &w->baseline_from);
		w->from_history = w->has_base;
	}
	SummariseCohort(schema, rr, at, "canary", SlowOver(rr, w), &w->canary);
}

/*
 * ConfirmWindows
 *		Mode confirm_windows: a rule that trips in the current window must
 *		also trip in the confirm_windows - 1 non-overlapping windows before
 *		it; otherwise its verdict becomes unconfirmed.  The switch looks
 *		every 30 s, hundreds of times a day; one window at the significance
 *		level alone would trip on noise now and then.  Independent windows
 *		multiply the false-alarm probability, at the cost of one more window
 *		of delay.
 */
static void
ConfirmWindows(const char *schema, const RolloutRules *rr, TimestampTz at, Decision *d)
{
	for (int i = 1; i < NRULES; i++)
	{
		if (d->r[i].verdict != VERDICT_TRIP)
			continue;
		for (int k = 1; k < rr->confirm_windows; k++)
		{
			TimestampTz prev = at - (TimestampTz) k * rr->window_seconds * USECS_PER_SEC;
			WindowSummary w;
			Decision	pd;

			SummariseWindow(schema, rr, prev, &w);
			JudgeWindow(rr, &w.canary, &w.baseline, w.has_base, &pd);
			if (pd.r[i].verdict != VERDICT_TRIP)
			{
				d->r[i].verdict = VERDICT_UNCONFIRMED;
				break;
			}
		}
	}
}

/*
 * The segments of the change statistic end now and start at the minute
 * boundaries 1, 2, ... 60 minutes before the current minute, then every 5
 * minutes up to 4 hours, then every 30 minutes up to a day: every start in
 * the last hour, where a fresh regression is, and a step of at most an
 * eighth of the length beyond.  (The bound on false trips counts every
 * minute boundary of the day as a start, whichever are used.)
 */
#define CHANGE_MAX_MINUTES	1440

static int
NextSegmentMinutes(int minutes)
{
	return minutes < 60 ? minutes + 1 : minutes < 240 ? minutes + 5 : minutes + 30;
}

/* 1 + the segments of the change statistic: [0] is the stage */
#define NSEGMENTS (1 + 60 + (240 - 60) / 5 + (CHANGE_MAX_MINUTES - 240) / 30)

/* Counts of both cohorts over one segment of evidence. */
typedef struct Segment
{
	int			minutes;		/* 0: since evidence_since */
	CohortWindow canary;
	CohortWindow control;
} Segment;

static void
AddCounts(CohortWindow *to, const CohortWindow *from)
{
	to->samples += from->samples;
	to->errors += from->errors;
	to->refusals += from->refusals;
	to->thumbs_down += from->thumbs_down;
	to->slow += from->slow;
	for (int j = 0; j < SEQ_NPAIRED; j++)
		to->paired[j] += from->paired[j];
}

/*
 * ReadSegments
 *		Sum canary_evidence per cohort over the stage (every minute since
 *		evidence_since: the running totals of the settled minutes and the
 *		minutes after them, canary_evidence_stage) and over the segments of
 *		the change statistic that
 *		start after it: the minutes of the last day are read once, into an
 *		array by minutes before now, and summed backwards from now.
 *		Returns the number of segments filled in seg[] (NSEGMENTS at most).
 */
static int
ReadSegments(const char *schema, const RolloutRules *rr, TimestampTz at, Segment *seg)
{
	StringInfoData sql;
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			ret;
	int			nseg = 1;
	int			stage_minutes;	/* minutes from the stage's start to now's */
	int			back = 0;		/* minutes before now's summed into sum */
	int			minutes = 1;	/* the next segment's length */
	Segment		sum;
	CohortWindow *per_minute;

	initStringInfo(&sql);
	/*
	 * Row 1 per cohort (minute -1): the stage; then the minutes of the last
	 * day after the stage's start, by how many minutes before now's.
	 */
	appendStringInfo(&sql,
					 "WITH o(origin) AS (SELECT timestamptz '2000-01-01 00:00:00+00'),"
					 " b(now_m, since_m) AS (SELECT date_bin('1 minute', $3, origin),"
					 "   coalesce(date_bin('1 minute', $2, origin), '-infinity') FROM o)"
					 " SELECT -1, s.cohort, s.samples, s.errors, s.refusals, s.thumbs_down, s.slow,"
					 "  (SELECT CASE WHEN since_m = '-infinity' THEN %d"
					 "     ELSE least(extract(epoch FROM now_m - since_m)::int / 60, %d) END FROM b),"
					 "  s.paired_1, s.paired_2, s.paired_3, s.paired_4"
					 " FROM %s.canary_evidence_stage($1, $2, $3) s"
					 " UNION ALL"
					 " SELECT extract(epoch FROM b.now_m - e.bucket)::int / 60, e.cohort, e.samples,"
					 "  e.errors, e.refusals, e.thumbs_down, e.slow, NULL,"
					 "  e.paired_1, e.paired_2, e.paired_3, e.paired_4"
					 " FROM %s.canary_evidence e, b"
					 " WHERE e.canary = $1 AND e.bucket > b.since_m"
					 "   AND e.bucket >= b.now_m - interval '%d minutes' AND e.bucket <= $3",
					 CHANGE_MAX_MINUTES + 1, CHANGE_MAX_MINUTES + 1, schema, schema,
					 CHANGE_MAX_MINUTES);
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(rr->since);
	if (!rr->has_since)
		nulls[1] = 'n';
	args[2] = TimestampTzGetDatum(at);
	/* not read-only: it must see what canary_collect_evidence just wrote */
	ret = SPI_execute_with_args(sql.data, 3, types, args, nulls, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read canary_evidence: SPI error %d", ret);

	memset(seg, 0, sizeof(Segment) * NSEGMENTS);
	per_minute = palloc0(sizeof(CohortWindow) * 2 * (CHANGE_MAX_MINUTES + 1));
	stage_minutes = 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int			minute = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		bool		canary = strcmp(SPI_getvalue(tup, desc, 2), "canary") == 0;
		CohortWindow *w;

		if (minute < 0)
		{
			w = canary ? &seg[0].canary : &seg[0].control;
			stage_minutes = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		}
		else if (minute <= CHANGE_MAX_MINUTES)
			w = &per_minute[2 * minute + (canary ? 0 : 1)];
		else
			continue;
		w->samples = GetInt8(tup, desc, 3);
		w->errors = GetInt8(tup, desc, 4);
		w->refusals = GetInt8(tup, desc, 5);
		w->thumbs_down = GetInt8(tup, desc, 6);
		w->slow = GetInt8(tup, desc, 7);
		for (int j = 0; j < SEQ_NPAIRED; j++)
		{
			Datum		v = SPI_getbinval(tup, desc, 9 + j, &isnull);

			w->paired[j] = isnull ? 0.0 : DatumGetFloat8(v);
		}
	}

	/*
	 * A segment of m minutes holds now's minute and the m before it; it
	 * must start after the stage's first minute (else it is the stage).
	 */
	memset(&sum, 0, sizeof(sum));
	while (minutes <= CHANGE_MAX_MINUTES && minutes < stage_minutes && nseg < NSEGMENTS)
	{
		for (; back <= minutes; back++)
		{
			AddCounts(&sum.canary, &per_minute[2 * back]);
			AddCounts(&sum.control, &per_minute[2 * back + 1]);
		}
		seg[nseg] = sum;
		seg[nseg].minutes = minutes;
		nseg++;
		minutes = NextSegmentMinutes(minutes);
	}
	pfree(per_minute);
	return nseg;
}

/* The rules whose boundary is made of the control's rate. */
static bool
TwoSample(CanaryRule rule)
{
	return rule == RULE_REFUSAL || rule == RULE_THUMBS_DOWN;
}

/* The rule's name in src/sequential.c, where the rules' shares live. */
static SeqRule
SeqRuleOf(CanaryRule rule)
{
	Assert(rule != RULE_NONE);
	return (SeqRule) (rule - RULE_ERROR_RATE);
}

StaticAssertDecl(RULE_P95 - RULE_ERROR_RATE == SEQ_RULE_P95 &&
				 RULE_REFUSAL - RULE_ERROR_RATE == SEQ_RULE_REFUSAL &&
				 RULE_THUMBS_DOWN - RULE_ERROR_RATE == SEQ_RULE_THUMBS_DOWN,
				 "the kill switch's rules in the order of sequential.h's");

/*
 * The boundary a rule tests the canary's rate against over one segment,
 * from the segment's control counts (or, without any, the stored baseline),
 * the control's rate taken at the upper end of its time-uniform confidence
 * sequence (src/sequential.c); false when there is no baseline.  *paired:
 * the refusal rule while both cohorts get traffic (0 < percent_new < 100)
 * is tested by the paired statistic instead (src/sequential.c), against
 * the segment's own control traffic; false when the segment has none.
 */
static bool
SegmentBoundary(const RolloutRules *rr, CanaryRule rule, const Segment *s,
				const WindowSummary *w, double *observed, double *plain_limit,
				double *boundary, int64 *events, bool *paired)
{
	const CohortWindow *base = s->control.samples > 0 ? &s->control :
		(w->has_base ? &w->baseline : NULL);
	const CohortWindow *cw = &s->canary;
	double		z = SeqControlThreshold(SeqRuleOf(rule), rr->significance, s->minutes > 0);

	/*
	 * refusals while both cohorts get traffic (0 < percent_new < 100): the
	 * paired test (a segment without control traffic has no pairs, no
	 * evidence); otherwise, where there is no control cohort (full, or a
	 * ramp stage set to 100 %), against the stored baseline.  One test per
	 * evidence period (a change of stage or percentage starts a new one),
	 * so each keeps its share.
	 */
	*paired = rule == RULE_REFUSAL && rr->percent_x100 > 0 && rr->percent_x100 < 10000;
	if (*paired)
	{
		*events = cw->refusals;
		*observed = Rate(*events, cw->samples);
		*plain_limit = *boundary = s->control.samples > 0 ?
			Rate(s->control.refusals, s->control.samples) + rr->refusal_delta : NAN;
		return s->control.samples > 0;
	}

	switch (rule)
	{
		case RULE_ERROR_RATE:
			*events = cw->errors;
			*plain_limit = *boundary = rr->error_rate;
			break;
		case RULE_P95:
			if (SlowOver(rr, w) <= 0)
				return false;
			*events = cw->slow;
			*plain_limit = *boundary = 0.05;
			break;
		case RULE_REFUSAL:
			if (base == NULL || base->samples == 0)
				return false;
			*events = cw->refusals;
			*plain_limit = Rate(base->refusals, base->samples) + rr->refusal_delta;
			*boundary = SeqUpperConfidence(base->refusals, base->samples, z) + rr->refusal_delta;
			break;
		case RULE_THUMBS_DOWN:
			if (base == NULL || base->samples == 0)
				return false;
			*events = cw->thumbs_down;
			*plain_limit = Rate(base->thumbs_down, base->samples) * rr->thumbs_ratio;
			*boundary = SeqUpperConfidence(base->thumbs_down, base->samples, z) * rr->thumbs_ratio;
			break;
		default:
			return false;
	}
	*observed = Rate(*events, cw->samples);
	return true;
}

/*
 * The trip reason of a sequential breach, in the article's words (the
 * evidence behind it is in the decision stored with the summary).
 */
static char *
SequentialReason(const RolloutRules *rr, CanaryRule rule, const RuleResult *res,
				 const WindowSummary *w)
{
	switch (rule)
	{
		case RULE_ERROR_RATE:
			return psprintf("new-model error_rate=%.3f > %g", res->observed, rr->error_rate);
		case RULE_P95:
			return psprintf("new-model p95 > %gx baseline (%.0f): %.1f%% of requests slower than %.0f ms",
							rr->p95_ratio, w->baseline.p95, 100 * res->observed,
							SlowOver(rr, w));
		case RULE_REFUSAL:
			return psprintf("refusal_rate=%.3f vs baseline %.3f", res->observed,
							res->limit - rr->refusal_delta);
		default:
			return psprintf("thumbs_down_rate=%.3f > %gx baseline %.3f", res->observed,
							rr->thumbs_ratio, res->limit / rr->thumbs_ratio);
	}
}

/*
 * JudgeSequential
 *		Mode sequential: collect the evidence up to 'at', then for each rule
 *		the always-valid tests of src/sequential.c over the stage and over
 *		the change segments.  A rule trips on a segment with at least
 *		min_samples canary requests where the plain comparison breaches and
 *		the log evidence reaches its threshold.  The verdict reports the
 *		tripping segment, or else the segment with the most evidence
 *		relative to its threshold.  collect false: another check holds the
 *		rollout's check lock (it is collecting): judge on the evidence
 *		committed.
 */
static void
JudgeSequential(const char *schema, const RolloutRules *rr, TimestampTz at,
				const WindowSummary *w, bool collect, Decision *d)
{
	Segment		seg[NSEGMENTS];
	int			nseg;
	StringInfoData sql;
	Oid			types[4] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, FLOAT8OID};
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int			ret;

	if (collect)
	{
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT %s.canary_collect_evidence($1, $2, $3, $4)", schema);
		args[0] = CStringGetTextDatum(rr->name);
		args[1] = TimestampTzGetDatum(at);
		args[2] = TimestampTzGetDatum(rr->since);
		if (!rr->has_since)
			nulls[2] = 'n';
		args[3] = Float8GetDatum(SlowOver(rr, w));
		ret = SPI_execute_with_args(sql.data, 4, types, args, nulls, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not collect canary_evidence: SPI error %d", ret);
	}

	nseg = ReadSegments(schema, rr, at, seg);
	memset(d, 0, sizeof(*d));
	for (int i = 1; i < NRULES; i++)
	{
		RuleResult *res = &d->r[i];
		bool		enough = false;
		bool		best_breach = false;
		double		best = -INFINITY;

		SetResult(res, VERDICT_NO_DATA, NAN, NAN, nseg > 0 ? seg[0].canary.samples : 0);
		for (int s = 0; s < nseg; s++)
		{
			RuleResult cand;
			double		observed,
						limit,
						boundary;
			int64		events;
			bool		breach;
			bool		paired;

			if (seg[s].canary.samples == 0 ||
				!SegmentBoundary(rr, (CanaryRule) i, &seg[s], w, &observed, &limit,
								 &boundary, &events, &paired))
				continue;
			if (seg[s].canary.samples < rr->min_samples)
			{
				if (!enough)
					SetResult(res, VERDICT_MIN_SAMPLES, observed, limit, seg[s].canary.samples);
				continue;
			}
			breach = observed > limit;
			SetResult(&cand, breach ? VERDICT_NOT_CREDIBLE : VERDICT_BELOW,
					  observed, limit, seg[s].canary.samples);
			cand.needed = seg[s].minutes == 0 ?
				SeqStageThreshold(SeqRuleOf((CanaryRule) i), rr->significance,
								  TwoSample((CanaryRule) i) && !paired) :
				SeqChangeThreshold(SeqRuleOf((CanaryRule) i), rr->significance,
								   TwoSample((CanaryRule) i) && !paired);
			cand.evidence = paired ? SeqPairedMixture(seg[s].canary.paired) :
				SeqLogMixtureLR(events, seg[s].canary.samples, boundary);
			cand.minutes = seg[s].minutes;
			if (breach && cand.evidence >= cand.needed)
			{
				cand.verdict = VERDICT_TRIP;
				cand.reason = SequentialReason(rr, (CanaryRule) i, &cand, w);
				*res = cand;
				break;
			}
			/* report the breach, else the segment, nearest to tripping */
			if (!enough || (breach && !best_breach) ||
				(breach == best_breach && cand.evidence - cand.needed > best))
			{
				*res = cand;
				best = cand.evidence - cand.needed;
				best_breach = breach;
			}
			enough = true;
		}
	}
}

/* Append a float as JSON: null when it is not a finite number. */
static void
AppendJsonNumber(StringInfo buf, const char *key, double v)
{
	if (isfinite(v))
		appendStringInfo(buf, ", \"%s\": %.6g", key, v);
	else
		appendStringInfo(buf, ", \"%s\": null", key);
}

/*
 * Whether the sample-ratio test applies to the rollout (after rules that
 * did not trip): in a 1.1 catalog, while both cohorts get users.
 */
static bool
SampleRatioChecked(const RolloutRules *rr)
{
	return rr->catalog_1_1 && rr->percent_x100 > 0 && rr->percent_x100 < 10000;
}

/*
 * The decision as the JSON of canary_window_summaries.decision.  locked:
 * this check holds the rollout's check lock ("check_lock", in every mode:
 * the plan's 'no breach' gate reads it); without it (another transaction
 * holds it) the decision says that the evidence was not collected (mode
 * sequential) and that the sample-ratio check, which would follow the
 * rules, is skipped: the plan does not advance on such a check.  blind:
 * such a check's "blind_since" and "blind_alerted" (CheckBlind), or NULL.
 * trip: what came of a trip the check attempted but did not make ("trip":
 * "deferred" or "already tripped", and its "trip_kind"; the spell of
 * deferred trips, "trip_deferred_alerted": TripSpell), or NULL.
 */
static char *
DecisionJson(const RolloutRules *rr, const Decision *d, bool locked, const char *blind,
			 const char *trip)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"mode\": \"%s\", \"tripped\": ", decision_mode_names[rr->mode]);
	if (d->tripped == RULE_NONE)
		appendStringInfoString(&buf, "null");
	else
		appendStringInfo(&buf, "\"%s\"", rule_names[d->tripped]);
	appendStringInfo(&buf, ", \"check_lock\": %s", locked ? "true" : "false");
	if (blind != NULL)
		appendStringInfoString(&buf, blind);
	if (trip != NULL)
		appendStringInfoString(&buf, trip);
	if (rr->mode == MODE_SEQUENTIAL)
		appendStringInfo(&buf, ", \"evidence_collected\": %s", locked ? "true" : "false");
	if (!locked && d->tripped == RULE_NONE && SampleRatioChecked(rr))
		appendStringInfoString(&buf, ", \"sample_ratio\": \"skipped: another check holds it\"");
	appendStringInfoString(&buf, ", \"rules\": {");
	for (int i = 1; i < NRULES; i++)
	{
		const RuleResult *res = &d->r[i];

		appendStringInfo(&buf, "%s\"%s\": {\"verdict\": \"%s\", \"samples\": " INT64_FORMAT,
						 i > 1 ? ", " : "", rule_names[i], verdict_names[res->verdict],
						 res->samples);
		AppendJsonNumber(&buf, "observed", res->observed);
		AppendJsonNumber(&buf, "limit", res->limit);
		AppendJsonNumber(&buf, "evidence", res->evidence);
		AppendJsonNumber(&buf, "needed", res->needed);
		if (rr->mode == MODE_SEQUENTIAL)
			appendStringInfo(&buf, ", \"minutes\": %d", res->minutes);
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfoString(&buf, "}}");
	return buf.data;
}

/* What came of a trip (Trip, CheckSampleRatio) */
typedef enum TripOutcome
{
	TRIP_NONE,					/* none attempted */
	TRIP_DONE,
	TRIP_NOT_ARMED,				/* already tripped meanwhile */
	TRIP_DELETED,				/* the rollout was deleted meanwhile */
	TRIP_DEFERRED				/* another transaction holds the row */
} TripOutcome;

/*
 * Trip through canary_trip_internal, in the caller's transaction.
 * TRIP_NOT_ARMED when the rollout was tripped meanwhile (by a concurrent
 * trip that committed before): that trip is not ours to report; returning
 * a reason would log a trip that did not happen.  TRIP_DELETED when it was
 * deleted meanwhile (an operator's DELETE committed during a check without
 * the check lock, or on a 1.0 catalog).  TRIP_DEFERRED,
 * with a WARNING, when another transaction holds the rollout's row with a
 * lock that conflicts with FOR NO KEY UPDATE (an operator's UPDATE or
 * SELECT ... FOR UPDATE; not the FOR KEY SHARE that an application's new
 * session pin takes through its foreign key): the check holds check locks
 * (this rollout's, and those of the rollouts checked before it in the
 * call), and an operator's transaction that holds the row may be waiting
 * for one of them (the trigger of canary_config that deletes a rollout's
 * evidence waits for its check lock), so waiting for the row here could
 * deadlock.  A check never waits for a row of canary_config while it holds
 * a check lock: the next check trips, if the rules still say so (after an
 * operator's change of the evidence period, on the new evidence).
 *
 * A 1.0 catalog not yet updated: its canary_trip_internal takes the row FOR
 * UPDATE, which conflicts with an application's FOR KEY SHARE too, so the
 * probe takes FOR UPDATE as well: the trip is deferred while an application
 * holds a new session's pin, rather than wait for it (under the monitor's
 * lock_timeout the whole check would fail, every rollout's trip with it).
 */
static TripOutcome
Trip(const char *schema, const RolloutRules *rr, const char *reason, const char *kind,
	 int64 samples_new, int64 samples_old)
{
	const char *name = rr->name;
	StringInfoData sql;
	Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID};
	Datum		args[5];
	int			ret;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT EXISTS (SELECT 1 FROM %s.canary_config WHERE name = $1"
					 " FOR %s SKIP LOCKED),"
					 " EXISTS (SELECT 1 FROM %s.canary_config WHERE name = $1)",
					 schema, rr->catalog_1_1 ? "NO KEY UPDATE" : "UPDATE", schema);
	args[0] = CStringGetTextDatum(name);
	ret = SPI_execute_with_args(sql.data, 1, types, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not lock the rollout to trip: SPI error %d", ret);
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
	{
		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
			return TRIP_DELETED;
		ereport(WARNING,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not trip the kill switch of rollout \"%s\" now", name),
				 errdetail("Another transaction holds the rollout's row in canary_config."),
				 errhint("The next check trips it if the rules still say so; end that transaction.")));
		return TRIP_DEFERRED;
	}

	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT %s.canary_trip_internal($1, $2, $3, $4, $5)", schema);
	args[1] = CStringGetTextDatum(reason);
	args[2] = CStringGetTextDatum(kind);
	args[3] = Int64GetDatum(samples_new);
	args[4] = Int64GetDatum(samples_old);
	ret = SPI_execute_with_args(sql.data, 5, types, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not trip the kill switch: SPI error %d", ret);
	(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? TRIP_NOT_ARMED : TRIP_DONE;
}

/*
 * The sample-ratio check (canary_srm_check in SQL, which decides: its
 * outcome says what came of it); returns its reason when it tripped the
 * switch now, else NULL (an alert alone is not a trip).  *trip:
 * TRIP_DONE; TRIP_DEFERRED when srm_trips is on and the ratio says trip
 * but the trip waits for the next check (another transaction holds the
 * rollout's row: canary_srm_check leaves its state unalerted);
 * TRIP_NOT_ARMED when it found the switch tripped meanwhile by another.
 * *deferred_reason: the reason of a deferred trip (for the decision and the
 * trip_deferred alert), else NULL.
 */
static char *
CheckSampleRatio(const char *schema, const RolloutRules *rr, TimestampTz at, TripOutcome *trip,
				 const char **deferred_reason)
{
	StringInfoData sql;
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	int			ret;
	char	   *outcome;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT reason, outcome FROM %s.canary_srm_check($1, $2)", schema);
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	ret = SPI_execute_with_args(sql.data, 2, types, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not run the sample-ratio check: SPI error %d", ret);
	outcome = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (outcome == NULL)
		elog(ERROR, "canary_srm_check returned no outcome");
	if (strcmp(outcome, "tripped") == 0)
	{
		*trip = TRIP_DONE;
		return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	}
	*deferred_reason = NULL;
	if (strcmp(outcome, "deferred") == 0)
	{
		*trip = TRIP_DEFERRED;
		*deferred_reason = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	}
	else if (strcmp(outcome, "already tripped") == 0)
		*trip = TRIP_NOT_ARMED;
	return NULL;
}

/*
 * Whether the installed catalog has the decision columns of 1.1: the 1.1
 * library keeps serving a 1.0 catalog, in 1.0's mode (confirm_windows),
 * until ALTER EXTENSION llm_canary UPDATE runs.  Inside SPI.
 */
static bool
DecisionsCatalog(const char *schema)
{
	StringInfoData sql;
	int			ret;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute"
					 " WHERE attrelid = '%s.canary_config'::regclass"
					 " AND attname = 'decision_mode' AND NOT attisdropped)",
					 schema);
	ret = SPI_execute(sql.data, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the catalog of canary_config: SPI error %d", ret);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The decision settings of 1.1 (not in the config cache, which serves 1.0
 * catalogs too): decision_mode, evidence_since.  raw_rules, from
 * 1.0, still means raw.  Inside SPI.
 */
static void
ReadDecisionSettings(const char *schema, RolloutRules *rr)
{
	StringInfoData sql;
	Oid			types[1] = {TEXTOID};
	Datum		args[1];
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *mode;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT decision_mode, evidence_since FROM %s.canary_config"
					 " WHERE name = $1", schema);
	args[0] = CStringGetTextDatum(rr->name);
	ret = SPI_execute_with_args(sql.data, 1, types, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read canary_config: SPI error %d", ret);
	rr->catalog_1_1 = true;
	if (SPI_processed != 1)
		return;					/* deleted meanwhile: 1.0's mode */
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	mode = SPI_getvalue(tup, desc, 1);
	if (rr->mode != MODE_RAW && mode != NULL)
		rr->mode = strcmp(mode, "raw") == 0 ? MODE_RAW :
			strcmp(mode, "confirm_windows") == 0 ? MODE_CONFIRM_WINDOWS : MODE_SEQUENTIAL;
	rr->since = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
	rr->has_since = !isnull;
}

/*
 * How long the checks of a rollout may go without collecting evidence
 * before CheckBlind alerts: ten of the monitor's intervals, at least five
 * minutes.
 */
static int64
BlindAlertSeconds(void)
{
	return Max((int64) 300, 10 * (int64) canary_check_interval);
}

/*
 * CheckBlind
 *		A check that finds the rollout's check lock taken says so, loudly:
 *		while the holder stays open (an administrator's session idle in a
 *		transaction, a forgotten prepared transaction) every check of the
 *		rollout judges on the evidence committed before the holder began.
 *		A NOTICE each time while the episode is short (two monitors, the
 *		worker and pg_cron's job, overlapping: the other check ends in a
 *		moment), a WARNING once no check has collected for
 *		BlindAlertSeconds; and then, once per such episode, an alert of kind
 *		check_blocked
 *		(row, NOTIFY, webhook).  The episode is carried from decision to
 *		decision, so that this reads one row, the rollout's previous
 *		decision, however long it lasts: "blind_since" (the 'at' of the last
 *		check that collected; of the first blind one if none is known) and
 *		"blind_alerted".  Returns them as JSON members for DecisionJson;
 *		*deferred_alerted: the same decision's "trip_deferred_alerted"
 *		(TripSpell), read with them.  Inside SPI; allocates in the current
 *		context.
 */
static char *
CheckBlind(const char *schema, const RolloutRules *rr, TimestampTz at, bool *deferred_alerted)
{
	int			holder = CanaryCheckLockHolder(rr->name);
	StringInfoData sql;
	Oid			types[5] = {TEXTOID, TIMESTAMPTZOID, INT8OID, TEXTOID, TEXTOID};
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			ret;
	bool		isnull;
	char	   *since;
	bool		alerted;
	bool		long_spell;
	bool		due;
	char	   *holder_text;

	holder_text = holder > 0 ? psprintf("process %d", holder) :
		holder == 0 ? pstrdup("a prepared transaction") : NULL;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT to_char(s.since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
					 " s.alerted, $2 - s.since >= make_interval(secs => $3), s.deferred_alerted"
					 " FROM (SELECT CASE WHEN (p.decision->>'check_lock')::boolean IS FALSE"
					 "                   THEN coalesce((p.decision->>'blind_since')::timestamptz, p.at)"
					 "                   ELSE coalesce(p.at, $2) END AS since,"
					 "              coalesce((p.decision->>'check_lock')::boolean IS FALSE"
					 "                       AND (p.decision->>'blind_alerted')::boolean, false) AS alerted,"
					 "              coalesce((p.decision->>'trip_deferred_alerted')::boolean, false) AS deferred_alerted"
					 "         FROM (SELECT 1) o LEFT JOIN LATERAL"
					 "              (SELECT w.at, w.decision FROM %s.canary_window_summaries w"
					 "                WHERE w.canary >= $1 AND w.canary <= $1 AND w.cohort = 'canary'"
					 "                  AND w.at <= $2"
					 "                ORDER BY w.canary DESC, w.at DESC, w.id DESC LIMIT 1) p ON true) s", schema);
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	args[2] = Int64GetDatum(BlindAlertSeconds());
	ret = SPI_execute_with_args(sql.data, 3, types, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the last decision: SPI error %d", ret);
	since = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	alerted = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	long_spell = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	*deferred_alerted = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	due = !alerted && long_spell;

	ereport(long_spell ? WARNING : NOTICE,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("rollout \"%s\" was judged on older evidence", rr->name),
			 holder > 0 ?
			 errdetail("Another transaction (process %d) holds the rollout's check lock: until it ends, the checks of the rollout collect no evidence, skip the sample-ratio update and do not advance the plan.", holder) :
			 holder == 0 ?
			 errdetail("A prepared transaction holds the rollout's check lock: until it ends, the checks of the rollout collect no evidence, skip the sample-ratio update and do not advance the plan.") :
			 errdetail("Another transaction held the rollout's check lock: this check collected no evidence and skipped the sample-ratio update."),
			 errhint("End that transaction (pg_stat_activity, pg_prepared_xacts); idle_in_transaction_session_timeout ends forgotten sessions.")));

	if (due)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT %s.canary_raise_alert($1, 'check_blocked', jsonb_build_object("
						 " 'alert', 'canary checks judge on older evidence',"
						 " 'reason', format('no check of rollout \"%%s\" has collected evidence since %%s:"
						 " another transaction holds its check lock', $1, $3),"
						 " 'canary', $1, 'stage', $4,"
						 " 'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
						 " 'at', to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
						 " 'blind_since', $3, 'holder', $5,"
						 " 'auto_action', 'none: until that transaction ends, the checks of the rollout"
						 " collect no evidence, skip the sample-ratio update and do not advance the plan'))",
						 schema);
		types[2] = TEXTOID;
		args[2] = CStringGetTextDatum(since);
		args[3] = CStringGetTextDatum(rr->stage);
		args[4] = holder_text ? CStringGetTextDatum(holder_text) : (Datum) 0;
		if (holder_text == NULL)
			nulls[4] = 'n';
		ret = SPI_execute_with_args(sql.data, 5, types, args, nulls, false, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not raise the check_blocked alert: SPI error %d", ret);
	}
	return psprintf(", \"blind_since\": \"%s\", \"blind_alerted\": %s", since,
					alerted || due ? "true" : "false");
}

/*
 * TripDeferredAlerted
 *		Whether the rollout's previous decision says that a spell of deferred
 *		trips was alerted ("trip_deferred_alerted"): carried from decision to
 *		decision like blind_since, so that one row is read however the checks
 *		in between went (a check without the check lock, which skips the
 *		sample-ratio check, does not end the spell).  For a check that holds
 *		the check lock (CheckBlind reads it for one that does not).  Inside
 *		SPI.
 */
static bool
TripDeferredAlerted(const char *schema, const RolloutRules *rr, TimestampTz at)
{
	StringInfoData sql;
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	int			ret;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT coalesce((SELECT (w.decision->>'trip_deferred_alerted')::boolean"
					 "                   FROM %s.canary_window_summaries w"
					 "                  WHERE w.canary >= $1 AND w.canary <= $1 AND w.cohort = 'canary' AND w.at <= $2"
					 "                  ORDER BY w.canary DESC, w.at DESC, w.id DESC LIMIT 1), false)",
					 schema);
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	ret = SPI_execute_with_args(sql.data, 2, types, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the last decision: SPI error %d", ret);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * TripSpell
 *		What the decision says of a trip the rules (kind kill_switch) or the
 *		sample ratio (kind sample_ratio) called for and the check did not
 *		make, as JSON members for DecisionJson (NULL: nothing to say).
 *		TRIP_NOT_ARMED: "already tripped"; TRIP_DELETED: "rollout deleted".
 *		TRIP_DEFERRED (another transaction holds the rollout's row: Trip,
 *		canary_srm_check):
 *		"deferred", and, from a check that holds the rollout's check lock, an
 *		alert of kind check_blocked at once, with "reason" trip_deferred
 *		(trip_kind, trip_reason), once per spell: the decisions carry
 *		"trip_deferred_alerted" until a check holding the lock makes its trip,
 *		finds it made, or finds none to make.  A check without the lock does
 *		not alert (the row's holder may be the check that holds the lock,
 *		tripping; that check alerts if an operator holds the row) and carries
 *		the spell on.  alerted: the previous decision's
 *		"trip_deferred_alerted" (CheckBlind, TripDeferredAlerted).  Inside
 *		SPI; allocates in the current context.
 */
static const char *
TripSpell(const char *schema, const RolloutRules *rr, TimestampTz at, bool locked,
		  TripOutcome trip, const char *kind, const char *reason, bool alerted)
{
	StringInfoData sql;
	Oid			types[5] = {TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			ret;

	switch (trip)
	{
		case TRIP_DONE:
			return NULL;
		case TRIP_NOT_ARMED:
			return psprintf(", \"trip\": \"already tripped\", \"trip_kind\": \"%s\"", kind);
		case TRIP_DELETED:
			return psprintf(", \"trip\": \"rollout deleted\", \"trip_kind\": \"%s\"", kind);
		case TRIP_NONE:
			/* the spell ends with a check that holds the lock */
			if (locked || !alerted)
				return NULL;
			return ", \"trip_deferred_alerted\": true";
		case TRIP_DEFERRED:
			break;
	}

	if (locked && !alerted)
	{
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT %s.canary_raise_alert($1, 'check_blocked', jsonb_build_object("
						 " 'alert', 'canary kill-switch trip deferred',"
						 " 'reason', 'trip_deferred', 'trip_kind', $3, 'trip_reason', $5,"
						 " 'canary', $1, 'stage', $4,"
						 " 'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
						 " 'at', to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
						 " 'auto_action', 'none yet: another transaction holds the rollout''s row in"
						 " canary_config; the next check trips if the rules still say so'))",
						 schema);
		args[0] = CStringGetTextDatum(rr->name);
		args[1] = TimestampTzGetDatum(at);
		args[2] = CStringGetTextDatum(kind);
		args[3] = CStringGetTextDatum(rr->stage);
		args[4] = reason != NULL ? CStringGetTextDatum(reason) : (Datum) 0;
		if (reason == NULL)
			nulls[4] = 'n';
		ret = SPI_execute_with_args(sql.data, 5, types, args, nulls, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not raise the check_blocked alert: SPI error %d", ret);
		alerted = true;
	}
	return psprintf(", \"trip\": \"deferred\", \"trip_kind\": \"%s\"%s", kind,
					alerted ? ", \"trip_deferred_alerted\": true" : "");
}

/*
 * Check one rollout; returns the trip reason or NULL.  Inside SPI.  The
 * evidence and the sample-ratio state are written only under the
 * rollout's check lock (src/private_locks.c), tried without waiting: a
 * check that finds another holding it (one left open in a transaction, or
 * still running) judges on the evidence committed and leaves the
 * sample-ratio state to that one, and its decision says so.
 */
static char *
CheckRollout(const char *schema, const RolloutRules *rr, TimestampTz at)
{
	WindowSummary w;
	Decision	d;
	char	   *reason = NULL;
	bool		locked = rr->catalog_1_1 && CanaryTryCheckLock(rr->name);
	char	   *blind = NULL;
	TripOutcome trip = TRIP_NONE;
	const char *trip_kind = "sample_ratio";
	const char *trip_reason = NULL;
	const char *trip_json = NULL;
	bool		deferred_alerted = false;

	if (rr->catalog_1_1 && !locked)
		blind = CheckBlind(schema, rr, at, &deferred_alerted);
	SummariseWindow(schema, rr, at, &w);
	if (rr->mode == MODE_SEQUENTIAL)
		JudgeSequential(schema, rr, at, &w, locked, &d);
	else
	{
		JudgeWindow(rr, &w.canary, &w.baseline, w.has_base, &d);
		if (rr->mode == MODE_CONFIRM_WINDOWS)
			ConfirmWindows(schema, rr, at, &d);
	}
	d.tripped = FirstTrip(&d);

	/* the trip first, so that the decision stored says what came of it */
	if (d.tripped != RULE_NONE)
	{
		trip = Trip(schema, rr, d.r[d.tripped].reason, "kill_switch",
					w.canary.samples, w.control.samples);
		if (trip == TRIP_DONE)
			reason = d.r[d.tripped].reason;
		trip_kind = "kill_switch";
		trip_reason = d.r[d.tripped].reason;
	}
	else if (locked)
		reason = CheckSampleRatio(schema, rr, at, &trip, &trip_reason);
	/* a 1.0 catalog has neither decisions nor alerts of deferred trips: the WARNING says it */
	if (rr->catalog_1_1)
	{
		/* the previous decision is read once: CheckBlind read it without the lock */
		if (locked && trip == TRIP_DEFERRED)
			deferred_alerted = TripDeferredAlerted(schema, rr, at);
		trip_json = TripSpell(schema, rr, at, locked, trip, trip_kind, trip_reason,
							  deferred_alerted);
	}

	StoreSummary(schema, rr, at, "control", &w.control, false, false, 0, NULL);
	StoreSummary(schema, rr, at, "canary", &w.canary, true, w.from_history, w.baseline_from,
				 DecisionJson(rr, &d, locked, blind, trip_json));
	return reason;
}

/*
 * The plan (sql/parts/55_plan.sql): advance the rollouts with auto_advance
 * (or the named one) whose gates are open at 'at'.  Inside SPI.
 */
static void
AdvancePlans(const char *schema, Datum name, bool named, TimestampTz at)
{
	StringInfoData sql;
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	int			ret;

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s.canary_advance($1, $2)", schema);
	args[0] = name;
	if (!named)
		nulls[0] = 'n';
	args[1] = TimestampTzGetDatum(at);
	ret = SPI_execute_with_args(sql.data, 2, types, args, nulls, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not advance the plans: SPI error %d", ret);
}

/*
 * AdvancePlansIsolated
 *		AdvancePlans in a subtransaction: an error of the plan (a shadow
 *		report that fails, a lock timeout) becomes a WARNING and is rolled
 *		back alone, so that it never takes the kill switch's checks and
 *		trips of the same call with it.  A cancel still cancels.  Inside SPI;
 *		the caller's memory context and resource owner are restored.
 */
static void
AdvancePlansIsolated(const char *schema, Datum name, bool named, TimestampTz at)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		AdvancePlans(schema, name, named, at);
		CanarySubxactCommit(oldcontext, oldowner);
	}
	PG_CATCH();
	{
		ErrorData  *edata = CanarySubxactAbort(oldcontext, oldowner, oldcontext);

		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			ReThrowError(edata);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("could not advance the plans: %s", edata->message),
				 errdetail("The kill switch's checks are not affected; the plan is tried again at the next check.")));
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * canary_check(canary text default null, at timestamptz default now())
 *
 * Checks every armed rollout in a ramp stage or full (or just the named
 * one), in the caller's transaction.  Returns the reason of a trip (several
 * rollouts: "name: reason; ..."), or NULL.
 */
PG_FUNCTION_INFO_V1(canary_check);
Datum
canary_check(PG_FUNCTION_ARGS)
{
	const char *schema;
	StringInfoData result;
	TimestampTz at;
	int			nrollouts;
	RolloutRules *rules;
	List	   *names;
	ListCell   *lc;
	bool		named = !PG_ARGISNULL(0);
	bool		catalog_1_1;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("at must not be NULL"),
				 errhint("Omit the argument to check the window ending now.")));
	at = PG_GETARG_TIMESTAMPTZ(1);
	FleetRequireJudge("canary_check");
	schema = ConfigSchemaName();

	/* the thresholds, through the config cache (42704 for an unknown name) */
	names = named ? list_make1(text_to_cstring(PG_GETARG_TEXT_PP(0))) : ConfigRolloutNames();
	rules = palloc0(sizeof(RolloutRules) * (list_length(names) + 1));
	nrollouts = 0;
	foreach(lc, names)
	{
		/* a rollout deleted since the names were read is skipped */
		const CanaryRollout *r = ConfigLookupRollout((const char *) lfirst(lc), !named);
		RolloutRules *rr = &rules[nrollouts];

		if (r == NULL || !r->armed || r->stage == CANARY_STAGE_SHADOW)
			continue;
		strlcpy(rr->name, r->name, NAMEDATALEN);
		strlcpy(rr->stage, r->stage_name, sizeof(rr->stage));
		rr->percent_x100 = r->percent_x100;
		rr->window_seconds = r->window_seconds;
		rr->error_rate = r->error_rate_threshold;
		rr->p95_ratio = r->p95_ratio_threshold;
		rr->refusal_delta = r->refusal_delta_threshold;
		rr->thumbs_ratio = r->thumbs_down_ratio_threshold;
		rr->min_samples = r->min_samples;
		rr->significance = r->significance;
		rr->mode = r->raw_rules ? MODE_RAW : MODE_CONFIRM_WINDOWS;	/* 1.0 */
		rr->confirm_windows = r->confirm_windows;
		nrollouts++;
	}

	initStringInfo(&result);	/* in the caller's context: survives SPI_finish */
	SPI_connect();
	catalog_1_1 = DecisionsCatalog(schema);
	for (int i = 0; i < nrollouts && catalog_1_1; i++)
		ReadDecisionSettings(schema, &rules[i]);
	/*
	 * Verdicts still queued count too: the evidence reads the queue (no
	 * fold here, so that a check left open in a transaction holds no
	 * rollup row the metric writes need).
	 */
	for (int i = 0; i < nrollouts; i++)
	{
		char	   *reason = CheckRollout(schema, &rules[i], at);

		if (reason == NULL)
			continue;
		if (named)
			appendStringInfoString(&result, reason);
		else
			appendStringInfo(&result, "%s%s: %s", result.len > 0 ? "; " : "",
							 rules[i].name, reason);
	}
	if (catalog_1_1)
		AdvancePlansIsolated(schema, named ? PG_GETARG_DATUM(0) : (Datum) 0, named, at);
	SPI_finish();

	if (result.len == 0)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(result.data, result.len));
}
