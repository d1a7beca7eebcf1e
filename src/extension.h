/*-------------------------------------------------------------------------
 *
 * extension.h
 *	  The extension as loaded and installed (extension.c): its name, whether
 *	  the library was preloaded, and the schema and owner of the installed
 *	  extension in the current database.
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
extern Oid	CanaryExtensionOwner(Oid extoid);

#endif							/* LLM_CANARY_EXTENSION_H */
