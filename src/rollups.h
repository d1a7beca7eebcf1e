/*-------------------------------------------------------------------------
 *
 * rollups.h
 *	  The rollups' histograms (log-linear buckets with a bounded relative
 *	  error) and the rollups' settings.  See src/rollups.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_ROLLUPS_H
#define LLM_CANARY_ROLLUPS_H

/* llm_canary.rollup_retention_days */
extern int	canary_rollup_retention_days;

/* Define the rollups' settings; called from _PG_init. */
extern void RollupsInit(void);

#endif							/* LLM_CANARY_ROLLUPS_H */
