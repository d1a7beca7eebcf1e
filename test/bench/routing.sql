-- Routing benchmark: canary_route (C) against the same routing written in
-- PL/pgSQL with pgcrypto's digest(), side by side in one run.
\set QUIET on
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('bench-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('bench-new', 'openai', 'http://127.0.0.1:9/v1', 'new')
ON CONFLICT DO NOTHING;
INSERT INTO canary_config (name, stage, old_model, new_model)
VALUES ('bench', 'ramp_25', 'bench-old', 'bench-new') ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION plpgsql_route(user_id text, canary text DEFAULT 'bench')
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg record;
    bucket numeric;
BEGIN
    SELECT * INTO cfg FROM canary_config WHERE name = canary;
    IF NOT cfg.kill_switch_armed OR cfg.stage = 'shadow' THEN
        RETURN cfg.old_model;
    END IF;
    bucket := ('x' || substr(encode(digest(cfg.salt || user_id, 'sha256'), 'hex'), 1, 8))::bit(32)::bigint % 10000 / 100.0;
    RETURN CASE WHEN bucket < cfg.percent_new THEN cfg.new_model ELSE cfg.old_model END;
END;
$$;

-- the two implementations agree
SELECT count(*) FILTER (WHERE canary_route('u_' || g, 'bench') <> plpgsql_route('u_' || g)) AS disagreements
  FROM generate_series(1, 100000) g;

CREATE TEMP TABLE timings (impl text, run int, ms float8);
DO $$
DECLARE t0 timestamptz; n bigint;
BEGIN
    FOR r IN 1..3 LOOP
        t0 := clock_timestamp();
        SELECT count(canary_route('u_' || g, 'bench')) INTO n FROM generate_series(1, 1000000) g;
        INSERT INTO timings VALUES ('canary_route (C)', r, extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        SELECT count(plpgsql_route('u_' || g)) INTO n FROM generate_series(1, 200000) g;
        INSERT INTO timings VALUES ('plpgsql + pgcrypto', r, extract(epoch FROM clock_timestamp() - t0) * 1000 * 5);
        t0 := clock_timestamp();
        SELECT count('u_' || g) INTO n FROM generate_series(1, 1000000) g;
        INSERT INTO timings VALUES ('baseline (no routing)', r, extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
END $$;
\set QUIET off
SELECT impl, round(min(ms)::numeric, 0) AS best_ms_per_1M,
       round(1000000 / (min(ms) / 1000))::bigint AS routes_per_s
  FROM timings GROUP BY impl ORDER BY min(ms);
SELECT round(((SELECT min(ms) FROM timings WHERE impl LIKE 'plpgsql%') /
              (SELECT min(ms) FROM timings WHERE impl LIKE 'canary_route%'))::numeric, 1) AS c_speedup_vs_plpgsql;
