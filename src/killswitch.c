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
 * Noise guard: no rule trips with fewer than min_samples canary requests in
 * the window, and unless raw_rules is set, a breach must also be
 * statistically credible at the rollout's significance level:
 *	  error rate: exact one-sided binomial test of H0 p <= threshold;
 *	  p95: the share of canary requests slower than ratio x control p95,
 *		binomial test against the 5 percent expected when nothing changed;
 *	  refusal and thumbs-down: one-sided two-sample z tests of
 *		H0 p_canary <= p_control + delta, resp. <= ratio x p_control, with
 *		the Agresti-Caffo adjustment (one success and one failure added to
 *		each group) so that zero counts do not give zero variance.
 * A breach must also hold, for the same rule, in the confirm_windows - 1
 * non-overlapping windows before the current one (default 2 windows in all),
 * because the check looks every 30 s and a single window at 5 percent would
 * trip on noise within hours.  Missing data never trips.  At stage full the
 * control cohort is empty: the
 * baselines come from the last stored control summary of the rollout.
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

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "config.h"
#include "fleet.h"

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
} CohortWindow;

typedef struct RolloutRules
{
	char		name[NAMEDATALEN];
	char		stage[16];
	int			window_seconds;
	double		error_rate;
	double		p95_ratio;
	double		refusal_delta;
	double		thumbs_ratio;
	int64		min_samples;
	double		significance;
	bool		raw;
	int			confirm_windows;	/* consecutive windows that must breach */
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
 * Summarise one cohort over (at - window, at] from canary_rollups: the
 * 30-second buckets that overlap it (exactly the window when at and the
 * window are multiples of 30 s; otherwise widened to the bucket boundaries
 * around it, so that the bucket still filling counts), so the cost depends
 * on the window, not on the traffic or the retained rows.  When slow_over > 0, also count requests
 * slower than that many milliseconds; the p95 and that count come from the
 * latency histogram (within 1/64 of the exact values, src/rollups.c).
 */
static void
SummariseCohort(const char *schema, const RolloutRules *rr, TimestampTz at,
				const char *cohort, double slow_over, CohortWindow *w)
{
	StringInfoData sql;
	Oid			types[5] = {TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, FLOAT8OID};
	Datum		args[5];
	int			ret;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT coalesce(sum(r.requests), 0)::int8,"
					 " coalesce(sum(r.outcome_error + r.outcome_timeout), 0)::int8,"
					 " coalesce(sum(r.refusals), 0)::int8,"
					 " coalesce(sum(r.thumbs_down), 0)::int8,"
					 " CASE WHEN $5 > 0 THEN %s.canary_hist_count_over(%s.canary_hist_sum(r.latency_hist), $5)"
					 "  ELSE 0 END::int8,"
					 " %s.canary_hist_quantile(%s.canary_hist_sum(r.latency_hist), 0.95)"
					 " FROM %s.canary_rollups r"
					 " WHERE r.canary = $1 AND r.bucket_end > $2 - make_interval(secs => $3)"
					 " AND r.bucket_end < $2 + interval '30 seconds'"
					 " AND r.cohort = $4 AND NOT r.fallback AND NOT r.cached",
					 schema, schema, schema, schema, schema);
	args[0] = CStringGetTextDatum(rr->name);
	args[1] = TimestampTzGetDatum(at);
	args[2] = Int32GetDatum(rr->window_seconds);
	args[3] = CStringGetTextDatum(cohort);
	args[4] = Float8GetDatum(slow_over);
	ret = SPI_execute_with_args(sql.data, 5, types, args, NULL, false, 1);
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

/* The last stored control summary with traffic, for stage full. */
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
					 " WHERE canary = $1 AND cohort = 'control' AND samples > 0 AND at <= $2"
					 " ORDER BY at DESC LIMIT 1", schema);
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
			 bool has_baseline_from, TimestampTz baseline_from)
{
	StringInfoData sql;
	Oid			types[13] = {TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, TEXTOID,
		INT8OID, INT8OID, FLOAT8OID, INT8OID, INT8OID, FLOAT8OID, TIMESTAMPTZOID, INT8OID};
	Datum		args[13];
	char		nulls[13];
	int			ret;

	memset(nulls, ' ', sizeof(nulls));
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s.canary_window_summaries"
					 " (canary, at, window_seconds, stage, cohort, samples, errors, error_rate,"
					 "  p95_latency_ms, refusals, refusal_rate, thumbs_down, thumbs_down_rate,"
					 "  slow_share, baseline_from)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7,"
					 "  CASE WHEN $6 > 0 THEN $7::float8 / $6 END, $8, $9,"
					 "  CASE WHEN $6 > 0 THEN $9::float8 / $6 END, $10,"
					 "  CASE WHEN $6 > 0 THEN $10::float8 / $6 END,"
					 "  CASE WHEN $6 > 0 AND $11 IS NOT NULL THEN $13::float8 / $6 END, $12)",
					 schema);
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
	ret = SPI_execute_with_args(sql.data, 13, types, args, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not write canary_window_summaries: SPI error %d", ret);
}

/*
 * Apply the four rules.  Returns a palloc'd reason in the article's words,
 * or NULL when nothing trips.
 */
static char *
ApplyRules(const RolloutRules *rr, const CohortWindow *cw, const CohortWindow *base,
		   bool has_base, CanaryRule *rule)
{
	double		alpha = rr->significance;
	double		err = Rate(cw->errors, cw->samples);

	if (cw->samples == 0 || cw->samples < rr->min_samples)
		return NULL;

	/* 1. error rate, needs no baseline */
	*rule = RULE_NONE;
	if (err > rr->error_rate &&
		(rr->raw || BinomialUpperTail(cw->errors, cw->samples, rr->error_rate) < alpha))
	{
		*rule = RULE_ERROR_RATE;
		return psprintf("new-model error_rate=%.3f > %g", err, rr->error_rate);
	}

	if (!has_base || base->samples == 0)
		return NULL;

	/* 2. p95 latency */
	if (cw->has_p95 && base->has_p95 && base->p95 > 0 &&
		cw->p95 > base->p95 * rr->p95_ratio)
	{
		bool		credible = rr->raw ||
			(Rate(cw->slow, cw->samples) > 0.05 &&
			 BinomialUpperTail(cw->slow, cw->samples, 0.05) < alpha);

		if (credible)
		{
			*rule = RULE_P95;
			return psprintf("new-model p95=%.0f > %gx baseline (%.0f)",
							cw->p95, rr->p95_ratio, base->p95);
		}
	}

	/* 3. refusal rate */
	{
		double		rc = Rate(cw->refusals, cw->samples);
		double		rk = Rate(base->refusals, base->samples);

		if (rc > rk + rr->refusal_delta &&
			(rr->raw || TwoSampleUpperPValue(cw->refusals, cw->samples,
											 base->refusals, base->samples,
											 1.0, rr->refusal_delta) < alpha))
		{
			*rule = RULE_REFUSAL;
			return psprintf("refusal_rate=%.3f vs baseline %.3f", rc, rk);
		}
	}

	/* 4. thumbs-down rate */
	{
		double		tc = Rate(cw->thumbs_down, cw->samples);
		double		tk = Rate(base->thumbs_down, base->samples);

		if (tc > tk * rr->thumbs_ratio && cw->thumbs_down > 0 &&
			(rr->raw || TwoSampleUpperPValue(cw->thumbs_down, cw->samples,
											 base->thumbs_down, base->samples,
											 rr->thumbs_ratio, 0.0) < alpha))
		{
			*rule = RULE_THUMBS_DOWN;
			return psprintf("thumbs_down_rate=%.3f > %gx baseline %.3f",
							tc, rr->thumbs_ratio, tk);
		}
	}
	return NULL;
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
	SummariseCohort(schema, rr, at, "canary",
					w->has_base && w->baseline.has_p95 ? w->baseline.p95 * rr->p95_ratio : 0,
					&w->canary);
}

/*
 * WindowBreaches
 *		Does the window ending at 'at' breach rule (without storing a
 *		summary)?  Used to confirm a breach in the windows before it.
 */
static bool
WindowBreaches(const char *schema, const RolloutRules *rr, TimestampTz at,
			   CanaryRule rule)
{
	WindowSummary w;
	CanaryRule	found;

	SummariseWindow(schema, rr, at, &w);
	return ApplyRules(rr, &w.canary, &w.baseline, w.has_base, &found) != NULL &&
		found == rule;
}

/* Check one rollout; returns the trip reason or NULL.  Inside SPI. */
static char *
CheckRollout(const char *schema, const RolloutRules *rr, TimestampTz at)
{
	WindowSummary w;
	char	   *reason;
	CanaryRule	rule;

	SummariseWindow(schema, rr, at, &w);
	StoreSummary(schema, rr, at, "control", &w.control, false, false, 0);
	StoreSummary(schema, rr, at, "canary", &w.canary, true, w.from_history, w.baseline_from);

	reason = ApplyRules(rr, &w.canary, &w.baseline, w.has_base, &rule);

	/*
	 * Confirmation: the same rule must also breach in the confirm_windows - 1
	 * non-overlapping windows before this one.  The switch looks every 30 s,
	 * hundreds of times a day; one window at the significance level alone
	 * would trip on noise now and then (a canary only slightly worse than
	 * the threshold trips within hours).  Independent windows multiply the
	 * false-alarm probability, at the cost of one more window of delay.
	 */
	for (int k = 1; reason != NULL && k < rr->confirm_windows; k++)
	{
		TimestampTz prev = at - (TimestampTz) k * rr->window_seconds * USECS_PER_SEC;

		if (!WindowBreaches(schema, rr, prev, rule))
			reason = NULL;
	}

	if (reason != NULL)
	{
		StringInfoData sql;
		Oid			types[4] = {TEXTOID, TEXTOID, INT8OID, INT8OID};
		Datum		args[4];
		int			ret;

		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT %s.canary_trip_internal($1, $2, 'kill_switch', $3, $4)",
						 schema);
		args[0] = CStringGetTextDatum(rr->name);
		args[1] = CStringGetTextDatum(reason);
		args[2] = Int64GetDatum(w.canary.samples);
		args[3] = Int64GetDatum(w.control.samples);
		ret = SPI_execute_with_args(sql.data, 4, types, args, NULL, false, 0);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not trip the kill switch: SPI error %d", ret);

		/*
		 * NULL: the rollout was tripped meanwhile (by a concurrent trip that
		 * committed while we waited for its row).  That trip is not ours to
		 * report; returning a reason would log a trip that did not happen.
		 */
		{
			bool		isnull;

			(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			if (isnull)
				reason = NULL;
		}
	}
	return reason;
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
		const CanaryRollout *r = ConfigGetRollout((const char *) lfirst(lc));
		RolloutRules *rr = &rules[nrollouts];

		if (!r->armed || r->stage == CANARY_STAGE_SHADOW)
			continue;
		strlcpy(rr->name, r->name, NAMEDATALEN);
		strlcpy(rr->stage, r->stage_name, sizeof(rr->stage));
		rr->window_seconds = r->window_seconds;
		rr->error_rate = r->error_rate_threshold;
		rr->p95_ratio = r->p95_ratio_threshold;
		rr->refusal_delta = r->refusal_delta_threshold;
		rr->thumbs_ratio = r->thumbs_down_ratio_threshold;
		rr->min_samples = r->min_samples;
		rr->significance = r->significance;
		rr->raw = r->raw_rules;
		rr->confirm_windows = r->confirm_windows;
		nrollouts++;
	}

	initStringInfo(&result);	/* in the caller's context: survives SPI_finish */
	SPI_connect();
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
	SPI_finish();

	if (result.len == 0)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(result.data, result.len));
}
