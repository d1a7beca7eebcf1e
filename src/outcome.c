/*-------------------------------------------------------------------------
 *
 * outcome.c
 *	  The outcome of one model attempt: the names canary_requests.outcome
 *	  uses, in one table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "outcome.h"

static const char *const OutcomeNames[] = {
	[CANARY_OUTCOME_OK] = "ok",
	[CANARY_OUTCOME_REFUSAL] = "refusal",
	[CANARY_OUTCOME_ERROR] = "error",
	[CANARY_OUTCOME_TIMEOUT] = "timeout"
};

/* The outcome's name; "error" for a value out of range.  Never raises. */
const char *
CanaryOutcomeName(CanaryOutcome outcome)
{
	if ((int) outcome < 0 || (int) outcome >= lengthof(OutcomeNames))
		return "error";
	return OutcomeNames[outcome];
}

/* The outcome named name; false when there is none. */
bool
CanaryOutcomeFromName(const char *name, CanaryOutcome *outcome)
{
	for (int i = 0; i < lengthof(OutcomeNames); i++)
	{
		if (strcmp(name, OutcomeNames[i]) == 0)
		{
			*outcome = (CanaryOutcome) i;
			return true;
		}
	}
	return false;
}
