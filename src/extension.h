/*-------------------------------------------------------------------------
 *
 * extension.h
 *	  The extension as loaded and installed (extension.c): its name, whether
 *	  the library was preloaded, the schema and owner of the installed
 *	  extension in the current database, and running SQL as that owner.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_EXTENSION_H
#define LLM_CANARY_EXTENSION_H

#include "postgres.h"

#define LLM_CANARY_EXTNAME	"llm_canary"

/* Called first by _PG_init: remembers whether we are being preloaded. */
extern void ExtensionInit(void);

extern bool CanaryLibraryPreloaded(void);
extern void CanaryRequirePreload(const char *what);
extern Oid	CanaryExtensionNamespace(Oid extoid);
extern void CanaryExtensionSchemaAndOwner(Oid extoid, Oid *nspoid, Oid *owner);

/* The caller's identity, saved by CanaryBecomeOwner. */
typedef struct CanaryOwnerSave
{
	Oid			userid;
	int			sec_context;
	int			guc_nestlevel;
} CanaryOwnerSave;

extern void CanaryBecomeOwner(Oid owner, CanaryOwnerSave *save);
extern void CanaryRestoreUser(const CanaryOwnerSave *save);

#endif							/* LLM_CANARY_EXTENSION_H */
