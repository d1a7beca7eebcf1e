/*
 * Chat requests, batches and submissions (issue 14): canary_chat,
 * canary_batch, canary_submit / canary_result and their table; the response
 * cache keeps a chat answer's tool calls and finish reason;
 * canary_maintenance() also expires finished submissions.
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
REVOKE ALL ON FUNCTION canary_batch(jsonb[], text[], text, text, integer, boolean, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION canary_batch(text[], text[], text, text, integer, boolean, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_batch(jsonb[], text[], text, text, integer, boolean, text[]) TO llm_canary_admin, llm_canary_app;
GRANT EXECUTE ON FUNCTION canary_batch(text[], text[], text, text, integer, boolean, text[]) TO llm_canary_admin, llm_canary_app;

/*
 * Calls that do not hold a connection (src/submit.c): canary_submit stores
 * the request in canary_submissions, committed with the caller's
 * transaction, and returns its id at once; the "llm_canary submissions"
 * background worker claims pending rows (FOR UPDATE SKIP LOCKED), makes the
 * calls concurrently exactly as canary_batch does (routing, recording,
 * retries, fallback), writes each result into the row and announces it
 * with NOTIFY llm_canary_result (payload: the request id).  canary_result
 * waits for or fetches a result.  Finished rows older than
 * llm_canary.submit_retention are deleted by canary_maintenance() and, every
 * minute, by the worker (canary_submissions_purge).
 *
 * A row is the queue entry: a committed submission survives a crash; a row
 * claimed when the server stopped ("running") is made pending again when
 * the worker starts, and its call is made again (at least once).
 */
CREATE TABLE canary_submissions (
    request_id      uuid PRIMARY KEY,
    submitted_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    submitted_by    name NOT NULL DEFAULT session_user,
    canary          text NOT NULL,
    user_id         text NOT NULL,
    prompt_class    text,
    session_id      text,
    request         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    started_at      timestamptz,
    finished_at     timestamptz,
    result          jsonb,
    sqlstate        text,
    error           text
);
CREATE INDEX canary_submissions_pending_idx ON canary_submissions (submitted_at)
    WHERE state IN ('pending', 'running');
CREATE INDEX canary_submissions_finished_idx ON canary_submissions (finished_at)
    WHERE finished_at IS NOT NULL;
REVOKE ALL ON canary_submissions FROM PUBLIC;
COMMENT ON TABLE canary_submissions IS
    'Requests submitted with canary_submit, their state and result; owner-only (read results with canary_result)';
COMMENT ON COLUMN canary_submissions.request IS
    'A JSON string (a prompt) or object (an OpenAI chat-completions request), as submitted';
COMMENT ON COLUMN canary_submissions.state IS
    'pending, running (claimed by the worker), done (result) or failed (sqlstate, error)';
COMMENT ON COLUMN canary_submissions.attempts IS
    'How many times the worker claimed the row (more than 1 after a crash or restart)';

CREATE FUNCTION canary_submit_check(request jsonb, user_id text, canary text)
RETURNS void
AS 'MODULE_PATHNAME', 'canary_submit_check'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_submit_check(jsonb, text, text) IS
    'Internal to canary_submit: validate a submission and wake the worker when the transaction commits';

CREATE FUNCTION canary_submit(request jsonb, user_id text, canary text DEFAULT 'default',
                              prompt_class text DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id uuid := @extschema@.canary_new_request_id();
BEGIN
    PERFORM @extschema@.canary_submit_check(request, user_id, canary);
    INSERT INTO @extschema@.canary_submissions
        (request_id, canary, user_id, prompt_class, session_id, request)
    VALUES (id, canary, user_id, prompt_class, session_id, request);
    RETURN id;
END;
$$;
COMMENT ON FUNCTION canary_submit(jsonb, text, text, text, text) IS
    'Submit a request (JSON string: a prompt; JSON object: a chat request) for the worker to answer; returns its id at once';

CREATE FUNCTION canary_submit(prompt text, user_id text, canary text DEFAULT 'default',
                              prompt_class text DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS uuid
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @extschema@.canary_submit(to_jsonb(prompt), user_id, canary, prompt_class, session_id)
$$;
COMMENT ON FUNCTION canary_submit(text, text, text, text, text) IS
    'Submit a prompt for the worker to answer; returns its id at once';

CREATE FUNCTION canary_result(request_id uuid, wait interval DEFAULT '0')
RETURNS TABLE (state text, ok boolean, result jsonb, sqlstate text, error text,
               submitted_at timestamptz, finished_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + coalesce(wait, '0');
    nap double precision := 0.005;
    s record;
BEGIN
    LOOP
        SELECT * INTO s FROM @extschema@.canary_submissions AS q
         WHERE q.request_id OPERATOR(pg_catalog.=) canary_result.request_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'submission % does not exist', canary_result.request_id
                USING ERRCODE = 'undefined_object',
                      HINT = 'Results are deleted after llm_canary.submit_retention.';
        END IF;
        IF s.submitted_by <> session_user
           AND NOT pg_catalog.pg_has_role(session_user, 'llm_canary_admin', 'MEMBER') THEN
            RAISE EXCEPTION 'permission denied for submission %', canary_result.request_id
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Only the role that submitted a request (or llm_canary_admin) reads its result.';
        END IF;
        EXIT WHEN s.state IN ('done', 'failed') OR clock_timestamp() >= deadline;
        PERFORM pg_catalog.pg_sleep(least(nap, greatest(extract(epoch FROM deadline - clock_timestamp()), 0)));
        nap := least(nap * 2, 0.05);
    END LOOP;
    RETURN QUERY SELECT s.state, CASE s.state WHEN 'done' THEN true WHEN 'failed' THEN false END,
                        s.result, s.sqlstate, s.error, s.submitted_at, s.finished_at;
END;
$$;
COMMENT ON FUNCTION canary_result(uuid, interval) IS
    'The state and result of a submitted request, waiting up to wait for it to finish (needs READ COMMITTED to see it arrive)';

CREATE FUNCTION canary_submissions_purge(older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- the setting reads like '1d' (its unit is seconds): a valid interval
    keep interval := coalesce(older_than,
        coalesce(nullif(current_setting('llm_canary.submit_retention', true), ''), '1d')::interval);
    n bigint;
BEGIN
    DELETE FROM @extschema@.canary_submissions
     WHERE finished_at < clock_timestamp() - keep;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;
COMMENT ON FUNCTION canary_submissions_purge(interval) IS
    'Delete finished submissions older than llm_canary.submit_retention (run by the submission worker every minute)';
REVOKE ALL ON FUNCTION canary_submit_check(jsonb, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION canary_submit(jsonb, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION canary_submit(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION canary_result(uuid, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION canary_submissions_purge(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_submit_check(jsonb, text, text) TO llm_canary_admin;
GRANT EXECUTE ON FUNCTION canary_submit(jsonb, text, text, text, text) TO llm_canary_admin, llm_canary_app;
GRANT EXECUTE ON FUNCTION canary_submit(text, text, text, text, text) TO llm_canary_admin, llm_canary_app;
GRANT EXECUTE ON FUNCTION canary_result(uuid, interval) TO llm_canary_admin, llm_canary_app;
GRANT EXECUTE ON FUNCTION canary_submissions_purge(interval) TO llm_canary_admin;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE canary_submissions TO llm_canary_admin;

ALTER FUNCTION canary_maintenance(integer, date) SECURITY DEFINER;
