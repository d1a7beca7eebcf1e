/*-------------------------------------------------------------------------
 *
 * rollups_writer.h
 *	  The rollups of the metrics worker's batches, counted in C.  See
 *	  src/rollups_writer.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_ROLLUPS_WRITER_H
#define LLM_CANARY_ROLLUPS_WRITER_H

#include "metrics.h"

/*
 * Add a batch just inserted into canary_requests to the rollups and totals
 * (the trigger canary_requests_rollup is enabled and skips the batch).
 * Inside the batch's transaction, SPI connected.
 */
extern void RollupsWriterAdd(const char *schema, const CanaryMetricRecord *recs, int n);

#endif							/* LLM_CANARY_ROLLUPS_WRITER_H */
