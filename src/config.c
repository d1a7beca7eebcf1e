/*-------------------------------------------------------------------------
 *
 * config.c
 *	  Per-backend cache of rollouts and models.
 *
 * Routing runs on every call, so canary_config and canary_models are read
 * through SPI once and kept in a memory context of their own.  A statement
 * trigger on both tables (canary_invalidate_cache) sends a relcache
 * invalidation for the table; every backend receives it at the commit of the
 * change, and our relcache callback marks the cache stale, so a committed
 * change is seen by the next routing decision of every backend.  Invalidation
 * messages are also accepted at the start of every statement, so a change is
 * seen even inside a long transaction block that touches no table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "config.h"
#include "extension.h"

typedef struct RolloutEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		found;
	CanaryRollout rollout;
} RolloutEntry;

typedef struct ModelEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	bool		found;
	CanaryModel model;
} ModelEntry;

static MemoryContext ConfigCacheContext = NULL;
static MemoryContext RetiredContext = NULL;	/* stale copies, freed at the next statement */
static HTAB *RolloutCache = NULL;
static HTAB *ModelCache = NULL;
static char *CachedSchemaName = NULL;
static Oid	CachedExtensionOwner = InvalidOid;
static Oid	CachedConfigRelid = InvalidOid;
static Oid	CachedModelsRelid = InvalidOid;
static Oid	CachedPatternsRelid = InvalidOid;
static char **RefusalPatterns = NULL;	/* lowercased; NULL until loaded */
static int	NumRefusalPatterns = 0;
static bool ConfigCacheValid = false;
static TimestampTz LastStatementSeen = 0;

static const char *const StageNames[] = {
	"shadow", "ramp_1", "ramp_5", "ramp_25", "full"
};

const char *
CanaryStageName(CanaryStage stage)
{
	return StageNames[stage];
}

/* Relcache callback: any change to our tables (or a full reset) drops all. */
static void
ConfigRelcacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == CachedConfigRelid ||
		relid == CachedModelsRelid || relid == CachedPatternsRelid ||
		CachedConfigRelid == InvalidOid)
		ConfigCacheValid = false;
}

/* Called once per backend from _PG_init. */
void
ConfigCacheInit(void)
{
	CacheRegisterRelcacheCallback(ConfigRelcacheCallback, (Datum) 0);
}

/*
 * Make the cache usable: accept pending invalidations once per statement,
 * and rebuild the (empty) hash tables and the schema name when stale.
 * Entries themselves are loaded lazily, one name at a time.
 */
static void
ConfigCacheEnsure(void)
{
	TimestampTz stmt = GetCurrentStatementStartTimestamp();

	if (stmt != LastStatementSeen)
	{
		LastStatementSeen = stmt;
		if (RetiredContext != NULL)
		{
			MemoryContextDelete(RetiredContext);
			RetiredContext = NULL;
		}
		AcceptInvalidationMessages();
	}
	if (ConfigCacheValid)
		return;

	/*
	 * Pointers handed out earlier in this statement must stay valid until it
	 * ends, so the stale copy is retired rather than freed.
	 */
	if (ConfigCacheContext != NULL)
	{
		if (RetiredContext == NULL)
			RetiredContext = ConfigCacheContext;
		else
			MemoryContextSetParent(ConfigCacheContext, RetiredContext);
	}
	ConfigCacheContext = AllocSetContextCreate(CacheMemoryContext,
											   "llm_canary config cache",
											   ALLOCSET_SMALL_SIZES);
	RolloutCache = NULL;
	ModelCache = NULL;
	CachedSchemaName = NULL;
	CachedExtensionOwner = InvalidOid;
	CachedConfigRelid = InvalidOid;
	CachedModelsRelid = InvalidOid;
	CachedPatternsRelid = InvalidOid;
	RefusalPatterns = NULL;
	NumRefusalPatterns = 0;

	/* set before loading, so an invalidation arriving meanwhile is kept */
	ConfigCacheValid = true;

	{
		Oid			extoid = get_extension_oid(LLM_CANARY_EXTNAME, true);
		Oid			nspoid;
		HASHCTL		ctl;

		if (!OidIsValid(extoid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("extension \"%s\" is not installed in database \"%s\"",
							LLM_CANARY_EXTNAME, get_database_name(MyDatabaseId)),
					 errhint("Run CREATE EXTENSION llm_canary.")));

		nspoid = CanaryExtensionNamespace(extoid);
		CachedSchemaName = MemoryContextStrdup(ConfigCacheContext,
											   quote_identifier(get_namespace_name(nspoid)));
		CachedExtensionOwner = CanaryExtensionOwner(extoid);
		CachedConfigRelid = get_relname_relid("canary_config", nspoid);
		CachedModelsRelid = get_relname_relid("canary_models", nspoid);
		CachedPatternsRelid = get_relname_relid("canary_refusal_patterns", nspoid);

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(RolloutEntry);
		ctl.hcxt = ConfigCacheContext;
		RolloutCache = hash_create("llm_canary rollouts", 8, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		ctl.entrysize = sizeof(ModelEntry);
		ModelCache = hash_create("llm_canary models", 8, &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
}

/*
 * ConfigQuery
 *		Run a read-only query of the cached tables under a snapshot taken
 *		now, not the statement's.  The cache is only ever marked stale by an
 *		invalidation, and an invalidation can be accepted after the
 *		statement's snapshot was taken (at the start of the statement, or
 *		while the query below locks its table).  Reading under the older
 *		snapshot would then cache the row as it was before the change and
 *		mark it valid, with the invalidation already consumed: the backend
 *		would keep routing by a tripped kill switch's old state until the
 *		next change.  A snapshot taken after the invalidations accepted so
 *		far sees every change they announce (a commit is visible before its
 *		invalidations are sent).  Caller must be connected to SPI.
 */
static int
ConfigQuery(const char *sql, int nargs, Oid *argtypes, Datum *args, long count)
{
	int			ret;

	PushActiveSnapshot(GetLatestSnapshot());
	if (nargs > 0)
		ret = SPI_execute_with_args(sql, nargs, argtypes, args, NULL, true, count);
	else
		ret = SPI_execute(sql, true, count);
	PopActiveSnapshot();
	return ret;
}

/* Quoted name of the schema the extension lives in. */
const char *
ConfigSchemaName(void)
{
	ConfigCacheEnsure();
	return CachedSchemaName;
}

/* The role that owns the extension (and its tables). */
Oid
ConfigExtensionOwner(void)
{
	ConfigCacheEnsure();
	return CachedExtensionOwner;
}

static char *
CacheStrdupOrNull(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return NULL;
	return MemoryContextStrdup(ConfigCacheContext, TextDatumGetCString(d));
}

/* List of existing rollouts for a hint; allocated in the caller's context. */
static char *
ListNames(const char *table)
{
	StringInfoData buf;
	char	   *result;
	MemoryContext caller = CurrentMemoryContext;

	initStringInfo(&buf);
	appendStringInfo(&buf, "SELECT coalesce(string_agg(name, ', ' ORDER BY name), '') FROM %s.%s",
					 CachedSchemaName, table);
	if (SPI_execute(buf.data, true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		return pstrdup("");
	result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	return MemoryContextStrdup(caller, result ? result : "");
}

/*
 * ConfigGetRollout
 *		The cached row of canary_config named name.
 *
 * Raises ERROR (42704) for an unknown rollout.  The result lives in the cache
 * context: valid until the next cache invalidation, so callers copy what
 * they keep across anything that may accept invalidations.
 */
const CanaryRollout *
ConfigGetRollout(const char *name)
{
	RolloutEntry *entry;
	bool		found;
	char		key[NAMEDATALEN];

	ConfigCacheEnsure();
	memset(key, 0, sizeof(key));
	strlcpy(key, name, NAMEDATALEN);
	entry = hash_search(RolloutCache, key, HASH_FIND, &found);
	if (entry != NULL && entry->found)
		return &entry->rollout;

	{
		StringInfoData sql;
		Oid			argtypes[1] = {TEXTOID};
		Datum		args[1];
		int			ret;
		HTAB	   *hash = RolloutCache;

		SPI_connect();
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT stage, (percent_new * 100)::int4, kill_switch_armed, old_model, new_model,"
						 " salt, shadow_sample_rate::float8, fallback_to_old, session_ttl::text,"
						 " shadow_embedding_model"
						 " FROM %s.canary_config WHERE name = $1", CachedSchemaName);
		args[0] = CStringGetTextDatum(name);
		ret = ConfigQuery(sql.data, 1, argtypes, args, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read canary_config: SPI error %d", ret);
		if (SPI_processed == 0)
		{
			char	   *known = ListNames("canary_config");

			SPI_finish();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("rollout \"%s\" does not exist", name),
					 errhint("Existing rollouts: %s. Create one with INSERT INTO canary_config (name, old_model, new_model).",
							 known[0] ? known : "none")));
		}

		/* the cache may have been rebuilt by an invalidation during SPI */
		if (hash != RolloutCache || !ConfigCacheValid)
		{
			SPI_finish();
			return ConfigGetRollout(name);
		}

		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *stage = SPI_getvalue(tup, desc, 1);
			CanaryRollout *r;
			int			i;

			entry = hash_search(RolloutCache, key, HASH_ENTER, &found);
			entry->found = true;
			r = &entry->rollout;
			memset(r, 0, sizeof(*r));
			strlcpy(r->name, name, NAMEDATALEN);
			for (i = 0; i < lengthof(StageNames); i++)
				if (strcmp(stage, StageNames[i]) == 0)
					break;
			if (i == lengthof(StageNames))
				elog(ERROR, "unexpected stage \"%s\" in canary_config", stage);
			r->stage = (CanaryStage) i;
			r->stage_name = StageNames[i];
			r->percent_x100 = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			r->armed = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
			r->old_model = CacheStrdupOrNull(tup, desc, 4);
			r->new_model = CacheStrdupOrNull(tup, desc, 5);
			r->salt = CacheStrdupOrNull(tup, desc, 6);
			r->salt_len = r->salt ? strlen(r->salt) : 0;
			r->shadow_sample_rate = DatumGetFloat8(SPI_getbinval(tup, desc, 7, &isnull));
			r->fallback_to_old = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
			r->session_ttl = CacheStrdupOrNull(tup, desc, 9);
			r->shadow_embedding_model = CacheStrdupOrNull(tup, desc, 10);
		}
		SPI_finish();
	}
	return &entry->rollout;
}

/*
 * ConfigGetModel
 *		The cached row of canary_models named name; ERROR (42704) if unknown.
 *		Same lifetime rules as ConfigGetRollout.
 */
const CanaryModel *
ConfigGetModel(const char *name)
{
	ModelEntry *entry;
	bool		found;
	char		key[NAMEDATALEN];

	ConfigCacheEnsure();
	memset(key, 0, sizeof(key));
	strlcpy(key, name, NAMEDATALEN);
	entry = hash_search(ModelCache, key, HASH_FIND, &found);
	if (entry != NULL && entry->found)
		return &entry->model;

	{
		StringInfoData sql;
		Oid			argtypes[1] = {TEXTOID};
		Datum		args[1];
		int			ret;
		HTAB	   *hash = ModelCache;

		SPI_connect();
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT provider, base_url, model, timeout_ms, connect_timeout_ms, max_retries,"
						 " max_tokens, use_max_completion_tokens, temperature, system_prompt,"
						 " price_input_per_1k::float8, price_output_per_1k::float8, api_key_env"
						 " FROM %s.canary_models WHERE name = $1", CachedSchemaName);
		args[0] = CStringGetTextDatum(name);
		ret = ConfigQuery(sql.data, 1, argtypes, args, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read canary_models: SPI error %d", ret);
		if (SPI_processed == 0)
		{
			char	   *known = ListNames("canary_models");

			SPI_finish();
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("model \"%s\" does not exist", name),
					 errhint("Known models: %s.", known[0] ? known : "none")));
		}
		if (hash != ModelCache || !ConfigCacheValid)
		{
			SPI_finish();
			return ConfigGetModel(name);
		}

		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *provider = SPI_getvalue(tup, desc, 1);
			CanaryModel *m;
			Datum		d;

			entry = hash_search(ModelCache, key, HASH_ENTER, &found);
			entry->found = true;
			m = &entry->model;
			memset(m, 0, sizeof(*m));
			strlcpy(m->name, name, NAMEDATALEN);
			m->provider = strcmp(provider, "anthropic") == 0 ?
				CANARY_PROVIDER_ANTHROPIC : CANARY_PROVIDER_OPENAI;
			m->base_url = CacheStrdupOrNull(tup, desc, 2);
			m->model = CacheStrdupOrNull(tup, desc, 3);
			m->timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
			m->connect_timeout_ms = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
			m->max_retries = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
			d = SPI_getbinval(tup, desc, 7, &isnull);
			m->max_tokens = isnull ? 0 : DatumGetInt32(d);
			m->use_max_completion_tokens = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
			d = SPI_getbinval(tup, desc, 9, &isnull);
			m->has_temperature = !isnull;
			m->temperature = isnull ? 0 : DatumGetFloat8(d);
			m->system_prompt = CacheStrdupOrNull(tup, desc, 10);
			m->price_input_per_1k = DatumGetFloat8(SPI_getbinval(tup, desc, 11, &isnull));
			m->price_output_per_1k = DatumGetFloat8(SPI_getbinval(tup, desc, 12, &isnull));
			m->api_key_env = CacheStrdupOrNull(tup, desc, 13);
		}
		SPI_finish();
	}
	return &entry->model;
}

/*
 * ConfigGetRefusalPatterns
 *		The enabled rows of canary_refusal_patterns, lowercased, for a
 *		case-insensitive substring match.  Same lifetime rules as
 *		ConfigGetRollout.
 */
char	  **
ConfigGetRefusalPatterns(int *npatterns)
{
	ConfigCacheEnsure();
	if (RefusalPatterns == NULL)
	{
		StringInfoData sql;
		int			ret;
		char	  **patterns;

		SPI_connect();
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT lower(pattern) FROM %s.canary_refusal_patterns"
						 " WHERE enabled AND pattern <> '' ORDER BY pattern",
						 CachedSchemaName);
		ret = ConfigQuery(sql.data, 0, NULL, NULL, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read canary_refusal_patterns: SPI error %d", ret);
		patterns = MemoryContextAllocZero(ConfigCacheContext,
										  sizeof(char *) * (SPI_processed + 1));
		for (uint64 i = 0; i < SPI_processed; i++)
			patterns[i] = MemoryContextStrdup(ConfigCacheContext,
											  SPI_getvalue(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1));
		NumRefusalPatterns = (int) SPI_processed;
		RefusalPatterns = patterns;
		SPI_finish();
	}
	*npatterns = NumRefusalPatterns;
	return RefusalPatterns;
}

/*
 * CanaryTextIsRefusal
 *		True when text contains one of the operator's refusal patterns
 *		(case-insensitive substring, ASCII case folding).  Only the first
 *		2000 bytes are examined: refusals open with the refusal.
 */
bool
CanaryTextIsRefusal(const char *text)
{
	int			n;
	char	  **patterns = ConfigGetRefusalPatterns(&n);
	size_t		len;
	char	   *lower;
	bool		found = false;

	if (text == NULL || n == 0)
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
 * canary_invalidate_cache
 *		Statement trigger on canary_config and canary_models: make every
 *		backend drop its cached copy when this transaction commits.
 */
PG_FUNCTION_INFO_V1(canary_invalidate_cache);
Datum
canary_invalidate_cache(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("canary_invalidate_cache() must be called as a trigger")));

	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	ConfigCacheValid = false;
	return PointerGetDatum(NULL);
}
