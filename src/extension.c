/*-------------------------------------------------------------------------
 *
 * extension.c
 *	  The extension as loaded and installed: whether the library was
 *	  preloaded (shared memory and the worker need it), the schema and owner
 *	  of the installed extension, read from pg_extension, and the one way
 *	  internal SQL runs as that owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/pg_extension.h"
#include "miscadmin.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"

#include "extension.h"

/* set by _PG_init: loaded through shared_preload_libraries */
static bool LibraryPreloaded = false;

/* Called first by _PG_init. */
void
ExtensionInit(void)
{
	LibraryPreloaded = process_shared_preload_libraries_in_progress;
}

/* True when the library was loaded through shared_preload_libraries. */
bool
CanaryLibraryPreloaded(void)
{
	return LibraryPreloaded;
}

/*
 * CanaryRequirePreload
 *		Raise a clear error when a feature that needs shared memory or the
 *		background worker is used without shared_preload_libraries.
 */
void
CanaryRequirePreload(const char *what)
{
	if (!CanaryLibraryPreloaded())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires llm_canary to be loaded via shared_preload_libraries", what),
				 errhint("Add llm_canary to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * CanaryExtensionSchemaAndOwner
 *		The pg_extension row of extoid: its schema and its owner, the owner of
 *		its tables, whose identity internal writes run under (InvalidOid for
 *		both if there is no such extension).  Caller must be in a transaction.
 */
void
CanaryExtensionSchemaAndOwner(Oid extoid, Oid *nspoid, Oid *owner)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	*nspoid = InvalidOid;
	*owner = InvalidOid;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		*nspoid = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
		*owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
}

/*
 * CanaryExtensionNamespace
 *		The schema an installed extension lives in (InvalidOid if none).
 *		Caller must be in a transaction.
 */
Oid
CanaryExtensionNamespace(Oid extoid)
{
	Oid			nspoid;
	Oid			owner;

	CanaryExtensionSchemaAndOwner(extoid, &nspoid, &owner);
	return nspoid;
}

/*
 * CanaryBecomeOwner
 *		Run what follows as owner (the extension's owner: the owner of its
 *		tables), like a SECURITY DEFINER function with SET search_path =
 *		pg_catalog, pg_temp: internal queries are schema-qualified, and the
 *		caller's search_path cannot put its own operators or functions in
 *		front of pg_catalog's while we run as the owner.  The operation is
 *		restricted (no temporary objects, no SET of the session).
 *
 * Undo with CanaryRestoreUser(save) in the same (sub)transaction.  On ERROR
 * the abort of the (sub)transaction restores the user and the setting.
 * Raises ERROR when owner is invalid.
 */
void
CanaryBecomeOwner(Oid owner, CanaryOwnerSave *save)
{
	if (!OidIsValid(owner))
		elog(ERROR, "could not find the owner of extension \"%s\"", LLM_CANARY_EXTNAME);
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	save->guc_nestlevel = NewGUCNestLevel();
	SetUserIdAndSecContext(owner, save->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

/* Back to the caller's identity and search_path, saved by CanaryBecomeOwner. */
void
CanaryRestoreUser(const CanaryOwnerSave *save)
{
	AtEOXact_GUC(true, save->guc_nestlevel);
	SetUserIdAndSecContext(save->userid, save->sec_context);
}
