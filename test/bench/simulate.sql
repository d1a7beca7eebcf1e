-- Decision-quality simulator: synthetic traffic with known properties goes
-- through the real metrics path (canary_record -> the shared-memory queue ->
-- the worker -> canary_requests; thumbs-down through canary_feedback), and
-- the real canary_check runs at simulated times every 30 s.  No HTTP.
--
-- Every outcome is a pure function of (seed, request number): a user id,
-- an outcome (error / refusal / ok), a latency and a thumbs-down verdict
-- come from hashtext() of the seed and the request number, and the cohort
-- from canary_route() of the user, so a rerun gives identical numbers.
-- The same request number gets the same draws in every scenario (common
-- random numbers): scenarios differ only by their cohort properties.
--
-- Traffic: rps requests per simulated second, request i at t0 + i / rps,
-- where t0 is the next UTC midnight (simulated time lies ahead of the real
-- clock, so thumbs-down recorded now count in every window that holds their
-- request).  Per cohort:
--   error with probability err, else refusal with probability ref;
--   latency_ms = lat * (400 + 600 * Exp(1))  (p95 = lat * 2197 ms);
--   thumbs-down with probability td.
--
-- Driven by test/bench/run.sh simulate (the full scenarios) and by
-- test/t/080_simulator.pl (scaled down); psql variables scale it:
--   aa_seconds (86400), trip_seconds (7200), slight_seconds (86400), rps (100)
-- define=false skips the definitions (for sessions running side by side).
-- Results: table sim_results, one row per scenario.
-- Run it with llm_canary.check_interval = 0: the worker's own periodic check
-- would also check these rollouts (harmlessly: at the real now(), where they
-- have no traffic, but it writes window summaries).
\set QUIET on
\if :{?aa_seconds} \else \set aa_seconds 86400 \endif
\if :{?trip_seconds} \else \set trip_seconds 7200 \endif
\if :{?slight_seconds} \else \set slight_seconds 86400 \endif
\if :{?rps} \else \set rps 100 \endif
\if :{?scenarios} \else \set scenarios 'aa,article,errors,p95,thumbs,slight' \endif
\if :{?define} \else \set define true \endif

\if :define

INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('sim-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('sim-new', 'openai', 'http://127.0.0.1:9/v1', 'new')
ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS sim_results (
    scenario        text PRIMARY KEY,
    stage           text,
    sim_seconds     integer,     -- simulated time covered
    requests        bigint,      -- records queued
    canary_share    numeric,     -- canary requests / requests
    dropped         bigint,      -- records the queue refused (canary_record returned NULL)
    thumbs_down     bigint,      -- canary_feedback calls
    checks          integer,     -- canary_check calls
    trips           integer,     -- checks that tripped (re-armed after each unless stop_at_trip)
    first_trip_s    integer,     -- simulated seconds from the start to the first trip
    first_reason    text,
    run_seconds     numeric      -- wall clock
);

-- A uniform draw in [0, 1) from the seed, a request number and a tag.
CREATE OR REPLACE FUNCTION sim_u(seed text, i bigint, tag text)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashtext(seed || ':' || i || ':' || tag)::bigint + 2147483648) / 4294967296.0 $$;

/*
 * sim_run: one scenario on a rollout of its own (named after it).
 * Per 30 s step: queue the step's requests, canary_flush(), record the
 * thumbs-down of the step through canary_feedback, canary_check(name, end
 * of the step), COMMIT.  After a trip: stop (stop_at_trip) or count it,
 * re-arm and go on.  Every simulated hour the rows that have left every
 * future window are deleted (the run keeps about one window of rows).
 */
CREATE OR REPLACE PROCEDURE sim_run(
    scenario text, stage text, seconds integer, rps integer,
    err_canary float8, err_control float8,
    ref_canary float8, ref_control float8,
    lat_canary float8, lat_control float8,
    td_canary float8, td_control float8,
    stop_at_trip boolean, seed text DEFAULT 'llm_canary-sim-1')
LANGUAGE plpgsql AS $$
DECLARE
    step constant integer := 30;
    t0 timestamptz := ((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC';
    wall0 timestamptz := clock_timestamp();
    win integer;
    at timestamptz;
    n bigint; ncanary bigint; ndrop bigint; tds uuid[];
    tot bigint := 0; totcanary bigint := 0; totdrop bigint := 0; tottd bigint := 0;
    nchecks integer := 0; ntrips integer := 0;
    first_s integer; first_r text;
    reason text;
    id uuid;
BEGIN
    DELETE FROM sim_results r WHERE r.scenario = sim_run.scenario;
    DELETE FROM canary_requests r WHERE r.canary = scenario;
    DELETE FROM canary_feedback f WHERE f.canary = scenario;
    DELETE FROM canary_rollups r WHERE r.canary = scenario;
    DELETE FROM canary_window_summaries w WHERE w.canary = scenario;
    INSERT INTO canary_config (name, stage, old_model, new_model)
    VALUES (scenario, stage, 'sim-old', 'sim-new')
    ON CONFLICT (name) DO UPDATE SET stage = excluded.stage, percent_new = canary_stage_percent(excluded.stage),
        kill_switch_armed = true;
    SELECT window_seconds INTO win FROM canary_config WHERE name = scenario;
    COMMIT;

    FOR s IN 0 .. seconds / step - 1 LOOP
        WITH req AS (
            SELECT i, 'u' || ((hashtext(seed || ':u:' || i) & 2147483647) % 20000) AS user_id
              FROM generate_series(s::bigint * step * rps, (s + 1)::bigint * step * rps - 1) i
        ), drawn AS (
            SELECT i, user_id, canary_route(user_id, scenario) = 'sim-new' AS is_canary,
                   sim_u(seed, i, 'o') AS uo, sim_u(seed, i, 'l') AS ul, sim_u(seed, i, 't') AS ut
              FROM req
        ), shaped AS (
            SELECT i, user_id, is_canary,
                   CASE WHEN uo < CASE WHEN is_canary THEN err_canary ELSE err_control END THEN 'error'
                        WHEN uo < CASE WHEN is_canary THEN err_canary + ref_canary ELSE err_control + ref_control END
                             THEN 'refusal'
                        ELSE 'ok' END AS outcome,
                   round(CASE WHEN is_canary THEN lat_canary ELSE lat_control END
                         * (400 + 600 * -ln(1 - ul)))::integer AS latency_ms,
                   ut < CASE WHEN is_canary THEN td_canary ELSE td_control END AS td
              FROM drawn
        ), recorded AS (
            SELECT is_canary, td,
                   canary_record(scenario, user_id,
                                 CASE WHEN is_canary THEN 'sim-new' ELSE 'sim-old' END,
                                 CASE WHEN is_canary THEN 'canary' ELSE 'control' END,
                                 outcome, latency_ms,
                                 t0 + make_interval(secs => i::float8 / rps),
                                 http_status => CASE WHEN outcome = 'error' THEN 500 ELSE 200 END,
                                 stage => stage) AS rid
              FROM shaped
        )
        SELECT count(*), count(*) FILTER (WHERE is_canary), count(*) FILTER (WHERE rid IS NULL),
               array_agg(rid) FILTER (WHERE td AND rid IS NOT NULL)
          INTO n, ncanary, ndrop, tds
          FROM recorded;
        tot := tot + n; totcanary := totcanary + ncanary; totdrop := totdrop + ndrop;

        PERFORM canary_flush('120 seconds');
        IF tds IS NOT NULL THEN
            FOREACH id IN ARRAY tds LOOP
                PERFORM canary_feedback(id, true);
            END LOOP;
            tottd := tottd + cardinality(tds);
        END IF;

        at := t0 + make_interval(secs => (s + 1) * step);
        reason := canary_check(scenario, at);
        nchecks := nchecks + 1;
        IF reason IS NOT NULL THEN
            ntrips := ntrips + 1;
            IF first_s IS NULL THEN
                first_s := (s + 1) * step;
                first_r := reason;
            END IF;
            EXIT WHEN stop_at_trip;
            PERFORM canary_rearm(scenario);
        END IF;
        COMMIT;

        IF (s + 1) % (3600 / step) = 0 THEN
            DELETE FROM canary_requests r
             WHERE r.canary = scenario AND r.ts <= at - make_interval(secs => win);
            COMMIT;
        END IF;
    END LOOP;

    INSERT INTO sim_results
    VALUES (scenario, stage, seconds, tot, round(totcanary::numeric / greatest(tot, 1), 4), totdrop,
            tottd, nchecks, ntrips, first_s, first_r,
            round(extract(epoch FROM clock_timestamp() - wall0)::numeric, 1));
    COMMIT;
END;
$$;

\endif
SELECT position('aa' IN :'scenarios') > 0 AS run_aa,
       position('article' IN :'scenarios') > 0 AS run_article,
       position('errors' IN :'scenarios') > 0 AS run_errors,
       position('p95' IN :'scenarios') > 0 AS run_p95,
       position('thumbs' IN :'scenarios') > 0 AS run_thumbs,
       position('slight' IN :'scenarios') > 0 AS run_slight \gset

--                                     err canary/control  refusal          latency   thumbs-down
-- (1) A/A: identical cohorts at ramp_1, checked every 30 s, re-armed after any trip
\if :run_aa
CALL sim_run('sim_aa', 'ramp_1', :aa_seconds, :rps, 0.01, 0.01,  0.011, 0.011,  1, 1,  0.02, 0.02, false);
\endif
-- (2) the article's trip: ramp_5, refusals 8.7 % vs 1.1 %
\if :run_article
CALL sim_run('sim_article', 'ramp_5', :trip_seconds, :rps, 0.01, 0.01,  0.087, 0.011,  1, 1,  0.02, 0.02, true);
\endif
-- (3) one rule each at ramp_5: errors 5 % vs 1 %, p95 2x, thumbs-down 3x
\if :run_errors
CALL sim_run('sim_errors', 'ramp_5', :trip_seconds, :rps, 0.05, 0.01,  0.011, 0.011,  1, 1,  0.02, 0.02, true);
\endif
\if :run_p95
CALL sim_run('sim_p95', 'ramp_5', :trip_seconds, :rps, 0.01, 0.01,  0.011, 0.011,  2, 1,  0.02, 0.02, true);
\endif
\if :run_thumbs
CALL sim_run('sim_thumbs', 'ramp_5', :trip_seconds, :rps, 0.01, 0.01,  0.011, 0.011,  1, 1,  0.06, 0.02, true);
\endif
-- (4) slightly worse, below every threshold: errors 1.5 % vs 1 % at ramp_1, re-armed after any trip
\if :run_slight
CALL sim_run('sim_slight', 'ramp_1', :slight_seconds, :rps, 0.015, 0.01,  0.011, 0.011,  1, 1,  0.02, 0.02, false);
\endif

\set QUIET off
\pset footer off
SELECT scenario, stage, round(sim_seconds / 3600.0, 2) AS sim_hours, requests, canary_share, dropped, thumbs_down,
       checks, trips, first_trip_s, round(first_trip_s / 60.0, 1) AS first_trip_min, first_reason, run_seconds
  FROM sim_results ORDER BY scenario;
