/*-------------------------------------------------------------------------
 *
 * cache.c
 *	  The optional response cache: with llm_canary.response_cache_ttl > 0,
 *	  an answer a model gave to a prompt is kept in canary_response_cache and
 *	  served again within the TTL without calling the model (the article's
 *	  "cache aggressively on both sides so repeated prompts only hit the
 *	  model once per cohort").
 *
 * The key.  One row per (model, SHA-256 of the prompt); a row answers only
 * the request whose SHA-256 of URL + body equals its request_sha256.  The
 * body is what provider.c would send, so every setting that shapes the
 * answer (model id, system prompt, max tokens, temperature, provider
 * dialect, endpoint) is in the key without being listed here: a changed
 * model configuration misses, and its first answer replaces the row.
 *
 * Never fails a call.  Lookups and writes run in an internal
 * subtransaction; an error there (a missing table in a half-upgraded
 * schema, a lock conflict, out of disk) is reported as a WARNING and the
 * call goes on as if the cache were off.  A cancel or a termination is not
 * swallowed.  Writes are skipped when the transaction is read-only (which
 * includes a hot standby), and when another transaction is writing the same
 * key: a transaction-level advisory-style lock, tried without waiting,
 * guards every write, so a backend never waits for another's uncommitted
 * cache row.  A write belongs to the caller's transaction: if that rolls
 * back, so does the cached answer.
 *
 * Privileges.  The table holds answers to every user's prompts and belongs
 * to the extension's owner; the statements here run under the owner's
 * identity (SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION),
 * are fixed text with parameters, schema-qualify the table and use
 * OPERATOR(pg_catalog.=), so the caller's search_path cannot inject
 * anything.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "cache.h"
#include "chat.h"
#include "extension.h"
#include "private_locks.h"
#include "subxact.h"
#include "util.h"

/* settings */
int			canary_response_cache_ttl = 0;

/*
 * CacheDefineSettings
 *		Define llm_canary.response_cache_ttl; called from _PG_init.
 */
void
CacheDefineSettings(void)
{
	DefineCustomIntVariable("llm_canary.response_cache_ttl",
							"Sets how long an answer of a model is served again from canary_response_cache.",
							"0 turns the response cache off. The background worker uses the server's value.",
							&canary_response_cache_ttl,
							0, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

/* Is the cache on in this session? */
bool
CacheEnabled(void)
{
	return canary_response_cache_ttl > 0;
}

/*
 * CacheComputeKey
 *		The cache key of req (a prompt or a chat request), sent as http
 *		(ProviderBuildRequest: the very request the transfer sends): its
 *		identity is the prompt, or the normalised chat request's text.
 *		Allocates scratch memory in the current memory context.
 */
void
CacheComputeKey(const CanaryRequest *req, const HttpRequest *http, CacheKey *key)
{
	uint8		digest[CANARY_SHA256_LEN];
	char	   *request = psprintf("%s\n%s", http->url, http->body);
	char	   *identity = req->chat ? ChatRequestText(req->chat) : (char *) req->prompt;

	CanarySha256(identity, strlen(identity), digest);
	CanaryHex(digest, CANARY_SHA256_LEN, key->prompt_sha256);
	CanarySha256(request, strlen(request), digest);
	CanaryHex(digest, CANARY_SHA256_LEN, key->request_sha256);
	pfree(request);
}

/*
 * Try to take the transaction-level write lock of (model, prompt) without
 * waiting.  Caller must be in a transaction (it is released at its end, or
 * at the abort of the subtransaction that took it).
 */
static bool
CacheTryWriteLock(const CanaryModel *model, const CacheKey *key)
{
	char	   *name = psprintf("%s%c%s", model->name, '\0', key->prompt_sha256);
	size_t		len = strlen(model->name) + 1 + strlen(key->prompt_sha256);
	bool		locked = CanaryTryPrivateLock(name, len, CACHE_LOCK_FIELD4);

	pfree(name);
	return locked;
}

/*
 * Run one statement on the cache table in an internal subtransaction, as
 * the extension's owner.  For a lookup (attempt != NULL), the first row, if
 * any, is copied into attempt in the caller's memory context; returns
 * whether there was one.  For a write (lock_key != NULL), the statement
 * runs only if the write lock of the key is free.  Never raises, except for
 * a cancel or a termination; other errors become a WARNING.
 */
static bool
CacheRun(const char *what, const char *sql, int nargs, Oid *types,
		 Datum *values, const char *nulls, CanaryAttempt *attempt,
		 const CanaryModel *lock_model, const CacheKey *lock_key)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			owner = ConfigExtensionOwner();
	volatile bool found = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		CanaryOwnerSave save;

		CanaryBecomeOwner(owner, &save);
		if (lock_key == NULL || CacheTryWriteLock(lock_model, lock_key))
		{
			int			ret;

			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "could not connect to SPI");
			ret = SPI_execute_with_args(sql, nargs, types, values, nulls,
										attempt != NULL, attempt != NULL ? 1 : 0);
			if (ret < 0)
				elog(ERROR, "SPI_execute_with_args returned %s",
					 SPI_result_code_string(ret));
			if (attempt != NULL && SPI_processed > 0)
			{
				HeapTuple	tup = SPI_tuptable->vals[0];
				TupleDesc	desc = SPI_tuptable->tupdesc;
				bool		isnull;
				Datum		d;
				MemoryContext spicxt = MemoryContextSwitchTo(oldcxt);

				d = SPI_getbinval(tup, desc, 1, &isnull);
				attempt->text = isnull ? NULL : TextDatumGetCString(d);
				d = SPI_getbinval(tup, desc, 2, &isnull);
				attempt->prompt_tokens = isnull ? -1 : DatumGetInt32(d);
				d = SPI_getbinval(tup, desc, 3, &isnull);
				attempt->completion_tokens = isnull ? -1 : DatumGetInt32(d);
				d = SPI_getbinval(tup, desc, 4, &isnull);
				attempt->provider_refusal = !isnull && DatumGetBool(d);
				d = SPI_getbinval(tup, desc, 5, &isnull);
				attempt->answer = isnull ? NULL : DatumGetJsonbPCopy(d);
				MemoryContextSwitchTo(spicxt);
				found = attempt->text != NULL;
			}
			SPI_finish();
		}
		CanaryRestoreUser(&save);
		CanarySubxactCommit(oldcxt, oldowner);
	}
	PG_CATCH();
	{
		/* the abort restores the user id, the resource owner and SPI */
		ErrorData  *edata = CanarySubxactAbort(oldcxt, oldowner, oldcxt);

		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("could not %s the response cache", what),
				 errdetail("%s", edata->message),
				 errhint("The call went on without the cache. Check canary_response_cache, or set llm_canary.response_cache_ttl to 0.")));
		FreeErrorData(edata);
		found = false;
	}
	PG_END_TRY();
	return found;
}

/*
 * CacheLookup
 *		A fresh answer of model to the request of key: true and attempt
 *		filled as an answer (outcome ok, or refusal when the provider had
 *		signalled one; text and token counts; cached = true, no HTTP
 *		status), or false.  Caller must be in a transaction and check the
 *		refusal patterns itself.  Allocates in the current memory context.
 */
bool
CacheLookup(const CanaryModel *model, const CacheKey *key, CanaryAttempt *attempt)
{
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[4];
	char	   *sql;
	CanaryAttempt hit;

	if (!CacheEnabled())
		return false;
	sql = psprintf("SELECT response, prompt_tokens, completion_tokens, provider_refusal, answer"
				   " FROM %s.canary_response_cache"
				   " WHERE model OPERATOR(pg_catalog.=) $1"
				   " AND prompt_sha256 OPERATOR(pg_catalog.=) $2"
				   " AND request_sha256 OPERATOR(pg_catalog.=) $3"
				   " AND created_at OPERATOR(pg_catalog.>) $4",
				   ConfigSchemaName());
	values[0] = CStringGetTextDatum(model->name);
	values[1] = CStringGetTextDatum(key->prompt_sha256);
	values[2] = CStringGetTextDatum(key->request_sha256);
	values[3] = TimestampTzGetDatum(GetCurrentTimestamp() -
									(int64) canary_response_cache_ttl * USECS_PER_SEC);
	memset(&hit, 0, sizeof(hit));
	if (!CacheRun("read", sql, 4, types, values, NULL, &hit, NULL, NULL))
		return false;

	memset(attempt, 0, sizeof(*attempt));
	attempt->outcome = hit.provider_refusal ? CANARY_OUTCOME_REFUSAL : CANARY_OUTCOME_OK;
	attempt->text = hit.text;
	attempt->answer = hit.answer;
	/* a chat answer's text is its content (NULL for tool calls alone) */
	if (hit.answer != NULL)
	{
		JsonbValue	content;

		ChatAnswerField(hit.answer, "content", &content);
		attempt->text = content.type == jbvString ?
			pnstrdup(content.val.string.val, content.val.string.len) : NULL;
	}
	attempt->prompt_tokens = hit.prompt_tokens;
	attempt->completion_tokens = hit.completion_tokens;
	attempt->provider_refusal = hit.provider_refusal;
	attempt->cached = true;
	return true;
}

/*
 * CacheStore
 *		Keep the answer in attempt for model and key, replacing the row of
 *		the same (model, prompt).  Only answers are kept (outcome ok or
 *		refusal, with text), never errors, and nothing is written when the
 *		cache is off, the answer came from the cache, or the transaction is
 *		read-only (a hot standby included).  Caller must be in a
 *		transaction.  Never raises except for a cancel.
 */
void
CacheStore(const CanaryModel *model, const CacheKey *key, const CanaryAttempt *attempt)
{
	Oid			types[9] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID,
	BOOLOID, TIMESTAMPTZOID, JSONBOID};
	Datum		values[9];
	char		nulls[9];
	char	   *sql;

	if (!CacheEnabled() || attempt->cached ||
		(attempt->text == NULL && attempt->answer == NULL) ||
		(attempt->outcome != CANARY_OUTCOME_OK &&
		 attempt->outcome != CANARY_OUTCOME_REFUSAL))
		return;
	if (XactReadOnly || RecoveryInProgress())
		return;

	sql = psprintf("INSERT INTO %s.canary_response_cache AS c"
				   " (model, prompt_sha256, request_sha256, response, prompt_tokens,"
				   "  completion_tokens, provider_refusal, created_at, answer)"
				   " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
				   " ON CONFLICT (model, prompt_sha256) DO UPDATE SET"
				   " request_sha256 = excluded.request_sha256, response = excluded.response,"
				   " prompt_tokens = excluded.prompt_tokens,"
				   " completion_tokens = excluded.completion_tokens,"
				   " provider_refusal = excluded.provider_refusal,"
				   " created_at = excluded.created_at, answer = excluded.answer",
				   ConfigSchemaName());
	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(model->name);
	values[1] = CStringGetTextDatum(key->prompt_sha256);
	values[2] = CStringGetTextDatum(key->request_sha256);
	values[3] = CStringGetTextDatum(attempt->text ? attempt->text : "");
	values[4] = Int32GetDatum(attempt->prompt_tokens);
	if (attempt->prompt_tokens < 0)
		nulls[4] = 'n';
	values[5] = Int32GetDatum(attempt->completion_tokens);
	if (attempt->completion_tokens < 0)
		nulls[5] = 'n';
	values[6] = BoolGetDatum(attempt->provider_refusal);
	values[7] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[8] = attempt->answer ? JsonbPGetDatum(attempt->answer) : (Datum) 0;
	if (attempt->answer == NULL)
		nulls[8] = 'n';
	(void) CacheRun("write to", sql, 9, types, values, nulls, NULL, model, key);
}
