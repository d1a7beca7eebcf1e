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
 * messages are also accepted at every lookup, so a change is seen by the next
 * call even inside a long statement (INSERT ... SELECT canary_call(...)) or a
 * transaction block that touches no table.
 *
 * State and errors: every step of a rebuild can raise (extension dropped,
 * cancel, lock timeout, out of memory).  A rebuild therefore fills local
 * variables and publishes them only when it is complete; the cache counts as
 * valid only when it was built for the current invalidation generation.  An
 * invalidation that arrives while a rebuild or a row load runs bumps the
 * generation, so it is never lost: the cache stays stale and the next lookup
 * loads again.  A cached row is marked found only once it is filled.
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
#include "mb/pg_wchar.h"
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

/*
 * InvalGeneration counts the invalidations received; the cache is valid
 * when it was completely built (ConfigCacheBuilt) for the current one.
 */
static uint64 InvalGeneration = 1;
static uint64 BuiltGeneration = 0;
static bool ConfigCacheBuilt = false;
static TimestampTz LastStatementSeen = 0;

#define ConfigCacheIsValid() (ConfigCacheBuilt && BuiltGeneration == InvalGeneration)

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
		InvalGeneration++;
}

/* Called once per backend from _PG_init. */
void
ConfigCacheInit(void)
{
	CacheRegisterRelcacheCallback(ConfigRelcacheCallback, (Datum) 0);
}

/*
 * ConfigCacheEnsure
 *		Make the cache usable: accept pending invalidations (cheap when there
 *		are none), and when the cache is stale rebuild the (empty) hash
 *		tables, the schema name and the owner.  Entries themselves are loaded
 *		lazily, one name at a time.
 *
 * Raises ERROR when the extension is not installed, or when a catalog read
 * fails; the cache is then left stale (never half-built), so the next call
 * tries again.  Pointers handed out earlier in this statement stay valid
 * until the next statement: a replaced cache is retired, not freed.
 */
static void
ConfigCacheEnsure(void)
{
	TimestampTz stmt = GetCurrentStatementStartTimestamp();
	uint64		generation;
	MemoryContext newcxt;

	if (stmt != LastStatementSeen)
	{
		LastStatementSeen = stmt;
		if (RetiredContext != NULL)
		{
			MemoryContextDelete(RetiredContext);
			RetiredContext = NULL;
		}
	}
	AcceptInvalidationMessages();
	if (ConfigCacheIsValid())
		return;

	/*
	 * Retire the stale copy and forget it before anything can raise: from
	 * here until the end, the cache is not valid.
	 */
	if (ConfigCacheContext != NULL)
	{
		if (RetiredContext == NULL)
			RetiredContext = ConfigCacheContext;
		else
			MemoryContextSetParent(ConfigCacheContext, RetiredContext);
	}
	ConfigCacheContext = NULL;
	ConfigCacheBuilt = false;
	RolloutCache = NULL;
	ModelCache = NULL;
	CachedSchemaName = NULL;
	CachedExtensionOwner = InvalidOid;
	CachedConfigRelid = InvalidOid;
	CachedModelsRelid = InvalidOid;
	CachedPatternsRelid = InvalidOid;
	RefusalPatterns = NULL;
	NumRefusalPatterns = 0;

	/* an invalidation arriving from here on bumps InvalGeneration */
	generation = InvalGeneration;
	newcxt = AllocSetContextCreate(CacheMemoryContext,
								   "llm_canary config cache",
								   ALLOCSET_SMALL_SIZES);
	PG_TRY();
	{
		Oid			extoid = get_extension_oid(LLM_CANARY_EXTNAME, true);
		Oid			nspoid;
		HASHCTL		ctl;
		char	   *schema;
		Oid			owner;
		Oid			config_relid;
		Oid			models_relid;
		Oid			patterns_relid;
		HTAB	   *rollouts;
		HTAB	   *models;

		if (!OidIsValid(extoid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("extension \"%s\" is not installed in database \"%s\"",
							LLM_CANARY_EXTNAME, get_database_name(MyDatabaseId)),
					 errhint("Run CREATE EXTENSION llm_canary.")));

		CanaryExtensionSchemaAndOwner(extoid, &nspoid, &owner);
		schema = MemoryContextStrdup(newcxt,
									 quote_identifier(get_namespace_name(nspoid)));
		config_relid = get_relname_relid("canary_config", nspoid);
		models_relid = get_relname_relid("canary_models", nspoid);
		patterns_relid = get_relname_relid("canary_refusal_patterns", nspoid);

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(RolloutEntry);
		ctl.hcxt = newcxt;
		rollouts = hash_create("llm_canary rollouts", 8, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		ctl.entrysize = sizeof(ModelEntry);
		models = hash_create("llm_canary models", 8, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

		/* complete: publish (nothing below can raise) */
		ConfigCacheContext = newcxt;
		CachedSchemaName = schema;
		CachedExtensionOwner = owner;
		CachedConfigRelid = config_relid;
		CachedModelsRelid = models_relid;
		CachedPatternsRelid = patterns_relid;
		RolloutCache = rollouts;
		ModelCache = models;
		BuiltGeneration = generation;
		ConfigCacheBuilt = true;
	}
	PG_CATCH();
	{
		MemoryContextDelete(newcxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
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

/*
 * How a cached row is read: one entry per column, in select-list order,
 * naming the SQL expression, what it is read as and the field it fills.
 * The loader casts every expression to the type it reads
 * (ConfigColumnTypeOid), so a column whose type a user changed (salt
 * varchar(100), window_seconds bigint) is still read; a value the cast
 * cannot take fails there, with the cast's own error.  A NULL reads as 0,
 * false or a NULL pointer.
 */
typedef enum ConfigColumnType
{
	CONFIG_BOOL,
	CONFIG_INT4,
	CONFIG_INT8,
	CONFIG_FLOAT8,
	CONFIG_TEXT,				/* char *, copied into the cache context */
	CONFIG_STAGE,				/* CanaryStage, by StageNames */
	CONFIG_PROVIDER				/* CanaryProvider, by ProviderNames */
} ConfigColumnType;

typedef struct ConfigColumn
{
	const char *expr;
	ConfigColumnType type;
	size_t		offset;			/* of the field in the row's struct */
} ConfigColumn;

/*
 * One macro per type, naming the C type its fields have: a field of
 * another size (an int filled as int8) does not compile.  The offset
 * carries the check, 0 * sizeof(char[1]), or a negative array size.
 */
#define CONFIG_FIELD(rowtype, field, ctype) \
	(offsetof(rowtype, field) + \
	 0 * sizeof(char[sizeof(((rowtype *) 0)->field) == sizeof(ctype) ? 1 : -1]))
#define CONFIG_COLUMN(rowtype, expr, type, ctype, field) \
	{expr, type, CONFIG_FIELD(rowtype, field, ctype)}
#define CONFIG_BOOL_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_BOOL, bool, field)
#define CONFIG_INT4_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_INT4, int32, field)
#define CONFIG_INT8_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_INT8, int64, field)
#define CONFIG_FLOAT8_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_FLOAT8, double, field)
#define CONFIG_TEXT_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_TEXT, char *, field)
#define CONFIG_STAGE_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_STAGE, CanaryStage, field)
#define CONFIG_PROVIDER_COLUMN(rowtype, expr, field) \
	CONFIG_COLUMN(rowtype, expr, CONFIG_PROVIDER, CanaryProvider, field)

#define ROLLOUT(expr, type, field) type##_COLUMN(CanaryRollout, expr, field)
#define MODEL(expr, type, field) type##_COLUMN(CanaryModel, expr, field)

static const ConfigColumn RolloutColumns[] = {
	ROLLOUT("stage", CONFIG_STAGE, stage),
	ROLLOUT("percent_new * 100", CONFIG_INT4, percent_x100),
	ROLLOUT("kill_switch_armed", CONFIG_BOOL, armed),
	ROLLOUT("old_model", CONFIG_TEXT, old_model),
	ROLLOUT("new_model", CONFIG_TEXT, new_model),
	ROLLOUT("salt", CONFIG_TEXT, salt),
	ROLLOUT("shadow_sample_rate", CONFIG_FLOAT8, shadow_sample_rate),
	ROLLOUT("fallback_to_old", CONFIG_BOOL, fallback_to_old),
	ROLLOUT("session_ttl", CONFIG_TEXT, session_ttl),
	ROLLOUT("shadow_embedding_model", CONFIG_TEXT, shadow_embedding_model),
	ROLLOUT("window_seconds", CONFIG_INT4, window_seconds),
	ROLLOUT("error_rate_threshold", CONFIG_FLOAT8, error_rate_threshold),
	ROLLOUT("p95_ratio_threshold", CONFIG_FLOAT8, p95_ratio_threshold),
	ROLLOUT("refusal_delta_threshold", CONFIG_FLOAT8, refusal_delta_threshold),
	ROLLOUT("thumbs_down_ratio_threshold", CONFIG_FLOAT8, thumbs_down_ratio_threshold),
	ROLLOUT("min_samples", CONFIG_INT8, min_samples),
	ROLLOUT("significance", CONFIG_FLOAT8, significance),
	ROLLOUT("raw_rules", CONFIG_BOOL, raw_rules),
	ROLLOUT("confirm_windows", CONFIG_INT4, confirm_windows),
};

static const ConfigColumn ModelColumns[] = {
	MODEL("provider", CONFIG_PROVIDER, provider),
	MODEL("base_url", CONFIG_TEXT, base_url),
	MODEL("model", CONFIG_TEXT, model),
	MODEL("timeout_ms", CONFIG_INT4, timeout_ms),
	MODEL("connect_timeout_ms", CONFIG_INT4, connect_timeout_ms),
	MODEL("max_retries", CONFIG_INT4, max_retries),
	MODEL("max_tokens", CONFIG_INT4, max_tokens),
	MODEL("use_max_completion_tokens", CONFIG_BOOL, use_max_completion_tokens),
	MODEL("temperature IS NOT NULL", CONFIG_BOOL, has_temperature),
	MODEL("temperature", CONFIG_FLOAT8, temperature),
	MODEL("system_prompt", CONFIG_TEXT, system_prompt),
	MODEL("price_input_per_1k", CONFIG_FLOAT8, price_input_per_1k),
	MODEL("price_output_per_1k", CONFIG_FLOAT8, price_output_per_1k),
	MODEL("api_key_env", CONFIG_TEXT, api_key_env),
};

static const char *const ProviderNames[] = {"openai", "anthropic"};

/* The cached tables: where each is read from and kept. */
typedef struct ConfigTable
{
	const char *table;
	const ConfigColumn *columns;
	int			ncolumns;
	HTAB	  **cache;			/* its hash table, replaced by a rebuild */
} ConfigTable;

static const ConfigTable RolloutTable = {
	"canary_config", RolloutColumns, lengthof(RolloutColumns), &RolloutCache
};
static const ConfigTable ModelTable = {
	"canary_models", ModelColumns, lengthof(ModelColumns), &ModelCache
};

/*
 * The index of value in names[n]; ERROR for a value the table's CHECK
 * constraint keeps out (dropped, or bypassed by a replica-mode write).
 */
static int
ConfigNameIndex(const char *const *names, int n, const char *value,
				const char *table, const char *column, const char *rowname)
{
	StringInfoData allowed;

	for (int i = 0; i < n; i++)
		if (strcmp(value, names[i]) == 0)
			return i;
	initStringInfo(&allowed);
	for (int i = 0; i < n; i++)
		appendStringInfo(&allowed, "%s%s", i > 0 ? ", " : "", names[i]);
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("invalid %s \"%s\" in row \"%s\" of %s",
					column, value, rowname, table),
			 errhint("Set %s to one of: %s.", column, allowed.data)));
	return -1;					/* keep compiler quiet */
}

/* The type a column of type must have in the select list. */
static Oid
ConfigColumnTypeOid(ConfigColumnType type)
{
	switch (type)
	{
		case CONFIG_BOOL:
			return BOOLOID;
		case CONFIG_INT4:
			return INT4OID;
		case CONFIG_INT8:
			return INT8OID;
		case CONFIG_FLOAT8:
			return FLOAT8OID;
		case CONFIG_TEXT:
		case CONFIG_STAGE:
		case CONFIG_PROVIDER:
			break;
	}
	return TEXTOID;
}

/*
 * ConfigLoadRow
 *		Read the row of t named name into row (a CanaryRollout or a
 *		CanaryModel, zeroed first, its name left to the caller; text is
 *		copied into the cache context), column by column as t says, under a
 *		fresh snapshot.
 *		Returns false, row untouched, when there is no such row.  Caller must
 *		have made the cache valid (ConfigCacheEnsure) and not be connected to
 *		SPI; an unexpected column type or value raises ERROR.
 *
 * Everything that can raise (the types, the stage and provider names) is
 * checked before the first byte is copied into the cache context, which
 * lives as long as the backend: a failing lookup, repeated on every call,
 * must not leave copies behind there.
 */
static bool
ConfigLoadRow(const ConfigTable *t, const char *name, void *row, Size rowsize)
{
	StringInfoData sql;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	HeapTuple	tup;
	TupleDesc	desc;
	HTAB	   *hash;
	int			ret;

	args[0] = CStringGetTextDatum(name);

	/*
	 * An invalidation accepted during the query (while it locked the table)
	 * came from a commit after this call started: the row may serve this
	 * call, and the generation it bumped makes the next lookup reload.  Only
	 * a cache rebuilt meanwhile is not ours to fill: then read again for the
	 * new one.
	 */
	for (;;)
	{
		hash = *t->cache;
		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT ");
		for (int i = 0; i < t->ncolumns; i++)
			appendStringInfo(&sql, "%s(%s)::%s", i > 0 ? ", " : "",
							 t->columns[i].expr,
							 format_type_be(ConfigColumnTypeOid(t->columns[i].type)));
		appendStringInfo(&sql, " FROM %s.%s WHERE name = $1",
						 CachedSchemaName, t->table);
		SPI_connect();
		ret = ConfigQuery(sql.data, 1, argtypes, args, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not read %s: SPI error %d", t->table, ret);
		if (SPI_processed == 0)
		{
			SPI_finish();
			return false;
		}
		if (hash == *t->cache)
			break;
		SPI_finish();
		ConfigCacheEnsure();
	}

	/* the casts make this hold; it catches a mistake in the column table */
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	for (int i = 0; i < t->ncolumns; i++)
	{
		const ConfigColumn *c = &t->columns[i];
		Oid			expected = ConfigColumnTypeOid(c->type);
		Oid			actual = SPI_gettypeid(desc, i + 1);

		if (actual != expected)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of %s has an unexpected type", c->expr, t->table),
					 errdetail("llm_canary reads it as %s, but its query returned %s.",
							   format_type_be(expected), format_type_be(actual)),
					 errhint("This is a bug in llm_canary; report it with the output of SELECT extversion FROM pg_extension WHERE extname = 'llm_canary'.")));
	}

	/* fill row; text points into SPI's memory until the last step */
	memset(row, 0, rowsize);
	for (int i = 0; i < t->ncolumns; i++)
	{
		const ConfigColumn *c = &t->columns[i];
		char	   *field = (char *) row + c->offset;
		bool		isnull;
		Datum		d = SPI_getbinval(tup, desc, i + 1, &isnull);

		if (isnull)
			continue;			/* stays 0, false or NULL */
		switch (c->type)
		{
			case CONFIG_BOOL:
				*(bool *) field = DatumGetBool(d);
				break;
			case CONFIG_INT4:
				*(int32 *) field = DatumGetInt32(d);
				break;
			case CONFIG_INT8:
				*(int64 *) field = DatumGetInt64(d);
				break;
			case CONFIG_FLOAT8:
				*(double *) field = DatumGetFloat8(d);
				break;
			case CONFIG_TEXT:
				*(char **) field = TextDatumGetCString(d);
				break;
			case CONFIG_STAGE:
				*(CanaryStage *) field = (CanaryStage)
					ConfigNameIndex(StageNames, lengthof(StageNames),
									TextDatumGetCString(d), t->table, c->expr, name);
				break;
			case CONFIG_PROVIDER:
				*(CanaryProvider *) field = (CanaryProvider)
					ConfigNameIndex(ProviderNames, lengthof(ProviderNames),
									TextDatumGetCString(d), t->table, c->expr, name);
				break;
		}
	}

	/* the row is good: keep its text */
	for (int i = 0; i < t->ncolumns; i++)
	{
		char	  **text = (char **) ((char *) row + t->columns[i].offset);

		if (t->columns[i].type == CONFIG_TEXT && *text != NULL)
			*text = MemoryContextStrdup(ConfigCacheContext, *text);
	}
	SPI_finish();
	return true;
}

/*
 * ConfigNameList
 *		The names in table, comma-separated in name order ("none" for no
 *		row), for the hint of a "does not exist" error.  Allocated in the
 *		caller's memory context.
 */
static char *
ConfigNameList(const char *table)
{
	StringInfoData buf;
	MemoryContext caller = CurrentMemoryContext;
	char	   *result = NULL;

	initStringInfo(&buf);
	appendStringInfo(&buf, "SELECT string_agg(name, ', ' ORDER BY name) FROM %s.%s",
					 CachedSchemaName, table);
	SPI_connect();
	if (SPI_execute(buf.data, true, 0) == SPI_OK_SELECT && SPI_processed == 1)
		result = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	result = MemoryContextStrdup(caller, result ? result : "none");
	SPI_finish();
	return result;
}

/*
 * ConfigCacheKey
 *		The hash key of a rollout or model name.  Names are keyed whole: a
 *		name that does not fit a key (NAMEDATALEN - 1 bytes) is refused with
 *		42622, since a clipped key would let two long names share one entry
 *		and could end in half a character.  Returns false, raising nothing,
 *		when missing_ok.
 */
static bool
ConfigCacheKey(const char *what, const char *name, bool missing_ok,
			   char key[NAMEDATALEN])
{
	size_t		len = strlen(name);

	if (len >= NAMEDATALEN)
	{
		if (missing_ok)
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s name \"%.*s...\" is too long", what,
						pg_mbcliplen(name, len, 32), name),
				 errdetail("The name is %zu bytes long; llm_canary uses names of at most %d bytes.",
						   len, NAMEDATALEN - 1),
				 errhint("Rename the %s to a shorter name.", what)));
	}
	memset(key, 0, NAMEDATALEN);
	memcpy(key, name, len);
	return true;
}

/*
 * ConfigGetRollout
 *		The cached row of canary_config named name.
 *
 * Raises ERROR (42704) for an unknown rollout.  The result lives in the cache
 * context: valid until the end of the statement, or longer if no
 * invalidation arrives; callers copy what they keep across statements.
 */
const CanaryRollout *
ConfigGetRollout(const char *name)
{
	return ConfigLookupRollout(name, false);
}

/*
 * ConfigLookupRollout
 *		ConfigGetRollout, or NULL for an unknown rollout when missing_ok.
 */
const CanaryRollout *
ConfigLookupRollout(const char *name, bool missing_ok)
{
	RolloutEntry *entry;
	char		key[NAMEDATALEN];
	CanaryRollout row;

	ConfigCacheEnsure();
	if (!ConfigCacheKey("rollout", name, missing_ok, key))
		return NULL;
	entry = hash_search(RolloutCache, key, HASH_FIND, NULL);
	if (entry != NULL && entry->found)
		return &entry->rollout;

	/* fill a copy; the entry is entered and marked found last */
	if (!ConfigLoadRow(&RolloutTable, name, &row, sizeof(row)))
	{
		char	   *known;

		if (missing_ok)
			return NULL;
		known = ConfigNameList("canary_config");
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("rollout \"%s\" does not exist", name),
				 errhint("Existing rollouts: %s. Create one with INSERT INTO canary_config (name, old_model, new_model).",
						 known)));
	}
	strlcpy(row.name, name, NAMEDATALEN);
	row.stage_name = StageNames[row.stage];
	row.salt_len = row.salt ? strlen(row.salt) : 0;

	entry = hash_search(RolloutCache, key, HASH_ENTER, NULL);
	entry->rollout = row;
	entry->found = true;
	return &entry->rollout;
}

/*
 * ConfigRolloutNames
 *		The names of every rollout, in name order, as a List of strings
 *		allocated in the caller's memory context.
 */
List *
ConfigRolloutNames(void)
{
	MemoryContext caller = CurrentMemoryContext;
	List	   *names = NIL;
	StringInfoData sql;
	int			ret;

	ConfigCacheEnsure();
	SPI_connect();
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT name FROM %s.canary_config ORDER BY name",
					 CachedSchemaName);
	ret = ConfigQuery(sql.data, 0, NULL, NULL, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read canary_config: SPI error %d", ret);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		names = lappend(names, pstrdup(SPI_getvalue(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1)));
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	return names;
}

/*
 * ConfigLookupModel
 *		The cached row of canary_models named name; NULL if there is none and
 *		missing_ok, else ERROR (42704).  Same lifetime rules as
 *		ConfigGetRollout.
 */
const CanaryModel *
ConfigLookupModel(const char *name, bool missing_ok)
{
	ModelEntry *entry;
	char		key[NAMEDATALEN];
	CanaryModel row;

	ConfigCacheEnsure();
	if (!ConfigCacheKey("model", name, missing_ok, key))
		return NULL;
	entry = hash_search(ModelCache, key, HASH_FIND, NULL);
	if (entry != NULL && entry->found)
		return &entry->model;

	if (!ConfigLoadRow(&ModelTable, name, &row, sizeof(row)))
	{
		char	   *known;

		if (missing_ok)
			return NULL;
		known = ConfigNameList("canary_models");
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("model \"%s\" does not exist", name),
				 errhint("Known models: %s.", known)));
	}
	strlcpy(row.name, name, NAMEDATALEN);

	entry = hash_search(ModelCache, key, HASH_ENTER, NULL);
	entry->model = row;
	entry->found = true;
	return &entry->model;
}

/* ConfigLookupModel(name, false): the model, or ERROR (42704). */
const CanaryModel *
ConfigGetModel(const char *name)
{
	return ConfigLookupModel(name, false);
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
	InvalGeneration++;			/* this backend's own change, at once */
	return PointerGetDatum(NULL);
}
