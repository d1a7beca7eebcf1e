/*-------------------------------------------------------------------------
 *
 * rollups.h
 *	  The rollups' histograms (log-linear buckets with a bounded relative
 *	  error), the rollups' settings and the fold of queued verdicts.  See
 *	  src/rollups.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_ROLLUPS_H
#define LLM_CANARY_ROLLUPS_H

/* llm_canary.rollup_retention_days */
extern int	canary_rollup_retention_days;

/* Define the rollups' settings; called from _PG_init. */
extern void RollupsInit(void);

/* Histograms of the rollups' scheme, built in C (rollups_writer.c). */
typedef struct DenseHist RollupsHist;
extern RollupsHist *RollupsHistNew(void);
extern void RollupsHistAdd(RollupsHist *h, int64 value);
extern struct ArrayType *RollupsHistArray(const RollupsHist *h);

/* Fold the queued verdicts into the rollups (canary_feedback_fold). */
extern int64 RollupsFoldVerdicts(const char *schema);

#endif							/* LLM_CANARY_ROLLUPS_H */
