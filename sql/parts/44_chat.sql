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

/*
 * Parallel batches (src/batch.c): many prompts or chat requests answered
 * concurrently from one backend, each routed, recorded, retried and falling
 * back exactly as a single call; one row per request in input order.
 */
CREATE FUNCTION canary_batch(requests jsonb[], user_ids text[], canary text DEFAULT 'default',
                             prompt_class text DEFAULT NULL, concurrency integer DEFAULT 16,
                             raise_on_error boolean DEFAULT false, session_ids text[] DEFAULT NULL)
RETURNS TABLE (ord integer, request_id uuid, ok boolean, result jsonb, sqlstate text, error text)
AS 'MODULE_PATHNAME', 'canary_batch'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_batch(jsonb[], text[], text, text, integer, boolean, text[]) IS
    'Answer many requests (JSON strings: prompts; JSON objects: chat requests) concurrently; one row per request in input order, a failed request gives ok = false unless raise_on_error';

CREATE FUNCTION canary_batch(prompts text[], user_ids text[], canary text DEFAULT 'default',
                             prompt_class text DEFAULT NULL, concurrency integer DEFAULT 16,
                             raise_on_error boolean DEFAULT false, session_ids text[] DEFAULT NULL)
RETURNS TABLE (ord integer, request_id uuid, ok boolean, result jsonb, sqlstate text, error text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM @extschema@.canary_batch(
        ARRAY(SELECT to_jsonb(p.prompt) FROM unnest(prompts) WITH ORDINALITY AS p(prompt, n) ORDER BY p.n),
        user_ids, canary, prompt_class, concurrency, raise_on_error, session_ids)
$$;
COMMENT ON FUNCTION canary_batch(text[], text[], text, text, integer, boolean, text[]) IS
    'Answer many prompts concurrently (canary_batch of JSON strings)';
