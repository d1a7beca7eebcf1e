/*-------------------------------------------------------------------------
 *
 * transfers.h
 *	  The background worker's libcurl multi loop: every outbound transfer
 *	  the worker makes is one job = an easy handle + a completion callback.
 *
 *	  A job kind (shadow call, embeddings call, ...) sets up its easy handle
 *	  (http.h), hands it over with TransferAdd and gets its completion
 *	  callback exactly once, from TransfersRun, unless it takes the handle
 *	  back first with TransferRemove.  The loop is driven by
 *	  curl_multi_socket_action from the worker's wait-event set: libcurl's
 *	  sockets are waited on next to the latch, and its timer bounds the
 *	  sleep, so a transfer moves as soon as its socket is ready, whatever
 *	  the worker's other intervals.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_TRANSFERS_H
#define LLM_CANARY_TRANSFERS_H

#include <curl/curl.h>

#include "storage/latch.h"

/*
 * Called once per finished transfer, from TransfersRun, outside libcurl (so
 * it may palloc and ereport; an ERROR propagates to the worker loop).  The
 * handle is no longer in the multi; the callee owns it again (cleans it up
 * or adds it anew).
 */
typedef void (*TransferDoneCallback) (CURL *easy, CURLcode result, void *arg);

extern void TransfersInit(void);
extern void TransfersShutdown(void);
extern bool TransferAdd(CURL *easy, TransferDoneCallback done, void *arg);
extern void TransferRemove(CURL *easy);
extern int	TransfersRunning(void);

/* the worker loop's side */
extern int	TransfersWaitEventCount(void);
extern void TransfersAddWaitEvents(WaitEventSet *set);
extern long TransfersTimeoutMs(long default_ms);
extern void TransfersRun(const WaitEvent *ready, int nready);

#endif							/* LLM_CANARY_TRANSFERS_H */
