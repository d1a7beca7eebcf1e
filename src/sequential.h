/*-------------------------------------------------------------------------
 *
 * sequential.h
 *	  Always-valid tests for the kill switch and the sample-ratio check:
 *	  mixture likelihood ratios on counts, which stay valid when the
 *	  decision looks at the data every 30 seconds.  Pure functions of
 *	  counts: no SPI, no allocation, never raise.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SEQUENTIAL_H
#define LLM_CANARY_SEQUENTIAL_H

#include "postgres.h"

/*
 * Minute-aligned start points per day of the change statistic: the bound on
 * its false-trip probability per day is (starts per day) / threshold.
 */
#define SEQ_STARTS_PER_DAY	1440

/*
 * The rules that share the significance (each rule's share: rule_shares in
 * src/sequential.c).
 */
typedef enum SeqRule
{
	SEQ_RULE_ERROR_RATE,
	SEQ_RULE_P95,
	SEQ_RULE_REFUSAL,
	SEQ_RULE_THUMBS_DOWN
} SeqRule;

#define SEQ_RULES			(SEQ_RULE_THUMBS_DOWN + 1)

/* Each rule's share spent on its stage statistic (the rest: change). */
#define SEQ_STAGE_SHARE		0.75

/*
 * Two-sample rules (the control's refusal and thumbs-down rates): the part
 * of each rule's share spent on the control's confidence sequence of each
 * statistic, taken from that statistic's part.
 */
#define SEQ_CONTROL_SHARE	(1.0 / 16.0)

extern double SeqLogMixtureLR(int64 k, int64 n, double p0);
extern double SeqLogMixtureLRTwoSided(int64 k, int64 n, double p0);
extern double SeqUpperConfidence(int64 k, int64 n, double log_threshold);
extern double SeqStageThreshold(SeqRule rule, double significance, bool two_sample);
extern double SeqChangeThreshold(SeqRule rule, double significance, bool two_sample);
extern double SeqControlThreshold(SeqRule rule, double significance, bool change);
/* lambdas of the refusal rule's paired test (src/sequential.c) */
#define SEQ_NPAIRED			4

extern void SeqPairedLogE(int64 nk, int64 kk, int64 nc, int64 kc, double delta, double *out);
extern double SeqPairedMixture(const double *sums);
extern double SeqSamplesForPower(double p0, double p1, double log_threshold);

#endif							/* LLM_CANARY_SEQUENTIAL_H */
