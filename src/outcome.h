/*-------------------------------------------------------------------------
 *
 * outcome.h
 *	  The outcome of one model attempt and its name as canary_requests
 *	  spells it (outcome.c).  One table of names for the call path, the
 *	  probe, canary_record and the worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_OUTCOME_H
#define LLM_CANARY_OUTCOME_H

#include "postgres.h"

typedef enum CanaryOutcome
{
	CANARY_OUTCOME_OK,
	CANARY_OUTCOME_REFUSAL,
	CANARY_OUTCOME_ERROR,
	CANARY_OUTCOME_TIMEOUT
} CanaryOutcome;

#define CANARY_OUTCOME_NAMES_HINT "Valid outcomes are: ok, refusal, error, timeout."

extern const char *CanaryOutcomeName(CanaryOutcome outcome);
extern bool CanaryOutcomeFromName(const char *name, CanaryOutcome *outcome);

#endif							/* LLM_CANARY_OUTCOME_H */
