#!/usr/bin/env bash
# A real rollout, end to end, on a throwaway cluster and the bundled mock LLM
# server: shadow -> ramp_1 -> ramp_5 under traffic until the kill switch trips.
# Run as root from a clone: it installs packages, builds, installs, then runs
# the rollout as the postgres user and leaves the cluster running.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
DIR=/tmp/llm_canary_demo
PORT=55432

if [ "$(id -u)" -eq 0 ]; then
    exec 9>/tmp/llm_canary_install.lock
    flock 9
    echo "== [1/7] installing packages, building and installing llm_canary"
    bash "$top/test/setup.sh"
    # a demo left running from an earlier run
    if [ -f "$DIR/data/postmaster.pid" ]; then
        runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
    fi
    [ -f "$DIR/mock.pid" ] && kill "$(cat "$DIR/mock.pid")" 2>/dev/null || true
    rm -rf "$DIR" && mkdir -p "$DIR" && chown postgres:postgres "$DIR"
    chmod -R a+rX "$top"
    # the lock guards the install only: the cluster and the mock outlive us
    exec 9>&-
    exec runuser -u postgres -- env PATH="/usr/lib/postgresql/15/bin:/usr/bin:/bin" \
        bash "$top/test/demo.sh"
fi

psql_demo() { psql -h /tmp -p "$PORT" -d canary -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "== [2/7] starting the mock LLM server (old model, and a new model with a regression)"
cat > "$DIR/profiles.json" <<'JSON'
{
  "support-old": {"latency_ms": 4, "latency_jitter_ms": 4, "refusal_rate": 0.01,
                  "opening": "Thanks for reaching out.", "length_words": 40},
  "support-new": {"latency_ms": 3, "latency_jitter_ms": 4, "refusal_rate": 0.09,
                  "openings": [["Thank you for contacting support.", 84], ["Thanks for reaching out.", 16]],
                  "length_words": 60}
}
JSON
python3 "$top/test/mock_llm.py" --port 0 --port-file "$DIR/mock.port" --seed 7 \
    --config "$DIR/profiles.json" > "$DIR/mock.log" 2>&1 &
echo $! > "$DIR/mock.pid"
for _ in $(seq 1 50); do [ -s "$DIR/mock.port" ] && break; sleep 0.1; done
MOCK="http://127.0.0.1:$(cat "$DIR/mock.port")"
echo "   mock server on $MOCK"

echo "== [3/7] starting a throwaway PostgreSQL cluster with llm_canary preloaded (port $PORT)"
export DEMO_LLM_KEY="sk-demo-not-a-real-key"
bash "$top/test/cluster.sh" start "$DIR/data" "$PORT" canary

psql_demo -v mock="$MOCK" <<'SQL'
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, timeout_ms) VALUES
  ('model-old', 'openai',    :'mock' || '/v1', 'support-old', 'DEMO_LLM_KEY', 5000),
  ('model-new', 'anthropic', :'mock' || '/v1', 'support-new', 'DEMO_LLM_KEY', 5000);
-- the demo compresses time: 20-second kill-switch windows instead of 300,
-- so that two consecutive windows (confirm_windows) fit in a minute
UPDATE canary_config SET old_model = 'model-old', new_model = 'model-new', salt = 'demo',
                         window_seconds = 20, min_samples = 50;
SQL

traffic() {	# traffic <n> <user offset>: n calls from distinct users
    psql_demo -v n="$1" -v off="$2" <<'SQL'
SELECT count(*) AS calls,
       count(*) FILTER (WHERE r->>'cohort' = 'canary') AS canary_calls
  FROM (SELECT canary_call('Customer question number ' || g || ': where is my order?',
                           'u_' || (g + :off), prompt_class => CASE WHEN g % 3 = 0 THEN 'billing' ELSE 'orders' END) AS r
          FROM generate_series(1, :n) g) s \gset
\echo '   ' :calls 'calls,' :canary_calls 'served by the new model'
SQL
}

echo "== [4/7] stage shadow: users get the old model; the worker asks the new one too"
traffic 300 0
psql_demo <<'SQL'
SELECT canary_flush();
\echo '   shadow report:'
\x on
SELECT * FROM canary_shadow_report();
\x off
\echo '   opening phrases, old vs new (the cheapest tone-drift detector):'
SELECT * FROM canary_shadow_openings(n => 5);
SQL

echo "== [5/7] stage ramp_1, then ramp_5 under generated traffic"
psql_demo -c "UPDATE canary_config SET stage = 'ramp_1'" -c "SELECT name, stage, percent_new FROM canary_config"
traffic 500 1000
psql_demo -c "UPDATE canary_config SET stage = 'ramp_5'" -c "SELECT name, stage, percent_new FROM canary_config"
for round in $(seq 1 20); do
    traffic 600 $((10000 + round * 1000))
    # canary_check() runs in the worker every 30 s too; whoever comes first trips
    reason=$(psql_demo -At -c "SELECT canary_flush()" -c "SELECT canary_check()" \
                 -c "SELECT coalesce(trip_reason, '') FROM canary_config WHERE name = 'default' AND NOT kill_switch_armed" | tail -1)
    if [ -n "$reason" ]; then
        echo "   kill switch tripped after round $round: $reason"
        break
    fi
    echo "   round $round: no credible breach yet"
done

echo "== [6/7] the alert, and calls going back to the old model"
psql_demo <<'SQL'
SELECT jsonb_pretty(payload) AS alert FROM canary_alerts ORDER BY id DESC LIMIT 1;
SELECT canary, action, old_stage, new_stage, old_armed, new_armed, reason
  FROM canary_stage_history ORDER BY id DESC LIMIT 1;
SELECT r->>'model' AS model, r->>'cohort' AS cohort, count(*)
  FROM (SELECT canary_call('after the trip ' || g, 'u_' || g) AS r FROM generate_series(1, 200) g) s
 GROUP BY 1, 2;
SQL

echo "== [7/7] the cohort summary and the CSAT report"
psql_demo <<'SQL'
SELECT canary_flush();
SELECT cohort, model, requests, fallbacks, error_rate, refusal_rate, p50_latency_ms, p95_latency_ms,
       mean_completion_tokens FROM canary_summary('default', '1 hour');
-- CSAT from the support system: canary users scored lower today
INSERT INTO canary_csat (user_id, score)
SELECT DISTINCT r.user_id, CASE WHEN r.cohort = 'canary' THEN 3 + (hashtext(r.user_id) & 1) ELSE 4 + (hashtext(r.user_id) & 1) END
  FROM canary_requests r WHERE r.ts > now() - interval '1 hour' AND NOT r.fallback;
SELECT * FROM canary_csat_report('default', 1);
SQL

cat <<EOF

The demo cluster is still running.
  open psql:     psql -h /tmp -p $PORT -U postgres canary
  stop it all:   runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $DIR/data stop; kill \$(cat $DIR/mock.pid)
EOF
