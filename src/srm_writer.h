/*-------------------------------------------------------------------------
 *
 * srm_writer.h
 *	  The sample-ratio users of the metrics worker's batches, recorded by the
 *	  worker itself with a cache of the users already recorded, so that only
 *	  new users reach the database.  See src/srm_writer.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SRM_WRITER_H
#define LLM_CANARY_SRM_WRITER_H

#include "metrics.h"

/*
 * Before the INSERT of a batch whose users the worker records (the trigger
 * canary_requests_srm is enabled; it skips the batch): read the rollouts'
 * states, choose the rows to send.  Inside the batch's transaction, SPI
 * connected.
 */
extern void SrmWriterBegin(const char *schema, const CanaryMetricRecord *recs, int n);

/* After the INSERT: record the users of the rows chosen (and of those to send again). */
extern void SrmWriterRecord(const char *schema, const CanaryMetricRecord *recs, int n);

/* After the batch's transaction ended: committed or not. */
extern void SrmWriterEndBatch(bool committed);

#endif							/* LLM_CANARY_SRM_WRITER_H */
