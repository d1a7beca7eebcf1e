/*-------------------------------------------------------------------------
 *
 * probe.c
 *	  canary_probe(model, prompt): an administrator's smoke test of one
 *	  model's configuration.  It calls the model directly through the HTTP
 *	  transport (http.h), without routing, fallback or metrics, and returns
 *	  everything the transport saw as jsonb.  A refusal of the key policy
 *	  is raised (42501) rather than returned.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "config.h"
#include "http.h"
#include "outcome.h"
#include "provider.h"

PG_FUNCTION_INFO_V1(canary_probe);

/* Append ,"key":"value" or ,"key":null */
static void
AppendJsonStringOrNull(StringInfo buf, const char *key, const char *value)
{
	appendStringInfo(buf, ",\"%s\":", key);
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

/* Append ,"key":n or ,"key":null when n < 0 (unknown) */
static void
AppendJsonIntOrNull(StringInfo buf, const char *key, int value)
{
	if (value < 0)
		appendStringInfo(buf, ",\"%s\":null", key);
	else
		appendStringInfo(buf, ",\"%s\":%d", key, value);
}

/*
 * canary_probe(model text, prompt text) RETURNS jsonb
 *
 * {"model", "outcome", "http_status", "text", "prompt_tokens",
 *  "completion_tokens", "refusal", "error", "error_detail", "tries",
 *  "latency_ms"}; null where a value is unknown.  The API key never
 * appears in the result.
 */
Datum
canary_probe(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *prompt;
	const CanaryModel *model;
	CanaryAttempt attempt;
	StringInfoData buf;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt must not be NULL")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	prompt = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (prompt[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompt must not be empty")));

	model = ConfigGetModel(name);
	HttpCallModel(model, prompt, &attempt);
	/* a refusal of the key policy is an error, not a probe result */
	if (HttpPolicyError(attempt.error))
		HttpReportPolicy(model->name, attempt.error, attempt.error_detail);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"model\":");
	escape_json(&buf, name);
	AppendJsonStringOrNull(&buf, "outcome", CanaryOutcomeName(attempt.outcome));
	if (attempt.http_status > 0)
		appendStringInfo(&buf, ",\"http_status\":%d", attempt.http_status);
	else
		appendStringInfoString(&buf, ",\"http_status\":null");
	AppendJsonStringOrNull(&buf, "text", attempt.text);
	AppendJsonIntOrNull(&buf, "prompt_tokens", attempt.prompt_tokens);
	AppendJsonIntOrNull(&buf, "completion_tokens", attempt.completion_tokens);
	appendStringInfo(&buf, ",\"refusal\":%s",
					 attempt.provider_refusal ? "true" : "false");
	AppendJsonStringOrNull(&buf, "error", attempt.error);
	AppendJsonStringOrNull(&buf, "error_detail", attempt.error_detail);
	appendStringInfo(&buf, ",\"tries\":%d,\"latency_ms\":%d}",
					 attempt.tries, attempt.latency_ms);

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
