/*-------------------------------------------------------------------------
 *
 * extension.c
 *	  The extension as loaded and installed: whether the library was
 *	  preloaded (shared memory and the worker need it), and the schema and
 *	  owner of the installed extension, read from pg_extension.
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

/* The pg_extension row of extoid: its schema and owner (InvalidOid if none). */
static void
ExtensionSchemaAndOwner(Oid extoid, Oid *nspoid, Oid *owner)
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

	ExtensionSchemaAndOwner(extoid, &nspoid, &owner);
	return nspoid;
}

/*
 * CanaryExtensionOwner
 *		The role that owns an installed extension (InvalidOid if none): the
 *		owner of its tables, whose identity internal writes run under.
 *		Caller must be in a transaction.
 */
Oid
CanaryExtensionOwner(Oid extoid)
{
	Oid			nspoid;
	Oid			owner;

	ExtensionSchemaAndOwner(extoid, &nspoid, &owner);
	return owner;
}
