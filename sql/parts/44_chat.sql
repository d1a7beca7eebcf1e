/*
 * Whole chat requests (src/chat.c, src/call.c): canary_chat takes an OpenAI
 * chat-completions request body, validates it before anything is sent,
 * translates it for Anthropic models and answers it exactly as canary_call
 * answers a prompt (routing, fallback, retries, refusals, the response
 * cache, metrics).
 */
CREATE FUNCTION canary_chat(request jsonb, user_id text, canary text DEFAULT 'default',
                            prompt_class text DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'canary_chat'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_chat(jsonb, text, text, text, text) IS
    'Answer an OpenAI chat-completions request with the model the rollout routes the user to; the result adds tool_calls, finish_reason and usage to what canary_call returns';
