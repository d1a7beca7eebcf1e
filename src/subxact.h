/*-------------------------------------------------------------------------
 *
 * subxact.h
 *	  Ending an internal subtransaction (subxact.c), as PL/pgSQL ends an
 *	  exception block: the caller begins it, runs its step under PG_TRY,
 *	  and ends it here, by commit or by rollback with the error copied.
 *	  What follows an error (raise it again, set the interrupt pending,
 *	  keep it as a failed row) stays with the caller.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SUBXACT_H
#define LLM_CANARY_SUBXACT_H

#include "postgres.h"

#include "utils/elog.h"
#include "utils/resowner.h"

extern void CanarySubxactCommit(MemoryContext oldcxt, ResourceOwner oldowner);
extern ErrorData *CanarySubxactAbort(MemoryContext oldcxt, ResourceOwner oldowner,
									 MemoryContext errcxt);

#endif							/* LLM_CANARY_SUBXACT_H */
