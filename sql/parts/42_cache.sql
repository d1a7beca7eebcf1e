/*
 * The response cache (src/cache.c): with llm_canary.response_cache_ttl > 0,
 * canary_call and the shadow worker answer a prompt a model already answered
 * within the TTL from here, without calling the model again.
 *
 * One row per (model, prompt).  request_sha256 is the SHA-256 of exactly
 * what would be sent (the URL, then a line feed, then the JSON body: model
 * id, system prompt, max tokens, temperature and the prompt), so an answer
 * is served only to the request that produced it: a changed model
 * configuration misses, and the next answer replaces the row.  Only answers
 * are stored (outcome ok or refusal, with text); never errors or timeouts.
 *
 * The table holds answers to every user's prompts: it belongs to the
 * extension's owner, and the C code reads and writes it under that
 * identity, so no application role needs (or should get) privileges on it.
 * Expired rows are deleted by canary_maintenance().
 */
CREATE TABLE canary_response_cache (
    model               text NOT NULL,
    prompt_sha256       text NOT NULL,
    request_sha256      text NOT NULL,
    response            text NOT NULL,
    prompt_tokens       integer,
    completion_tokens   integer,
    provider_refusal    boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    answer              jsonb,
    PRIMARY KEY (model, prompt_sha256)
);
CREATE INDEX canary_response_cache_created_at_idx ON canary_response_cache (created_at);
REVOKE ALL ON canary_response_cache FROM PUBLIC;
COMMENT ON TABLE canary_response_cache IS
    'Answers of the models per (model, prompt), served again within llm_canary.response_cache_ttl; owner-only';
COMMENT ON COLUMN canary_response_cache.model IS 'canary_models.name of the model that answered';
COMMENT ON COLUMN canary_response_cache.prompt_sha256 IS 'SHA-256 (hex) of the whole prompt';
COMMENT ON COLUMN canary_response_cache.request_sha256 IS
    'SHA-256 (hex) of the request URL and body: a hit needs the same model id, system prompt, max tokens and temperature';
COMMENT ON COLUMN canary_response_cache.answer IS
    'Chat requests (canary_chat): the answer''s content, tool_calls and finish_reason; NULL for a prompt';
COMMENT ON COLUMN canary_response_cache.provider_refusal IS
    'The provider signalled a refusal; refusal patterns are matched again at every hit';
