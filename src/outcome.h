/*-------------------------------------------------------------------------
 *
 * outcome.h
 *	  How one model attempt is judged (outcome.c): its outcome and the name
 *	  canary_requests spells it with, whether an answer is a refusal, and
 *	  what the attempt cost.  One home for each rule, used by the call path,
 *	  the probe, canary_record, the shadow worker and the metrics writer.
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

/*
 * Is an answer a refusal: the provider said so, or its text contains one of
 * the enabled canary_refusal_patterns.  No answer (text NULL) is none.
 * Reads the patterns through the config cache (may raise like it).
 */
extern bool CanaryIsRefusal(bool provider_refusal, const char *text);

/* Cost of an attempt from the model's prices; unknown token counts are 0. */
struct CanaryModel;
extern double CanaryAttemptCost(const struct CanaryModel *model,
								int32 prompt_tokens, int32 completion_tokens);

#endif							/* LLM_CANARY_OUTCOME_H */
