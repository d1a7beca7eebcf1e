/*
 * The worker (src/worker.c, src/launcher.c, src/monitor_worker.c):
 * canary_feedback waits briefly for metric records only, never for shadow
 * jobs (canary_wait_metrics), and fails with no_data_found.
 */
CREATE FUNCTION canary_wait_metrics(timeout interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'canary_wait_metrics'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION canary_wait_metrics(interval) IS
    'Waits at most timeout until the worker wrote every metric record queued before the call (not shadow jobs); false when it did not, never an error';
REVOKE ALL ON FUNCTION canary_wait_metrics(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_wait_metrics(interval) TO llm_canary_admin;

CREATE OR REPLACE FUNCTION canary_feedback(request_id uuid, thumbs_down boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    req record;
    written boolean := true;
    made constant timestamptz := @extschema@.canary_request_time(canary_feedback.request_id);
BEGIN
    IF canary_feedback.request_id IS NULL OR canary_feedback.thumbs_down IS NULL THEN
        RAISE EXCEPTION '% must not be NULL',
                        CASE WHEN canary_feedback.request_id IS NULL THEN 'request_id' ELSE 'thumbs_down' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;

    -- the last attempt of a call answered it (a fallback follows the failure)
    SELECT r.user_id, r.canary, r.cohort, r.model INTO req
      FROM @extschema@.canary_requests r
     WHERE r.request_id = canary_feedback.request_id
       AND r.ts >= made - interval '1 minute' AND r.ts < made + interval '1 day'
     ORDER BY r.ts DESC
     LIMIT 1;
    IF NOT FOUND THEN
        SELECT r.user_id, r.canary, r.cohort, r.model INTO req
          FROM @extschema@.canary_requests r
         WHERE r.request_id = canary_feedback.request_id
         ORDER BY r.ts DESC
         LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        -- a request just made may still be queued: let the worker write it,
        -- waiting briefly and for metric records only (never for shadow jobs)
        written := @extschema@.canary_wait_metrics(interval '2 seconds');
        SELECT r.user_id, r.canary, r.cohort, r.model INTO req
          FROM @extschema@.canary_requests r
         WHERE r.request_id = canary_feedback.request_id
         ORDER BY r.ts DESC
         LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request "%" does not exist', canary_feedback.request_id
            USING ERRCODE = 'no_data_found',
                  DETAIL = CASE WHEN written THEN 'No request with this id is recorded.'
                           ELSE 'The llm_canary worker had not written every queued metric record after 2 seconds.' END,
                  HINT = CASE WHEN written
                         THEN 'Pass a request_id returned by canary_call(); requests are kept for llm_canary.retention_days days.'
                         ELSE 'Try again in a moment; canary_stats() shows the queue.' END;
    END IF;

    INSERT INTO @extschema@.canary_feedback (request_id, thumbs_down, user_id, canary, cohort, model)
    VALUES (canary_feedback.request_id, canary_feedback.thumbs_down, req.user_id, req.canary, req.cohort, req.model);
END;
$$;
COMMENT ON FUNCTION canary_feedback(uuid, boolean) IS
    'Records a user''s verdict (thumbs down or not) on the answer to a request';
