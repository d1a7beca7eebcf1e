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

/* The rules that share the significance, equally. */
#define SEQ_RULES			4

/* Each rule's share spent on its stage statistic (the rest: change). */
#define SEQ_STAGE_SHARE		0.75

extern double SeqLogMixtureLR(int64 k, int64 n, double p0);
extern double SeqLogMixtureLRTwoSided(int64 k, int64 n, double p0);
extern double SeqUpperBound(int64 k, int64 n, double z);
extern double SeqStageThreshold(double significance);
extern double SeqChangeThreshold(double significance);
extern double SeqSamplesForPower(double p0, double p1, double log_threshold);

#endif							/* LLM_CANARY_SEQUENTIAL_H */
