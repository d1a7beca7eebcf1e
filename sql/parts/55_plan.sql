/*
 * The plan: a rollout that advances itself through the article's timeline,
 * when asked to (auto_advance).  Each stage has a minimum dwell time
 * (shadow 5 days, ramp_1 1 day, ramp_5 2 days, ramp_25 2 days, full 7 days;
 * canary_plan_stages overrides them per rollout) and gates:
 *   shadow:  canary_shadow_report says ready;
 *   ramps:   enough canary requests since the stage began that each rule's
 *            test would detect a regression to 1.5 x its boundary with
 *            power 0.8; no breach in the last check; no sample-ratio
 *            mismatch; armed; no CSAT pin;
 *   full:    after its dwell time, one alert that the old model can be
 *            decommissioned.
 * The dwell time counts from evidence_since (the last change of stage,
 * percentage or models, or re-arm).  canary_check runs canary_advance after
 * its checks.  A trip or a CSAT pin stops the plan (auto_advance = false,
 * with an alert); an operator's UPDATE always wins (the plan continues from
 * whatever stage the operator set, or stops when auto_advance is set off).
 */

ALTER TABLE canary_config
    ADD COLUMN auto_advance boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN canary_config.auto_advance IS
    'Advance through the stages automatically when each stage''s dwell time and gates are met (canary_plan shows them)';

CREATE TABLE canary_plan_stages (
    canary      text NOT NULL,
    stage       text NOT NULL CHECK (stage IN ('shadow', 'ramp_1', 'ramp_5', 'ramp_25', 'full')),
    min_dwell   interval NOT NULL CHECK (min_dwell >= '0'::interval),
    PRIMARY KEY (canary, stage)
);
COMMENT ON TABLE canary_plan_stages IS
    'Per-rollout minimum dwell times of auto_advance, overriding the article''s timeline';
SELECT pg_catalog.pg_extension_config_dump('canary_plan_stages', '');

-- The minimum dwell time of a stage of a rollout.
CREATE FUNCTION canary_plan_dwell(p_canary text, p_stage text)
RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT p.min_dwell FROM @extschema@.canary_plan_stages p
          WHERE p.canary = p_canary AND p.stage = p_stage),
        CASE p_stage WHEN 'shadow' THEN interval '5 days' WHEN 'ramp_1' THEN interval '1 day'
                     WHEN 'ramp_5' THEN interval '2 days' WHEN 'ramp_25' THEN interval '2 days'
                     WHEN 'full' THEN interval '7 days' END)
$$;

-- The stage after a stage (NULL after full).
CREATE FUNCTION canary_plan_next_stage(p_stage text)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE p_stage WHEN 'shadow' THEN 'ramp_1' WHEN 'ramp_1' THEN 'ramp_5'
                        WHEN 'ramp_5' THEN 'ramp_25' WHEN 'ramp_25' THEN 'full' END
$$;

CREATE FUNCTION canary_sequential_samples(boundary double precision, alternative double precision,
                                          significance double precision, rule text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'canary_sequential_samples'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION canary_sequential_samples(double precision, double precision, double precision, text) IS
    'Canary requests after which a rule''s sequential test (at the rule''s share of significance) detects the alternative rate with power 0.8';

/*
 * canary_plan_gates: every gate of the rollout's current stage at p_at:
 * whether it is open, what it says, the canary requests still needed and
 * when it opens at the current traffic (the canary requests of the last
 * hour).  Internal to canary_plan and canary_advance.
 */
CREATE FUNCTION canary_plan_gates(p_canary text, p_at timestamptz)
RETURNS TABLE (gate text, ok boolean, detail text, samples_needed bigint, due_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    since timestamptz;
    dwell interval;
    ev record;
    per_second double precision;
    last_decision jsonb;
    breached text;
    stale boolean;
    srm record;
    shadow record;
    rule record;
    needed bigint;
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = p_canary;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rollout "%" does not exist', p_canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    since := coalesce(cfg.evidence_since,
                      (SELECT min(h.changed_at) FROM @extschema@.canary_stage_history h
                        WHERE h.canary = p_canary),
                      p_at);
    dwell := @extschema@.canary_plan_dwell(p_canary, cfg.stage);

    gate := 'dwell'; ok := p_at >= since + dwell; samples_needed := NULL; due_at := since + dwell;
    detail := format('%s of %s in %s since %s', date_trunc('minute', greatest(p_at - since, interval '0')),
                     dwell, cfg.stage, since);
    RETURN NEXT;
    gate := 'armed'; ok := cfg.kill_switch_armed; due_at := NULL;
    detail := CASE WHEN cfg.kill_switch_armed THEN 'kill switch armed'
                   ELSE 'tripped: ' || coalesce(cfg.trip_reason, '') END;
    RETURN NEXT;
    gate := 'no csat pin'; ok := cfg.csat_pinned_at IS NULL;
    detail := coalesce('pinned: ' || cfg.csat_pin_reason, 'not pinned');
    RETURN NEXT;

    IF cfg.stage = 'shadow' THEN
        -- the report aggregates days of shadow rows: not before the dwell
        -- time is over (the plan runs with every check)
        gate := 'shadow report ready';
        IF p_at < since + dwell THEN
            ok := false; due_at := since + dwell; detail := 'read when the dwell time is over';
            RETURN NEXT;
            RETURN;
        END IF;
        SELECT r.ready, r.paired, r.reasons INTO shadow FROM @extschema@.canary_shadow_report(p_canary) r;
        ok := coalesce(shadow.ready, false);
        detail := format('%s paired answers%s', coalesce(shadow.paired, 0),
                         CASE WHEN NOT ok THEN ': ' || coalesce(array_to_string(shadow.reasons, '; '), 'no shadow traffic') ELSE '' END);
        RETURN NEXT;
        RETURN;
    END IF;

    -- the last check: no rule breached, even without the evidence to trip,
    -- and it judged on evidence it collected itself: one that found another
    -- check collecting (left open in a transaction, say) judged on the
    -- evidence committed before, which may trip but not advance.  The range
    -- on canary (the same rows as equality) with the order (canary, at)
    -- keeps the generic plan (from the sixth call) on
    -- canary_window_summaries_idx, where the newest row is the first read:
    -- with equality the planner may walk canary_window_summaries_at_idx
    -- backwards from p_at, reading every rollout's summaries since this
    -- one's last check (a tripped or stalled rollout: days of them)
    SELECT w.decision INTO last_decision FROM @extschema@.canary_window_summaries w
     WHERE w.canary >= p_canary AND w.canary <= p_canary AND w.cohort = 'canary' AND w.at <= p_at
     ORDER BY w.canary DESC, w.at DESC, w.id DESC LIMIT 1;
    SELECT string_agg(r.key || ' ' || (r.value->>'verdict'), ', ') INTO breached
      FROM jsonb_each(coalesce(last_decision->'rules', '{}')) r
     WHERE r.value->>'verdict' IN ('trip', 'not_credible', 'unconfirmed');
    stale := (last_decision->>'check_lock')::boolean IS FALSE;
    gate := 'no breach'; ok := breached IS NULL AND NOT stale;
    detail := coalesce('breach: ' || breached,
                       CASE WHEN last_decision IS NULL THEN 'no check yet'
                            WHEN stale THEN 'the last check judged on older evidence: another transaction held its check lock (another check, or an operator changing the evidence period)'
                            ELSE 'no rule breached in the last check' END);
    RETURN NEXT;

    IF cfg.stage = 'full' THEN
        RETURN;
    END IF;

    SELECT s.* INTO srm FROM @extschema@.canary_srm_state s WHERE s.canary = p_canary;
    gate := 'no sample-ratio mismatch';
    ok := srm.alerted_at IS NULL OR srm.since IS DISTINCT FROM cfg.evidence_since;
    detail := CASE WHEN ok THEN format('%s canary and %s control users', coalesce(srm.users_canary, 0),
                                       coalesce(srm.users_control, 0))
                   ELSE format('mismatch alerted at %s', srm.alerted_at) END;
    RETURN NEXT;

    -- evidence since the stage began (the running totals and the minutes
    -- after them), and the canary traffic of the last hour
    SELECT coalesce(sum(e.samples) FILTER (WHERE e.cohort = 'canary'), 0) AS n,
           coalesce(sum(e.samples) FILTER (WHERE e.cohort = 'control'), 0) AS nk,
           coalesce(sum(e.refusals) FILTER (WHERE e.cohort = 'control'), 0) AS refk,
           coalesce(sum(e.thumbs_down) FILTER (WHERE e.cohort = 'control'), 0) AS tdk
      INTO ev
      FROM @extschema@.canary_evidence_stage(p_canary, since, p_at) e;
    SELECT coalesce(sum(e.samples), 0) / 3600.0 INTO per_second
      FROM @extschema@.canary_evidence e
     WHERE e.canary = p_canary AND e.cohort = 'canary' AND e.bucket > p_at - interval '1 hour'
       AND e.bucket >= date_bin('1 minute', since, timestamptz '2000-01-01 00:00:00+00') AND e.bucket <= p_at;
    FOR rule IN
        SELECT * FROM (VALUES
            ('error_rate', cfg.error_rate_threshold::float8),
            ('p95', 0.05::float8),
            ('refusal', CASE WHEN ev.nk > 0 THEN ev.refk::float8 / ev.nk + cfg.refusal_delta_threshold::float8 END),
            ('thumbs_down', CASE WHEN ev.nk > 0 AND ev.tdk > 0
                                 THEN ev.tdk::float8 / ev.nk * cfg.thumbs_down_ratio_threshold::float8 END))
            AS r(name, boundary)
    LOOP
        gate := 'evidence ' || rule.name;
        IF rule.boundary IS NULL OR rule.boundary <= 0 OR rule.boundary >= 1 THEN
            ok := rule.name = 'thumbs_down' AND ev.nk > 0;
            detail := CASE WHEN ev.nk = 0 THEN 'no control traffic yet'
                           ELSE 'no thumbs-down in the control cohort: the rule cannot be tested' END;
            samples_needed := NULL; due_at := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        needed := greatest(@extschema@.canary_sequential_samples(rule.boundary,
                                                                  least(1.5 * rule.boundary, (1 + rule.boundary) / 2),
                                                                  cfg.significance::float8, rule.name),
                           cfg.min_samples);
        ok := ev.n >= needed;
        samples_needed := greatest(needed - ev.n, 0);
        detail := format('%s of %s canary requests (power 0.8 against %s instead of %s)',
                         ev.n, needed, round((1.5 * rule.boundary)::numeric, 4), round(rule.boundary::numeric, 4));
        due_at := CASE WHEN ok THEN p_at
                       WHEN per_second > 0 THEN p_at + make_interval(secs => samples_needed / per_second) END;
        RETURN NEXT;
    END LOOP;
END;
$$;

/*
 * canary_plan(rollout, at): where the rollout stands, each gate of its
 * stage, the samples still needed and when the next stage is due at the
 * current traffic (the last row, gate 'next stage': open when every gate
 * is, due when the last one opens; NULL when one never opens at the
 * current traffic).
 */
CREATE FUNCTION canary_plan(canary text DEFAULT 'default', at timestamptz DEFAULT now())
RETURNS TABLE (stage text, next_stage text, auto_advance boolean, gate text, ok boolean,
               detail text, samples_needed bigint, due_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    all_ok boolean := true;
    last_due timestamptz := NULL;
    unknown boolean := false;
    g record;
BEGIN
    IF at IS NULL THEN
        RAISE EXCEPTION 'at must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Omit the argument to see the plan now.';
    END IF;
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = canary_plan.canary;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rollout "%" does not exist', canary
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM canary_config lists the rollouts.';
    END IF;
    stage := cfg.stage;
    next_stage := coalesce(@extschema@.canary_plan_next_stage(cfg.stage), 'decommission old model');
    auto_advance := cfg.auto_advance;
    FOR g IN SELECT * FROM @extschema@.canary_plan_gates(canary, at) LOOP
        gate := g.gate; ok := g.ok; detail := g.detail;
        samples_needed := g.samples_needed; due_at := g.due_at;
        all_ok := all_ok AND g.ok;
        IF NOT g.ok AND g.due_at IS NULL THEN
            unknown := true;
        END IF;
        last_due := greatest(last_due, g.due_at);
        RETURN NEXT;
    END LOOP;
    gate := 'next stage'; ok := all_ok; samples_needed := NULL;
    due_at := CASE WHEN all_ok THEN at WHEN NOT unknown THEN last_due END;
    detail := CASE WHEN all_ok THEN 'every gate is open'
                   WHEN unknown THEN 'a gate does not open by itself at the current traffic'
                   ELSE 'due when the last gate opens' END;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION canary_plan(text, timestamptz) IS
    'Where a rollout stands in its plan: each gate of its stage, the samples still needed, and when the next stage is due';

/*
 * canary_advance_lock: lock a rollout's row for the plan, without waiting,
 * if it is still as the plan judged it (auto_advance on, the same stage,
 * evidence period, kill switch and CSAT pin); false when an operator or a
 * trip holds the row, or changed it meanwhile.  Internal to canary_advance.
 */
CREATE FUNCTION canary_advance_lock(p_canary text, p_stage text, p_since timestamptz,
                                    p_armed boolean, p_pinned_at timestamptz)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM @extschema@.canary_config c
                    WHERE c.name = p_canary AND c.auto_advance AND c.stage = p_stage
                      AND c.evidence_since IS NOT DISTINCT FROM p_since
                      AND c.kill_switch_armed = p_armed
                      AND c.csat_pinned_at IS NOT DISTINCT FROM p_pinned_at
                      FOR NO KEY UPDATE SKIP LOCKED)
$$;

/*
 * canary_advance: for every rollout with auto_advance (or the named one),
 * at p_at: stop the plan on a trip or a CSAT pin; when every gate of the
 * stage is open, advance to the next stage (a canary_stage_history row
 * whose reason lists the gates, an alert of kind advance) or, at full, say
 * once that the old model can be decommissioned (alert kind
 * decommission).  Returns what it did.  canary_check calls it.
 * Two passes: first every rollout's gates are computed on rows read
 * without a lock (the shadow report can take a while); then each rollout
 * the plan acts on is locked, with SKIP LOCKED and only if it is still what
 * the gates saw, and acted on: no row stays locked while other rollouts'
 * gates are computed, and a row an operator holds, or changed meanwhile,
 * waits for the next check.  Whether the decommission alert was raised
 * already is asked under the lock (another monitor's alert committed
 * before it is seen; its 'since', the stage period's start in UTC, is
 * compared as a timestamp).  Each rollout's action runs alone: one that
 * raises is reported as a WARNING with its SQLSTATE and the others' stand.
 */
CREATE FUNCTION canary_advance(p_canary text DEFAULT NULL, p_at timestamptz DEFAULT now())
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg record;
    gates jsonb;
    all_ok boolean;
    why text;
    next_stage_name text;
    payload jsonb;
    result text;
    todo jsonb := '[]';
    act jsonb;
BEGIN
    FOR cfg IN SELECT * FROM @extschema@.canary_config c
                WHERE c.auto_advance AND (p_canary IS NULL OR c.name = p_canary)
                ORDER BY c.name
    LOOP
        act := jsonb_build_object('name', cfg.name, 'stage', cfg.stage, 'since', cfg.evidence_since,
                                  'armed', cfg.kill_switch_armed, 'pinned_at', cfg.csat_pinned_at,
                                  'old_model', cfg.old_model, 'new_model', cfg.new_model);
        IF NOT cfg.kill_switch_armed OR cfg.csat_pinned_at IS NOT NULL THEN
            why := CASE WHEN NOT cfg.kill_switch_armed THEN 'the kill switch tripped: ' || coalesce(cfg.trip_reason, '')
                           ELSE 'the CSAT pin: ' || coalesce(cfg.csat_pin_reason, '') END;
            todo := todo || jsonb_build_array(act || jsonb_build_object('action', 'stop', 'why', why));
            CONTINUE;
        END IF;
        SELECT bool_and(g.ok),
               jsonb_agg(jsonb_build_object('gate', g.gate, 'ok', g.ok, 'detail', g.detail) ORDER BY g.n),
               string_agg(g.gate || ': ' || g.detail, '; ' ORDER BY g.n)
          INTO all_ok, gates, why
          FROM @extschema@.canary_plan_gates(cfg.name, p_at)
               WITH ORDINALITY AS g(gate, ok, detail, samples_needed, due_at, n);
        CONTINUE WHEN NOT all_ok;
        todo := todo || jsonb_build_array(act || jsonb_build_object(
            'action', 'advance', 'why', why, 'gates', gates,
            'next', @extschema@.canary_plan_next_stage(cfg.stage)));
    END LOOP;

    FOR act IN SELECT a.value FROM jsonb_array_elements(todo) a LOOP
        -- each rollout's action alone: one that raises (a trigger of the
        -- application's, a lock timeout) leaves the others' done
        BEGIN
            CONTINUE WHEN NOT @extschema@.canary_advance_lock(act->>'name', act->>'stage',
                                                              (act->>'since')::timestamptz, (act->>'armed')::boolean,
                                                              (act->>'pinned_at')::timestamptz);
            why := act->>'why';
            next_stage_name := act->>'next';
            payload := jsonb_build_object('canary', act->>'name', 'stage', act->>'stage',
                'ts', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                'at', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
            IF act->>'action' = 'stop' THEN
                UPDATE @extschema@.canary_config SET auto_advance = false WHERE name = act->>'name';
                PERFORM @extschema@.canary_raise_alert(act->>'name', 'advance', payload || jsonb_build_object(
                    'alert', 'canary auto-advance stopped', 'reason', why,
                    'auto_action', 'auto_advance set to false; the rollout stays where it is'));
                result := concat_ws('; ', result, (act->>'name') || ': stopped by ' || why);
            ELSIF next_stage_name IS NULL THEN
                -- full, after its dwell time: say it once per stage period
                CONTINUE WHEN EXISTS (SELECT 1 FROM @extschema@.canary_alerts a
                                       WHERE a.canary = act->>'name' AND a.kind = 'decommission'
                                         AND (a.payload->>'since')::timestamptz IS NOT DISTINCT FROM
                                             (act->>'since')::timestamptz);
                PERFORM @extschema@.canary_raise_alert(act->>'name', 'decommission', payload || jsonb_build_object(
                    'alert', 'canary old model can be decommissioned', 'reason', why, 'gates', act->'gates',
                    'since', to_char((act->>'since')::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                    'auto_action', format('none: %s serves everyone; %s can be retired',
                                          act->>'new_model', act->>'old_model')));
                result := concat_ws('; ', result, (act->>'name') || ': ' || (act->>'old_model') || ' can be decommissioned');
            ELSE
                UPDATE @extschema@.canary_config SET stage = next_stage_name, evidence_since = p_at
                 WHERE name = act->>'name';
                UPDATE @extschema@.canary_stage_history h SET reason = 'auto_advance: ' || why
                 WHERE h.id = (SELECT max(h2.id) FROM @extschema@.canary_stage_history h2
                                WHERE h2.canary = act->>'name');
                PERFORM @extschema@.canary_raise_alert(act->>'name', 'advance', payload || jsonb_build_object(
                    'alert', 'canary advanced', 'reason', why, 'gates', act->'gates', 'new_stage', next_stage_name,
                    'auto_action', format('%s percent of users routed to %s',
                                          @extschema@.canary_stage_percent(next_stage_name), act->>'new_model')));
                result := concat_ws('; ', result, format('%s: %s -> %s', act->>'name', act->>'stage', next_stage_name));
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'auto-advance of rollout "%" failed: %', act->>'name', SQLERRM
                USING ERRCODE = SQLSTATE,
                      DETAIL = format('SQLSTATE %s; the next check tries again.', SQLSTATE);
        END;
    END LOOP;
    RETURN result;
END;
$$;
COMMENT ON FUNCTION canary_advance(text, timestamptz) IS
    'Advance the rollouts with auto_advance whose gates are open (canary_check runs it); returns what it did';
