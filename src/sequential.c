/*-------------------------------------------------------------------------
 *
 * sequential.c
 *	  Always-valid statistics for the kill switch (src/killswitch.c) and the
 *	  sample-ratio check: mixture likelihood ratios on binomial counts.
 *
 * The question each rule asks is one-sided: is the canary's rate p above a
 * boundary p0 (the error threshold 0.02; 5 percent of requests slower than
 * 1.5 x control's p95; control's refusal rate + 0.05; 2 x control's
 * thumbs-down rate)?  For one alternative p1 > p0 the likelihood ratio of k
 * events in n requests,
 *
 *	  LR(p1) = (p1 / p0)^k ((1 - p1) / (1 - p0))^(n - k),
 *
 * has expectation at most 1 under every p <= p0, request after request, so
 * it is a nonnegative supermartingale under the whole null hypothesis.  A
 * mixture of such ratios with weights summing to 1 is one too.  By Ville's
 * inequality it ever reaches 1/a with probability at most a, however often
 * it is looked at: that is what makes a check every 30 seconds safe.  The
 * mixture here is over p1 = m x p0 for m in {1.25, 1.5, 2, 3, 5} (capped
 * below 1), with weights 0.3, 0.25, 0.2, 0.15, 0.1: tuned to the smallest
 * regressions a rule guards against, a quarter to a half above its boundary,
 * which need the most requests; a large regression pays log 10 instead of
 * log 3.3 for its weight but gains that back within a minute or two.
 *
 * Two statistics per rule, both built from the same ratios:
 *	  stage:  the ratio over all evidence since the last re-arm or change
 *			  of stage, percentage or models; it trips at
 *			  1 / (SEQ_STAGE_SHARE x share), share = the rule's part of
 *			  significance (rule_shares: refusal 1/2, errors 1/4, p95 and
 *			  thumbs-down 1/8 each) (false-trip probability at most 3/4
 *			  of the rule's share for the whole evidence period).
 *			  Regressions come with changes (a new stage, a new model),
 *			  and a change starts the evidence afresh: this statistic
 *			  catches them, so it gets three quarters of each rule's
 *			  share.
 *	  change: the largest ratio over the segments that end now and start
 *			  at a minute boundary 1, 2, ... 60 minutes ago, then every 5
 *			  minutes up to 4 hours, then every 30 up to a day (killswitch.c
 *			  picks them).  Every segment starts at one of the day's 1,440
 *			  minute boundaries, and the ratio from one start point is a
 *			  supermartingale from that point on: by Ville and a union
 *			  bound over the start points, some segment reaches A within a
 *			  day with probability at most 1440 / A, however many segments
 *			  end at each check.  It trips at 1440 / ((1 - SEQ_STAGE_SHARE)
 *			  x share) (at most 1/4 of the rule's share per day).  It
 *			  notices a regression that begins days into a stage, which the
 *			  stage statistic, diluted by the good days, would notice late.
 *
 * The refusal rule (control's rate + 0.05) below stage full is the paired
 * test at the end of this file: it needs no estimate of the control's rate
 * and has the whole of the rule's share.  The other two-sample tests (the
 * thumbs-down rule, 2 x control's rate; the refusal rule at full, against
 * the stored control summary) test against a boundary made of the
 * control's rate, which is itself estimated.  It enters as the upper end
 * of a time-uniform confidence sequence (SeqUpperConfidence): with
 * probability at least 1 - beta the control's true rate lies below it at
 * every check of the evidence period at once.  On that event the boundary used is at least
 * the true one, the ratio against it is at most the ratio against the true
 * boundary (for a fixed multiplier the ratio falls as the boundary rises,
 * see AlternativeAbove), and Ville applies: a false trip needs either the
 * sequence to fail (beta) or the ratio to pass its threshold.  Each of
 * these rules spends SEQ_CONTROL_SHARE of its share on the control's
 * sequence of each statistic (for the change statistic split over the
 * 1,440 start points: one sequence per segment), taken from that
 * statistic's part, so every term of the union bound is inside the rule's
 * share.
 *
 * Four rules, two statistics each, the rules' shares summing to 1: the
 * expected number of false trips of a canary that meets every rule is at
 * most significance per rollout-day (default 0.1), counted from the
 * stage's start (with at most one evidence period a day; each further
 * re-arm or change of stage that day adds at most 3/4 x significance).
 * At 0.1 the stage statistics trip at log 3.28 (refusal, paired), 3.98
 * (errors), 4.67 (p95) and 4.76 (thumbs-down).  Assumed: requests are
 * independent draws given their cohort (assignment is per user: users with
 * rates of their own make the counts overdispersed and the bound
 * optimistic), and the p95 rule's latency limit (1.5 x control's p95) is a
 * point estimate taken as known.

 * Pure functions of counts: no SPI, no allocation, never raise.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "sequential.h"

static const double mixture_ratios[] = {1.25, 1.5, 2.0, 3.0, 5.0};
static const double mixture_weights[] = {0.3, 0.25, 0.2, 0.15, 0.1};	/* sum 1 */

#define NRATIOS lengthof(mixture_ratios)

StaticAssertDecl(lengthof(mixture_weights) == lengthof(mixture_ratios),
				 "a weight for each alternative");

/* log LR(p1 vs p0) of k events in n trials; 0 < p0, p1 < 1 */
static double
LogRatio(int64 k, int64 n, double p0, double p1)
{
	return (double) k * log(p1 / p0) + (double) (n - k) * (log1p(-p1) - log1p(-p0));
}

/*
 * An alternative above p0: m x p0, or halfway to 1 when that is nearer.
 * Continuous and nondecreasing in p0, so that the ratio of a fixed m falls
 * as p0 rises: a boundary taken too high never adds evidence.
 */
static double
AlternativeAbove(double p0, double m)
{
	double		p1 = p0 * m;
	double		half = (p0 + 1.0) / 2.0;

	return p1 < half ? p1 : half;
}

/* The two-sided test's alternatives: m x p0 unless that reaches 1. */
static double
AlternativeAboveTwoSided(double p0, double m)
{
	double		p1 = p0 * m;

	return p1 < 1.0 ? p1 : (p0 + 1.0) / 2.0;
}

/* log of the sum of exp(terms[0..n-1]), less log(divisor) */
static double
LogSumExp(const double *terms, int n, double divisor)
{
	double		mx = -INFINITY;
	double		sum = 0.0;

	for (int i = 0; i < n; i++)
		mx = Max(mx, terms[i]);
	if (!isfinite(mx))
		return mx;
	for (int i = 0; i < n; i++)
		sum += exp(terms[i] - mx);
	return mx + log(sum / divisor);
}

/*
 * SeqLogMixtureLR
 *		log of the mixture likelihood ratio of k events in n trials against
 *		H0: p <= p0.  0 without data; +Infinity when p0 is 0 and an event
 *		happened; -Infinity when p0 >= 1 (no rate can exceed it).
 */
double
SeqLogMixtureLR(int64 k, int64 n, double p0)
{
	double		terms[NRATIOS];

	if (n <= 0)
		return 0.0;
	if (k < 0)
		k = 0;
	if (k > n)
		k = n;
	if (p0 >= 1.0)
		return -INFINITY;
	if (p0 <= 0.0)
		return k > 0 ? INFINITY : 0.0;
	for (int i = 0; i < (int) NRATIOS; i++)
		terms[i] = log(mixture_weights[i]) +
			LogRatio(k, n, p0, AlternativeAbove(p0, mixture_ratios[i]));
	return LogSumExp(terms, NRATIOS, 1.0);
}

/*
 * SeqLogMixtureLRTwoSided
 *		log of the mixture likelihood ratio against H0: p = p0, with
 *		alternatives on both sides, equal weights (a mismatch has no
 *		typical size): the sample-ratio check, where too few canary users
 *		is as wrong as too many.
 */
double
SeqLogMixtureLRTwoSided(int64 k, int64 n, double p0)
{
	double		terms[2 * NRATIOS];

	if (n <= 0 || p0 <= 0.0 || p0 >= 1.0)
		return 0.0;
	if (k < 0)
		k = 0;
	if (k > n)
		k = n;
	for (int i = 0; i < (int) NRATIOS; i++)
	{
		double		m = mixture_ratios[i];
		double		q = 1.0 - p0;

		terms[i] = LogRatio(k, n, p0, AlternativeAboveTwoSided(p0, m));
		/* below: the share of the other side grows by m */
		terms[NRATIOS + i] = LogRatio(n - k, n, q, AlternativeAboveTwoSided(q, m));
	}
	return LogSumExp(terms, 2 * NRATIOS, 2.0 * NRATIOS);
}

/*
 * The alternatives of the control's confidence sequence below a rate q,
 * r x q with equal weights: at a control's traffic (tens of thousands of
 * requests in the first minutes of a ramp stage) the sequence is a few to
 * a few tens of percent of the rate wide.
 */
static const double below_ratios[] = {0.95, 0.9, 0.85, 0.8, 0.7};

#define NBELOW lengthof(below_ratios)

/* log of the mixture ratio of k events in n trials against p = q, below */
static double
LogMixtureBelow(int64 k, int64 n, double q)
{
	double		terms[NBELOW];

	for (int i = 0; i < (int) NBELOW; i++)
		terms[i] = LogRatio(k, n, q, q * below_ratios[i]);
	return LogSumExp(terms, NBELOW, (double) NBELOW);
}

/*
 * SeqUpperConfidence
 *		Upper end of a time-uniform confidence sequence for a rate from k
 *		events in n trials: the largest q whose mixture ratio against
 *		p = q, with alternatives below q, stays under exp(log_threshold).
 *		That ratio is a nonnegative martingale under p = q, so by Ville the
 *		true rate lies below the bound at every n at once with probability
 *		at least 1 - exp(-log_threshold).  For fixed counts the ratio grows
 *		with q, so the bound is found by bisection (to 1e-9).  1 without
 *		data or when every event was one.
 */
double
SeqUpperConfidence(int64 k, int64 n, double log_threshold)
{
	double		lo;
	double		hi = 1.0;

	if (n <= 0 || k >= n)
		return 1.0;
	if (k < 0)
		k = 0;
	lo = (double) k / (double) n;	/* the ratio is below 1 there */
	for (int i = 0; i < 64 && hi - lo > 1e-9; i++)
	{
		double		mid = (lo + hi) / 2.0;

		if (mid > 0.0 && LogMixtureBelow(k, n, mid) >= log_threshold)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

/*
 * Each rule's part of significance, in eighths: refusals 1/2, errors 1/4,
 * p95 and thumbs-down 1/8 each.  The regressions the p95 and thumbs-down
 * rules guard against are large next to their boundaries (2 x and 4 x
 * control) and reach any of these thresholds within a minute or two; the
 * refusal rule's (the article's incident: a few points above control +
 * 0.05) and the error rule's (a ramp_1 canary sees a few hundred requests
 * in ten minutes) are the ones short of evidence, so they get the larger
 * parts.  At significance 0.1 the p95 and thumbs-down parts are 0.0125,
 * a quarter of 0.05.
 */
enum
{
	EIGHTHS_ERROR_RATE = 2,
	EIGHTHS_P95 = 1,
	EIGHTHS_REFUSAL = 4,
	EIGHTHS_THUMBS_DOWN = 1
};

static const double rule_shares[SEQ_RULES] = {
	[SEQ_RULE_ERROR_RATE] = EIGHTHS_ERROR_RATE / 8.0,
	[SEQ_RULE_P95] = EIGHTHS_P95 / 8.0,
	[SEQ_RULE_REFUSAL] = EIGHTHS_REFUSAL / 8.0,
	[SEQ_RULE_THUMBS_DOWN] = EIGHTHS_THUMBS_DOWN / 8.0,
};

StaticAssertDecl(EIGHTHS_ERROR_RATE + EIGHTHS_P95 + EIGHTHS_REFUSAL + EIGHTHS_THUMBS_DOWN == 8,
				 "the rules' shares make up the whole significance");

static const char *const rule_names[SEQ_RULES] = {
	[SEQ_RULE_ERROR_RATE] = "error_rate",
	[SEQ_RULE_P95] = "p95",
	[SEQ_RULE_REFUSAL] = "refusal",
	[SEQ_RULE_THUMBS_DOWN] = "thumbs_down",
};

/*
 * The part of significance one statistic of a rule spends on its ratio: the
 * rule's share, of which SEQ_STAGE_SHARE for the stage statistic and the
 * rest for the change statistic, less the control's sequence for a
 * two-sample test.
 */
static double
StatisticShare(SeqRule rule, bool change, bool two_sample)
{
	double		share = change ? 1.0 - SEQ_STAGE_SHARE : SEQ_STAGE_SHARE;

	if (two_sample)
		share -= SEQ_CONTROL_SHARE;
	return share * rule_shares[rule];
}

/* log of the threshold of a rule's stage statistic */
double
SeqStageThreshold(SeqRule rule, double significance, bool two_sample)
{
	return log(1.0 / (StatisticShare(rule, false, two_sample) * significance));
}

/* log of the threshold of a rule's change statistic */
double
SeqChangeThreshold(SeqRule rule, double significance, bool two_sample)
{
	return log(SEQ_STARTS_PER_DAY / (StatisticShare(rule, true, two_sample) * significance));
}

/*
 * log of the threshold of the control's confidence sequence of a
 * two-sample rule: over the stage, or over one segment of the change
 * statistic (its start point's part of the union bound).
 */
double
SeqControlThreshold(SeqRule rule, double significance, bool change)
{
	return log((change ? SEQ_STARTS_PER_DAY : 1) /
			   (SEQ_CONTROL_SHARE * rule_shares[rule] * significance));
}

/*
 * SeqSamplesForPower
 *		Requests after which the stage statistic reaches exp(log_threshold)
 *		with probability about 0.8 when the true rate is p1 > p0 (normal
 *		approximation of the log ratio at the best alternative of the
 *		mixture, less the log of its weight).  Used by the planner to
 *		say how much evidence a stage needs.  -1 when p1 <= p0.
 */
double
SeqSamplesForPower(double p0, double p1, double log_threshold)
{
	double		best = -1.0;

	if (p1 <= p0 || p0 <= 0.0 || p0 >= 1.0 || p1 >= 1.0)
		return -1.0;
	for (int i = 0; i < (int) NRATIOS; i++)
	{
		double		q = AlternativeAbove(p0, mixture_ratios[i]);
		double		a = log(q / p0);
		double		b = log1p(-q) - log1p(-p0);
		double		mu = p1 * a + (1.0 - p1) * b;
		double		sd = sqrt(p1 * (1.0 - p1)) * fabs(a - b);
		double		c = log_threshold - log(mixture_weights[i]);
		double		root;
		double		n;

		if (mu <= 0)
			continue;
		/* n mu - 0.8416 sd sqrt(n) = c, solved for sqrt(n) */
		root = (0.8416 * sd + sqrt(0.8416 * 0.8416 * sd * sd + 4.0 * mu * c)) / (2.0 * mu);
		n = ceil(root * root);
		if (best < 0 || n < best)
			best = n;
	}
	return best;
}

/*
 * A catalog whose SQL declaration of a function has fewer arguments than
 * this library reads (a catalog not yet updated): an error, not a read
 * past the call's arguments.
 */
static void
RequireArguments(FunctionCallInfo fcinfo, int nargs, const char *name)
{
	if (PG_NARGS() < nargs)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s was declared with %d arguments, this library takes %d",
						name, PG_NARGS(), nargs),
				 errhint("Run ALTER EXTENSION llm_canary UPDATE.")));
}

/*
 * canary_sequential_evidence(events bigint, trials bigint, boundary float8,
 *							  two_sided boolean default false)
 *		The log mixture likelihood ratio the kill switch computes, for
 *		checking a decision by hand: a rule's stage statistic trips at
 *		log(1 / (3/4 x share x significance)), share its part of
 *		significance (rule_shares); the thumbs-down rule (and the
 *		refusal rule at full) at log(1 / ((3/4 - 1/16) x share x
 *		significance)) against the control's rate at the upper end of its
 *		confidence sequence (log threshold log(16 / (share x
 *		significance))).
 */
PG_FUNCTION_INFO_V1(canary_sequential_evidence);
Datum
canary_sequential_evidence(PG_FUNCTION_ARGS)
{
	int64		k;
	int64		n;
	double		p0;
	bool		two_sided;

	RequireArguments(fcinfo, 4, "canary_sequential_evidence");
	k = PG_GETARG_INT64(0);
	n = PG_GETARG_INT64(1);
	p0 = PG_GETARG_FLOAT8(2);
	two_sided = PG_GETARG_BOOL(3);

	if (k < 0 || n < 0 || k > n || isnan(p0) || p0 < 0 || p0 > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be between 0 and trials and boundary between 0 and 1"),
				 errdetail("Got events %lld, trials %lld, boundary %g.",
						   (long long) k, (long long) n, p0)));
	PG_RETURN_FLOAT8(two_sided ? SeqLogMixtureLRTwoSided(k, n, p0) : SeqLogMixtureLR(k, n, p0));
}

/*
 * canary_sequential_samples(boundary float8, alternative float8,
 *							 significance float8, rule text)
 *		Canary requests after which a rule's stage statistic below stage
 *		full trips with probability about 0.8 when the true rate is
 *		alternative (above the boundary), at the rule's own threshold (the
 *		thumbs-down rule's less its control sequence; the refusal rule's
 *		paired test approximated by a one-sample test against the
 *		boundary): the planner's evidence gate.  NULL when alternative is
 *		not above the boundary.
 */
PG_FUNCTION_INFO_V1(canary_sequential_samples);
Datum
canary_sequential_samples(PG_FUNCTION_ARGS)
{
	double		p0;
	double		p1;
	double		alpha;
	char	   *name;
	int			rule;
	double		n;

	RequireArguments(fcinfo, 4, "canary_sequential_samples");
	p0 = PG_GETARG_FLOAT8(0);
	p1 = PG_GETARG_FLOAT8(1);
	alpha = PG_GETARG_FLOAT8(2);
	name = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (isnan(alpha) || alpha <= 0 || alpha >= 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("significance must be between 0 and 1"),
				 errdetail("Got %g.", alpha)));
	for (rule = 0; rule < SEQ_RULES; rule++)
		if (strcmp(name, rule_names[rule]) == 0)
			break;
	if (rule == SEQ_RULES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown rule \"%s\"", name),
				 errhint("The rules are error_rate, p95, refusal and thumbs_down.")));
	n = SeqSamplesForPower(p0, p1, SeqStageThreshold((SeqRule) rule, alpha,
													 rule == SEQ_RULE_THUMBS_DOWN));
	if (n < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) n);
}

/*
 * The paired test of the refusal rule (H0: canary rate <= control rate +
 * delta).  Each canary request is paired with one control request of the
 * same increment of traffic (the requests a check counted that the check
 * before had not), and the pair's difference X = a - b (a, b: refused or
 * not) has mean p_canary - p_control <= delta under H0, whatever the
 * control's rate: the product of 1 + lambda (X - delta) over the pairs is a
 * nonnegative supermartingale (a bet on each pair, lambda below
 * 1 / (1 + delta) so no factor is negative), and a mixture over lambda is
 * one too.  Only counts are known, so the statistic of an increment is the
 * product's expectation over the pairings the counts allow (which requests
 * are paired, and with which: hypergeometric draws), a function of the
 * counts with expectation at most 1 under H0; increments are independent,
 * so their product over a stage or a segment is again a supermartingale
 * and Ville applies as to the likelihood ratios.  No nuisance parameter,
 * no confidence sequence for the control: it costs the control's variance
 * per pair (about 1/8 more than knowing the control's rate at the
 * article's rates) instead of the sequence's width.  Terms of the
 * hypergeometric sums more than e^40 below their largest are left out
 * (which only lowers the statistic); an increment whose sums would take
 * more than SEQ_PAIRED_MAX_TERMS terms, or whose walks to the ends of its
 * hypergeometric supports would take more than SEQ_PAIRED_MAX_STEPS steps
 * (counts in the billions: the walks grow with the square root of the
 * counts), counts as no evidence.
 */
static const double paired_lambdas[SEQ_NPAIRED] = {0.15, 0.3, 0.5, 0.9};

#define SEQ_PAIRED_MAX_TERMS 4000000
/* above any walk a sum within SEQ_PAIRED_MAX_TERMS terms takes */
#define SEQ_PAIRED_MAX_STEPS (8 * (int64) SEQ_PAIRED_MAX_TERMS)

/* log C(n, k) */
static double
LogChoose(int64 n, int64 k)
{
	return lgamma((double) n + 1.0) - lgamma((double) k + 1.0) - lgamma((double) (n - k) + 1.0);
}

/*
 * The support of the hypergeometric distribution (draws n from N with K
 * good, x good drawn) within e^40 of its mode: [*lo, *hi], and the log
 * probability at *lo.  Counts its steps in *steps; false when they pass
 * SEQ_PAIRED_MAX_STEPS (the range is then not set).
 */
static bool
HyperRange(int64 N, int64 K, int64 n, int64 *lo, int64 *hi, double *logp_lo, int64 *steps)
{
	int64		smin = Max(0, n - (N - K));
	int64		smax = Min(n, K);
	int64		mode = (int64) floor(((double) n + 1.0) * ((double) K + 1.0) / ((double) N + 2.0));
	double		lm;
	double		lp;
	int64		x;

	mode = Max(smin, Min(smax, mode));
	lm = LogChoose(K, mode) + LogChoose(N - K, n - mode) - LogChoose(N, n);
	for (x = mode, lp = lm; x > smin; x--)
	{
		double		r = log((double) x * (double) (N - K - n + x)) -
			log((double) (K - x + 1) * (double) (n - x + 1));

		if (lp + r < lm - 40.0)
			break;
		if (++*steps > SEQ_PAIRED_MAX_STEPS)
			return false;
		lp += r;
	}
	*lo = x;
	*logp_lo = lp;
	for (x = mode, lp = lm; x < smax; x++)
	{
		double		r = log((double) (K - x) * (double) (n - x)) -
			log((double) (x + 1) * (double) (N - K - n + x + 1));

		if (lp + r < lm - 40.0)
			break;
		if (++*steps > SEQ_PAIRED_MAX_STEPS)
			return false;
		lp += r;
	}
	*hi = x;
	return true;
}

/* log P(x + 1) - log P(x) of that distribution */
static double
HyperStep(int64 N, int64 K, int64 n, int64 x)
{
	return log((double) (K - x) * (double) (n - x)) -
		log((double) (x + 1) * (double) (N - K - n + x + 1));
}

/*
 * SeqPairedLogE
 *		out[j]: log of the paired statistic with lambda j of one increment:
 *		nk canary requests with kk events, nc control requests with kc.
 *		0 (no evidence) without pairs or with counts out of range.
 */
void
SeqPairedLogE(int64 nk, int64 kk, int64 nc, int64 kc, double delta, double *out)
{
	int64		n = Min(nk, nc);
	double		up[SEQ_NPAIRED],
				same[SEQ_NPAIRED],
				down[SEQ_NPAIRED],
				mx[SEQ_NPAIRED],
				sum[SEQ_NPAIRED];
	int64		k_lo,
				k_hi,
				l_lo,
				l_hi;
	double		lp_k,
				lp_l0;
	int64		terms = 0;
	int64		steps = 0;

	for (int j = 0; j < SEQ_NPAIRED; j++)
		out[j] = 0.0;
	if (n <= 0 || kk < 0 || kc < 0 || kk > nk || kc > nc || !(delta >= 0.0 && delta < 1.0))
		return;
	for (int j = 0; j < SEQ_NPAIRED; j++)
	{
		double		lambda = Min(paired_lambdas[j], 0.95 / (1.0 + delta));

		up[j] = log1p(lambda * (1.0 - delta));	/* canary refused, control not */
		same[j] = log1p(-lambda * delta);	/* both or neither */
		down[j] = log1p(-lambda * (1.0 + delta));	/* control refused, canary not */
		mx[j] = -INFINITY;
		sum[j] = 0.0;
	}
	/* which canary requests are paired (all when nk <= nc), how many refused */
	if (!HyperRange(nk, kk, n, &k_lo, &k_hi, &lp_k, &steps))
		return;
	/* the n control requests paired, how many refused */
	if (!HyperRange(nc, kc, n, &l_lo, &l_hi, &lp_l0, &steps))
		return;
	for (int64 k1 = k_lo; k1 <= k_hi; lp_k += (k1 < k_hi ? HyperStep(nk, kk, n, k1) : 0), k1++)
	{
		double		lp_l = lp_l0;

		CHECK_FOR_INTERRUPTS();

		for (int64 l = l_lo; l <= l_hi; lp_l += (l < l_hi ? HyperStep(nc, kc, n, l) : 0), l++)
		{
			int64		b_lo,
						b_hi;
			double		lp_b;

			/* of the k1 refused canary requests, b are paired with refused controls */
			if (!HyperRange(n, l, k1, &b_lo, &b_hi, &lp_b, &steps))
				return;			/* out[] is still 0 */
			terms += b_hi - b_lo + 1;
			if (terms > SEQ_PAIRED_MAX_TERMS)
				return;
			for (int64 b = b_lo; b <= b_hi; lp_b += (b < b_hi ? HyperStep(n, l, k1, b) : 0), b++)
			{
				double		lp = lp_k + lp_l + lp_b;
				double		n_up = (double) (k1 - b);
				double		n_down = (double) (l - b);
				double		n_same = (double) (n - n_up - n_down);

				for (int j = 0; j < SEQ_NPAIRED; j++)
				{
					double		t = lp + n_up * up[j] + n_same * same[j] + n_down * down[j];

					if (t > mx[j])
					{
						sum[j] = (isfinite(mx[j]) ? sum[j] * exp(mx[j] - t) : 0.0) + 1.0;
						mx[j] = t;
					}
					else
						sum[j] += exp(t - mx[j]);
				}
			}
		}
	}
	for (int j = 0; j < SEQ_NPAIRED; j++)
		out[j] = isfinite(mx[j]) ? mx[j] + log(sum[j]) : 0.0;
}

/* log of the paired statistic's mixture over lambda, equal weights */
double
SeqPairedMixture(const double *sums)
{
	return LogSumExp(sums, SEQ_NPAIRED, (double) SEQ_NPAIRED);
}

/*
 * canary_paired_evidence(canary_samples bigint, canary_events bigint,
 *						  control_samples bigint, control_events bigint,
 *						  delta float8)
 *		The paired statistic of one increment of traffic, log per lambda
 *		(canary_collect_evidence adds it to the minute's evidence).
 */
PG_FUNCTION_INFO_V1(canary_paired_evidence);
Datum
canary_paired_evidence(PG_FUNCTION_ARGS)
{
	double		out[SEQ_NPAIRED];
	Datum		elems[SEQ_NPAIRED];

	SeqPairedLogE(PG_GETARG_INT64(0), PG_GETARG_INT64(1), PG_GETARG_INT64(2), PG_GETARG_INT64(3),
				  PG_GETARG_FLOAT8(4), out);
	for (int j = 0; j < SEQ_NPAIRED; j++)
		elems[j] = Float8GetDatum(out[j]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, SEQ_NPAIRED, FLOAT8OID, sizeof(float8),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}
