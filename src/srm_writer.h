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
 * Before the INSERT of a batch: whether the worker records the batch's
 * users itself (the catalog has canary_srm_record and the trigger
 * canary_requests_srm would fire); when it does, the trigger skips the
 * INSERT until SrmWriterRecord.  Inside the batch's transaction, SPI
 * connected.
 */
extern bool SrmWriterBegin(const char *schema, const CanaryMetricRecord *recs, int n);

/* After the INSERT: record the users of recs[0 .. n - 1] (SrmWriterBegin said so). */
extern void SrmWriterRecord(const char *schema, const CanaryMetricRecord *recs, int n);

/* After the batch's transaction ended: committed or not. */
extern void SrmWriterEndBatch(bool committed);

#endif							/* LLM_CANARY_SRM_WRITER_H */
