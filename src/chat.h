/*-------------------------------------------------------------------------
 *
 * chat.h
 *	  Whole chat requests: validation and normalisation of an OpenAI
 *	  chat-completions body, translation to each provider (chat.c), and
 *	  the SQL functions that take them (canary_chat in call.c, canary_batch
 *	  in batch.c, canary_submit in submit.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CANARY_CHAT_H
#define LLM_CANARY_CHAT_H

#include "utils/jsonb.h"

#include "config.h"
#include "provider.h"

extern void ChatDefineSettings(void);
extern Jsonb *ChatNormalize(Jsonb *request);
extern void ChatRequestFromJsonb(Jsonb *request, CanaryRequest *req);
extern char *ChatRequestText(Jsonb *chat);
extern char *ChatRequestBody(const CanaryModel *model, Jsonb *chat);
extern void ChatAnswerField(Jsonb *answer, const char *key, JsonbValue *out);

#endif							/* LLM_CANARY_CHAT_H */
