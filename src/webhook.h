/*-------------------------------------------------------------------------
 *
 * webhook.h
 *	  Delivery of kill-switch alert payloads to llm_canary.webhook_url by
 *	  the monitor worker (webhook.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_WEBHOOK_H
#define LLM_CANARY_WEBHOOK_H

/* Define llm_canary.webhook_url; called from _PG_init. */
extern void WebhookInit(void);

/*
 * Deliver (or settle) one pending alert, outside any transaction; true when
 * one was attempted (the monitor worker, monitor_worker.c).
 */
extern bool WebhookDeliverNext(void);

#endif							/* LLM_CANARY_WEBHOOK_H */
