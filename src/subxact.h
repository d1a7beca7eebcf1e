/*-------------------------------------------------------------------------
 *
 * subxact.h
 *	  Ending an internal subtransaction (subxact.c), as PL/pgSQL ends an
 *	  exception block: the caller begins it, runs its step under PG_TRY,
 *	  and ends it here, by commit or by rollback with the error copied.
 *	  What follows an error (raise it again, set the interrupt pending,
 *	  keep it as a failed row) stays with the caller.
 *
 *	  Precondition of CanarySubxactAbort: call it only in the PG_CATCH of
 *	  the step, with the caller's own internal subtransaction still the
 *	  current one (nothing else begun or ended since), and with an errcxt
 *	  that outlives the subtransaction and is not ErrorContext (which
 *	  FlushErrorState resets, freeing the copy).
 *
 *	  Like PostgreSQL's own headers, this one expects postgres.h to have
 *	  been included first, by the .c file.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_SUBXACT_H
#define LLM_CANARY_SUBXACT_H

#include "utils/elog.h"
#include "utils/resowner.h"

extern void CanarySubxactCommit(MemoryContext oldcxt, ResourceOwner oldowner);
extern ErrorData *CanarySubxactAbort(MemoryContext oldcxt, ResourceOwner oldowner,
									 MemoryContext errcxt);

#endif							/* LLM_CANARY_SUBXACT_H */
