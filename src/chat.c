/*-------------------------------------------------------------------------
 *
 * chat.c
 *	  Whole chat requests (canary_chat, canary_batch, canary_submit): the
 *	  validation and normalisation of an OpenAI chat-completions request
 *	  body, its translation into each provider's dialect, and the reading
 *	  of the answer (text, tool calls, finish reason) back into OpenAI's
 *	  shape.
 *
 * The contract.  ChatNormalize checks a request completely before anything
 * is sent: every invalid request fails there with a specific SQLSTATE
 * (22023 for what the request says, 54000 past llm_canary.max_request_bytes,
 * 0A000 for what is valid OpenAI but not offered through SQL, such as
 * streaming), so a model never sees a request it would reject for its form.
 * The normalised request is the request without "model" (the model row
 * decides it) and "stream"; jsonb orders keys, so its text is a stable
 * identity (the response cache key and prompt hash use it).
 *
 * Translation to Anthropic: system and developer turns become "system";
 * user text parts become text blocks; an assistant's tool calls become
 * tool_use blocks (arguments parsed into "input"); tool turns become
 * tool_result blocks in a user turn; consecutive turns of one role are
 * merged (Anthropic alternates roles); tools, tool_choice, stop and user
 * are translated; max_tokens comes from the request, else the model row,
 * else 1024; response_format becomes an instruction appended to the
 * system prompt; OpenAI-only parameters (seed, penalties, logprobs, n,
 * ...) are dropped.  For OpenAI models the request goes as it is, with the
 * model row's system prompt, max tokens and temperature filling in what
 * the request leaves out.
 *
 * The answer is read by provider.c first (outcome, text, usage, provider
 * errors and refusals, never raising); RequestParseResponse then reads a
 * chat answer's tool calls and finish reason (ChatParseAnswer), also never
 * raising for what the upstream sent.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "chat.h"
#include "provider.h"

/* Anthropic requires max_tokens; used when neither request nor model sets it. */
#define CHAT_ANTHROPIC_DEFAULT_MAX_TOKENS 1024

/* settings */
static int	canary_max_request_bytes = 1024 * 1024;

/*
 * ChatDefineSettings
 *		Define llm_canary.max_request_bytes; called from _PG_init.
 */
void
ChatDefineSettings(void)
{
	DefineCustomIntVariable("llm_canary.max_request_bytes",
							"Sets the largest chat request accepted by canary_chat, canary_batch and canary_submit.",
							"A larger request fails with SQLSTATE 54000 before anything is sent.",
							&canary_max_request_bytes,
							1024 * 1024,
							1024,
							64 * 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}

/* ----------------------------------------------------------------------
 * Small jsonb helpers
 * ----------------------------------------------------------------------
 */

/* The value of key in object container c, or NULL; *out is filled. */
static JsonbValue *
JGet(JsonbContainer *c, const char *key, JsonbValue *out)
{
	if (c == NULL || !JsonContainerIsObject(c))
		return NULL;
	return getKeyJsonValueFromContainer(c, key, strlen(key), out);
}

static bool
JIsObject(const JsonbValue *v)
{
	return v != NULL && v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data);
}

static bool
JIsArray(const JsonbValue *v)
{
	return v != NULL && v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data);
}

static bool
JIsString(const JsonbValue *v)
{
	return v != NULL && v->type == jbvString;
}

/* A palloc'd NUL-terminated copy of a string value. */
static char *
JStr(const JsonbValue *v)
{
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
JStrEq(const JsonbValue *v, const char *s)
{
	return JIsString(v) && v->val.string.len == (int) strlen(s) &&
		memcmp(v->val.string.val, s, v->val.string.len) == 0;
}

static const char *
JTypeName(const JsonbValue *v)
{
	if (v == NULL)
		return "missing";
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvBinary:
			return JsonContainerIsObject(v->val.binary.data) ? "an object" : "an array";
		default:
			return "a container";
	}
}

/* Is v a number with an integral value in [lo, hi]? */
static bool
JIsIntIn(const JsonbValue *v, int64 lo, int64 hi)
{
	Numeric		n;
	char	   *s;
	char	   *end;
	long long	x;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	n = v->val.numeric;
	s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(n)));
	errno = 0;
	x = strtoll(s, &end, 10);
	return errno == 0 && *end == '\0' && x >= lo && x <= hi;
}

static int
JInt(const JsonbValue *v)
{
	return DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v->val.numeric)));
}

static void
PushKey(JsonbParseState **st, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(st, WJB_KEY, &k);
}

static void
PushStr(JsonbParseState **st, JsonbIteratorToken tok, const char *s)
{
	JsonbValue	v;

	if (s == NULL)
		v.type = jbvNull;
	else
	{
		v.type = jbvString;
		v.val.string.val = (char *) s;
		v.val.string.len = strlen(s);
	}
	pushJsonbValue(st, tok, &v);
}

static void
PushKeyStr(JsonbParseState **st, const char *key, const char *s)
{
	PushKey(st, key);
	PushStr(st, WJB_VALUE, s);
}

static void
PushKeyInt(JsonbParseState **st, const char *key, int64 n)
{
	JsonbValue	v;

	PushKey(st, key);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(n);
	pushJsonbValue(st, WJB_VALUE, &v);
}

/* Push key: v (any value, containers copied). */
static void
PushKeyValue(JsonbParseState **st, const char *key, JsonbValue *v)
{
	PushKey(st, key);
	pushJsonbValue(st, WJB_VALUE, v);
}

/* ----------------------------------------------------------------------
 * Validation
 * ----------------------------------------------------------------------
 */

/* Raise the error of an invalid chat request; detail is a full sentence. */
static void
ChatInvalid(int code, const char *detail)
{
	ereport(ERROR,
			(errcode(code),
			 errmsg("invalid chat request"),
			 errdetail("%s", detail),
			 errhint("Pass an OpenAI chat-completions request body; see \"Chat requests\" in the llm_canary README.")));
}

/*
 * The text of a message's content: a string, or an array of
 * {"type": "text", "text": ...} parts (joined with no separator, as
 * OpenAI reads them).  where names the message for errors.  Returns NULL
 * for a null or absent content when null_ok.
 */
static char *
ContentText(JsonbValue *content, const char *where, bool null_ok)
{
	StringInfoData buf;
	JsonbContainer *arr;
	int			n;

	if (content == NULL || content->type == jbvNull)
	{
		if (null_ok)
			return NULL;
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("%s has no content.", where));
	}
	if (JIsString(content))
		return JStr(content);
	if (!JIsArray(content))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("The content of %s is %s; it must be a string or an array of text parts.",
							 where, JTypeName(content)));
	initStringInfo(&buf);
	arr = content->val.binary.data;
	n = JsonContainerSize(arr);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *part = getIthJsonbValueFromContainer(arr, i);
		JsonbValue	t,
					x;

		if (!JIsObject(part) ||
			!JStrEq(JGet(part->val.binary.data, "type", &t), "text"))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("chat request content parts other than text are not supported"),
					 errdetail("Part %d of the content of %s is not {\"type\": \"text\", \"text\": ...}.",
							   i, where)));
		if (!JIsString(JGet(part->val.binary.data, "text", &x)))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						psprintf("Part %d of the content of %s has no string \"text\".", i, where));
		appendBinaryStringInfo(&buf, x.val.string.val, x.val.string.len);
	}
	return buf.data;
}

/* Does s hold one JSON object (the arguments of a tool call)? */
static bool
IsJsonObjectText(const char *s, int len)
{
	JsonLexContext *lex;
	int			i = 0;

	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	if (i == len || s[i] != '{')
		return false;
	lex = makeJsonLexContextCstringLen((char *) s, len, GetDatabaseEncoding(), false);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * Check one assistant tool call; add its id to *ids (a list of palloc'd
 * strings) for the tool turns that answer it.
 */
static void
CheckToolCall(JsonbValue *call, const char *where, int j, List **ids)
{
	JsonbValue	id,
				type,
				fn,
				name,
				args;
	JsonbContainer *c;

	if (!JIsObject(call))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("Tool call %d of %s is %s; it must be an object.", j, where,
							 JTypeName(call)));
	c = call->val.binary.data;
	if (!JIsString(JGet(c, "id", &id)) || id.val.string.len == 0)
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("Tool call %d of %s has no id.", j, where));
	if (JGet(c, "type", &type) != NULL && !JStrEq(&type, "function"))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("Tool call %d of %s has a type other than \"function\".", j, where));
	if (!JIsObject(JGet(c, "function", &fn)) ||
		!JIsString(JGet(fn.val.binary.data, "name", &name)) || name.val.string.len == 0)
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("Tool call %d of %s has no function name.", j, where));
	if (!JIsString(JGet(fn.val.binary.data, "arguments", &args)) ||
		!IsJsonObjectText(args.val.string.val, args.val.string.len))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("The arguments of tool call %d of %s are not a JSON object in a string.",
							 j, where));
	*ids = lappend(*ids, JStr(&id));
}

static bool
ListHasString(List *l, const char *s)
{
	ListCell   *lc;

	foreach(lc, l)
		if (strcmp((char *) lfirst(lc), s) == 0)
		return true;
	return false;
}

/* Check the messages array. */
static void
CheckMessages(JsonbValue *msgs)
{
	JsonbContainer *arr;
	int			n;
	List	   *tool_ids = NIL;

	if (msgs == NULL || msgs->type == jbvNull)
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE, "The request has no \"messages\".");
	if (!JIsArray(msgs))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					psprintf("\"messages\" is %s; it must be an array.", JTypeName(msgs)));
	arr = msgs->val.binary.data;
	n = JsonContainerSize(arr);
	if (n == 0)
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE, "\"messages\" is empty.");

	for (int i = 0; i < n; i++)
	{
		JsonbValue *m = getIthJsonbValueFromContainer(arr, i);
		JsonbValue	role,
					content,
					calls,
					tcid;
		JsonbValue *contentp;
		JsonbContainer *c;
		char	   *where = psprintf("messages[%d]", i);
		char	   *r;

		if (!JIsObject(m))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						psprintf("%s is %s; it must be an object.", where, JTypeName(m)));
		c = m->val.binary.data;
		if (!JIsString(JGet(c, "role", &role)))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						psprintf("%s has no role.", where));
		r = JStr(&role);
		contentp = JGet(c, "content", &content);

		if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0 ||
			strcmp(r, "user") == 0)
			(void) ContentText(contentp, where, false);
		else if (strcmp(r, "assistant") == 0)
		{
			bool		has_calls = false;

			if (JGet(c, "tool_calls", &calls) != NULL && calls.type != jbvNull)
			{
				int			ncalls;

				if (!JIsArray(&calls))
					ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
								psprintf("The tool_calls of %s are %s; they must be an array.",
										 where, JTypeName(&calls)));
				ncalls = JsonContainerSize(calls.val.binary.data);
				for (int j = 0; j < ncalls; j++)
					CheckToolCall(getIthJsonbValueFromContainer(calls.val.binary.data, j),
								  where, j, &tool_ids);
				has_calls = ncalls > 0;
			}
			if (ContentText(contentp, where, true) == NULL && !has_calls)
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							psprintf("%s has neither content nor tool calls.", where));
		}
		else if (strcmp(r, "tool") == 0)
		{
			char	   *id;

			if (!JIsString(JGet(c, "tool_call_id", &tcid)) || tcid.val.string.len == 0)
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							psprintf("%s has the role \"tool\" but no tool_call_id.", where));
			id = JStr(&tcid);
			if (!ListHasString(tool_ids, id))
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							psprintf("%s answers the tool call \"%s\", which no earlier assistant message made.",
									 where, id));
			(void) ContentText(contentp, where, false);
		}
		else
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						psprintf("%s has the role \"%s\"; it must be system, developer, user, assistant or tool.",
								 where, r));
	}
}

/* Check the tool definitions and tool_choice. */
static void
CheckTools(JsonbContainer *req)
{
	JsonbValue	tools,
				choice;

	if (JGet(req, "tools", &tools) != NULL && tools.type != jbvNull)
	{
		int			n;

		if (!JIsArray(&tools))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						psprintf("\"tools\" is %s; it must be an array.", JTypeName(&tools)));
		n = JsonContainerSize(tools.val.binary.data);
		for (int i = 0; i < n; i++)
		{
			JsonbValue *t = getIthJsonbValueFromContainer(tools.val.binary.data, i);
			JsonbValue	type,
						fn,
						name,
						params;

			if (!JIsObject(t) ||
				!JStrEq(JGet(t->val.binary.data, "type", &type), "function") ||
				!JIsObject(JGet(t->val.binary.data, "function", &fn)) ||
				!JIsString(JGet(fn.val.binary.data, "name", &name)) ||
				name.val.string.len == 0)
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							psprintf("tools[%d] is not {\"type\": \"function\", \"function\": {\"name\": ...}}.", i));
			if (JGet(fn.val.binary.data, "parameters", &params) != NULL &&
				!JIsObject(&params))
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							psprintf("The parameters of tools[%d] are %s; they must be a JSON Schema object.",
									 i, JTypeName(&params)));
		}
	}
	if (JGet(req, "tool_choice", &choice) != NULL && choice.type != jbvNull)
	{
		JsonbValue	type,
					fn,
					name;

		if (JIsString(&choice))
		{
			if (!JStrEq(&choice, "auto") && !JStrEq(&choice, "none") &&
				!JStrEq(&choice, "required"))
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							"\"tool_choice\" must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.");
		}
		else if (!JIsObject(&choice) ||
				 !JStrEq(JGet(choice.val.binary.data, "type", &type), "function") ||
				 !JIsObject(JGet(choice.val.binary.data, "function", &fn)) ||
				 !JIsString(JGet(fn.val.binary.data, "name", &name)))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						"\"tool_choice\" must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.");
	}
}

/* Check the sampling and output parameters the translation reads. */
static void
CheckParameters(JsonbContainer *req)
{
	JsonbValue	v;
	static const char *const int_keys[] = {"max_tokens", "max_completion_tokens"};

	for (int i = 0; i < lengthof(int_keys); i++)
		if (JGet(req, int_keys[i], &v) != NULL && v.type != jbvNull &&
			!JIsIntIn(&v, 1, INT_MAX))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						psprintf("\"%s\" must be a positive integer.", int_keys[i]));
	if (JGet(req, "temperature", &v) != NULL && v.type != jbvNull &&
		v.type != jbvNumeric)
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE, "\"temperature\" must be a number.");
	if (JGet(req, "seed", &v) != NULL && v.type != jbvNull &&
		!JIsIntIn(&v, PG_INT64_MIN, PG_INT64_MAX))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE, "\"seed\" must be an integer.");
	if (JGet(req, "stop", &v) != NULL && v.type != jbvNull && !JIsString(&v))
	{
		int			n;

		if (!JIsArray(&v))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						"\"stop\" must be a string or an array of strings.");
		n = JsonContainerSize(v.val.binary.data);
		for (int i = 0; i < n; i++)
			if (!JIsString(getIthJsonbValueFromContainer(v.val.binary.data, i)))
				ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
							"\"stop\" must be a string or an array of strings.");
	}
	if (JGet(req, "response_format", &v) != NULL && v.type != jbvNull)
	{
		JsonbValue	type;

		if (!JIsObject(&v) ||
			!(JStrEq(JGet(v.val.binary.data, "type", &type), "text") ||
			  JStrEq(&type, "json_object") || JStrEq(&type, "json_schema")))
			ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
						"\"response_format\" must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", ...}.");
	}
	if (JGet(req, "stream", &v) != NULL && !(v.type == jbvNull ||
											 (v.type == jbvBool && !v.val.boolean)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("streaming is not supported through SQL"),
				 errdetail("The request sets \"stream\"."),
				 errhint("Remove \"stream\"; a SQL function returns its result once, when the answer is complete.")));
	if (JGet(req, "n", &v) != NULL && v.type != jbvNull && !JIsIntIn(&v, 1, 1))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("only one choice per chat request is supported"),
				 errdetail("The request sets \"n\" to a value other than 1."),
				 errhint("Send the request several times, or use canary_batch.")));
}

/*
 * ChatNormalize
 *		Validate an OpenAI chat-completions request body and return its
 *		normalised form: the same object without "model" and "stream".
 *		Raises 22004 for NULL, 54000 past llm_canary.max_request_bytes,
 *		22023 for an invalid request, 0A000 for what is not offered.
 *		Allocates in the current memory context.
 */
Jsonb *
ChatNormalize(Jsonb *request)
{
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	k,
				v,
				msgs;
	JsonbValue *res;

	if (request == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("chat request must not be NULL")));
	if (VARSIZE(request) > (Size) canary_max_request_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("chat request is too large"),
				 errdetail("The request takes %zu bytes; llm_canary.max_request_bytes is %d.",
						   (Size) VARSIZE(request), canary_max_request_bytes),
				 errhint("Shorten the conversation, or raise llm_canary.max_request_bytes.")));
	if (!JB_ROOT_IS_OBJECT(request))
		ChatInvalid(ERRCODE_INVALID_PARAMETER_VALUE,
					"The request is not a JSON object.");

	CheckMessages(JGet(&request->root, "messages", &msgs));
	CheckTools(&request->root);
	CheckParameters(&request->root);

	/* copy every top-level key but "model" and "stream" */
	it = JsonbIteratorInit(&request->root);
	tok = JsonbIteratorNext(&it, &v, true);
	Assert(tok == WJB_BEGIN_OBJECT);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_END_OBJECT)
	{
		Assert(tok == WJB_KEY);
		tok = JsonbIteratorNext(&it, &v, true);
		if ((k.val.string.len == 5 && memcmp(k.val.string.val, "model", 5) == 0) ||
			(k.val.string.len == 6 && memcmp(k.val.string.val, "stream", 6) == 0))
			continue;
		pushJsonbValue(&st, WJB_KEY, &k);
		pushJsonbValue(&st, WJB_VALUE, &v);
	}
	res = pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/*
 * ChatRequestFromJsonb
 *		The request of a batch row or a submission: a JSON string is a
 *		prompt, a JSON object a chat request (validated and normalised by
 *		ChatNormalize).  Raises 22004 for NULL and 22023 for anything else
 *		or an empty prompt.  Fills *req (request_id NULL); allocates in the
 *		current memory context.
 */
void
ChatRequestFromJsonb(Jsonb *request, CanaryRequest *req)
{
	memset(req, 0, sizeof(*req));
	if (request == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request must not be NULL")));
	if (JB_ROOT_IS_SCALAR(request))
	{
		JsonbValue	v;

		if (!JsonbExtractScalar(&request->root, &v) || v.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("request must be a JSON string (a prompt) or a JSON object (a chat request)")));
		if (v.val.string.len == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("prompt must not be empty")));
		req->prompt = pnstrdup(v.val.string.val, v.val.string.len);
	}
	else
		req->chat = ChatNormalize(request);
}

/*
 * ChatRequestText
 *		The normalised request as text (its identity).  palloc'd.
 */
char *
ChatRequestText(Jsonb *chat)
{
	return JsonbToCString(NULL, &chat->root, VARSIZE(chat));
}

/* ----------------------------------------------------------------------
 * Building the provider body
 * ----------------------------------------------------------------------
 */

/* Does the request have a system or developer turn? */
static bool
HasSystemTurn(JsonbContainer *msgs)
{
	int			n = JsonContainerSize(msgs);

	for (int i = 0; i < n; i++)
	{
		JsonbValue *m = getIthJsonbValueFromContainer(msgs, i);
		JsonbValue	role;

		JGet(m->val.binary.data, "role", &role);
		if (JStrEq(&role, "system") || JStrEq(&role, "developer"))
			return true;
	}
	return false;
}

static void
PushFloat(JsonbParseState **st, const char *key, double d)
{
	JsonbValue	v;

	PushKey(st, key);
	v.type = jbvNumeric;
	v.val.numeric = DatumGetNumeric(DirectFunctionCall1(float8_numeric, Float8GetDatum(d)));
	pushJsonbValue(st, WJB_VALUE, &v);
}

/* The OpenAI body: the request, with the model row filling in. */
static Jsonb *
OpenAIBody(const CanaryModel *model, Jsonb *chat)
{
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	k,
				v,
				msgs;
	JsonbContainer *req = &chat->root;
	bool		add_system;

	JGet(req, "messages", &msgs);
	add_system = model->system_prompt != NULL && !HasSystemTurn(msgs.val.binary.data);

	it = JsonbIteratorInit(req);
	(void) JsonbIteratorNext(&it, &v, true);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	while ((tok = JsonbIteratorNext(&it, &k, true)) == WJB_KEY)
	{
		(void) JsonbIteratorNext(&it, &v, true);
		pushJsonbValue(&st, WJB_KEY, &k);
		if (add_system && k.val.string.len == 8 &&
			memcmp(k.val.string.val, "messages", 8) == 0)
		{
			int			n = JsonContainerSize(msgs.val.binary.data);

			pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
			pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
			PushKeyStr(&st, "role", "system");
			PushKeyStr(&st, "content", model->system_prompt);
			pushJsonbValue(&st, WJB_END_OBJECT, NULL);
			for (int i = 0; i < n; i++)
				pushJsonbValue(&st, WJB_ELEM,
							   getIthJsonbValueFromContainer(msgs.val.binary.data, i));
			pushJsonbValue(&st, WJB_END_ARRAY, NULL);
		}
		else
			pushJsonbValue(&st, WJB_VALUE, &v);
	}
	PushKeyStr(&st, "model", model->model);
	if (model->max_tokens > 0 && JGet(req, "max_tokens", &v) == NULL &&
		JGet(req, "max_completion_tokens", &v) == NULL)
		PushKeyInt(&st, model->use_max_completion_tokens ?
				   "max_completion_tokens" : "max_tokens", model->max_tokens);
	if (model->has_temperature && JGet(req, "temperature", &v) == NULL)
		PushFloat(&st, "temperature", model->temperature);
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/*
 * One Anthropic turn being assembled: consecutive OpenAI messages of the
 * same Anthropic role are merged into it.
 */
typedef struct AnthTurn
{
	const char *role;			/* "user" or "assistant", NULL: none open */
} AnthTurn;

static void
TurnOpen(JsonbParseState **st, AnthTurn *turn, const char *role)
{
	if (turn->role != NULL && strcmp(turn->role, role) == 0)
		return;
	if (turn->role != NULL)
	{
		pushJsonbValue(st, WJB_END_ARRAY, NULL);
		pushJsonbValue(st, WJB_END_OBJECT, NULL);
	}
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	PushKeyStr(st, "role", role);
	PushKey(st, "content");
	pushJsonbValue(st, WJB_BEGIN_ARRAY, NULL);
	turn->role = role;
}

static void
PushTextBlock(JsonbParseState **st, const char *text)
{
	/* Anthropic rejects empty text blocks */
	if (text == NULL || text[0] == '\0')
		return;
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	PushKeyStr(st, "type", "text");
	PushKeyStr(st, "text", text);
	pushJsonbValue(st, WJB_END_OBJECT, NULL);
}

/* Parse the (already checked) arguments of a tool call into a jsonb value. */
static JsonbValue *
ParsedArguments(JsonbValue *args, JsonbValue *out)
{
	char	   *s = JStr(args);
	Jsonb	   *j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));

	out->type = jbvBinary;
	out->val.binary.data = &j->root;
	out->val.binary.len = VARSIZE(j) - VARHDRSZ;
	return out;
}

/* The system prompt of an Anthropic body, NULL if none. */
static char *
AnthropicSystem(const CanaryModel *model, JsonbContainer *req, JsonbContainer *msgs)
{
	StringInfoData buf;
	int			n = JsonContainerSize(msgs);
	JsonbValue	rf,
				type,
				schema;

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *m = getIthJsonbValueFromContainer(msgs, i);
		JsonbValue	role,
					content;

		JGet(m->val.binary.data, "role", &role);
		if (!JStrEq(&role, "system") && !JStrEq(&role, "developer"))
			continue;
		if (buf.len > 0)
			appendStringInfoString(&buf, "\n\n");
		appendStringInfoString(&buf,
							   ContentText(JGet(m->val.binary.data, "content", &content),
										   "a system message", false));
	}
	if (buf.len == 0 && model->system_prompt != NULL)
		appendStringInfoString(&buf, model->system_prompt);

	/* Anthropic has no JSON mode: say it in the system prompt */
	if (JIsObject(JGet(req, "response_format", &rf)))
	{
		JGet(rf.val.binary.data, "type", &type);
		if (JStrEq(&type, "json_object") || JStrEq(&type, "json_schema"))
		{
			if (buf.len > 0)
				appendStringInfoString(&buf, "\n\n");
			appendStringInfoString(&buf, "Respond with a single JSON object and nothing else.");
			if (JStrEq(&type, "json_schema") &&
				JGet(rf.val.binary.data, "json_schema", &schema) != NULL &&
				schema.type == jbvBinary)
			{
				appendStringInfoString(&buf, " It must conform to this JSON Schema: ");
				(void) JsonbToCString(&buf, schema.val.binary.data, schema.val.binary.len);
			}
		}
	}
	return buf.len > 0 ? buf.data : NULL;
}

/* "messages" of an Anthropic body. */
static void
AnthropicMessages(JsonbParseState **st, JsonbContainer *msgs)
{
	int			n = JsonContainerSize(msgs);
	AnthTurn	turn = {NULL};

	pushJsonbValue(st, WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *m = getIthJsonbValueFromContainer(msgs, i);
		JsonbContainer *c = m->val.binary.data;
		JsonbValue	role,
					content,
					calls,
					tcid;
		JsonbValue *contentp;

		JGet(c, "role", &role);
		contentp = JGet(c, "content", &content);
		if (JStrEq(&role, "system") || JStrEq(&role, "developer"))
			continue;
		if (JStrEq(&role, "user"))
		{
			TurnOpen(st, &turn, "user");
			PushTextBlock(st, ContentText(contentp, "a user message", false));
		}
		else if (JStrEq(&role, "tool"))
		{
			TurnOpen(st, &turn, "user");
			JGet(c, "tool_call_id", &tcid);
			pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
			PushKeyStr(st, "type", "tool_result");
			PushKeyValue(st, "tool_use_id", &tcid);
			PushKeyStr(st, "content", ContentText(contentp, "a tool message", false));
			pushJsonbValue(st, WJB_END_OBJECT, NULL);
		}
		else
		{
			TurnOpen(st, &turn, "assistant");
			PushTextBlock(st, ContentText(contentp, "an assistant message", true));
			if (JIsArray(JGet(c, "tool_calls", &calls)))
			{
				int			ncalls = JsonContainerSize(calls.val.binary.data);

				for (int j = 0; j < ncalls; j++)
				{
					JsonbValue *call = getIthJsonbValueFromContainer(calls.val.binary.data, j);
					JsonbValue	id,
								fn,
								name,
								args,
								input;

					JGet(call->val.binary.data, "id", &id);
					JGet(call->val.binary.data, "function", &fn);
					JGet(fn.val.binary.data, "name", &name);
					JGet(fn.val.binary.data, "arguments", &args);
					pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
					PushKeyStr(st, "type", "tool_use");
					PushKeyValue(st, "id", &id);
					PushKeyValue(st, "name", &name);
					PushKeyValue(st, "input", ParsedArguments(&args, &input));
					pushJsonbValue(st, WJB_END_OBJECT, NULL);
				}
			}
		}
	}
	if (turn.role != NULL)
	{
		pushJsonbValue(st, WJB_END_ARRAY, NULL);
		pushJsonbValue(st, WJB_END_OBJECT, NULL);
	}
	pushJsonbValue(st, WJB_END_ARRAY, NULL);
}

/* "tools" and "tool_choice" of an Anthropic body. */
static void
AnthropicTools(JsonbParseState **st, JsonbContainer *req)
{
	JsonbValue	tools,
				choice;

	if (JIsArray(JGet(req, "tools", &tools)))
	{
		int			n = JsonContainerSize(tools.val.binary.data);

		PushKey(st, "tools");
		pushJsonbValue(st, WJB_BEGIN_ARRAY, NULL);
		for (int i = 0; i < n; i++)
		{
			JsonbValue *t = getIthJsonbValueFromContainer(tools.val.binary.data, i);
			JsonbValue	fn,
						name,
						desc,
						params;

			JGet(t->val.binary.data, "function", &fn);
			JGet(fn.val.binary.data, "name", &name);
			pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
			PushKeyValue(st, "name", &name);
			if (JIsString(JGet(fn.val.binary.data, "description", &desc)))
				PushKeyValue(st, "description", &desc);
			PushKey(st, "input_schema");
			if (JIsObject(JGet(fn.val.binary.data, "parameters", &params)))
				pushJsonbValue(st, WJB_VALUE, &params);
			else
			{
				pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
				PushKeyStr(st, "type", "object");
				pushJsonbValue(st, WJB_END_OBJECT, NULL);
			}
			pushJsonbValue(st, WJB_END_OBJECT, NULL);
		}
		pushJsonbValue(st, WJB_END_ARRAY, NULL);
	}
	if (JGet(req, "tool_choice", &choice) != NULL && choice.type != jbvNull)
	{
		JsonbValue	fn,
					name;

		PushKey(st, "tool_choice");
		pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
		if (JStrEq(&choice, "auto"))
			PushKeyStr(st, "type", "auto");
		else if (JStrEq(&choice, "none"))
			PushKeyStr(st, "type", "none");
		else if (JStrEq(&choice, "required"))
			PushKeyStr(st, "type", "any");
		else
		{
			JGet(choice.val.binary.data, "function", &fn);
			JGet(fn.val.binary.data, "name", &name);
			PushKeyStr(st, "type", "tool");
			PushKeyValue(st, "name", &name);
		}
		pushJsonbValue(st, WJB_END_OBJECT, NULL);
	}
}

/* The Anthropic body translated from the request. */
static Jsonb *
AnthropicBody(const CanaryModel *model, Jsonb *chat)
{
	JsonbParseState *st = NULL;
	JsonbContainer *req = &chat->root;
	JsonbValue	msgs,
				v;
	char	   *system;

	JGet(req, "messages", &msgs);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushKeyStr(&st, "model", model->model);

	if (JGet(req, "max_tokens", &v) != NULL && v.type == jbvNumeric)
		PushKeyInt(&st, "max_tokens", JInt(&v));
	else if (JGet(req, "max_completion_tokens", &v) != NULL && v.type == jbvNumeric)
		PushKeyInt(&st, "max_tokens", JInt(&v));
	else
		PushKeyInt(&st, "max_tokens", model->max_tokens > 0 ? model->max_tokens :
				   CHAT_ANTHROPIC_DEFAULT_MAX_TOKENS);

	system = AnthropicSystem(model, req, msgs.val.binary.data);
	if (system != NULL)
		PushKeyStr(&st, "system", system);

	PushKey(&st, "messages");
	AnthropicMessages(&st, msgs.val.binary.data);

	if (JGet(req, "temperature", &v) != NULL && v.type == jbvNumeric)
		PushKeyValue(&st, "temperature", &v);
	else if (model->has_temperature)
		PushFloat(&st, "temperature", model->temperature);
	if (JGet(req, "top_p", &v) != NULL && v.type == jbvNumeric)
		PushKeyValue(&st, "top_p", &v);
	if (JGet(req, "stop", &v) != NULL && v.type != jbvNull)
	{
		PushKey(&st, "stop_sequences");
		if (JIsString(&v))
		{
			pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
			pushJsonbValue(&st, WJB_ELEM, &v);
			pushJsonbValue(&st, WJB_END_ARRAY, NULL);
		}
		else
			pushJsonbValue(&st, WJB_VALUE, &v);
	}
	if (JIsString(JGet(req, "user", &v)))
	{
		PushKey(&st, "metadata");
		pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
		PushKeyValue(&st, "user_id", &v);
		pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	}
	AnthropicTools(&st, req);
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/*
 * ChatRequestBody
 *		The JSON body of the normalised chat request for model, in model's
 *		dialect.  palloc'd in the current memory context.
 */
char *
ChatRequestBody(const CanaryModel *model, Jsonb *chat)
{
	Jsonb	   *body = model->provider == CANARY_PROVIDER_ANTHROPIC ?
		AnthropicBody(model, chat) : OpenAIBody(model, chat);

	return JsonbToCString(NULL, &body->root, VARSIZE(body));
}

/* ----------------------------------------------------------------------
 * Reading a chat answer
 * ----------------------------------------------------------------------
 */

/*
 * The response body as jsonb, or NULL when it is not a JSON value jsonb
 * accepts.  Never raises for the contents: the errors of jsonb_in (data
 * exceptions, nesting past the stack depth) are caught.  jsonb_in takes
 * no locks or buffers, so catching its errors without a subtransaction is
 * safe (as provider.c does for the JSON parser).
 */
static Jsonb *
ParseBodyJsonb(const char *body, size_t len)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	char	   *copy;
	Jsonb	   *volatile res = NULL;

	if (body == NULL || len == 0 || len >= MaxAllocSize)
		return NULL;
	/* UTF-8 from the provider, in the database encoding for jsonb */
	copy = ProviderBodyToServer(body, len);
	if (copy == NULL)
		return NULL;
	PG_TRY();
	{
		res = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(copy)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION &&
			edata->sqlerrcode != ERRCODE_STATEMENT_TOO_COMPLEX)
			PG_RE_THROW();
		FlushErrorState();
		FreeErrorData(edata);
		res = NULL;
	}
	PG_END_TRY();
	return res;
}

/* Map an Anthropic stop_reason to OpenAI's finish_reason. */
static const char *
FinishFromStopReason(const JsonbValue *stop)
{
	if (JStrEq(stop, "end_turn") || JStrEq(stop, "stop_sequence"))
		return "stop";
	if (JStrEq(stop, "max_tokens"))
		return "length";
	if (JStrEq(stop, "tool_use"))
		return "tool_calls";
	if (JStrEq(stop, "refusal"))
		return "content_filter";
	return JIsString(stop) ? JStr(stop) : NULL;
}

/* Push one tool call in OpenAI's shape. */
static void
PushToolCall(JsonbParseState **st, JsonbValue *id, JsonbValue *name, const char *args)
{
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	PushKeyValue(st, "id", id);
	PushKeyStr(st, "type", "function");
	PushKey(st, "function");
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	PushKeyValue(st, "name", name);
	PushKeyStr(st, "arguments", args);
	pushJsonbValue(st, WJB_END_OBJECT, NULL);
	pushJsonbValue(st, WJB_END_OBJECT, NULL);
}

/*
 * Read the tool calls of an answer into st (an array); returns how many,
 * or -1 when one is malformed.  Also sets *text (Anthropic: the text
 * blocks joined) and *finish.
 */
static int
ReadAnswer(const CanaryModel *model, JsonbContainer *root, JsonbParseState **st,
		   char **text, const char **finish)
{
	int			ncalls = 0;
	JsonbValue	v;

	*text = NULL;
	*finish = NULL;
	if (model->provider == CANARY_PROVIDER_ANTHROPIC)
	{
		JsonbValue	content;
		StringInfoData buf;
		bool		any_text = false;
		int			n;

		if (!JIsArray(JGet(root, "content", &content)))
			return -1;
		initStringInfo(&buf);
		n = JsonContainerSize(content.val.binary.data);
		for (int i = 0; i < n; i++)
		{
			JsonbValue *blk = getIthJsonbValueFromContainer(content.val.binary.data, i);
			JsonbValue	type,
						t,
						id,
						name,
						input;

			if (!JIsObject(blk))
				return -1;
			/* a block without "type" is skipped, not read from the stack */
			if (JGet(blk->val.binary.data, "type", &type) == NULL)
				type.type = jbvNull;
			if (JStrEq(&type, "text"))
			{
				if (!JIsString(JGet(blk->val.binary.data, "text", &t)))
					return -1;
				appendBinaryStringInfo(&buf, t.val.string.val, t.val.string.len);
				any_text = true;
			}
			else if (JStrEq(&type, "tool_use"))
			{
				if (!JIsString(JGet(blk->val.binary.data, "id", &id)) ||
					!JIsString(JGet(blk->val.binary.data, "name", &name)) ||
					!JIsObject(JGet(blk->val.binary.data, "input", &input)))
					return -1;
				PushToolCall(st, &id, &name,
							 JsonbToCString(NULL, input.val.binary.data, input.val.binary.len));
				ncalls++;
			}
		}
		*text = any_text ? buf.data : NULL;
		*finish = FinishFromStopReason(JGet(root, "stop_reason", &v));
	}
	else
	{
		JsonbValue	choices,
					msg,
					calls,
					content;
		JsonbValue *choice;

		if (!JIsArray(JGet(root, "choices", &choices)) ||
			JsonContainerSize(choices.val.binary.data) == 0)
			return -1;
		choice = getIthJsonbValueFromContainer(choices.val.binary.data, 0);
		if (!JIsObject(choice) || !JIsObject(JGet(choice->val.binary.data, "message", &msg)))
			return -1;
		if (JIsString(JGet(choice->val.binary.data, "finish_reason", &v)))
			*finish = JStr(&v);
		if (JIsString(JGet(msg.val.binary.data, "content", &content)))
			*text = JStr(&content);
		if (JGet(msg.val.binary.data, "tool_calls", &calls) != NULL && calls.type != jbvNull)
		{
			int			n;

			if (!JIsArray(&calls))
				return -1;
			n = JsonContainerSize(calls.val.binary.data);
			for (int i = 0; i < n; i++)
			{
				JsonbValue *call = getIthJsonbValueFromContainer(calls.val.binary.data, i);
				JsonbValue	id,
							fn,
							name,
							args;

				if (!JIsObject(call) ||
					!JIsString(JGet(call->val.binary.data, "id", &id)) ||
					!JIsObject(JGet(call->val.binary.data, "function", &fn)) ||
					!JIsString(JGet(fn.val.binary.data, "name", &name)) ||
					!JIsString(JGet(fn.val.binary.data, "arguments", &args)))
					return -1;
				PushToolCall(st, &id, &name, JStr(&args));
				ncalls++;
			}
		}
	}
	return ncalls;
}

/*
 * ChatParseAnswer
 *		Complete attempt (already read by ProviderParseResponse from a 2xx
 *		response) with what a chat answer holds beyond text: attempt->answer
 *		= {"content", "tool_calls" (OpenAI's shape, null if none),
 *		"finish_reason"}.  An answer with tool calls and no text is an
 *		answer (outcome ok), not a malformed response; with Anthropic, every
 *		text block counts.  Never raises for what body holds.
 */
static void
ChatParseAnswer(const CanaryModel *model, const char *body, size_t len,
				CanaryAttempt *attempt)
{
	Jsonb	   *root;
	JsonbParseState *st = NULL;
	JsonbValue *calls;
	char	   *text;
	const char *finish;
	int			ncalls;

	if (attempt->outcome == CANARY_OUTCOME_ERROR &&
		(attempt->error == NULL || strcmp(attempt->error, "malformed_response") != 0))
		return;
	root = ParseBodyJsonb(body, len);
	if (root == NULL || !JB_ROOT_IS_OBJECT(root))
		return;

	pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
	ncalls = ReadAnswer(model, &root->root, &st, &text, &finish);
	calls = pushJsonbValue(&st, WJB_END_ARRAY, NULL);
	if (ncalls < 0)
	{
		if (attempt->outcome != CANARY_OUTCOME_ERROR)
		{
			attempt->outcome = CANARY_OUTCOME_ERROR;
			attempt->text = NULL;
			attempt->error = pstrdup("malformed_response");
			attempt->error_detail = pstrdup("The response has a malformed tool call or content block.");
		}
		return;
	}
	if (attempt->outcome == CANARY_OUTCOME_ERROR)
	{
		/* provider.c wanted text; an answer made of tool calls is fine */
		if (ncalls == 0)
			return;
		attempt->outcome = CANARY_OUTCOME_OK;
		attempt->error = NULL;
		attempt->error_detail = NULL;
	}
	if (attempt->outcome == CANARY_OUTCOME_OK)
		attempt->text = text;

	st = NULL;
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	PushKeyStr(&st, "content", attempt->text);
	PushKey(&st, "tool_calls");
	if (ncalls > 0)
		pushJsonbValue(&st, WJB_VALUE, calls);
	else
		PushStr(&st, WJB_VALUE, NULL);
	PushKeyStr(&st, "finish_reason", finish);
	attempt->answer = JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/* ----------------------------------------------------------------------
 * One request, either kind
 * ----------------------------------------------------------------------
 */

/*
 * RequestBody
 *		The JSON body of req for model.  palloc'd in the current memory
 *		context.
 */
char *
RequestBody(const CanaryModel *model, const CanaryRequest *req)
{
	if (req->chat != NULL)
		return ChatRequestBody(model, req->chat);
	return ProviderRequestBody(model, req->prompt);
}

/*
 * RequestParseResponse
 *		ProviderParseResponse, then, for a chat request answered with 2xx,
 *		ChatParseAnswer.  Never raises for what body holds.
 */
void
RequestParseResponse(const CanaryModel *model, const CanaryRequest *req,
					 int http_status, const char *body, size_t len,
					 CanaryAttempt *attempt)
{
	ProviderParseResponse(model, http_status, body, len, attempt);
	if (req->chat != NULL && http_status >= 200 && http_status <= 299)
		ChatParseAnswer(model, body, len, attempt);
}

/*
 * RequestRedactKey
 *		Remove model's API key from whatever of attempt came from the
 *		upstream (text, error detail, tool calls).
 */
void
RequestRedactKey(const CanaryModel *model, CanaryAttempt *attempt)
{
	HttpRedactKey(model, attempt->text);
	HttpRedactKey(model, attempt->error_detail);
	if (attempt->answer != NULL)
	{
		char	   *s = JsonbToCString(NULL, &attempt->answer->root, VARSIZE(attempt->answer));
		char	   *orig = pstrdup(s);

		HttpRedactKey(model, s);
		if (strcmp(s, orig) != 0)
			attempt->answer = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));
	}
}

/*
 * ChatAnswerField
 *		Field key of a chat answer ("tool_calls", "finish_reason") into
 *		*out; jbvNull when absent or there is no answer.
 */
void
ChatAnswerField(Jsonb *answer, const char *key, JsonbValue *out)
{
	if (answer == NULL || JGet(&answer->root, key, out) == NULL)
		out->type = jbvNull;
}
