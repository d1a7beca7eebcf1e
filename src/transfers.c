/*-------------------------------------------------------------------------
 *
 * transfers.c
 *	  The background worker's libcurl multi loop (see transfers.h): one
 *	  multi handle for every transfer the worker makes, driven by
 *	  curl_multi_socket_action from the worker's wait-event set.
 *
 * libcurl tells us what to wait for through two callbacks: the socket
 * callback keeps a table of the sockets it wants watched (and for what),
 * the timer callback the next deadline.  Neither does anything else: no
 * palloc, no ereport (the table grows with realloc).  Before each sleep the
 * worker adds the table's sockets to its wait-event set and bounds the
 * sleep by the deadline; after it, TransfersRun hands each ready socket to
 * curl_multi_socket_action, fires the timer when it is due, and calls the
 * completion callbacks of the transfers that finished.
 *
 * Which job a finished handle belongs to is kept in our own list, not in
 * CURLOPT_PRIVATE, so that the easy-handle set-up (http.c) stays free to
 * use every option.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "transfers.h"

/* One transfer in the multi handle. */
typedef struct Transfer
{
	dlist_node	node;
	CURL	   *easy;
	TransferDoneCallback done;
	void	   *arg;
} Transfer;

/* One socket libcurl wants watched. */
typedef struct TransferSocket
{
	curl_socket_t fd;
	int			events;			/* WL_SOCKET_* */
} TransferSocket;

static CURLM *multi = NULL;
static MemoryContext TransfersContext = NULL;
static dlist_head transfers = DLIST_STATIC_INIT(transfers);
static int	ntransfers = 0;

/* written by the libcurl callbacks (malloc'd) */
static TransferSocket *sockets = NULL;
static int	nsockets = 0;
static int	maxsockets = 0;
static TimestampTz deadline = 0;	/* 0: no timer */

/* ---------------------------------------------------------------------
 * libcurl callbacks: no palloc, no ereport, no CHECK_FOR_INTERRUPTS
 * ---------------------------------------------------------------------
 */

static int
TransferSocketCallback(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < nsockets; i++)
		if (sockets[i].fd == fd)
			break;
	if (what == CURL_POLL_REMOVE)
	{
		if (i < nsockets)
			sockets[i] = sockets[--nsockets];
		return 0;
	}
	if (i == nsockets)
	{
		if (nsockets == maxsockets)
		{
			int			newmax = Max(16, maxsockets * 2);
			TransferSocket *s = realloc(sockets, sizeof(TransferSocket) * newmax);

			if (s == NULL)
				return -1;		/* libcurl fails the transfer */
			sockets = s;
			maxsockets = newmax;
		}
		nsockets++;
	}
	sockets[i].fd = fd;
	sockets[i].events = 0;
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		sockets[i].events |= WL_SOCKET_READABLE;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		sockets[i].events |= WL_SOCKET_WRITEABLE;
	return 0;
}

static int
TransferTimerCallback(CURLM *m, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		deadline = 0;
	else
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return 0;
}

/* ---------------------------------------------------------------------
 * the job side
 * ---------------------------------------------------------------------
 */

/*
 * TransfersInit
 *		Create the multi handle; once per worker, after curl_global_init.
 *		Raises ERROR when libcurl cannot set it up.
 */
void
TransfersInit(void)
{
	if (multi != NULL)
		return;
	TransfersContext = AllocSetContextCreate(TopMemoryContext,
											 "llm_canary transfers",
											 ALLOCSET_SMALL_SIZES);
	multi = curl_multi_init();
	if (multi == NULL ||
		curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, TransferSocketCallback) != CURLM_OK ||
		curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, TransferTimerCallback) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create the libcurl multi handle of the llm_canary worker")));
}

/*
 * TransfersShutdown
 *		Release the multi handle.  Every job must have taken its handle back
 *		(TransferRemove) or been completed; what is left is removed without
 *		a callback.
 */
void
TransfersShutdown(void)
{
	dlist_mutable_iter it;

	if (multi == NULL)
		return;
	dlist_foreach_modify(it, &transfers)
	{
		Transfer   *t = dlist_container(Transfer, node, it.cur);

		curl_multi_remove_handle(multi, t->easy);
		dlist_delete(&t->node);
	}
	ntransfers = 0;
	curl_multi_cleanup(multi);
	multi = NULL;
	MemoryContextDelete(TransfersContext);
	TransfersContext = NULL;
	free(sockets);
	sockets = NULL;
	nsockets = maxsockets = 0;
	deadline = 0;
}

/*
 * TransferAdd
 *		Start the transfer of a configured easy handle; done(easy, result,
 *		arg) is called once when it ends.  Returns false (the handle stays
 *		the caller's) when it could not be added.  Never raises but for out
 *		of memory.
 */
bool
TransferAdd(CURL *easy, TransferDoneCallback done, void *arg)
{
	Transfer   *t;

	if (multi == NULL)
		return false;
	t = MemoryContextAlloc(TransfersContext, sizeof(Transfer));
	t->easy = easy;
	t->done = done;
	t->arg = arg;
	if (curl_multi_add_handle(multi, easy) != CURLM_OK)
	{
		pfree(t);
		return false;
	}
	dlist_push_tail(&transfers, &t->node);
	ntransfers++;
	return true;
}

static Transfer *
TransferFind(CURL *easy)
{
	dlist_iter	it;

	dlist_foreach(it, &transfers)
	{
		Transfer   *t = dlist_container(Transfer, node, it.cur);

		if (t->easy == easy)
			return t;
	}
	return NULL;
}

/* Take the handle out of the multi and forget it; the caller owns it. */
static void
TransferForget(Transfer *t)
{
	curl_multi_remove_handle(multi, t->easy);
	dlist_delete(&t->node);
	ntransfers--;
	pfree(t);
}

/*
 * TransferRemove
 *		Stop a transfer without its callback (the job ends another way);
 *		a no-op for a handle that is not in the multi.
 */
void
TransferRemove(CURL *easy)
{
	Transfer   *t;

	if (multi == NULL || easy == NULL)
		return;
	t = TransferFind(easy);
	if (t != NULL)
		TransferForget(t);
}

/* Number of transfers in the multi. */
int
TransfersRunning(void)
{
	return ntransfers;
}

/* ---------------------------------------------------------------------
 * the worker loop's side
 * ---------------------------------------------------------------------
 */

/* Number of sockets TransfersAddWaitEvents adds. */
int
TransfersWaitEventCount(void)
{
	return multi ? nsockets : 0;
}

/*
 * TransfersAddWaitEvents
 *		Add libcurl's sockets to set, which must have room for
 *		TransfersWaitEventCount() more events.
 */
void
TransfersAddWaitEvents(WaitEventSet *set)
{
	for (int i = 0; multi && i < nsockets; i++)
		if (sockets[i].events != 0)
			AddWaitEventToSet(set, sockets[i].events, sockets[i].fd, NULL, NULL);
}

/*
 * TransfersTimeoutMs
 *		default_ms, or less when libcurl's timer is due sooner.
 */
long
TransfersTimeoutMs(long default_ms)
{
	long		secs;
	int			usecs;

	if (multi == NULL || deadline == 0)
		return default_ms;
	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	return Max(Min(default_ms, secs * 1000 + (usecs + 999) / 1000), 0);
}

/* Is fd one of libcurl's sockets (not the latch or the postmaster pipe)? */
static bool
IsTransferSocket(pgsocket fd)
{
	for (int i = 0; i < nsockets; i++)
		if (sockets[i].fd == fd)
			return true;
	return false;
}

/*
 * TransfersRun
 *		Move the transfers: the ready sockets among ready[0..nready-1] (the
 *		events of the worker's last wait), then libcurl's timer if due; then
 *		call the completion callback of every transfer that finished.
 *		Allocates in the current memory context.
 */
void
TransfersRun(const WaitEvent *ready, int nready)
{
	int			running;
	int			left;
	CURLMsg    *msg;
	CURL	  **done_easy;
	CURLcode   *done_rc;
	int			ndone = 0;

	if (multi == NULL || ntransfers == 0)
		return;

	for (int i = 0; i < nready; i++)
	{
		int			flags = 0;

		if (!(ready[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE)) ||
			!IsTransferSocket(ready[i].fd))
			continue;
		if (ready[i].events & WL_SOCKET_READABLE)
			flags |= CURL_CSELECT_IN;
		if (ready[i].events & WL_SOCKET_WRITEABLE)
			flags |= CURL_CSELECT_OUT;
		curl_multi_socket_action(multi, ready[i].fd, flags, &running);
	}
	if (deadline != 0 && GetCurrentTimestamp() >= deadline)
	{
		deadline = 0;			/* the timer callback sets the next one */
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}

	/* copy the messages first: removing a handle frees its message */
	done_easy = palloc(sizeof(CURL *) * ntransfers);
	done_rc = palloc(sizeof(CURLcode) * ntransfers);
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		if (msg->msg != CURLMSG_DONE || ndone >= ntransfers)
			continue;
		done_easy[ndone] = msg->easy_handle;
		done_rc[ndone] = msg->data.result;
		ndone++;
	}
	for (int i = 0; i < ndone; i++)
	{
		/* an earlier callback may have taken this handle back */
		Transfer   *t = TransferFind(done_easy[i]);
		TransferDoneCallback done;
		void	   *arg;

		if (t == NULL)
			continue;
		done = t->done;
		arg = t->arg;
		TransferForget(t);
		done(done_easy[i], done_rc[i], arg);
	}
	pfree(done_easy);
	pfree(done_rc);
}
