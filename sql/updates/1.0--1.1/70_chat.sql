/*
 * Chat requests, batches and submissions (issue 14): canary_chat; the
 * response cache keeps a chat answer's tool calls and finish reason.
 */
ALTER TABLE canary_response_cache ADD COLUMN answer jsonb;
COMMENT ON COLUMN canary_response_cache.answer IS
    'Chat requests (canary_chat): the answer''s content, tool_calls and finish_reason; NULL for a prompt';

CREATE FUNCTION canary_chat(request jsonb, user_id text, canary text DEFAULT 'default',
                            prompt_class text DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'canary_chat'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_chat(jsonb, text, text, text, text) IS
    'Answer an OpenAI chat-completions request with the model the rollout routes the user to; the result adds tool_calls, finish_reason and usage to what canary_call returns';
REVOKE ALL ON FUNCTION canary_chat(jsonb, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_chat(jsonb, text, text, text, text) TO llm_canary_admin, llm_canary_app;
