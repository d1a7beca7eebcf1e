/*-------------------------------------------------------------------------
 *
 * webhook.h
 *	  Delivery of kill-switch alert payloads to llm_canary.webhook_url by
 *	  the background worker (webhook.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_WEBHOOK_H
#define LLM_CANARY_WEBHOOK_H

/* Define llm_canary.webhook_url; called from _PG_init. */
extern void WebhookInit(void);

/* Deliver pending alerts (worker transaction, SPI connected). */
extern void WebhookDeliverPending(const char *schema);

#endif							/* LLM_CANARY_WEBHOOK_H */
