/*-------------------------------------------------------------------------
 *
 * provider.c
 *	  The two provider dialects: the request URL and JSON body of an OpenAI
 *	  chat completion or an Anthropic message, and the reading of the
 *	  answer into a CanaryAttempt.
 *
 * Pure functions: no network, no catalog access.  http.c sends what these
 * build and hands the response back here.  An upstream can send anything
 * (HTML from a proxy, half a body, invalid UTF-8, JSON nested a million
 * levels deep), so ProviderParseResponse never raises an error for what it
 * is given: it reports "malformed_response" instead.  It parses with the
 * non-throwing JSON parser of PostgreSQL (pg_parse_json) and semantic
 * actions that pick out the few fields it needs, after checking the
 * encoding and the nesting depth (the parser would ERROR past the stack
 * depth limit).
 *
 * Encodings.  Providers speak UTF-8.  In a database that is not UTF8, a
 * request body (prompt or chat request) is converted from the database
 * encoding to UTF-8 (PostgreSQL's default conversion), and a response is converted to the
 * database encoding before it is parsed: a character the database encoding
 * cannot represent becomes '?' (a curly apostrophe in a LATIN1 database),
 * so such an answer is an answer, not a malformed response.
 *
 * Refusal detection from the answer's text is not done here: the call path
 * does it.  Here only the provider's own signals count (OpenAI
 * message.refusal and finish_reason "content_filter", Anthropic stop_reason
 * "refusal").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/jsonapi.h"
#include "common/string.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "provider.h"

/* Anthropic requires max_tokens; used when the model does not set it. */
#define ANTHROPIC_DEFAULT_MAX_TOKENS 1024

/* Deeper JSON is not an LLM answer; refusing it keeps the parser's stack small. */
#define PARSE_MAX_NESTING	64

/* Path components remembered while parsing (deeper ones are never wanted). */
#define PARSE_TRACK_DEPTH	6

/* Provider messages longer than this are cut in error_detail. */
#define DETAIL_MAX_BYTES	500

/*
 * ModelUrl
 *		{base_url}/{endpoint}, without doubling a trailing slash of base_url.
 *		palloc'd in the current memory context.
 */
static char *
ModelUrl(const CanaryModel *model, const char *endpoint)
{
	int			len = strlen(model->base_url);

	while (len > 0 && model->base_url[len - 1] == '/')
		len--;
	return psprintf("%.*s/%s", len, model->base_url, endpoint);
}

/*
 * The database-encoding -> UTF-8 conversion function, looked up once (in a
 * transaction: catalog access) so that bodies can be built outside one too
 * (the shadow worker's embeddings requests).
 */
static FmgrInfo ToUtf8Proc;
static bool ToUtf8Ready = false;

static bool
ToUtf8Prepare(void)
{
	Oid			proc;

	if (ToUtf8Ready || GetDatabaseEncoding() == PG_UTF8 ||
		GetDatabaseEncoding() == PG_SQL_ASCII)
		return true;
	if (!IsTransactionState())
		return false;
	proc = FindDefaultConversionProc(GetDatabaseEncoding(), PG_UTF8);
	if (!OidIsValid(proc))
		return false;
	fmgr_info_cxt(proc, &ToUtf8Proc, TopMemoryContext);
	ToUtf8Ready = true;
	return true;
}

/*
 * BodyToUtf8
 *		A request body (JSON text built in the database encoding) in UTF-8:
 *		body itself when nothing needs converting, a palloc'd copy
 *		otherwise, or NULL when the conversion function could not be
 *		looked up (only outside a transaction, before any request was built
 *		in one).  JSON's structure is ASCII, so converting the whole text
 *		converts every string in it.
 */
static char *
BodyToUtf8(char *body)
{
	int			enc = GetDatabaseEncoding();
	size_t		len;
	char	   *utf8;

	if (enc == PG_UTF8 || enc == PG_SQL_ASCII || pg_is_ascii(body))
		return body;
	if (!ToUtf8Prepare())
		return NULL;
	len = strlen(body);
	if (len >= MaxAllocSize / MAX_CONVERSION_GROWTH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("out of memory"),
				 errdetail("String of %zu bytes is too long for encoding conversion.", len)));
	utf8 = palloc(len * MAX_CONVERSION_GROWTH + 1);
	FunctionCall6(&ToUtf8Proc, Int32GetDatum(enc), Int32GetDatum(PG_UTF8),
				  CStringGetDatum(body), CStringGetDatum(utf8),
				  Int32GetDatum((int) len), BoolGetDatum(false));
	return utf8;
}

/*
 * ProviderRequestUrl
 *		{base_url}/chat/completions (openai) or {base_url}/messages
 *		(anthropic).  palloc'd in the current memory context.
 */
char *
ProviderRequestUrl(const CanaryModel *model)
{
	return ModelUrl(model, model->provider == CANARY_PROVIDER_ANTHROPIC ?
					"messages" : "chat/completions");
}

/* Append ,"key":<value as a JSON number> */
static void
AppendJsonDouble(StringInfo buf, const char *key, double value)
{
	char	   *num = float8out_internal(value);

	appendStringInfo(buf, ",\"%s\":%s", key, num);
	pfree(num);
}

/*
 * ProviderRequestBody
 *		The JSON request body for one prompt, palloc'd in the current memory
 *		context.  Every string (model id, system prompt, prompt) is escaped
 *		with escape_json, in the database encoding (ProviderBuildRequest
 *		converts the body to UTF-8).  prompt must be a valid string of the database
 *		encoding (it comes from a text value).
 *
 * OpenAI:    {"model", "messages": [system?, user], "max_tokens" or
 *			  "max_completion_tokens" (only when configured), "temperature"?}
 * Anthropic: {"model", "max_tokens" (1024 when not configured), "system"?,
 *			  "messages": [user], "temperature"?}
 */
char *
ProviderRequestBody(const CanaryModel *model, const char *prompt)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"model\":");
	escape_json(&buf, model->model);

	if (model->provider == CANARY_PROVIDER_ANTHROPIC)
	{
		appendStringInfo(&buf, ",\"max_tokens\":%d",
						 model->max_tokens > 0 ? model->max_tokens :
						 ANTHROPIC_DEFAULT_MAX_TOKENS);
		if (model->system_prompt != NULL)
		{
			appendStringInfoString(&buf, ",\"system\":");
			escape_json(&buf, model->system_prompt);
		}
		appendStringInfoString(&buf, ",\"messages\":[{\"role\":\"user\",\"content\":");
		escape_json(&buf, prompt);
		appendStringInfoString(&buf, "}]");
	}
	else
	{
		appendStringInfoString(&buf, ",\"messages\":[");
		if (model->system_prompt != NULL)
		{
			appendStringInfoString(&buf, "{\"role\":\"system\",\"content\":");
			escape_json(&buf, model->system_prompt);
			appendStringInfoString(&buf, "},");
		}
		appendStringInfoString(&buf, "{\"role\":\"user\",\"content\":");
		escape_json(&buf, prompt);
		appendStringInfoString(&buf, "}]");
		if (model->max_tokens > 0)
			appendStringInfo(&buf, ",\"%s\":%d",
							 model->use_max_completion_tokens ?
							 "max_completion_tokens" : "max_tokens",
							 model->max_tokens);
	}

	if (model->has_temperature)
		AppendJsonDouble(&buf, "temperature", model->temperature);
	appendStringInfoChar(&buf, '}');

	return buf.data;
}

/*
 * ProviderBuildRequest
 *		The HTTP request of req (a prompt or a chat request) to model: URL
 *		and JSON body, built once per attempt and used for both the
 *		response-cache key and the transfer.  palloc'd in the current memory
 *		context.
 */
void
ProviderBuildRequest(const CanaryModel *model, const CanaryRequest *req,
					 HttpRequest *request)
{
	(void) ToUtf8Prepare();
	request->url = ProviderRequestUrl(model);
	request->body = BodyToUtf8(RequestBody(model, req));
	if (request->body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("could not convert a request from encoding \"%s\" to UTF8",
						GetDatabaseEncodingName())));
	request->body_len = strlen(request->body);
}

/* ----------------------------------------------------------------------
 * Reading a response
 * ----------------------------------------------------------------------
 */

/*
 * Where the parser is in the document, kept by both response parsers (the
 * chat answer's and the embeddings'): the object keys and array element
 * numbers from the top down to PARSE_TRACK_DEPTH levels.  The ParsePath*
 * functions below are pg_parse_json callbacks that keep it, for a semstate
 * that begins with its ParsePath; ParsePathIs asks whether the path is
 * exactly a pattern, where "*" is any array element, a number that
 * element, anything else an object key.
 */
typedef struct PathElem
{
	const char *key;			/* NULL: an array element */
	int			index;
} PathElem;

typedef struct ParsePath
{
	int			depth;			/* current path length (may exceed tracked) */
	PathElem	path[PARSE_TRACK_DEPTH];
	int			next_index[PARSE_TRACK_DEPTH + 1];	/* per open array */
} ParsePath;

static void
ParsePathArrayStart(void *state)
{
	ParsePath   *jp = (ParsePath *) state;

	if (jp->depth <= PARSE_TRACK_DEPTH)
		jp->next_index[jp->depth] = 0;
}

static void
ParsePathFieldStart(void *state, char *fname, bool isnull)
{
	ParsePath   *jp = (ParsePath *) state;

	if (jp->depth < PARSE_TRACK_DEPTH)
	{
		jp->path[jp->depth].key = fname ? fname : "";
		jp->path[jp->depth].index = -1;
	}
	jp->depth++;
}

static void
ParsePathElementStart(void *state, bool isnull)
{
	ParsePath   *jp = (ParsePath *) state;

	if (jp->depth < PARSE_TRACK_DEPTH)
	{
		jp->path[jp->depth].key = NULL;
		jp->path[jp->depth].index = jp->next_index[jp->depth]++;
	}
	jp->depth++;
}

static void
ParsePathFieldEnd(void *state, char *fname, bool isnull)
{
	((ParsePath *) state)->depth--;
}

static void
ParsePathElementEnd(void *state, bool isnull)
{
	((ParsePath *) state)->depth--;
}

/* Is the current path exactly pat (NULL-terminated, or PARSE_TRACK_DEPTH long)? */
static bool
ParsePathIs(const ParsePath *jp, const char *const *pat)
{
	int			n = 0;

	while (n < PARSE_TRACK_DEPTH && pat[n] != NULL)
		n++;
	if (jp->depth != n)
		return false;
	for (int i = 0; i < n; i++)
	{
		const PathElem *e = &jp->path[i];

		if (strcmp(pat[i], "*") == 0)
		{
			if (e->key != NULL)
				return false;
		}
		else if (pat[i][0] >= '0' && pat[i][0] <= '9')
		{
			if (e->key != NULL || e->index != atoi(pat[i]))
				return false;
		}
		else if (e->key == NULL || strcmp(e->key, pat[i]) != 0)
			return false;
	}
	return true;
}

/* What a wanted field turned out to be in the response. */
typedef enum FieldKind
{
	FIELD_MISSING = 0,
	FIELD_NULL,
	FIELD_STRING,
	FIELD_NUMBER,
	FIELD_BOOL,
	FIELD_CONTAINER				/* object or array */
} FieldKind;

typedef struct Field
{
	FieldKind	kind;
	char	   *str;			/* de-escaped string or number token */
} Field;

/*
 * The fields both dialects may need.  "0" matches array element 0, "*" any
 * array element; other components are object keys.
 */
typedef enum WantedField
{
	F_TYPE,						/* anthropic: "message" or "error" */
	F_ERROR,
	F_ERROR_MESSAGE,
	F_ERROR_TYPE,
	F_CHOICES,					/* openai */
	F_CHOICE0_MESSAGE,
	F_CHOICE0_CONTENT,
	F_CHOICE0_REFUSAL,
	F_CHOICE0_FINISH,
	F_USAGE_PROMPT,
	F_USAGE_COMPLETION,
	F_CONTENT,					/* anthropic */
	F_BLOCK,
	F_BLOCK_TYPE,
	F_BLOCK_TEXT,
	F_STOP_REASON,
	F_USAGE_INPUT,
	F_USAGE_OUTPUT,
	F_COUNT
} WantedField;

static const char *const FieldPaths[F_COUNT][PARSE_TRACK_DEPTH + 1] = {
	[F_TYPE] = {"type"},
	[F_ERROR] = {"error"},
	[F_ERROR_MESSAGE] = {"error", "message"},
	[F_ERROR_TYPE] = {"error", "type"},
	[F_CHOICES] = {"choices"},
	[F_CHOICE0_MESSAGE] = {"choices", "0", "message"},
	[F_CHOICE0_CONTENT] = {"choices", "0", "message", "content"},
	[F_CHOICE0_REFUSAL] = {"choices", "0", "message", "refusal"},
	[F_CHOICE0_FINISH] = {"choices", "0", "finish_reason"},
	[F_USAGE_PROMPT] = {"usage", "prompt_tokens"},
	[F_USAGE_COMPLETION] = {"usage", "completion_tokens"},
	[F_CONTENT] = {"content"},
	[F_BLOCK] = {"content", "*"},
	[F_BLOCK_TYPE] = {"content", "*", "type"},
	[F_BLOCK_TEXT] = {"content", "*", "text"},
	[F_STOP_REASON] = {"stop_reason"},
	[F_USAGE_INPUT] = {"usage", "input_tokens"},
	[F_USAGE_OUTPUT] = {"usage", "output_tokens"},
};

typedef struct AnswerParse
{
	ParsePath	where;			/* first: the ParsePath* callbacks keep it */
	Field		fields[F_COUNT];

	/* Anthropic content blocks: the current one, and the first text one */
	Field		block_type;
	Field		block_text;
	bool		have_text_block;
	char	   *first_text;
} AnswerParse;

StaticAssertDecl(offsetof(AnswerParse, where) == 0,
				 "the ParsePath callbacks read the semstate as its path");

/* Is the parser at the wanted field's path? */
static bool
PathMatches(const AnswerParse *ps, WantedField f)
{
	return ParsePathIs(&ps->where, FieldPaths[f]);
}

/* Record a value found at the current path, if it is one we want. */
static void
NoteValue(AnswerParse *ps, FieldKind kind, char *str)
{
	if (ps->where.depth > PARSE_TRACK_DEPTH)
		return;
	for (int f = 0; f < F_COUNT; f++)
	{
		Field	   *dst;

		if (!PathMatches(ps, (WantedField) f))
			continue;
		if (f == F_BLOCK_TYPE)
			dst = &ps->block_type;
		else if (f == F_BLOCK_TEXT)
			dst = &ps->block_text;
		else
			dst = &ps->fields[f];
		/* a repeated key: the last one wins, as in jsonb */
		dst->kind = kind;
		dst->str = str;
		return;
	}
}

static void
SemObjectStart(void *state)
{
	AnswerParse *ps = (AnswerParse *) state;

	NoteValue(ps, FIELD_CONTAINER, NULL);
	if (PathMatches(ps, F_BLOCK))
	{
		ps->block_type.kind = FIELD_MISSING;
		ps->block_text.kind = FIELD_MISSING;
	}
}

static void
SemObjectEnd(void *state)
{
	AnswerParse *ps = (AnswerParse *) state;

	/* the end of an Anthropic content block: keep the first text block */
	if (PathMatches(ps, F_BLOCK) &&
		!ps->have_text_block &&
		ps->block_type.kind == FIELD_STRING &&
		strcmp(ps->block_type.str, "text") == 0 &&
		ps->block_text.kind == FIELD_STRING)
	{
		ps->have_text_block = true;
		ps->first_text = ps->block_text.str;
	}
}

static void
SemArrayStart(void *state)
{
	AnswerParse *ps = (AnswerParse *) state;

	NoteValue(ps, FIELD_CONTAINER, NULL);
	ParsePathArrayStart(state);
}

static void
SemScalar(void *state, char *token, JsonTokenType tokentype)
{
	AnswerParse *ps = (AnswerParse *) state;
	FieldKind	kind;

	switch (tokentype)
	{
		case JSON_TOKEN_STRING:
			kind = FIELD_STRING;
			break;
		case JSON_TOKEN_NUMBER:
			kind = FIELD_NUMBER;
			break;
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			kind = FIELD_BOOL;
			break;
		default:
			kind = FIELD_NULL;
			break;
	}
	NoteValue(ps, kind, token);
}

/*
 * JSON nested deeper than PARSE_MAX_NESTING?  A byte scan that skips
 * strings; pg_parse_json would raise "stack depth limit exceeded" on input
 * nested deeply enough, so such input must never reach it.
 */
static bool
NestedTooDeep(const char *s, size_t len)
{
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '[' || c == '{')
		{
			if (++depth > PARSE_MAX_NESTING)
				return true;
		}
		else if (c == ']' || c == '}')
			depth--;
	}
	return false;
}

static bool BodyIsValidText(const char *body, size_t len);

/*
 * Append code point cp in the database encoding, or '?' when the database
 * encoding has no such character.  pg_unicode_to_server uses the
 * conversion function PostgreSQL looked up at backend start, so this works
 * outside a transaction too (the shadow worker).  Its conversion error is
 * raised before anything is acquired, so catching it without a
 * subtransaction is safe.
 */
static void
AppendServerChar(StringInfo out, pg_wchar cp)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	unsigned char cbuf[MAX_UNICODE_EQUIVALENT_STRING + 1];

	if (GetDatabaseEncoding() == PG_SQL_ASCII)
	{
		/* SQL_ASCII takes any bytes: keep the UTF-8 */
		unicode_to_utf8(cp, cbuf);
		appendBinaryStringInfo(out, (char *) cbuf, pg_utf_mblen(cbuf));
		return;
	}
	PG_TRY();
	{
		pg_unicode_to_server(cp, cbuf);
		appendStringInfoString(out, (char *) cbuf);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNTRANSLATABLE_CHARACTER &&
			edata->sqlerrcode != ERRCODE_CHARACTER_NOT_IN_REPERTOIRE &&
			edata->sqlerrcode != ERRCODE_FEATURE_NOT_SUPPORTED)
			PG_RE_THROW();
		FlushErrorState();
		FreeErrorData(edata);
		appendStringInfoChar(out, '?');
	}
	PG_END_TRY();
}

/* The value of 4 hex digits at s, or -1. */
static int
Hex4(const char *s, size_t left)
{
	int			v = 0;

	if (left < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		char		c = s[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/*
 * BodyToServerEncoding
 *		A valid UTF-8 JSON body converted to the database encoding (not
 *		UTF8), for the JSON lexer: inside strings, every character outside
 *		ASCII, raw or as a \u escape (surrogate pairs joined), becomes the
 *		database's character or '?'.  Only ASCII escapes are left, which
 *		the lexer decodes without a conversion that could fail.  palloc'd.
 */
static char *
BodyToServerEncoding(const char *body, size_t len, size_t *outlen)
{
	StringInfoData out;
	bool		in_string = false;
	size_t		i = 0;

	initStringInfo(&out);
	while (i < len)
	{
		unsigned char c = (unsigned char) body[i];

		if (c == '"')
		{
			in_string = !in_string;
			appendStringInfoChar(&out, c);
			i++;
		}
		else if (in_string && c == '\\' && i + 1 < len && body[i + 1] == 'u' &&
				 Hex4(body + i + 2, len - i - 2) >= 0x80)
		{
			int			cp = Hex4(body + i + 2, len - i - 2);
			size_t		next = i + 6;

			if (cp >= 0xD800 && cp <= 0xDBFF && next + 1 < len &&
				body[next] == '\\' && body[next + 1] == 'u')
			{
				int			lo = Hex4(body + next + 2, len - next - 2);

				if (lo >= 0xDC00 && lo <= 0xDFFF)
				{
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					next += 6;
				}
			}
			if (cp >= 0xD800 && cp <= 0xDFFF)
				appendStringInfoChar(&out, '?');	/* a lone surrogate */
			else
				AppendServerChar(&out, (pg_wchar) cp);
			i = next;
		}
		else if (in_string && c == '\\' && i + 1 < len)
		{
			/* any other escape, kept as it is (\" does not end the string) */
			appendBinaryStringInfo(&out, body + i, 2);
			i += 2;
		}
		else if (IS_HIGHBIT_SET(c))
		{
			int			n = pg_utf_mblen((const unsigned char *) body + i);

			AppendServerChar(&out, utf8_to_unicode((const unsigned char *) body + i));
			i += n;
		}
		else
		{
			appendStringInfoChar(&out, c);
			i++;
		}
	}
	*outlen = out.len;
	return out.data;
}

/*
 * ProviderBodyToServer
 *		A response body (UTF-8) as a NUL-terminated string of the database
 *		encoding, palloc'd: converted as BodyToServerEncoding does in a
 *		database that is not UTF8 (NULL when body is not valid UTF-8
 *		there), a plain copy in a UTF8 database.  For readers of a response
 *		other than ParseJsonWith (chat.c's jsonb parse).
 */
char *
ProviderBodyToServer(const char *body, size_t len)
{
	if (GetDatabaseEncoding() == PG_UTF8)
		return pnstrdup(body, len);
	if (!BodyIsValidText(body, len))
		return NULL;
	return BodyToServerEncoding(body, len, &len);
}

/*
 * Parse body (valid UTF-8) with the semantic actions of sem.  Returns NULL,
 * or why body is not a JSON object we can read.  Never raises an error for
 * what body contains.  In a database that is not UTF8 the body is first
 * converted to the database encoding (BodyToServerEncoding).
 */
static const char *
ParseJsonWith(char *body, size_t len, JsonSemAction *sem)
{
	JsonLexContext *lex;
	JsonParseErrorType rc;
	size_t		i = 0;

	/* cheap checks first: the top level must be an object */
	while (i < len && (body[i] == ' ' || body[i] == '\t' ||
					   body[i] == '\n' || body[i] == '\r'))
		i++;
	if (i == len || body[i] != '{')
		return "The response body is not a JSON object.";
	if (NestedTooDeep(body, len))
		return "The response body is nested too deeply.";
	if (GetDatabaseEncoding() != PG_UTF8)
		body = BodyToServerEncoding(body, len, &len);

	/* only ASCII escapes are left: the lexer converts nothing that can fail */
	lex = makeJsonLexContextCstringLen(body, (int) len, GetDatabaseEncoding(), true);
	rc = pg_parse_json(lex, sem);
	if (rc != JSON_SUCCESS)
		return "The response body is not valid JSON.";
	return NULL;
}

/* Parse body into ps: the fields of a chat answer. */
static const char *
ParseJsonBody(char *body, size_t len, AnswerParse *ps)
{
	JsonSemAction sem;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = ps;
	sem.object_start = SemObjectStart;
	sem.object_end = SemObjectEnd;
	sem.array_start = SemArrayStart;
	sem.object_field_start = ParsePathFieldStart;
	sem.object_field_end = ParsePathFieldEnd;
	sem.array_element_start = ParsePathElementStart;
	sem.array_element_end = ParsePathElementEnd;
	sem.scalar = SemScalar;
	return ParseJsonWith(body, len, &sem);
}

/*
 * A JSON integer token as a non-negative int, or -1 when it is not one
 * (missing, a fraction, negative, too large).
 */
static int
FieldTokens(const Field *f)
{
	long		v;
	char	   *end;

	if (f->kind != FIELD_NUMBER || f->str == NULL)
		return -1;
	errno = 0;
	v = strtol(f->str, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0 || v > INT_MAX)
		return -1;
	return (int) v;
}

/* A copy of s cut to at most DETAIL_MAX_BYTES bytes, on a character boundary. */
static char *
ClipDetail(const char *s)
{
	int			len = strlen(s);

	if (len > DETAIL_MAX_BYTES)
		len = pg_mbcliplen(s, len, DETAIL_MAX_BYTES);
	return pnstrdup(s, len);
}

static void
SetMalformed(CanaryAttempt *attempt, const char *detail)
{
	attempt->outcome = CANARY_OUTCOME_ERROR;
	attempt->text = NULL;
	attempt->provider_refusal = false;
	attempt->error = pstrdup("malformed_response");
	attempt->error_detail = pstrdup(detail);
}

/* The provider's error message ({"error":{"message"}} in both dialects). */
static char *
ErrorMessage(const AnswerParse *ps)
{
	const Field *msg = &ps->fields[F_ERROR_MESSAGE];
	const Field *err = &ps->fields[F_ERROR];

	if (msg->kind == FIELD_STRING)
		return ClipDetail(msg->str);
	/* some OpenAI-compatible servers send {"error": "text"} */
	if (err->kind == FIELD_STRING)
		return ClipDetail(err->str);
	return NULL;
}

static void
ParseOpenAI(const AnswerParse *ps, CanaryAttempt *attempt)
{
	const Field *content = &ps->fields[F_CHOICE0_CONTENT];
	const Field *refusal = &ps->fields[F_CHOICE0_REFUSAL];
	const Field *finish = &ps->fields[F_CHOICE0_FINISH];

	/* usage is reported even for an unusable answer: it was billed */
	attempt->prompt_tokens = FieldTokens(&ps->fields[F_USAGE_PROMPT]);
	attempt->completion_tokens = FieldTokens(&ps->fields[F_USAGE_COMPLETION]);

	if (ps->fields[F_CHOICES].kind != FIELD_CONTAINER ||
		ps->fields[F_CHOICE0_MESSAGE].kind != FIELD_CONTAINER)
	{
		SetMalformed(attempt, "The response has no choices[0].message.");
		return;
	}

	if (refusal->kind == FIELD_STRING)
	{
		attempt->outcome = CANARY_OUTCOME_REFUSAL;
		attempt->provider_refusal = true;
		attempt->text = pstrdup(refusal->str);
	}
	else if (finish->kind == FIELD_STRING &&
			 strcmp(finish->str, "content_filter") == 0)
	{
		attempt->outcome = CANARY_OUTCOME_REFUSAL;
		attempt->provider_refusal = true;
		attempt->text = content->kind == FIELD_STRING ? pstrdup(content->str) : NULL;
	}
	else if (content->kind == FIELD_STRING)
	{
		attempt->outcome = CANARY_OUTCOME_OK;
		attempt->text = pstrdup(content->str);
	}
	else
		SetMalformed(attempt, content->kind == FIELD_MISSING ?
					 "The response has no choices[0].message.content." :
					 content->kind == FIELD_NULL ?
					 "choices[0].message.content is null and there is no refusal." :
					 "choices[0].message.content is not a string.");
}

static void
ParseAnthropic(const AnswerParse *ps, CanaryAttempt *attempt)
{
	const Field *stop = &ps->fields[F_STOP_REASON];

	/* usage is reported even for an unusable answer: it was billed */
	attempt->prompt_tokens = FieldTokens(&ps->fields[F_USAGE_INPUT]);
	attempt->completion_tokens = FieldTokens(&ps->fields[F_USAGE_OUTPUT]);

	if (ps->fields[F_CONTENT].kind != FIELD_CONTAINER)
	{
		SetMalformed(attempt, ps->fields[F_CONTENT].kind == FIELD_MISSING ?
					 "The response has no content." :
					 ps->fields[F_CONTENT].kind == FIELD_NULL ?
					 "The response's content is null." :
					 "The response's content is not a list.");
		return;
	}

	if (stop->kind == FIELD_STRING && strcmp(stop->str, "refusal") == 0)
	{
		attempt->outcome = CANARY_OUTCOME_REFUSAL;
		attempt->provider_refusal = true;
		attempt->text = ps->have_text_block ? pstrdup(ps->first_text) : NULL;
	}
	else if (ps->have_text_block)
	{
		attempt->outcome = CANARY_OUTCOME_OK;
		attempt->text = pstrdup(ps->first_text);
	}
	else
		SetMalformed(attempt, "The response has no text content block.");
}

/*
 * The provider sends UTF-8; the body must be valid UTF-8 without NUL.  In a
 * database that is not UTF8, ParseJsonWith converts it before parsing.
 */
static bool
BodyIsValidText(const char *body, size_t len)
{
	return body != NULL && len > 0 && len < MaxAllocSize &&
		pg_verify_mbstr(PG_UTF8, body, (int) len, true);
}

/*
 * ProviderParseResponse
 *		Read one HTTP response of model into attempt: outcome, text, token
 *		counts, provider_refusal, error and error_detail.  http_status,
 *		tries and latency_ms are left to the caller.
 *
 * body need not be NUL-terminated and may be anything at all: this never
 * raises an error for its contents (only for running out of memory).
 * Results are palloc'd in the current memory context; scratch memory of the
 * parse goes there too and lives as long as it.
 */
void
ProviderParseResponse(const CanaryModel *model, int http_status,
					  const char *body, size_t len,
					  CanaryAttempt *attempt)
{
	AnswerParse	ps;
	bool		valid_text;
	const char *json_problem = "The response body is empty.";
	char	   *copy = NULL;

	attempt->outcome = CANARY_OUTCOME_ERROR;
	attempt->text = NULL;
	attempt->provider_refusal = false;
	attempt->prompt_tokens = -1;
	attempt->completion_tokens = -1;
	attempt->error = NULL;
	attempt->error_detail = NULL;
	memset(&ps, 0, sizeof(ps));

	if (body == NULL)
		len = 0;

	valid_text = BodyIsValidText(body, len);
	if (valid_text)
	{
		copy = pnstrdup(body, len);
		json_problem = ParseJsonBody(copy, len, &ps);
	}

	if (http_status < 200 || http_status > 299)
	{
		attempt->outcome = CANARY_OUTCOME_ERROR;
		attempt->error = psprintf("http_%d", http_status);
		attempt->error_detail = json_problem == NULL ? ErrorMessage(&ps) : NULL;
		return;
	}

	if (len == 0)
	{
		SetMalformed(attempt, "The response body is empty.");
		return;
	}
	if (!valid_text)
	{
		SetMalformed(attempt, "The response body is not valid UTF-8.");
		return;
	}
	if (json_problem != NULL)
	{
		SetMalformed(attempt, json_problem);
		return;
	}

	/* a 2xx that carries an error object (some compatible servers do this) */
	if (ps.fields[F_ERROR].kind == FIELD_CONTAINER ||
		(ps.fields[F_TYPE].kind == FIELD_STRING &&
		 strcmp(ps.fields[F_TYPE].str, "error") == 0))
	{
		attempt->outcome = CANARY_OUTCOME_ERROR;
		attempt->error = pstrdup("provider_error");
		attempt->error_detail = ErrorMessage(&ps);
		return;
	}

	if (model->provider == CANARY_PROVIDER_ANTHROPIC)
		ParseAnthropic(&ps, attempt);
	else
		ParseOpenAI(&ps, attempt);
}

/* ----------------------------------------------------------------------
 * Embeddings (OpenAI-compatible POST {base_url}/embeddings), for the
 * semantic similarity of shadow answers
 * ----------------------------------------------------------------------
 */

/* Larger vectors are not an embedding we know; refusing them bounds memory. */
#define EMBEDDING_MAX_DIM	65536

/*
 * ProviderBuildEmbeddingsRequest
 *		POST {base_url}/embeddings with {"model": <model id>, "input": [a,
 *		b]}, palloc'd in the current memory context.  a and b must be valid
 *		strings of the database encoding.  Returns false when they cannot be
 *		converted to UTF-8 here (see BodyToUtf8).
 */
bool
ProviderBuildEmbeddingsRequest(const CanaryModel *model, const char *a,
							   const char *b, HttpRequest *request)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"model\":");
	escape_json(&buf, model->model);
	appendStringInfoString(&buf, ",\"input\":[");
	escape_json(&buf, a);
	appendStringInfoChar(&buf, ',');
	escape_json(&buf, b);
	appendStringInfoString(&buf, "]}");
	request->url = ModelUrl(model, "embeddings");
	request->body = BodyToUtf8(buf.data);
	if (request->body == NULL)
		return false;
	request->body_len = strlen(request->body);
	return true;
}

/*
 * What the embeddings parser collects: data[i].embedding (numbers) and
 * data[i].index for the first two elements of data.
 */
typedef struct EmbedParse
{
	ParsePath	where;			/* first: the ParsePath* callbacks keep it */
	int			ndata;			/* elements of data seen */
	double	   *vec[2];
	int			len[2];
	int			cap[2];
	int			index[2];		/* data[i].index, -1 if absent */
	bool		bad;			/* a non-number in an embedding, or too long */
} EmbedParse;

StaticAssertDecl(offsetof(EmbedParse, where) == 0,
				 "the ParsePath callbacks read the semstate as its path");

static const char *const EmbedData[] = {"data", "*", NULL};
static const char *const EmbedIndex[] = {"data", "*", "index", NULL};
static const char *const EmbedValue[] = {"data", "*", "embedding", "*", NULL};

static void
EmbedElementStart(void *state, bool isnull)
{
	EmbedParse *ep = (EmbedParse *) state;

	ParsePathElementStart(state, isnull);
	/* a new element of the top-level "data" array */
	if (ParsePathIs(&ep->where, EmbedData))
		ep->ndata++;
}

/* Is the parser at pat (data[i]...) with i one of the first two elements? */
static bool
EmbedAt(const EmbedParse *ep, const char *const *pat)
{
	return ParsePathIs(&ep->where, pat) && ep->where.path[1].index < 2;
}

static void
EmbedScalar(void *state, char *token, JsonTokenType tokentype)
{
	EmbedParse *ep = (EmbedParse *) state;

	/* data[i].index */
	if (EmbedAt(ep, EmbedIndex))
	{
		long		v;
		char	   *end;

		errno = 0;
		v = tokentype == JSON_TOKEN_NUMBER ? strtol(token, &end, 10) : -1;
		if (tokentype == JSON_TOKEN_NUMBER && errno == 0 && *end == '\0' &&
			v >= 0 && v < 2)
			ep->index[ep->where.path[1].index] = (int) v;
		else
			ep->bad = true;
		return;
	}
	/* data[i].embedding[j] */
	if (EmbedAt(ep, EmbedValue))
	{
		int			i = ep->where.path[1].index;
		double		v;
		char	   *end;

		if (tokentype != JSON_TOKEN_NUMBER || ep->len[i] >= EMBEDDING_MAX_DIM)
		{
			ep->bad = true;
			return;
		}
		errno = 0;
		v = strtod(token, &end);
		if (*end != '\0' || !isfinite(v))
		{
			ep->bad = true;
			return;
		}
		if (ep->len[i] == ep->cap[i])
		{
			ep->cap[i] = ep->cap[i] ? ep->cap[i] * 2 : 256;
			ep->vec[i] = ep->vec[i] ?
				repalloc(ep->vec[i], sizeof(double) * ep->cap[i]) :
				palloc(sizeof(double) * ep->cap[i]);
		}
		ep->vec[i][ep->len[i]++] = v;
	}
}

/*
 * ProviderParseEmbeddings
 *		Read an embeddings response for two inputs and compute the cosine
 *		similarity of the two vectors into *cosine.  Returns NULL on
 *		success, or a short error code ("http_503", "malformed_response",
 *		"zero_vector"); with detail, why.  The vectors are matched to the
 *		inputs by their "index" when present, else by position.
 *
 * body may be anything at all: this never raises an error for its
 * contents (only for running out of memory).  Scratch memory is palloc'd
 * in the current memory context.
 */
const char *
ProviderParseEmbeddings(int http_status, const char *body, size_t len,
						double *cosine, const char **detail)
{
	EmbedParse	ep;
	JsonSemAction sem;
	const char *problem;
	const double *a;
	const double *b;
	double		dot = 0,
				na = 0,
				nb = 0;
	char	   *copy;

	*cosine = 0;
	*detail = NULL;
	if (http_status < 200 || http_status > 299)
		return psprintf("http_%d", http_status);
	if (!BodyIsValidText(body, len))
	{
		*detail = "The response body is empty or not valid UTF-8.";
		return "malformed_response";
	}

	memset(&ep, 0, sizeof(ep));
	ep.index[0] = ep.index[1] = -1;
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &ep;
	sem.object_field_start = ParsePathFieldStart;
	sem.object_field_end = ParsePathFieldEnd;
	sem.array_start = ParsePathArrayStart;
	sem.array_element_start = EmbedElementStart;
	sem.array_element_end = ParsePathElementEnd;
	sem.scalar = EmbedScalar;
	copy = pnstrdup(body, len);
	problem = ParseJsonWith(copy, len, &sem);
	if (problem != NULL)
	{
		*detail = problem;
		return "malformed_response";
	}
	if (ep.bad || ep.ndata != 2 || ep.len[0] == 0 || ep.len[0] != ep.len[1] ||
		(ep.index[0] >= 0) != (ep.index[1] >= 0) ||
		(ep.index[0] >= 0 && ep.index[0] == ep.index[1]))
	{
		*detail = "The response does not hold two embeddings of the same dimension in data[].embedding.";
		return "malformed_response";
	}

	/* the order of the inputs: by index when given */
	a = ep.index[0] == 1 ? ep.vec[1] : ep.vec[0];
	b = ep.index[0] == 1 ? ep.vec[0] : ep.vec[1];
	for (int i = 0; i < ep.len[0]; i++)
	{
		dot += a[i] * b[i];
		na += a[i] * a[i];
		nb += b[i] * b[i];
	}
	if (na <= 0 || nb <= 0)
	{
		*detail = "An embedding is the zero vector.";
		return "zero_vector";
	}
	*cosine = dot / (sqrt(na) * sqrt(nb));
	/* rounding can step just outside [-1, 1] */
	if (*cosine > 1)
		*cosine = 1;
	if (*cosine < -1)
		*cosine = -1;
	return NULL;
}
