-- Metrics: records go through the shared memory queue and are written to
-- canary_requests by the background worker, whatever happens to the
-- caller's transaction.  All rows of this test are dated 2001-01-01 (UTC),
-- so they land in the DEFAULT partition until canary_maintenance() makes
-- partitions for that day, and retention removes them again at the end.
\set SHOW_CONTEXT never
SET TimeZone = 'UTC';

-- the settings and their defaults
SELECT name, setting, unit, context FROM pg_settings
 WHERE name IN ('llm_canary.queue_size', 'llm_canary.queue_full_wait_ms',
                'llm_canary.flush_interval_ms', 'llm_canary.retention_days')
 ORDER BY name;

-- the worker serves this database (canary_flush waits for it to be ready)
SELECT canary_flush() >= 0 AS flushed;
SELECT queue_capacity, queue_depth, worker_state, database, worker_pid IS NOT NULL AS has_pid
  FROM canary_stats();
SELECT enqueued AS enq0, written AS wr0, dropped AS dr0, batches AS b0, write_errors AS we0
  FROM canary_stats() \gset

-- a model with prices: the cost of an attempt comes from them
INSERT INTO canary_models (name, provider, base_url, model, price_input_per_1k, price_output_per_1k)
VALUES ('m50-priced', 'openai', 'https://example.invalid/v1', 'priced-model', 0.5, 1.5);

-- a committed record, with every optional field
SELECT canary_record('m50', 'alice', 'm50-priced', 'control', 'ok', 120,
                     ts => '2001-01-01 10:00:00+00', prompt_tokens => 1000, completion_tokens => 2000,
                     prompt_class => 'faq', stage => 'ramp_5') AS rid \gset
-- a refusal: outcome 'refusal' implies refusal = true
SELECT canary_record('m50', 'erin', 'model-new', 'canary', 'refusal', 80,
                     ts => '2001-01-01 10:00:03+00') IS NOT NULL AS queued;

-- a record made in a transaction that rolls back is still written
BEGIN;
SELECT canary_record('m50', 'bob', 'model-new', 'canary', 'error', 30,
                     ts => '2001-01-01 10:00:01+00', http_status => 503, error => 'http_503') IS NOT NULL AS queued;
ROLLBACK;

-- so is a record made by a statement that then raises an error
DO $$
BEGIN
    PERFORM canary_record('m50', 'carol', 'model-new', 'canary', 'timeout', 30000,
                          ts => '2001-01-01 10:00:02+00', http_status => NULL, error => 'timeout');
    RAISE EXCEPTION 'the caller fails after the call';
END;
$$;
\echo :LAST_ERROR_SQLSTATE

-- canary_flush returns the records written since server start: 4 more
SELECT canary_flush() - :wr0 AS newly_written;
SELECT ts, canary, stage, user_id, cohort, model, outcome, http_status, latency_ms,
       prompt_tokens, completion_tokens, response_chars, refusal, prompt_class, prompt_hash,
       fallback, error, cost
  FROM canary_requests WHERE canary = 'm50' ORDER BY ts;
-- the returned request_id is the row's
SELECT count(*) AS rows_with_rid FROM canary_requests WHERE request_id = :'rid';
SELECT tableoid::regclass AS partition, count(*) FROM canary_requests WHERE canary = 'm50' GROUP BY 1;

-- bad input is refused before anything is queued
SELECT canary_record('m50', 'alice', 'model-old', 'canary', 'great', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_record('m50', 'alice', 'model-old', 'treatment', 'ok', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_record('m50', NULL, 'model-old', 'canary', 'ok', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_record('m50', 'alice', 'model-old', 'canary', 'ok', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_record('m50', 'alice', 'model-old', 'canary', 'ok', 10, http_status => 42);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_record('m50', 'alice', 'model-old', 'canary', 'ok', 10, prompt_tokens => -5);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_flush(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_flush('-1 second');
\echo :LAST_ERROR_SQLSTATE

-- exact counters: 4 records enqueued and written, none dropped or failed
SELECT enqueued - :enq0 AS enqueued, written - :wr0 AS written, dropped - :dr0 AS dropped,
       write_errors - :we0 AS write_errors, queue_depth,
       batches - :b0 BETWEEN 1 AND 4 AS batches_ok, last_write_at IS NOT NULL AS has_written
  FROM canary_stats();
-- this backend made 4 calls (refused ones do not count)
SELECT calls FROM canary_backend_stats() WHERE pid = pg_backend_pid();

-- a failing write keeps the records queued and is retried: never lost,
-- never written twice
ALTER TABLE canary_requests ADD CONSTRAINT m50_block CHECK (user_id IS DISTINCT FROM 'blocked');
SELECT canary_record('m50', 'blocked', 'model-old', 'control', 'ok', 10,
                     ts => '2001-01-01 11:00:00+00') IS NOT NULL AS queued;
SELECT canary_record('m50', 'dave', 'model-old', 'control', 'ok', 10,
                     ts => '2001-01-01 11:00:01+00') IS NOT NULL AS queued;
\set VERBOSITY terse
SELECT canary_flush('1 second');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT queue_depth, write_errors > :we0 AS write_errors_counted, worker_state FROM canary_stats();
ALTER TABLE canary_requests DROP CONSTRAINT m50_block;
SELECT canary_flush() - :wr0 AS newly_written;
SELECT user_id, count(*) FROM canary_requests
 WHERE canary = 'm50' AND user_id IN ('blocked', 'dave') GROUP BY 1 ORDER BY 1;
SELECT queue_depth, dropped - :dr0 AS dropped FROM canary_stats();

-- feedback copies the rollout, cohort, model and user from the request
SELECT canary_feedback(:'rid', true);
SELECT thumbs_down, user_id, canary, cohort, model, ts > now() - interval '1 minute' AS recent
  FROM canary_feedback WHERE request_id = :'rid';
-- feedback right after the call: the request is still queued, so
-- canary_feedback waits for the worker to write it
SELECT canary_record('m50', 'frank', 'model-new', 'canary', 'ok', 90,
                     ts => '2001-01-01 12:00:00+00') AS rid2 \gset
SELECT canary_feedback(:'rid2', false);
SELECT thumbs_down, user_id, cohort, model FROM canary_feedback WHERE request_id = :'rid2';
-- an unknown request, and NULLs
SELECT canary_feedback('00000000-0000-4000-8000-000000000000', true);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_feedback(NULL, true);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_feedback(:'rid', NULL);
\echo :LAST_ERROR_SQLSTATE

-- maintenance: partitions for 2001-01-01 .. 2001-01-03 (UTC days); the
-- day's rows move out of the DEFAULT partition into the new one
SELECT * FROM canary_maintenance(2, '2001-01-01');
SELECT tableoid::regclass AS partition, count(*) FROM canary_requests WHERE canary = 'm50' GROUP BY 1;
SELECT pg_get_expr(c.relpartbound, c.oid) AS bounds
  FROM pg_class c WHERE c.relname = 'canary_requests_20010101';
-- a second run has nothing to do
SELECT * FROM canary_maintenance(2, '2001-01-01');
SELECT * FROM canary_maintenance(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_maintenance(1, NULL);
\echo :LAST_ERROR_SQLSTATE

-- retention (llm_canary.retention_days = 30): today's run drops the 2001
-- partitions and their rows, and keeps today's
SELECT action, partition FROM canary_maintenance(0) WHERE partition ~ '_2001';
SELECT count(*) AS rows_left FROM canary_requests WHERE canary = 'm50';
SELECT count(*) AS today_partitions FROM pg_class
 WHERE relname IN ('canary_requests_' || to_char(current_date, 'YYYYMMDD'),
                   'canary_feedback_' || to_char(current_date, 'YYYYMMDD'));

-- retention of the other tables the extension writes: expired session pins
-- are deleted, and window summaries of days before today - retention_days;
-- live pins and recent summaries stay
INSERT INTO canary_config (name, old_model, new_model) VALUES ('m50ret', 'model-old', 'model-new');
INSERT INTO canary_sessions (canary, session_id, user_id, model, cohort, expires_at) VALUES
    ('m50ret', 'expired', 'u1', 'model-old', 'control', now() - interval '1 second'),
    ('m50ret', 'live', 'u2', 'model-old', 'control', now() + interval '1 hour');
INSERT INTO canary_window_summaries (canary, at, window_seconds, stage, cohort, samples, errors, refusals, thumbs_down)
VALUES ('m50ret', current_date - 31, 300, 'ramp_5', 'control', 1, 0, 0, 0),
       ('m50ret', current_date - 29, 300, 'ramp_5', 'control', 1, 0, 0, 0);
SELECT action, partition, moved_rows FROM canary_maintenance(0) WHERE action = 'expire' ORDER BY partition;
SELECT session_id FROM canary_sessions WHERE canary = 'm50ret';
SELECT current_date - at::date AS days_old FROM canary_window_summaries WHERE canary = 'm50ret';
-- both deletes go through an index (at 20 million rows a sequential scan
-- would hold the daily job for minutes)
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) DELETE FROM canary_sessions WHERE expires_at < now();
EXPLAIN (COSTS OFF) DELETE FROM canary_window_summaries WHERE at < now() - interval '30 days';
RESET enable_seqscan;
DELETE FROM canary_window_summaries WHERE canary = 'm50ret';
DELETE FROM canary_config WHERE name = 'm50ret';

-- who may do what: nothing is executable by PUBLIC (the roles of
-- sql/parts/90_roles.sql get what they need; see 90_roles)
SELECT p.oid::regprocedure AS function, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p
 WHERE p.proname IN ('canary_record', 'canary_flush', 'canary_stats', 'canary_backend_stats',
                     'canary_feedback', 'canary_maintenance')
 ORDER BY p.oid::regprocedure::text;

DELETE FROM canary_feedback WHERE request_id IN (:'rid', :'rid2');
DELETE FROM canary_models WHERE name = 'm50-priced';
