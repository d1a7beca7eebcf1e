-- Decision-quality simulator: synthetic traffic with known properties goes
-- into canary_requests and canary_feedback, and the real canary_check runs
-- at simulated times every 30 s, in each decision mode.  No HTTP.
--
-- Two paths for the traffic: through the real metrics path (canary_record
-- -> the shared-memory queue -> the worker -> canary_requests; thumbs-down
-- through canary_feedback()), or, for the long runs (direct => true),
-- inserted straight into canary_requests and canary_feedback, which is
-- what the worker would have written (several times faster; the decision
-- reads only those tables).
--
-- A third path, for the week-long runs (buckets => true): the same requests
-- (the same draws as direct) are never stored one by one; each step's rows
-- go into a temporary table and from there into canary_rollups through the
-- extension's own rollup statement (canary_rollup_statement, what the
-- trigger on canary_requests runs), thumbs-down into the same buckets.  The
-- kill switch reads only aggregated counts (the window summaries and the
-- sequential evidence come from canary_rollups), so its decisions are the
-- ones the rows would give, at a fraction of the cost; a run stops with an
-- error if the evidence stays empty (a canary_collect_evidence that still
-- recounts raw rows).  The sample-ratio check counts users in raw rows: it
-- sees none in this mode.
--
-- Every outcome is a pure function of (seed, request number): a user id,
-- an outcome (error / refusal / ok), a latency and a thumbs-down verdict
-- come from hashtext() of the seed and the request number, and the cohort
-- from canary_route() of the user, so a rerun gives identical numbers.
-- The same request number gets the same draws in every scenario and mode
-- (common random numbers): scenarios differ only by their cohort
-- properties, modes only by the decision.
--
-- Traffic: rps requests per simulated second, request i at t0 + i / rps,
-- where t0 is the start of the hour after next.  Thumbs-down given through
-- canary_feedback() (the trips) carry the real time: simulated time lies an
-- hour or more ahead of it, and less than a day (the evidence counts a
-- verdict given up to a day before its request's time), so they count for
-- every request of a run shorter than 22 simulated hours.  The long runs
-- (direct) write each verdict a second after its request.
-- Per cohort:
--   error with probability err, else refusal with probability ref;
--   latency_ms = lat * (400 + 600 * Exp(1))  (p95 = lat * 2197 ms);
--   thumbs-down with probability td.
-- A trip is followed by a re-arm at the simulated time of the trip
-- (evidence_since moves along the simulated clock) unless the scenario
-- stops at its first trip.
--
-- Driven by test/bench/simulate.sh (the full scenarios) and by
-- test/t/080_simulator.pl (scaled down); psql variables:
--   scenarios  comma-separated names of the table below (default: all)
--   modes      comma-separated decision modes (default: sequential)
--   aa_seconds (604800), slight_seconds (86400), trip_seconds (3600),
--   aa_rps (100), direct (true for the A/A and slight runs),
--   buckets (false; true: the A/A and slight runs write rollups only),
--   seed (llm_canary-sim-1), tag (appended to the scenario names in sim_results)
--   define=false skips the definitions (for sessions running side by side).
-- Results: table sim_results, one row per scenario and mode.
-- Run it with llm_canary.check_interval = 0: the worker's own periodic check
-- would also check these rollouts (harmlessly: at the real now(), where they
-- have no traffic, but it writes window summaries).
\set QUIET on
\if :{?aa_seconds} \else \set aa_seconds 604800 \endif
\if :{?trip_seconds} \else \set trip_seconds 3600 \endif
\if :{?slight_seconds} \else \set slight_seconds 86400 \endif
\if :{?aa_rps} \else \set aa_rps 100 \endif
\if :{?scenarios} \else \set scenarios 'aa_ramp_1,aa_ramp_5,aa_ramp_25,aa_full,article,errors,p95,thumbs,slight' \endif
\if :{?modes} \else \set modes 'sequential' \endif
\if :{?define} \else \set define true \endif

\if :define

INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('sim-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('sim-new', 'openai', 'http://127.0.0.1:9/v1', 'new')
ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS sim_results (
    scenario        text,
    mode            text,        -- decision_mode
    stage           text,
    sim_seconds     integer,     -- simulated time covered
    rps             integer,
    requests        bigint,      -- requests recorded
    canary_share    numeric,     -- canary requests / requests
    dropped         bigint,      -- records the queue refused (canary_record returned NULL)
    thumbs_down     bigint,      -- thumbs-down recorded
    checks          integer,     -- canary_check calls
    trips           integer,     -- checks that tripped (re-armed after each unless stop_at_trip)
    first_trip_s    integer,     -- simulated seconds from the start to the first trip
    first_reason    text,
    srm_alerts      integer,     -- sample_ratio alerts
    run_seconds     numeric,     -- wall clock
    PRIMARY KEY (scenario, mode)
);

-- A uniform draw in [0, 1) from the seed, a request number and a tag.
CREATE OR REPLACE FUNCTION sim_u(seed text, i bigint, tag text)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashtext(seed || ':' || i || ':' || tag)::bigint + 2147483648) / 4294967296.0 $$;

/*
 * sim_draw: the requests of step s of a scenario (rps per second, step
 * seconds each): request number, user, cohort (canary_route of the user),
 * outcome, latency and thumbs-down, each a pure function of the seed and
 * the request number (see the top of this file).
 */
CREATE OR REPLACE FUNCTION sim_draw(
    seed text, rname text, s integer, step integer, rps integer,
    err_canary float8, err_control float8, ref_canary float8, ref_control float8,
    lat_canary float8, lat_control float8, td_canary float8, td_control float8)
RETURNS TABLE (i bigint, user_id text, is_canary boolean, outcome text, latency_ms integer, td boolean)
LANGUAGE sql VOLATILE AS $$
    WITH req AS (
        SELECT i, 'u' || ((hashtext(seed || ':u:' || i) & 2147483647) % 20000) AS user_id
          FROM generate_series(s::bigint * step * rps, (s + 1)::bigint * step * rps - 1) i
    ), drawn AS (
        SELECT i, user_id, canary_route(user_id, rname) = 'sim-new' AS is_canary,
               sim_u(seed, i, 'o') AS uo, sim_u(seed, i, 'l') AS ul, sim_u(seed, i, 't') AS ut
          FROM req
    )
    SELECT i, user_id, is_canary,
           CASE WHEN uo < CASE WHEN is_canary THEN err_canary ELSE err_control END THEN 'error'
                WHEN uo < CASE WHEN is_canary THEN err_canary + ref_canary ELSE err_control + ref_control END
                     THEN 'refusal'
                ELSE 'ok' END,
           round(CASE WHEN is_canary THEN lat_canary ELSE lat_control END
                 * (400 + 600 * -ln(1 - ul)))::integer,
           ut < CASE WHEN is_canary THEN td_canary ELSE td_control END
      FROM drawn
$$;

/*
 * sim_run: one scenario in one decision mode on a rollout of its own
 * (named scenario_mode).  Per 30 s step: record the step's requests and
 * thumbs-down, canary_check(name, end of the step), COMMIT.  After a trip:
 * stop (stop_at_trip) or count it, re-arm at the simulated time and go on.
 * Every simulated hour the rows that have left every window are deleted.
 * At stage full there is no control cohort: a control summary with the
 * control's properties is stored first, as a ramp stage would have left it.
 */
CREATE OR REPLACE PROCEDURE sim_run(
    scenario text, mode text, stage text, seconds integer, rps integer,
    err_canary float8, err_control float8,
    ref_canary float8, ref_control float8,
    lat_canary float8, lat_control float8,
    td_canary float8, td_control float8,
    stop_at_trip boolean, direct boolean, seed text DEFAULT 'llm_canary-sim-1',
    buckets boolean DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
    step constant integer := 30;
    t0 timestamptz := date_trunc('hour', now()) + interval '2 hours';
    wall0 timestamptz := clock_timestamp();
    rname text := scenario || '_' || mode;
    win integer;
    at timestamptz;
    n bigint; ncanary bigint; ndrop bigint; tds uuid[]; ntd_direct bigint;
    tot bigint := 0; totcanary bigint := 0; totdrop bigint := 0; tottd bigint := 0;
    nchecks integer := 0; ntrips integer := 0;
    first_s integer; first_r text;
    reason text;
    id uuid;
BEGIN
    DELETE FROM sim_results r WHERE r.scenario = sim_run.scenario AND r.mode = sim_run.mode;
    DELETE FROM canary_requests r WHERE r.canary = rname;
    DELETE FROM canary_feedback f WHERE f.canary = rname;
    DELETE FROM canary_rollups r WHERE r.canary = rname;
    DELETE FROM canary_window_summaries w WHERE w.canary = rname;
    DELETE FROM canary_evidence e WHERE e.canary = rname;
    DELETE FROM canary_evidence_settled e WHERE e.canary = rname;
    DELETE FROM canary_srm_users u WHERE u.canary = rname;
    DELETE FROM canary_srm_state u WHERE u.canary = rname;
    DELETE FROM canary_verdict_marks m WHERE m.canary = rname;
    DELETE FROM canary_alerts a WHERE a.canary = rname;
    INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode, evidence_since)
    VALUES (rname, stage, 'sim-old', 'sim-new', mode, t0)
    ON CONFLICT (name) DO UPDATE SET stage = excluded.stage, percent_new = canary_stage_percent(excluded.stage),
        kill_switch_armed = true, decision_mode = excluded.decision_mode, evidence_since = t0;
    SELECT window_seconds INTO win FROM canary_config c WHERE c.name = rname;
    IF stage = 'full' THEN
        INSERT INTO canary_window_summaries (canary, at, window_seconds, stage, cohort, samples, errors,
                                             p95_latency_ms, refusals, thumbs_down)
        VALUES (rname, t0, win, 'ramp_25', 'control', 30000, round(30000 * err_control),
                round(lat_control * (400 + 600 * ln(20))), round(30000 * ref_control),
                round(30000 * td_control));
    END IF;
    COMMIT;

    IF buckets THEN
        CREATE TEMP TABLE IF NOT EXISTS sim_step (LIKE canary_requests, td boolean);
    END IF;
    FOR s IN 0 .. seconds / step - 1 LOOP
        IF buckets THEN
            TRUNCATE sim_step;
            INSERT INTO sim_step (request_id, ts, canary, stage, user_id, cohort, model, outcome,
                                  http_status, latency_ms, refusal, fallback, cached, td)
            WITH shaped AS (
                SELECT d.* FROM sim_draw(seed, rname, s, step, rps, err_canary, err_control, ref_canary,
                                       ref_control, lat_canary, lat_control, td_canary, td_control) d
            )
            SELECT '00000000-0000-0000-0000-000000000000', t0 + make_interval(secs => i::float8 / rps), rname,
                   stage, user_id, CASE WHEN is_canary THEN 'canary' ELSE 'control' END,
                   CASE WHEN is_canary THEN 'sim-new' ELSE 'sim-old' END,
                   outcome, CASE WHEN outcome = 'error' THEN 500 ELSE 200 END, latency_ms,
                   outcome = 'refusal', false, false, td
              FROM shaped;
            EXECUTE canary_rollup_statement('requests', 'pg_temp.sim_step', false);
            -- each verdict in its request's bucket, as the feedback trigger counts it
            INSERT INTO canary_rollups AS t (canary, bucket_end, member, stage, cohort, model, fallback, cached,
                                             thumbs_down, verdicts)
            SELECT q.canary, canary_rollup_bucket(q.ts), canary_rollup_member(), q.stage, q.cohort, q.model,
                   false, false, count(*), count(*)
              FROM sim_step q WHERE q.td GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
            ON CONFLICT ON CONSTRAINT canary_rollups_pkey
            DO UPDATE SET thumbs_down = t.thumbs_down + excluded.thumbs_down,
                          verdicts = t.verdicts + excluded.verdicts;
            SELECT count(*), count(*) FILTER (WHERE q.cohort = 'canary'), 0, count(*) FILTER (WHERE q.td)
              INTO n, ncanary, ndrop, ntd_direct
              FROM sim_step q;
            tottd := tottd + ntd_direct;
        ELSIF direct THEN
            WITH shaped AS (
                SELECT d.*, gen_random_uuid() AS rid FROM sim_draw(seed, rname, s, step, rps, err_canary, err_control, ref_canary,
                                       ref_control, lat_canary, lat_control, td_canary, td_control) d
            ), recorded AS (
                INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome,
                                             http_status, latency_ms, refusal, fallback)
                SELECT rid, t0 + make_interval(secs => i::float8 / rps), rname, stage, user_id,
                       CASE WHEN is_canary THEN 'canary' ELSE 'control' END,
                       CASE WHEN is_canary THEN 'sim-new' ELSE 'sim-old' END,
                       outcome, CASE WHEN outcome = 'error' THEN 500 ELSE 200 END, latency_ms,
                       outcome = 'refusal', false
                  FROM shaped
            ), feedback AS (
                INSERT INTO canary_feedback (request_id, ts, thumbs_down, user_id, canary, cohort, model)
                SELECT rid, t0 + make_interval(secs => i::float8 / rps + 1), true, user_id, rname,
                       CASE WHEN is_canary THEN 'canary' ELSE 'control' END,
                       CASE WHEN is_canary THEN 'sim-new' ELSE 'sim-old' END
                  FROM shaped WHERE td
                RETURNING 1
            )
            SELECT count(*), count(*) FILTER (WHERE is_canary), 0, (SELECT count(*) FROM feedback)
              INTO n, ncanary, ndrop, ntd_direct
              FROM shaped;
            tottd := tottd + ntd_direct;
        ELSE
            WITH shaped AS (
                SELECT d.* FROM sim_draw(seed, rname, s, step, rps, err_canary, err_control, ref_canary,
                                       ref_control, lat_canary, lat_control, td_canary, td_control) d
            ), recorded AS (
                SELECT is_canary, td,
                       canary_record(rname, user_id,
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
            PERFORM canary_flush('120 seconds');
            IF tds IS NOT NULL THEN
                FOREACH id IN ARRAY tds LOOP
                    PERFORM canary_feedback(id, true);
                END LOOP;
                tottd := tottd + cardinality(tds);
            END IF;
        END IF;
        tot := tot + n; totcanary := totcanary + ncanary; totdrop := totdrop + ndrop;

        at := t0 + make_interval(secs => (s + 1) * step);
        reason := canary_check(rname, at);
        nchecks := nchecks + 1;
        IF buckets AND s = 3 AND NOT EXISTS (SELECT 1 FROM canary_evidence e WHERE e.canary = rname) THEN
            RAISE EXCEPTION 'buckets: no sequential evidence from canary_rollups'
                USING HINT = 'This canary_collect_evidence recounts canary_requests; run with buckets = false.';
        END IF;
        IF reason IS NOT NULL THEN
            ntrips := ntrips + 1;
            IF first_s IS NULL THEN
                first_s := (s + 1) * step;
                first_r := reason;
            END IF;
            EXIT WHEN stop_at_trip;
            UPDATE canary_config c SET kill_switch_armed = true, evidence_since = at
             WHERE c.name = rname;
        END IF;
        COMMIT;

        IF (s + 1) % (3600 / step) = 0 THEN
            DELETE FROM canary_requests r
             WHERE r.canary = rname AND r.ts <= at - make_interval(secs => win * 2);
            DELETE FROM canary_feedback f
             WHERE f.canary = rname
               AND NOT EXISTS (SELECT 1 FROM canary_requests r WHERE r.request_id = f.request_id);
            COMMIT;
        END IF;
    END LOOP;

    INSERT INTO sim_results
    VALUES (scenario, mode, stage, seconds, rps, tot, round(totcanary::numeric / greatest(tot, 1), 4), totdrop,
            tottd, nchecks, ntrips, first_s, first_r,
            (SELECT count(*) FROM canary_alerts a WHERE a.canary = rname AND a.kind = 'sample_ratio'),
            round(extract(epoch FROM clock_timestamp() - wall0)::numeric, 1));
    COMMIT;
END;
$$;

/*
 * The scenarios.  Control: errors 1 %, refusals 1.1 %, latency factor 1,
 * thumbs-down 2 %.
 */
CREATE TABLE IF NOT EXISTS sim_scenarios (
    scenario text PRIMARY KEY, stage text, seconds_var text, rps integer,
    err_canary float8, ref_canary float8, lat_canary float8, td_canary float8,
    stop_at_trip boolean, note text);
TRUNCATE sim_scenarios;
INSERT INTO sim_scenarios VALUES
    -- identical cohorts, re-armed after any trip
    ('aa_ramp_1',  'ramp_1',  'aa',     NULL, 0.01,  0.011, 1, 0.02, false, 'A/A'),
    ('aa_ramp_5',  'ramp_5',  'aa',     NULL, 0.01,  0.011, 1, 0.02, false, 'A/A'),
    ('aa_ramp_25', 'ramp_25', 'aa',     NULL, 0.01,  0.011, 1, 0.02, false, 'A/A'),
    ('aa_full',    'full',    'aa',     NULL, 0.01,  0.011, 1, 0.02, false, 'A/A'),
    -- the article's trip: refusals 8.7 % vs 1.1 % at ramp_5, 120 requests/s
    ('article',    'ramp_5',  'trip',   120,  0.01,  0.087, 1, 0.02, true,  'refusals 8.7 % vs 1.1 %'),
    -- one rule each
    ('errors',     'ramp_1',  'trip',   50,   0.05,  0.011, 1, 0.02, true,  'errors 5 % vs 1 %'),
    ('p95',        'ramp_5',  'trip',   100,  0.01,  0.011, 2, 0.02, true,  'p95 2x control'),
    ('thumbs',     'ramp_25', 'trip',   100,  0.01,  0.011, 1, 0.08, true,  'thumbs-down 4x control'),
    -- slightly worse but below every threshold, re-armed after any trip
    ('slight',     'ramp_1',  'slight', 100,  0.015, 0.011, 1, 0.02, false, 'errors 1.5 % vs 1 %');

CREATE OR REPLACE PROCEDURE sim_all(scenarios text, modes text, aa_seconds integer, trip_seconds integer,
                                    slight_seconds integer, aa_rps integer, direct_long boolean,
                                    tag text DEFAULT '', seed text DEFAULT 'llm_canary-sim-1',
                                    buckets_long boolean DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
    sc record;
    m text;
BEGIN
    FOR sc IN SELECT * FROM sim_scenarios
               WHERE scenario = ANY (string_to_array(scenarios, ',')) ORDER BY scenario LOOP
        FOREACH m IN ARRAY string_to_array(modes, ',') LOOP
            CALL sim_run(sc.scenario || tag, m, sc.stage,
                         CASE sc.seconds_var WHEN 'aa' THEN aa_seconds WHEN 'trip' THEN trip_seconds
                                             ELSE slight_seconds END,
                         coalesce(sc.rps, aa_rps),
                         sc.err_canary, 0.01, sc.ref_canary, 0.011, sc.lat_canary, 1, sc.td_canary, 0.02,
                         sc.stop_at_trip, direct_long AND NOT sc.stop_at_trip, seed,
                         buckets_long AND NOT sc.stop_at_trip);
        END LOOP;
    END LOOP;
END;
$$;

\endif
\if :{?direct} \else \set direct true \endif
\if :{?tag} \else \set tag '' \endif
\if :{?seed} \else \set seed 'llm_canary-sim-1' \endif
\if :{?buckets} \else \set buckets false \endif
CALL sim_all(:'scenarios', :'modes', :aa_seconds, :trip_seconds, :slight_seconds, :aa_rps, :direct, :'tag',
             :'seed', :buckets);

\set QUIET off
\pset footer off
SELECT scenario, mode, stage, round(sim_seconds / 3600.0, 2) AS sim_hours, rps, requests, canary_share,
       checks, trips, first_trip_s, round(first_trip_s / 60.0, 1) AS first_trip_min, first_reason, srm_alerts,
       run_seconds
  FROM sim_results ORDER BY scenario, mode;
