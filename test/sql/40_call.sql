-- canary_call end to end against the mock LLM server: routing, both
-- providers, refusal detection by provider signal and by the operator's
-- patterns, fallback to the old model, errors, and the recorded attempts.
\set SHOW_CONTEXT never
\getenv mock LLM_CANARY_MOCK_URL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
    ('c-old', 'openai',    :'mock' || '/v1', 'c-old', 'LLM_CANARY_TEST_KEY', 0, 5000),
    ('c-new', 'anthropic', :'mock' || '/v1', 'c-new', 'LLM_CANARY_TEST_KEY', 0, 5000),
    ('c-down', 'openai',   'http://127.0.0.1:1/v1', 'c-down', 'LLM_CANARY_TEST_KEY', 0, 2000);
INSERT INTO canary_config (name, stage, percent_new, old_model, new_model, shadow_sample_rate)
VALUES ('calltest', 'ramp_1', 0, 'c-old', 'c-new', 0);
\! python3 test/mock_ctl.py put c-old '{"fixed_text": "Thanks for reaching out. Your order ships tomorrow."}'
\! python3 test/mock_ctl.py put c-new '{"fixed_text": "Thank you for contacting support. It ships tomorrow."}'

CREATE FUNCTION pg_temp.call(p text, u text, c text DEFAULT 'calltest')
RETURNS TABLE (response text, model text, cohort text, stage text, outcome text,
               refusal bool, fallback bool, prompt_tokens int, completion_tokens int, rid uuid)
LANGUAGE sql AS $$
    SELECT r->>'response', r->>'model', r->>'cohort', r->>'stage', r->>'outcome',
           (r->>'refusal')::bool, (r->>'fallback')::bool,
           (r->>'prompt_tokens')::int, (r->>'completion_tokens')::int, (r->>'request_id')::uuid
      FROM (SELECT canary_call(p, u, c, prompt_class => 'orders') AS r) s
$$;

-- every key of the result
SELECT array_agg(k ORDER BY k) AS keys FROM jsonb_object_keys(canary_call('Hi', 'u_1', 'calltest')) k;
SELECT (canary_call('Hi', 'u_1', 'calltest')->>'latency_ms')::int >= 0 AS has_latency;

-- control: the old model (OpenAI) answers; 5 prompt words, 8 answer words
SELECT response, model, cohort, stage, outcome, refusal, fallback, prompt_tokens, completion_tokens
  FROM pg_temp.call('Where is my order now?', 'u_1');
-- canary: everyone at 100 percent, the new model (Anthropic) answers
UPDATE canary_config SET percent_new = 100 WHERE name = 'calltest';
SELECT response, model, cohort, stage, outcome, refusal, fallback, prompt_tokens, completion_tokens
  FROM pg_temp.call('Where is my order now?', 'u_1');

-- the attempt is recorded with its prompt hash and class
SELECT * FROM pg_temp.call('Is my refund done?', 'u_rec') \gset
SELECT canary_flush() > 0 AS flushed;
SELECT canary, stage, user_id, cohort, model, outcome, http_status, prompt_tokens, completion_tokens,
       response_chars, refusal, prompt_class, fallback, error,
       prompt_hash = left(encode(sha256(convert_to('Is my refund done?', 'UTF8')), 'hex'), 16) AS hash_ok
  FROM canary_requests WHERE request_id = :'rid';

-- refusal by the operator's patterns (case-insensitive substring) ...
\! python3 test/mock_ctl.py put c-new '{"fixed_text": "Sorry. I CANNOT help with that, unfortunately."}'
SELECT outcome, refusal, response FROM pg_temp.call('Tell me a secret', 'u_1');
-- ... which the operator can edit: the next call sees the change
UPDATE canary_refusal_patterns SET enabled = false WHERE pattern = 'I cannot help with that';
SELECT outcome, refusal FROM pg_temp.call('Tell me a secret', 'u_1');
UPDATE canary_refusal_patterns SET enabled = true WHERE pattern = 'I cannot help with that';
INSERT INTO canary_refusal_patterns (pattern) VALUES ('as an ai language model');
\! python3 test/mock_ctl.py put c-new '{"fixed_text": "As an AI language model I prefer not to."}'
SELECT outcome, refusal FROM pg_temp.call('Tell me a secret', 'u_1');
DELETE FROM canary_refusal_patterns WHERE pattern = 'as an ai language model';
-- ... and by the provider's own signal (Anthropic stop_reason "refusal")
\! python3 test/mock_ctl.py put c-new '{"refusal_rate": 1, "refusal_mode": "signal", "refusal_text": "No."}'
SELECT outcome, refusal, response FROM pg_temp.call('Tell me a secret', 'u_1');

-- fallback: the new model fails, the canary user gets the old model's answer
\! python3 test/mock_ctl.py put c-new '{"status": 500, "body": {"type": "error", "error": {"type": "api_error", "message": "overloaded kitchen"}}}'
SELECT response, model, cohort, outcome, fallback FROM pg_temp.call('Where is my order?', 'u_fb') \gset
\echo :response :model :cohort :outcome :fallback
SELECT canary_flush() > 0 AS flushed;
-- both attempts are recorded; the canary's failure is not a fallback row
SELECT model, cohort, outcome, http_status, fallback, error
  FROM canary_requests WHERE user_id = 'u_fb' ORDER BY fallback;

-- without fallback: a clear error with the status and the provider's message
UPDATE canary_config SET fallback_to_old = false WHERE name = 'calltest';
SELECT canary_call('Where is my order?', 'u_nofb', 'calltest');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_flush() > 0 AS flushed;
SELECT model, outcome, http_status FROM canary_requests WHERE user_id = 'u_nofb';
UPDATE canary_config SET fallback_to_old = true WHERE name = 'calltest';
-- a model that cannot be reached: 38L02, also for the fallback
UPDATE canary_config SET old_model = 'c-down' WHERE name = 'calltest';
\set VERBOSITY terse
SELECT canary_call('Where is my order?', 'u_down', 'calltest');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
SELECT canary_flush() > 0 AS flushed;
SELECT model, outcome, error, fallback FROM canary_requests WHERE user_id = 'u_down' ORDER BY fallback;
UPDATE canary_config SET old_model = 'c-old' WHERE name = 'calltest';

-- sessions pin the first decision through canary_call too
\! python3 test/mock_ctl.py put c-new '{"fixed_text": "new voice"}'
SELECT canary_call('Hi', 'u_s', 'calltest', session_id => 's-1')->>'model' AS first;
UPDATE canary_config SET percent_new = 1 WHERE name = 'calltest';
SELECT canary_bucket('u_s') >= 1 AS out_of_the_1_percent;
SELECT canary_call('Hi', 'u_s', 'calltest', session_id => 's-1')->>'model' AS pinned,
       canary_call('Hi', 'u_s', 'calltest')->>'model' AS unpinned;
-- but a pin never sends anyone to the new model when no one is routed there
UPDATE canary_config SET percent_new = 0 WHERE name = 'calltest';
SELECT canary_call('Hi', 'u_s', 'calltest', session_id => 's-1')->>'model' AS pinned_at_0;

-- the kill switch: everyone on the old model
UPDATE canary_config SET percent_new = 100 WHERE name = 'calltest';
SELECT canary_trip('calltest', 'test') IS NOT NULL AS tripped;
SELECT model, cohort FROM pg_temp.call('Hi', 'u_1');
SELECT canary_rearm('calltest');

-- bad input
SELECT canary_call(NULL, 'u_1');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_call('', 'u_1');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_call('Hi', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_call('Hi', 'u_1', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_call('Hi', 'u_1', 'no-such-rollout');
\echo :LAST_ERROR_SQLSTATE

DELETE FROM canary_config WHERE name = 'calltest';
DELETE FROM canary_models WHERE name IN ('c-old', 'c-new', 'c-down');
