/*-------------------------------------------------------------------------
 *
 * outcome.c
 *	  How one model attempt is judged: the names canary_requests.outcome
 *	  uses (one table), the refusal rule (one classifier for canary_call,
 *	  cached answers and shadow answers) and the cost rule (one function for
 *	  canary_call and canary_record).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "config.h"
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

/*
 * CanaryIsRefusal
 *		True when the provider signalled a refusal, or when text contains one
 *		of the operator's refusal patterns (case-insensitive substring, ASCII
 *		case folding).  Only the first 2000 bytes are examined: refusals open
 *		with the refusal.  Allocates a little in the current memory context.
 */
bool
CanaryIsRefusal(bool provider_refusal, const char *text)
{
	int			n;
	char	  **patterns;
	size_t		len;
	char	   *lower;
	bool		found = false;

	if (text == NULL)
		return false;
	if (provider_refusal)
		return true;
	patterns = ConfigGetRefusalPatterns(&n);
	if (n == 0)
		return false;
	len = strnlen(text, 2000);
	lower = palloc(len + 1);
	for (size_t i = 0; i < len; i++)
		lower[i] = pg_ascii_tolower((unsigned char) text[i]);
	lower[len] = '\0';
	for (int i = 0; i < n && !found; i++)
		found = strstr(lower, patterns[i]) != NULL;
	pfree(lower);
	return found;
}

/*
 * CanaryAttemptCost
 *		The cost of one attempt from the prices of its model in canary_models
 *		(per 1000 tokens); a token count that is unknown (negative) counts 0.
 */
double
CanaryAttemptCost(const CanaryModel *model, int32 prompt_tokens,
				  int32 completion_tokens)
{
	return Max(prompt_tokens, 0) / 1000.0 * model->price_input_per_1k +
		Max(completion_tokens, 0) / 1000.0 * model->price_output_per_1k;
}
