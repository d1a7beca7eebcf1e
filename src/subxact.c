/*-------------------------------------------------------------------------
 *
 * subxact.c
 *	  The two ends of an internal subtransaction that a caller began with
 *	  BeginInternalSubTransaction: commit it, or (in PG_CATCH) copy the
 *	  error, roll it back and hand the error to the caller.  Either way the
 *	  caller's memory context and resource owner are restored.  Used by
 *	  the response cache, the shadow job copy, the batch's per-row steps
 *	  and the plan's advance.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/memutils.h"

#include "subxact.h"

/*
 * CanarySubxactCommit
 *		Commit the current internal subtransaction and return to oldcxt and
 *		oldowner, the memory context and resource owner the caller had
 *		before BeginInternalSubTransaction.
 */
void
CanarySubxactCommit(MemoryContext oldcxt, ResourceOwner oldowner)
{
	ReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
}

/*
 * CanarySubxactAbort
 *		In the PG_CATCH of a step run in an internal subtransaction: copy the
 *		error into errcxt, flush it, roll the subtransaction back (its locks,
 *		buffers, SPI and user id go with it) and return to oldcxt and
 *		oldowner.  Returns the copy, which the caller raises again
 *		(ReThrowError), keeps or frees (FreeErrorData).  errcxt must outlive
 *		the subtransaction: the caller's context or a longer one, never
 *		ErrorContext (FlushErrorState resets it).  Call only from the
 *		PG_CATCH of the step, with the caller's internal subtransaction
 *		still the current one: this rolls back whatever is current.
 */
ErrorData *
CanarySubxactAbort(MemoryContext oldcxt, ResourceOwner oldowner,
				   MemoryContext errcxt)
{
	ErrorData  *edata;

	Assert(errcxt != ErrorContext);
	MemoryContextSwitchTo(errcxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	return edata;
}
