/*-------------------------------------------------------------------------
 *
 * call.c
 *	  canary_call: route a user's prompt, call the chosen model over HTTP,
 *	  fall back to the old model when the new one fails, and record every
 *	  attempt in the metrics queue.
 *
 * Data flows one way: config.c gives the rollout and models, routing.c the
 * decision, http.c/provider.c the model's answer; this file classifies the
 * answer (outcome.c's refusal rule), puts one CanaryMetricRecord per attempt
 * into the shared-memory queue (metrics_queue.c), which the worker writes
 * outside the caller's transaction, and builds the jsonb result.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "cache.h"
#include "call.h"
#include "chat.h"
#include "config.h"
#include "fleet.h"
#include "metrics.h"
#include "provider.h"
#include "routing.h"
#include "shadow.h"
#include "util.h"

/*
 * RecordAttempt
 *		Put one attempt into the metrics queue.  Never raises: it may be
 *		called from an error path.  A full queue is counted as a drop by
 *		MetricsEnqueue.
 */
static void
RecordAttempt(const CanaryCall *cx, const CanaryModel *model,
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

static bool
AttemptFailed(const CanaryAttempt *a)
{
	return a->outcome == CANARY_OUTCOME_ERROR || a->outcome == CANARY_OUTCOME_TIMEOUT;
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

/* ----------------------------------------------------------------------
 * A call, step by step (call.h)
 * ----------------------------------------------------------------------
 */

/*
 * CallCopyModel
 *		A deep copy of model in the current memory context: the config
 *		cache may be rebuilt while a call is in flight (a batch or the
 *		submission worker keeps calls across statements and transactions).
 */
CanaryModel *
CallCopyModel(const CanaryModel *model)
{
	CanaryModel *m = palloc(sizeof(CanaryModel));

	*m = *model;
	m->base_url = pstrdup(model->base_url);
	m->model = pstrdup(model->model);
	m->system_prompt = model->system_prompt ? pstrdup(model->system_prompt) : NULL;
	m->api_key_env = model->api_key_env ? pstrdup(model->api_key_env) : NULL;
	return m;
}

/* Raise 22004 when a required argument is NULL. */
void
CallRequireNotNull(bool isnull, const char *what)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what)));
}

/*
 * CallBegin
 *		Start a call of req for a user: check the user id, route it under
 *		rollout canary (session_id may pin it), hand the shadow copy to the
 *		worker in stage shadow, and pick the first model.  Raises for an
 *		invalid user id or rollout (22004, 22023, 42704) and when the
 *		library's worker does not serve this database.  Everything is
 *		palloc'd in the current memory context, which must outlive the call.
 */
void
CallBegin(CanaryCall *call, const CanaryRequest *req, text *user_arg,
		  bool user_isnull, const char *canary, const char *prompt_class,
		  const char *session_id)
{
	const CanaryRollout *r;
	RouteDecision d;
	const char *identity;

	RoutingCheckUserId(user_arg, user_isnull);
	if (canary == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rollout name must not be NULL"),
				 errhint("Omit the argument to use the rollout named \"default\".")));

	MetricsRequireWorkerDatabase();
	MetricsCountCall();

	memset(call, 0, sizeof(*call));
	call->start = GetCurrentTimestamp();
	call->req = *req;
	call->user_len = VARSIZE_ANY_EXHDR(user_arg);
	call->user_id = pnstrdup(VARDATA_ANY(user_arg), call->user_len);
	call->prompt_class = prompt_class ? pstrdup(prompt_class) : NULL;
	identity = req->chat ? ChatRequestText(req->chat) : req->prompt;
	CanaryPromptHash(identity, strlen(identity), call->prompt_hash);
	if (req->request_id != NULL)
		memcpy(&call->request_id, req->request_id, sizeof(pg_uuid_t));
	else
		CanaryNewRequestId(&call->request_id);

	r = ConfigGetRollout(canary);
	strlcpy(call->canary, r->name, sizeof(call->canary));
	call->stage = r->stage_name;
	call->fallback_enabled = r->fallback_to_old;
	RouteDecide(r, call->user_id, call->user_len, session_id, &d);
	call->canary_cohort = d.canary;
	if (r->old_model)
		call->old_model_name = pstrdup(r->old_model);

	/*
	 * shadow mode: hand the new model's copy to the worker before calling
	 * (a chat request as its normalised JSON text); none while a fleet
	 * member fails safe, which keeps the new model out of every call
	 */
	if (r->stage == CANARY_STAGE_SHADOW && r->armed && r->new_model != NULL &&
		!FleetFailSafeActive())
	{
		ShadowMaybeDispatch(r, &call->request_id, call->user_id, call->user_len,
							identity, req->chat != NULL, call->prompt_class,
							call->prompt_hash);
		call->shadow = true;
	}

	call->model = CallCopyModel(ConfigGetModel(d.model));
}

/* Milliseconds since t. */
static int
MsSince(TimestampTz t)
{
	long		secs;
	int			usecs;

	TimestampDifference(t, GetCurrentTimestamp(), &secs, &usecs);
	return (int) (secs * 1000 + usecs / 1000);
}

/*
 * CallCacheLookup
 *		Build the current attempt's request (call->http, once: the cache key
 *		and the transfer use the same one); with the response cache on,
 *		compute its cache key and look for a fresh answer: true with a
 *		filled in (cached), false when the model must be asked.  Caller must
 *		be in a transaction.
 */
bool
CallCacheLookup(CanaryCall *call, CanaryAttempt *a)
{
	TimestampTz start = GetCurrentTimestamp();

	ProviderBuildRequest(call->model, &call->req, &call->http);
	if (!CacheEnabled())
		return false;
	CacheComputeKey(&call->req, &call->http, &call->cache_key);
	if (!CacheLookup(call->model, &call->cache_key, a))
		return false;
	a->latency_ms = MsSince(start);
	return true;
}

/*
 * CallAttemptDone
 *		The current attempt ended with a (from the cache or the model):
 *		classify a refusal (outcome.c's rule: the provider's signal or the
 *		refusal patterns),
 *		record it, keep a new answer in the response cache, give the old
 *		model's answer to the shadow job.  Caller must be in a transaction.
 */
void
CallAttemptDone(CanaryCall *call, CanaryAttempt *a)
{
	if (a->outcome == CANARY_OUTCOME_OK &&
		CanaryIsRefusal(a->provider_refusal, a->text))
		a->outcome = CANARY_OUTCOME_REFUSAL;
	RecordAttempt(call, call->model, a, call->fallback);
	if (CacheEnabled() && !a->cached)
		CacheStore(call->model, &call->cache_key, a);
	if (call->shadow && !call->fallback)
		ShadowCompleteOld(&call->request_id, call->model, a);
	call->attempt = *a;
}

/*
 * CallAttemptCanceled
 *		Record the current attempt, begun at attempt_start, as interrupted
 *		(error "canceled").  Never raises: called on the way out of an
 *		error.
 */
void
CallAttemptCanceled(CanaryCall *call, TimestampTz attempt_start)
{
	CanaryAttempt failed;

	memset(&failed, 0, sizeof(failed));
	failed.outcome = CANARY_OUTCOME_ERROR;
	failed.error = "canceled";
	failed.prompt_tokens = -1;
	failed.completion_tokens = -1;
	failed.latency_ms = MsSince(attempt_start);
	RecordAttempt(call, call->model, &failed, call->fallback);
}

/*
 * CallAttemptRecord
 *		Record attempt a as it is, nothing else (no refusal patterns, cache
 *		or shadow: for an attempt that ended just before a cancel).  Never
 *		raises.
 */
void
CallAttemptRecord(CanaryCall *call, const CanaryAttempt *a)
{
	RecordAttempt(call, call->model, a, call->fallback);
}

bool
CallFailed(const CanaryCall *call)
{
	return AttemptFailed(&call->attempt);
}

/*
 * CallNextModel
 *		After an attempt: a failing new model gives a canary user the old
 *		model's answer when the rollout falls back.  Returns true with
 *		call->model set to the old model for one more attempt, or false when
 *		the call is over (call->done).
 */
bool
CallNextModel(CanaryCall *call)
{
	if (CallFailed(call) && !call->fallback && call->canary_cohort &&
		call->fallback_enabled && call->old_model_name != NULL &&
		strcmp(call->old_model_name, call->model->name) != 0)
	{
		call->model = CallCopyModel(ConfigGetModel(call->old_model_name));
		call->fallback = true;
		return true;
	}
	call->done = true;
	return false;
}

/*
 * CallRaiseFailure
 *		Raise the error of a call no model could answer (HttpReportFailure:
 *		38000, 38L01 timeout, 38L02 transport failure, 42501 key policy).
 */
void
CallRaiseFailure(const CanaryCall *call)
{
	HttpReportFailure(call->model, &call->attempt);
}

/*
 * CallResult
 *		The jsonb result of an answered call: the answer, model, cohort,
 *		stage, latency, request id, outcome, refusal, fallback, cached and
 *		token counts; for a chat request also tool_calls, finish_reason and
 *		usage.
 */
Jsonb *
CallResult(const CanaryCall *call)
{
	const CanaryAttempt *a = &call->attempt;
	JsonbParseState *st = NULL;
	char		request_id_text[40];

	strlcpy(request_id_text,
			DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&call->request_id))),
			sizeof(request_id_text));

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushString(&st, "response", a->text);
	PushString(&st, "model", call->model->name);
	PushString(&st, "cohort", call->canary_cohort ? "canary" : "control");
	PushString(&st, "stage", call->stage);
	PushInt(&st, "latency_ms", MsSince(call->start), false);
	PushString(&st, "request_id", request_id_text);
	PushString(&st, "outcome", CanaryOutcomeName(a->outcome));
	PushBool(&st, "refusal", a->outcome == CANARY_OUTCOME_REFUSAL);
	PushBool(&st, "fallback", call->fallback);
	PushBool(&st, "cached", a->cached);
	PushInt(&st, "prompt_tokens", a->prompt_tokens, a->prompt_tokens < 0);
	PushInt(&st, "completion_tokens", a->completion_tokens, a->completion_tokens < 0);
	if (call->req.chat != NULL)
	{
		JsonbValue	k,
					v;

		k.type = jbvString;
		k.val.string.val = "tool_calls";
		k.val.string.len = strlen("tool_calls");
		pushJsonbValue(&st, WJB_KEY, &k);
		ChatAnswerField(a->answer, "tool_calls", &v);
		pushJsonbValue(&st, WJB_VALUE, &v);
		k.val.string.val = "finish_reason";
		k.val.string.len = strlen("finish_reason");
		pushJsonbValue(&st, WJB_KEY, &k);
		ChatAnswerField(a->answer, "finish_reason", &v);
		pushJsonbValue(&st, WJB_VALUE, &v);

		k.val.string.val = "usage";
		k.val.string.len = strlen("usage");
		pushJsonbValue(&st, WJB_KEY, &k);
		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		PushInt(&st, "prompt_tokens", a->prompt_tokens, a->prompt_tokens < 0);
		PushInt(&st, "completion_tokens", a->completion_tokens, a->completion_tokens < 0);
		PushInt(&st, "total_tokens", (int64) a->prompt_tokens + a->completion_tokens,
				a->prompt_tokens < 0 || a->completion_tokens < 0);
		pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	}
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/*
 * CallRun
 *		Make the call in this backend, blocking: each attempt from the
 *		cache or the model (HttpCallModelRequest, with its retries), then
 *		the fallback.  A cancel or termination during an attempt records it
 *		as "canceled" and is rethrown.  Raises the call's failure.
 */
static void
CallRun(CanaryCall *call)
{
	for (;;)
	{
		CanaryAttempt a;

		if (!CallCacheLookup(call, &a))
		{
			TimestampTz attempt_start = GetCurrentTimestamp();

			PG_TRY();
			{
				HttpCallModelRequest(call->model, &call->req, &call->http, &a);
			}
			PG_CATCH();
			{
				CallAttemptCanceled(call, attempt_start);
				PG_RE_THROW();
			}
			PG_END_TRY();
		}
		CallAttemptDone(call, &a);
		if (!CallNextModel(call))
			break;
	}
	if (CallFailed(call))
		CallRaiseFailure(call);
}

/* The optional text argument n, or NULL. */
static char *
OptionalText(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/*
 * canary_call(prompt, user_id, canary, prompt_class, session_id) -> jsonb
 */
PG_FUNCTION_INFO_V1(canary_call);
Datum
canary_call(PG_FUNCTION_ARGS)
{
	text	   *prompt_arg;
	CanaryRequest req;
	CanaryCall	call;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("prompt must not be NULL")));
	prompt_arg = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(prompt_arg) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prompt must not be empty")));

	memset(&req, 0, sizeof(req));
	req.prompt = text_to_cstring(prompt_arg);
	CallBegin(&call, &req, PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
			  PG_ARGISNULL(1), OptionalText(fcinfo, 2), OptionalText(fcinfo, 3),
			  OptionalText(fcinfo, 4));
	CallRun(&call);
	PG_RETURN_JSONB_P(CallResult(&call));
}

/*
 * canary_chat(request, user_id, canary, prompt_class, session_id) -> jsonb
 *		An OpenAI chat-completions request, validated before anything is
 *		sent (chat.c), then called exactly as canary_call calls a prompt.
 */
PG_FUNCTION_INFO_V1(canary_chat);
Datum
canary_chat(PG_FUNCTION_ARGS)
{
	CanaryRequest req;
	CanaryCall	call;

	memset(&req, 0, sizeof(req));
	req.chat = ChatNormalize(PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0));
	CallBegin(&call, &req, PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
			  PG_ARGISNULL(1), OptionalText(fcinfo, 2), OptionalText(fcinfo, 3),
			  OptionalText(fcinfo, 4));
	CallRun(&call);
	PG_RETURN_JSONB_P(CallResult(&call));
}
