-- canary_probe: one model called directly over HTTP, against the mock LLM
\set SHOW_CONTEXT never
-- server (test/mock_llm.py), programmed per model id with test/mock_ctl.py.
-- Covers both provider dialects, provider refusals, HTTP errors, retries,
-- timeouts, cancel, malformed and oversize answers.
\getenv mock LLM_CANARY_MOCK_URL
\getenv key LLM_CANARY_TEST_KEY

-- every probe of this file is kept, to check at the end that the API key
-- never shows up in a result
CREATE TEMP TABLE probe_log (j jsonb);
CREATE FUNCTION pg_temp.probe(m text, p text DEFAULT 'Hello there')
RETURNS TABLE (outcome text, status int, text text, ptok int, ctok int,
               refusal bool, error text, detail text, tries int)
LANGUAGE sql AS $$
    WITH r AS (SELECT canary_probe(m, p) AS j),
         logged AS (INSERT INTO probe_log SELECT j FROM r)
    SELECT j->>'outcome', (j->>'http_status')::int, j->>'text',
           (j->>'prompt_tokens')::int, (j->>'completion_tokens')::int,
           (j->>'refusal')::bool, j->>'error',
           regexp_replace(j->>'error_detail', '(after|with) \d+ (ms|milliseconds|bytes remaining)', '\1 N \2', 'g'),
           (j->>'tries')::int
      FROM r
$$;

INSERT INTO canary_models (name, provider, base_url, model, max_tokens, temperature,
                           system_prompt, max_retries, timeout_ms, api_key_env) VALUES
    ('oa-echo',   'openai',    :'mock' || '/v1', 'oa-echo',   50,   0.5,  'You are terse.', 0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-echo2',  'openai',    :'mock' || '/v1/', 'oa-echo2', NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-fixed',  'anthropic', :'mock' || '/v1', 'an-fixed',  NULL, NULL, 'Be kind.',       0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-echo',   'anthropic', :'mock' || '/v1', 'an-echo',   200,  0.25, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-think',  'anthropic', :'mock' || '/v1', 'an-think',  NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-refuse', 'openai',    :'mock' || '/v1', 'oa-refuse', NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-filter', 'openai',    :'mock' || '/v1', 'oa-filter', NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-textref','openai',    :'mock' || '/v1', 'oa-textref',NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-refuse', 'anthropic', :'mock' || '/v1', 'an-refuse', NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-filter', 'anthropic', :'mock' || '/v1', 'an-filter', NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-500',    'openai',    :'mock' || '/v1', 'oa-500',    NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-400',    'anthropic', :'mock' || '/v1', 'an-400',    NULL, NULL, NULL,             2, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-529',    'anthropic', :'mock' || '/v1', 'an-529',    NULL, NULL, NULL,             1, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-429',    'openai',    :'mock' || '/v1', 'oa-429',    NULL, NULL, NULL,             2, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-503',    'openai',    :'mock' || '/v1', 'oa-503',    NULL, NULL, NULL,             2, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-ra-long','openai',    :'mock' || '/v1', 'oa-ra-long',NULL, NULL, NULL,             3, 1000, 'LLM_CANARY_TEST_KEY'),
    ('oa-hang',   'openai',    :'mock' || '/v1', 'oa-hang',   NULL, NULL, NULL,             2, 300,  'LLM_CANARY_TEST_KEY'),
    ('oa-hang-long','openai',  :'mock' || '/v1', 'oa-hang-long',NULL,NULL, NULL,            0, 60000,'LLM_CANARY_TEST_KEY'),
    ('oa-refused','openai',    'http://127.0.0.1:1/v1', 'oa-refused', NULL, NULL, NULL,        1, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-bad',    'openai',    :'mock' || '/v1', 'oa-bad',    NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('an-bad',    'anthropic', :'mock' || '/v1', 'an-bad',    NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-big',    'openai',    :'mock' || '/v1', 'oa-big',    NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_TEST_KEY'),
    ('oa-nokey',  'openai',    :'mock' || '/v1', 'oa-echo',   NULL, NULL, NULL,             0, 5000, 'LLM_CANARY_KEY_NO_SUCH'),
    ('oa-anon',   'openai',    :'mock' || '/v1', 'oa-echo',   NULL, NULL, NULL,             0, 5000, NULL);
UPDATE canary_models SET use_max_completion_tokens = true, max_tokens = 3 WHERE name = 'oa-echo2';

\! python3 test/mock_ctl.py put oa-echo '{"echo": true}'
\! python3 test/mock_ctl.py put oa-echo2 '{"echo": true}'
\! python3 test/mock_ctl.py put an-fixed '{"fixed_text": "Bonjour à tous"}'
\! python3 test/mock_ctl.py put an-echo '{"echo": true}'
\! python3 test/mock_ctl.py put an-think '{"fixed_text": "The answer.", "thinking_block": true, "thinking_text": "Not this."}'

-- the result: every key, always
SELECT string_agg(k, ', ' ORDER BY k) AS keys
  FROM jsonb_object_keys(canary_probe('oa-echo', 'Say hello to Bob')) AS k;

-- OpenAI: system prompt, then the user prompt; max_tokens and temperature
-- reach the server.  The mock counts words: 3 (system) + 4 (prompt).
SELECT * FROM pg_temp.probe('oa-echo', 'Say hello to Bob');
\! python3 test/mock_ctl.py last oa-echo path body.model body.messages body.max_tokens body.max_completion_tokens body.temperature headers.content-type auth_present

-- max_completion_tokens instead of max_tokens; no system prompt; a trailing
-- slash of base_url is not doubled.  The mock cuts the echo to 3 words.
SELECT * FROM pg_temp.probe('oa-echo2', 'one two three four five');
\! python3 test/mock_ctl.py last oa-echo2 path body.messages body.max_tokens body.max_completion_tokens body.temperature

-- Anthropic: max_tokens defaults to 1024, "system" is separate, the key goes
-- in x-api-key, with anthropic-version
SELECT * FROM pg_temp.probe('an-fixed', 'Greet everyone please');
\! python3 test/mock_ctl.py last an-fixed path body.model body.max_tokens body.system body.messages body.temperature headers.anthropic-version auth_present
SELECT * FROM pg_temp.probe('an-echo', 'Repeat after me');
\! python3 test/mock_ctl.py last an-echo body.max_tokens body.temperature body.system

-- Anthropic: a thinking block before the text block is skipped
SELECT * FROM pg_temp.probe('an-think');

-- a prompt with quotes, backslashes, control characters and non-ASCII
-- characters travels escaped and comes back unchanged
SELECT text = E'He said "hi" \\o/\n\ttab\r\u00e9 \u4e2d \U0001F600 \x01 end' AS same,
       ptok, ctok
  FROM pg_temp.probe('oa-echo', E'He said "hi" \\o/\n\ttab\r\u00e9 \u4e2d \U0001F600 \x01 end');
\! python3 test/mock_ctl.py last oa-echo body.messages
SELECT text = E'{"json": [1, "x\\"y"]}\n</script>' AS same
  FROM pg_temp.probe('an-echo', E'{"json": [1, "x\\"y"]}\n</script>');

-- refusals the provider signals (OpenAI message.refusal and finish_reason
-- content_filter, Anthropic stop_reason refusal)
\! python3 test/mock_ctl.py put oa-refuse '{"refusal_rate": 1, "refusal_mode": "signal"}'
\! python3 test/mock_ctl.py put oa-filter '{"refusal_rate": 1, "refusal_mode": "content_filter"}'
\! python3 test/mock_ctl.py put an-refuse '{"refusal_rate": 1, "refusal_mode": "signal", "refusal_text": "I will not do that."}'
\! python3 test/mock_ctl.py put an-filter '{"refusal_rate": 1, "refusal_mode": "content_filter"}'
SELECT * FROM pg_temp.probe('oa-refuse');
SELECT * FROM pg_temp.probe('oa-filter');
SELECT * FROM pg_temp.probe('an-refuse');
SELECT * FROM pg_temp.probe('an-filter');
-- a refusal in plain text is not a provider signal (the call path looks at
-- the text, not this layer)
\! python3 test/mock_ctl.py put oa-textref '{"refusal_rate": 1, "refusal_mode": "text"}'
SELECT * FROM pg_temp.probe('oa-textref');

-- HTTP errors carry the provider's message; 4xx is not retried
\! python3 test/mock_ctl.py put oa-500 '{"error_rate": 1, "error_status": 500}'
SELECT * FROM pg_temp.probe('oa-500');
\! python3 test/mock_ctl.py put an-400 '{"status": 400, "body": {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: 999999 > 64000"}}}'
SELECT * FROM pg_temp.probe('an-400');
\! python3 test/mock_ctl.py count an-400

-- 5xx is retried (529 Overloaded, max_retries 1: two requests)
\! python3 test/mock_ctl.py put an-529 '{"error_rate": 1, "error_status": 529}'
SELECT * FROM pg_temp.probe('an-529');
\! python3 test/mock_ctl.py count an-529

-- 429 with Retry-After: 0.3, then success: two requests, and the wait was
-- the server's
\! python3 test/mock_ctl.py put oa-429 '{"fail_first_n": 1, "fail_status": 429, "retry_after": 0.3, "fixed_text": "Finally."}'
WITH r AS (SELECT canary_probe('oa-429', 'Hi') AS j)
SELECT j->>'outcome' AS outcome, j->'http_status' AS status, j->>'text' AS text,
       j->'tries' AS tries, (j->>'latency_ms')::int BETWEEN 300 AND 2000 AS waited_retry_after
  FROM r;
\! python3 test/mock_ctl.py count oa-429

-- 503 until the retries run out: 1 + 2 requests, backoff 100 ms then 200 ms
\! python3 test/mock_ctl.py put oa-503 '{"fail_first_n": 100, "fail_status": 503, "retry_after": null}'
WITH r AS (SELECT canary_probe('oa-503', 'Hi') AS j)
SELECT j->>'outcome' AS outcome, j->'http_status' AS status, j->>'error' AS error,
       j->>'error_detail' AS detail, j->'tries' AS tries,
       (j->>'latency_ms')::int BETWEEN 300 AND 2000 AS backed_off
  FROM r;
\! python3 test/mock_ctl.py count oa-503

-- a Retry-After beyond the model's budget (timeout_ms 1000) stops retrying
\! python3 test/mock_ctl.py put oa-ra-long '{"fail_first_n": 100, "fail_status": 429, "retry_after": 5}'
WITH r AS (SELECT canary_probe('oa-ra-long', 'Hi') AS j)
SELECT j->>'outcome' AS outcome, j->'http_status' AS status, j->>'error' AS error,
       j->>'error_detail' AS detail, j->'tries' AS tries,
       (j->>'latency_ms')::int < 1000 AS within_budget
  FROM r;

-- a hanging server: outcome timeout after timeout_ms (300; libcurl may fire
-- a fraction of a millisecond early), no retry past
-- the budget
\! python3 test/mock_ctl.py put oa-hang '{"hang": true}'
WITH r AS (SELECT canary_probe('oa-hang', 'Hi') AS j)
SELECT j->>'outcome' AS outcome, j->'http_status' AS status, j->>'error' AS error,
       j->'tries' AS tries, (j->>'latency_ms')::int BETWEEN 290 AND 900 AS within_budget
  FROM r;

-- connection refused (nothing listens on port 1), retried once
SELECT * FROM pg_temp.probe('oa-refused');

-- malformed answers are errors, never exceptions
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "html"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "empty"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "truncated_json"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "not_json"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "no_fields"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "content_null"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"malformed": "invalid_utf8"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"status": 200, "body": {"choices": [{"message": {"content": "deep"}}], "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"status": 200, "body": "{\"choices\": [{\"message\": {\"content\": \"nul \\u0000 char\"}}]}"}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put oa-bad '{"truncate": true}'
SELECT * FROM pg_temp.probe('oa-bad');
\! python3 test/mock_ctl.py put an-bad '{"malformed": "content_null"}'
SELECT * FROM pg_temp.probe('an-bad');
\! python3 test/mock_ctl.py put an-bad '{"malformed": "no_fields"}'
SELECT * FROM pg_temp.probe('an-bad');
\! python3 test/mock_ctl.py put an-bad '{"malformed": "truncated_json"}'
SELECT * FROM pg_temp.probe('an-bad');
\! python3 test/mock_ctl.py put an-bad '{"malformed": "invalid_utf8"}'
SELECT * FROM pg_temp.probe('an-bad');
\! python3 test/mock_ctl.py put an-bad '{"status": 200, "body": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}}'
SELECT * FROM pg_temp.probe('an-bad');

-- llm_canary.max_response_bytes caps the body
SHOW llm_canary.max_response_bytes;
\! python3 test/mock_ctl.py put oa-big '{"oversize_bytes": 10000}'
SET llm_canary.max_response_bytes = '4kB';
SELECT * FROM pg_temp.probe('oa-big');
RESET llm_canary.max_response_bytes;
SELECT outcome, length(text) AS chars FROM pg_temp.probe('oa-big');

-- the API key: a missing environment variable is an error without a request;
-- no api_key_env sends no key
SELECT * FROM pg_temp.probe('oa-nokey');
SELECT outcome, status, error, tries FROM pg_temp.probe('oa-anon');
\! python3 test/mock_ctl.py last oa-echo auth_present

-- statement_timeout cancels a hanging call promptly, with 57014 ...
\! python3 test/mock_ctl.py put oa-hang-long '{"hang": true}'
SELECT clock_timestamp() AS t0 \gset
SET statement_timeout = '300ms';
SELECT canary_probe('oa-hang-long', 'Hi');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT clock_timestamp() - :'t0'::timestamptz < interval '600 ms' AS prompt_cancel;
-- ... and the next call of the backend works
SELECT outcome, text FROM pg_temp.probe('oa-echo2', 'still here');

-- so does pg_cancel_backend from another session (test/signal_backend.sh
-- waits until this statement has run for 200 ms); statement_timeout is
-- only a guard here
SET application_name = 'probe_victim';
SET statement_timeout = '5s';
\! bash test/signal_backend.sh cancel probe_victim &
SELECT canary_probe('oa-hang-long', 'Hi');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT outcome, text FROM pg_temp.probe('oa-echo2', 'once more');

-- bad arguments
SELECT canary_probe(NULL, 'Hi');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_probe('oa-echo', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_probe('oa-echo', '');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse
SELECT canary_probe('no-such-model', 'Hi');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- only superusers (or roles granted EXECUTE) may probe, and only they may
-- raise the response cap
CREATE ROLE probe_tester;
SET ROLE probe_tester;
SELECT canary_probe('oa-echo', 'Hi');
\echo :LAST_ERROR_SQLSTATE
SET llm_canary.max_response_bytes = '1MB';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE probe_tester;

-- the API key never appears in any result
SELECT count(*) AS probes,
       count(*) FILTER (WHERE strpos(j::text, :'key') > 0) AS with_key
  FROM probe_log;

-- pg_terminate_backend during a call ends that backend with 57P01 (in a
-- session of its own, since it ends the session)
\! bash test/signal_backend.sh terminate-probe oa-hang-long

DELETE FROM canary_models WHERE name ~ '^(oa|an)-';
