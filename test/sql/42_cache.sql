-- The response cache (llm_canary.response_cache_ttl) through canary_call,
-- against the mock LLM server: off by default, one upstream request per
-- (model, prompt) when on, TTL expiry, a changed model configuration misses,
-- read-only transactions answer without writing, errors are never cached,
-- refusal patterns are applied again at every hit, cached attempts are
-- recorded but not counted by the kill switch, and maintenance expires rows.
-- "requests: N" lines are what the mock received for that model id.
\set SHOW_CONTEXT never
\getenv mock LLM_CANARY_MOCK_URL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms,
                           price_input_per_1k, price_output_per_1k) VALUES
    ('k-old', 'openai',    :'mock' || '/v1', 'k-old', 'LLM_CANARY_TEST_KEY', 0, 5000, 1, 1),
    ('k-new', 'anthropic', :'mock' || '/v1', 'k-new', 'LLM_CANARY_TEST_KEY', 0, 5000, 1, 1);
INSERT INTO canary_config (name, stage, percent_new, old_model, new_model, shadow_sample_rate)
VALUES ('cachetest', 'ramp_1', 0, 'k-old', 'k-new', 0);
\! python3 test/mock_ctl.py put k-old '{"fixed_text": "Your order ships tomorrow."}'
\! python3 test/mock_ctl.py put k-new '{"fixed_text": "It ships tomorrow, thank you."}'

CREATE FUNCTION pg_temp.call(p text, u text DEFAULT 'u_cache')
RETURNS TABLE (response text, model text, outcome text, refusal bool, cached bool,
               prompt_tokens int, completion_tokens int)
LANGUAGE sql AS $$
    SELECT r->>'response', r->>'model', r->>'outcome', (r->>'refusal')::bool,
           (r->>'cached')::bool, (r->>'prompt_tokens')::int, (r->>'completion_tokens')::int
      FROM (SELECT canary_call(p, u, 'cachetest') AS r) s
$$;

-- off by default: two identical calls, two upstream requests
SHOW llm_canary.response_cache_ttl;
\! python3 test/mock_ctl.py clear
SELECT * FROM pg_temp.call('Where is my order?');
SELECT * FROM pg_temp.call('Where is my order?');
\! python3 test/mock_ctl.py count k-old
SELECT count(*) AS cache_rows FROM canary_response_cache;

-- on: the second call is answered from the cache, with the same text and tokens
SET llm_canary.response_cache_ttl = '1h';
\! python3 test/mock_ctl.py clear
SELECT * FROM pg_temp.call('Where is my order?');
SELECT * FROM pg_temp.call('Where is my order?');
SELECT * FROM pg_temp.call('Where is my order?', 'u_other');
\! python3 test/mock_ctl.py count k-old
-- one row per (model, prompt): the full SHA-256 of the prompt
SELECT model, prompt_sha256 = encode(sha256(convert_to('Where is my order?', 'UTF8')), 'hex') AS prompt_key,
       length(request_sha256) AS request_key_len, response, prompt_tokens, completion_tokens,
       provider_refusal
  FROM canary_response_cache;
-- every attempt is recorded; cached ones without HTTP status and cost
SELECT canary_flush() > 0 AS flushed;
SELECT cached, outcome, http_status, latency_ms < 1000 AS fast, completion_tokens, cost, error, count(*)
  FROM canary_requests WHERE canary = 'cachetest' AND user_id IN ('u_cache', 'u_other')
   AND ts > now() - interval '1 minute'
 GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY cached, cost;

-- expired: an answer older than the TTL is fetched again (and replaced)
UPDATE canary_response_cache SET created_at = now() - interval '61 minutes';
\! python3 test/mock_ctl.py clear
SELECT response, cached FROM pg_temp.call('Where is my order?');
SELECT response, cached FROM pg_temp.call('Where is my order?');
\! python3 test/mock_ctl.py count k-old
SELECT created_at > now() - interval '1 minute' AS refreshed FROM canary_response_cache;

-- a changed system prompt (or max_tokens, temperature, model id) misses
UPDATE canary_models SET system_prompt = 'Answer in one sentence.' WHERE name = 'k-old';
\! python3 test/mock_ctl.py clear
SELECT response, cached FROM pg_temp.call('Where is my order?');
SELECT response, cached FROM pg_temp.call('Where is my order?');
UPDATE canary_models SET temperature = 0.2 WHERE name = 'k-old';
SELECT response, cached FROM pg_temp.call('Where is my order?');
\! python3 test/mock_ctl.py count k-old
\! python3 test/mock_ctl.py last k-old body.messages.0.content body.temperature
SELECT count(*) AS cache_rows FROM canary_response_cache;

-- a read-only transaction answers from the cache, and a miss calls the
-- model but writes nothing
BEGIN READ ONLY;
SELECT response, cached FROM pg_temp.call('Where is my order?');
SELECT response, cached FROM pg_temp.call('Is it raining?');
COMMIT;
SELECT count(*) AS cache_rows FROM canary_response_cache;

-- errors are never cached
\! python3 test/mock_ctl.py put k-old '{"status": 503, "body": {"error": {"message": "overloaded"}}}'
\! python3 test/mock_ctl.py clear
\set VERBOSITY terse
SELECT * FROM pg_temp.call('Are you up?');
SELECT * FROM pg_temp.call('Are you up?');
\set VERBOSITY default
\! python3 test/mock_ctl.py count k-old
SELECT count(*) AS cache_rows FROM canary_response_cache;
\! python3 test/mock_ctl.py put k-old '{"fixed_text": "Your order ships tomorrow."}'

-- a refusal is an answer: cached; the refusal patterns are applied at every
-- hit, so an edit of the patterns is seen at once
\! python3 test/mock_ctl.py put k-old '{"fixed_text": "Sorry, I cannot help with that."}'
SELECT response, outcome, refusal, cached FROM pg_temp.call('Tell me a secret');
SELECT response, outcome, refusal, cached FROM pg_temp.call('Tell me a secret');
UPDATE canary_refusal_patterns SET enabled = false WHERE pattern = 'I cannot help with that';
SELECT response, outcome, refusal, cached FROM pg_temp.call('Tell me a secret');
UPDATE canary_refusal_patterns SET enabled = true WHERE pattern = 'I cannot help with that';
\! python3 test/mock_ctl.py put k-old '{"fixed_text": "Your order ships tomorrow."}'

-- the table is the extension owner's: the application role gets cached
-- answers but cannot read the cache
CREATE ROLE regress_cache_app IN ROLE llm_canary_app;
SET ROLE regress_cache_app;
SELECT response, cached FROM pg_temp.call('Where is my order?');
SELECT count(*) FROM canary_response_cache;
RESET ROLE;

-- the kill switch counts only fresh attempts: three canary calls of one
-- prompt, one of them reached the new model
UPDATE canary_config SET percent_new = 100 WHERE name = 'cachetest';
-- (the change started the evidence at the next 30-second boundary; the
-- calls below count from the bucket before it)
UPDATE canary_config SET evidence_since = evidence_since - interval '30 seconds' WHERE name = 'cachetest';
\! python3 test/mock_ctl.py clear
SELECT model, cached FROM pg_temp.call('Where is my parcel?', 'u_kill');
SELECT model, cached FROM pg_temp.call('Where is my parcel?', 'u_kill');
SELECT model, cached FROM pg_temp.call('Where is my parcel?', 'u_kill');
\! python3 test/mock_ctl.py count k-new
SELECT canary_flush() > 0 AS flushed;
SELECT canary_check('cachetest');
SELECT samples FROM canary_window_summaries
 WHERE canary = 'cachetest' AND cohort = 'canary' ORDER BY id DESC LIMIT 1;

-- canary_maintenance() deletes the answers older than the TTL
UPDATE canary_response_cache SET created_at = now() - interval '2 hours' WHERE model = 'k-new';
SELECT action, partition, moved_rows FROM canary_maintenance() WHERE action = 'expire';
SELECT model, count(*) FROM canary_response_cache GROUP BY 1 ORDER BY 1;

-- a cache that fails is a WARNING, and the call goes on with its own user
-- and transaction: a write that breaks a constraint (nothing is kept), then
-- a read of a table that is not there
ALTER TABLE canary_response_cache ADD CONSTRAINT regress_no_rows CHECK (false) NOT VALID;
BEGIN;
SET LOCAL ROLE regress_cache_app;
SELECT response, cached FROM pg_temp.call('Is the shop open?');
SELECT current_user;
COMMIT;
ALTER TABLE canary_response_cache DROP CONSTRAINT regress_no_rows;
SELECT count(*) AS cache_rows FROM canary_response_cache
 WHERE prompt_sha256 = encode(sha256(convert_to('Is the shop open?', 'UTF8')), 'hex');
ALTER TABLE canary_response_cache RENAME TO regress_cache_away;
BEGIN;
SET LOCAL ROLE regress_cache_app;
SELECT response, cached FROM pg_temp.call('Where is my order?');
SELECT current_user;
COMMIT;
ALTER TABLE regress_cache_away RENAME TO canary_response_cache;

RESET llm_canary.response_cache_ttl;
DROP OWNED BY regress_cache_app;
DROP ROLE regress_cache_app;
DELETE FROM canary_response_cache;
DELETE FROM canary_config WHERE name = 'cachetest';
DELETE FROM canary_models WHERE name IN ('k-old', 'k-new');
