/*-------------------------------------------------------------------------
 *
 * call.c
 *	  canary_call: route a user's prompt, call the chosen model over HTTP,
 *	  fall back to the old model when the new one fails, and record every
 *	  attempt in the metrics queue.
 *
 * Data flows one way: config.c gives the rollout and models, routing.c the
 * decision, http.c/provider.c the model's answer; this file classifies the
 * answer (outcome.c's refusal rule), puts one CanaryMetricRecord per attempt into the
 * shared-memory queue (metrics_queue.c), which the worker writes outside the
 * caller's transaction, and builds the jsonb result.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "cache.h"
#include "config.h"
#include "metrics.h"
#include "provider.h"
#include "routing.h"
#include "shadow.h"
#include "util.h"

/* What one canary_call needs to know about itself, for the records. */
typedef struct CallContext
{
	char		canary[NAMEDATALEN];
	const char *stage;
	const char *user_id;
	int			user_len;
	const char *prompt_class;
	char		prompt_hash[CANARY_PROMPT_HASH_LEN + 1];
	pg_uuid_t	request_id;
	bool		canary_cohort;
} CallContext;

/*
 * RecordAttempt
 *		Put one attempt into the metrics queue.  Never raises: it may be
 *		called from an error path.  A full queue is counted as a drop by
 *		MetricsEnqueue.
 */
static void
RecordAttempt(const CallContext *cx, const CanaryModel *model,
			  const CanaryAttempt *a, bool fallback)
{
	CanaryMetricRecord rec;

	memset(&rec, 0, sizeof(rec));
	rec.request_id = cx->request_id;
	rec.ts = GetCurrentTimestamp();
	rec.dboid = MyDatabaseId;
	strlcpy(rec.canary, cx->canary, sizeof(rec.canary));
	strlcpy(rec.stage, cx->stage, sizeof(rec.stage));
	strlcpy(rec.cohort, cx->canary_cohort ? "canary" : "control", sizeof(rec.cohort));
	strlcpy(rec.model, model->name, sizeof(rec.model));
	CanaryClipCopy(rec.user_id, sizeof(rec.user_id), cx->user_id, cx->user_len);
	if (cx->prompt_class)
		CanaryClipCopy(rec.prompt_class, sizeof(rec.prompt_class),
					   cx->prompt_class, strlen(cx->prompt_class));
	memcpy(rec.prompt_hash, cx->prompt_hash, sizeof(rec.prompt_hash));
	if (a->error)
		strlcpy(rec.error, a->error, sizeof(rec.error));
	rec.outcome = (uint8) a->outcome;
	rec.refusal = a->outcome == CANARY_OUTCOME_REFUSAL;
	rec.fallback = fallback;
	rec.cached = a->cached;
	rec.http_status = (int16) a->http_status;
	rec.latency_ms = a->latency_ms;
	rec.prompt_tokens = a->prompt_tokens;
	rec.completion_tokens = a->completion_tokens;
	rec.response_chars = a->text ? (int32) pg_mbstrlen(a->text) : 0;
	/* a cached answer was paid for when the model gave it */
	if (!a->cached)
		rec.cost = CanaryAttemptCost(model, a->prompt_tokens, a->completion_tokens);
	(void) MetricsEnqueue(&rec);
}

/* An answer that is a refusal (outcome.c's rule) has outcome refusal. */
static void
ClassifyRefusal(CanaryAttempt *a)
{
	if (a->outcome == CANARY_OUTCOME_OK &&
		CanaryIsRefusal(a->provider_refusal, a->text))
		a->outcome = CANARY_OUTCOME_REFUSAL;
}

/*
 * CallAndRecord
 *		Call one model and record the attempt, also when the call is
 *		interrupted by a cancel or a termination (recorded as an error
 *		"canceled", then the interrupt is rethrown).  With the response
 *		cache on, a fresh cached answer is used instead of the call (and
 *		recorded as cached), and a new answer is stored.
 */
static void
CallAndRecord(const CallContext *cx, const CanaryModel *model,
			  const char *prompt, bool fallback, CanaryAttempt *a)
{
	TimestampTz start = GetCurrentTimestamp();
	CacheKey	key;
	bool		use_cache = CacheEnabled();

	memset(a, 0, sizeof(*a));
	a->prompt_tokens = -1;
	a->completion_tokens = -1;

	if (use_cache)
	{
		CacheComputeKey(model, prompt, &key);
		if (CacheLookup(model, &key, a))
		{
			long		secs;
			int			usecs;

			TimestampDifference(start, GetCurrentTimestamp(), &secs, &usecs);
			a->latency_ms = (int) (secs * 1000 + usecs / 1000);
			ClassifyRefusal(a);
			RecordAttempt(cx, model, a, fallback);
			return;
		}
	}

	PG_TRY();
	{
		HttpCallModel(model, prompt, a);
	}
	PG_CATCH();
	{
		CanaryAttempt failed;
		long		secs;
		int			usecs;

		memset(&failed, 0, sizeof(failed));
		failed.outcome = CANARY_OUTCOME_ERROR;
		failed.error = "canceled";
		failed.prompt_tokens = -1;
		failed.completion_tokens = -1;
		TimestampDifference(start, GetCurrentTimestamp(), &secs, &usecs);
		failed.latency_ms = (int) (secs * 1000 + usecs / 1000);
		RecordAttempt(cx, model, &failed, fallback);
		PG_RE_THROW();
	}
	PG_END_TRY();

	ClassifyRefusal(a);
	RecordAttempt(cx, model, a, fallback);
	if (use_cache)
		CacheStore(model, &key, a);
}

static bool
AttemptFailed(const CanaryAttempt *a)
{
	return a->outcome == CANARY_OUTCOME_ERROR || a->outcome == CANARY_OUTCOME_TIMEOUT;
}

/*
 * Did the attempt fail in the transport (no HTTP response, or a connection
 * that broke or was cut in the middle of the body)?  Such a failure is
 * 08006 even when the status line had already arrived.
 */
static bool
AttemptTransportFailure(const CanaryAttempt *a)
{
	if (a->http_status == 0)
		return true;
	return a->error != NULL &&
		(strcmp(a->error, "connect") == 0 ||
		 strcmp(a->error, "transport") == 0 ||
		 strcmp(a->error, "tls") == 0);
}

/* Raise the error for an attempt no model could answer. */
static void
ReportFailedAttempt(const CanaryModel *model, const CanaryAttempt *a)
{
	bool		transport = AttemptTransportFailure(a);
	int			code = transport ? ERRCODE_CONNECTION_FAILURE : ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;

	if (a->outcome == CANARY_OUTCOME_TIMEOUT)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not get an answer from model \"%s\" within %d ms",
						model->name, model->timeout_ms),
				 errdetail("The request timed out after %d tries.", a->tries),
				 errhint("Raise timeout_ms in canary_models if the model is slow, or check that it is reachable.")));
	if (a->http_status != 0 && transport)
		ereport(ERROR,
				(errcode(code),
				 errmsg("could not get an answer from model \"%s\"", model->name),
				 errdetail("The connection failed after HTTP status %d (%s)%s%s", a->http_status,
						   a->error ? a->error : "error",
						   a->error_detail ? ": " : ".",
						   a->error_detail ? a->error_detail : ""),
				 errhint("The attempt is recorded in canary_requests.")));
	if (a->http_status != 0)
		ereport(ERROR,
				(errcode(code),
				 errmsg("could not get an answer from model \"%s\"", model->name),
				 errdetail("HTTP status %d (%s)%s%s", a->http_status,
						   a->error ? a->error : "error",
						   a->error_detail ? ": " : ".",
						   a->error_detail ? a->error_detail : ""),
				 errhint("The attempt is recorded in canary_requests.")));
	ereport(ERROR,
			(errcode(code),
			 errmsg("could not reach model \"%s\"", model->name),
			 errdetail("%s%s%s", a->error ? a->error : "error",
					   a->error_detail ? ": " : ".",
					   a->error_detail ? a->error_detail : ""),
			 errhint("Check base_url in canary_models and that the server is reachable from the database server.")));
}

/* Add key: string-or-null to an object being built. */
static void
PushString(JsonbParseState **st, const char *key, const char *val)
{
	JsonbValue	k,
				v;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
	if (val == NULL)
		v.type = jbvNull;
	else
	{
		v.type = jbvString;
		v.val.string.val = (char *) val;
		v.val.string.len = strlen(val);
	}
	pushJsonbValue(st, WJB_VALUE, &v);
}

static void
PushInt(JsonbParseState **st, const char *key, int64 val, bool isnull)
{
	JsonbValue	k,
				v;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
	if (isnull)
		v.type = jbvNull;
	else
	{
		v.type = jbvNumeric;
		v.val.numeric = int64_to_numeric(val);
	}
	pushJsonbValue(st, WJB_VALUE, &v);
}

static void
PushBool(JsonbParseState **st, const char *key, bool val)
{
	JsonbValue	k,
				v;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
	v.type = jbvBool;
	v.val.boolean = val;
	pushJsonbValue(st, WJB_VALUE, &v);
}

/*
 * canary_call(prompt, user_id, canary, prompt_class, session_id) -> jsonb
 */
PG_FUNCTION_INFO_V1(canary_call);
Datum
canary_call(PG_FUNCTION_ARGS)
{
	text	   *prompt_arg;
	text	   *user_arg;
	char	   *prompt;
	CallContext cx;
	const CanaryRollout *r;
	RouteDecision d;
	const CanaryModel *model;
	const CanaryModel *old_model = NULL;
	CanaryAttempt a;
	CanaryAttempt fb;
	bool		fallback_used = false;
	char		request_id_text[40];
	TimestampTz start = GetCurrentTimestamp();
	long		secs;
	int			usecs;
	JsonbParseState *st = NULL;
	JsonbValue *res;
	bool		fallback_enabled;
	char	   *old_model_name = NULL;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt must not be NULL")));
	prompt_arg = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(prompt_arg) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompt must not be empty")));
	user_arg = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	RoutingCheckUserId(user_arg, PG_ARGISNULL(1));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rollout name must not be NULL"),
				 errhint("Omit the argument to use the rollout named \"default\".")));

	MetricsRequireWorkerDatabase();
	MetricsCountCall();

	memset(&cx, 0, sizeof(cx));
	prompt = text_to_cstring(prompt_arg);
	cx.user_id = VARDATA_ANY(user_arg);
	cx.user_len = VARSIZE_ANY_EXHDR(user_arg);
	cx.prompt_class = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	CanaryPromptHash(prompt, strlen(prompt), cx.prompt_hash);
	CanaryNewRequestId(&cx.request_id);

	r = ConfigGetRollout(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	strlcpy(cx.canary, r->name, sizeof(cx.canary));
	cx.stage = r->stage_name;
	fallback_enabled = r->fallback_to_old;
	RouteDecide(r, cx.user_id, cx.user_len,
				PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4)), &d);
	cx.canary_cohort = d.canary;
	if (r->old_model)
		old_model_name = pstrdup(r->old_model);

	/* shadow mode: hand the new model's copy to the worker before calling */
	if (r->stage == CANARY_STAGE_SHADOW && r->armed && r->new_model != NULL)
		ShadowMaybeDispatch(r, &cx.request_id, cx.user_id, cx.user_len,
							prompt, cx.prompt_class, cx.prompt_hash);

	model = ConfigGetModel(d.model);
	CallAndRecord(&cx, model, prompt, false, &a);

	if (r->stage == CANARY_STAGE_SHADOW && r->armed && r->new_model != NULL)
		ShadowCompleteOld(&cx.request_id, model, &a);

	/* a failing new model: the canary user gets the old model's answer */
	if (AttemptFailed(&a) && d.canary && fallback_enabled && old_model_name &&
		strcmp(old_model_name, model->name) != 0)
	{
		old_model = ConfigGetModel(old_model_name);
		CallAndRecord(&cx, old_model, prompt, true, &fb);
		if (!AttemptFailed(&fb))
		{
			fallback_used = true;
			model = old_model;
			a = fb;
		}
		else
			ReportFailedAttempt(old_model, &fb);
	}
	if (AttemptFailed(&a))
		ReportFailedAttempt(model, &a);

	TimestampDifference(start, GetCurrentTimestamp(), &secs, &usecs);
	strlcpy(request_id_text,
			DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&cx.request_id))),
			sizeof(request_id_text));

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushString(&st, "response", a.text);
	PushString(&st, "model", model->name);
	PushString(&st, "cohort", cx.canary_cohort ? "canary" : "control");
	PushString(&st, "stage", cx.stage);
	PushInt(&st, "latency_ms", secs * 1000 + usecs / 1000, false);
	PushString(&st, "request_id", request_id_text);
	PushString(&st, "outcome", CanaryOutcomeName(a.outcome));
	PushBool(&st, "refusal", a.outcome == CANARY_OUTCOME_REFUSAL);
	PushBool(&st, "fallback", fallback_used);
	PushBool(&st, "cached", a.cached);
	PushInt(&st, "prompt_tokens", a.prompt_tokens, a.prompt_tokens < 0);
	PushInt(&st, "completion_tokens", a.completion_tokens, a.completion_tokens < 0);
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);

	PG_RETURN_JSONB_P(JsonbValueToJsonb(res));
}
