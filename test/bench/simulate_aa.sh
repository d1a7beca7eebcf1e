#!/usr/bin/env bash
# The week-long A/A runs of the decision-quality simulator only
# (test/bench/simulate.sql, default decision mode), two psql sessions side
# by side, each bounded by SIM_TIMEOUT seconds.  Run as postgres with the
# extension installed (PGBIN may point at a private copy, test/pgroot.sh).
#   SIM_AA_A, SIM_AA_B   the scenarios of each session, in order
#                        (default aa_ramp_1,aa_ramp_5 and aa_ramp_25,aa_full)
#   SIM_LONG_SECONDS     simulated seconds per scenario (604800 = 7 days)
#   SIM_LONG_RPS         requests per simulated second (20)
#   SIM_BUCKETS          true: each 30 s step's requests go to canary_rollups
#                        through canary_rollup_statement, no row each (the
#                        same draws as the row path)
#   SIM_SEED, SIM_TAG    seed (llm_canary-sim-1), tag of the result rows (_7d)
#   SIM_PORT, SIM_DIR    the throwaway cluster (55497, /tmp/llm_canary_bench_aa)
#   SIM_TIMEOUT          seconds each session may run (unbounded)
# A session cut short by the timeout leaves no sim_results row for the
# scenario it was running; the table printed at the end also gives, per
# rollout, the simulated time its checks reached (canary_window_summaries),
# its trips (alerts of kind kill_switch) and its sample_ratio alerts.
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=${PGBIN:-/usr/lib/postgresql/15/bin}
dir=${SIM_DIR:-/tmp/llm_canary_bench_aa}; port=${SIM_PORT:-55497}
trap 'bash "$top/test/cluster.sh" stop "$dir"' EXIT
rm -rf "$dir"
bash "$top/test/cluster.sh" start "$dir" "$port" bench >/dev/null
q() { "$BIN/psql" -h /tmp -p "$port" -U postgres -d bench -X "$@"; }
q -q -c "ALTER SYSTEM SET llm_canary.check_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
long=${SIM_LONG_SECONDS:-604800}; rps=${SIM_LONG_RPS:-20}; tag=${SIM_TAG:-_7d}
sim() {
    ${SIM_TIMEOUT:+timeout "$SIM_TIMEOUT"} "$BIN/psql" -h /tmp -p "$port" -U postgres -d bench -X -q \
        -v ON_ERROR_STOP=1 -v scenarios="$1" -v modes=sequential -v aa_seconds="$long" -v aa_rps="$rps" \
        -v tag="$2" -v seed="${SIM_SEED:-llm_canary-sim-1}" -v buckets="${SIM_BUCKETS:-false}" \
        -v define="${3:-false}" -f "$top/test/bench/simulate.sql"
}
start=$(date +%s)
sim none '' true > /dev/null                                   # definitions only
sim "${SIM_AA_A:-aa_ramp_1,aa_ramp_5}" "$tag" > "$dir/a.out" 2>&1 & a=$!
sim "${SIM_AA_B:-aa_ramp_25,aa_full}" "$tag" > "$dir/b.out" 2>&1 || echo "session b: exit $?"
wait $a || echo "session a: exit $?"
q -c "SELECT scenario, mode, stage, round(sim_seconds / 86400.0, 3) AS sim_days, rps, requests, canary_share,
       checks, trips, first_trip_s, srm_alerts, run_seconds
  FROM sim_results ORDER BY scenario, mode"
q -c "SELECT c.name, c.stage,
       round(extract(epoch FROM max(w.at) - c_t0.t0)::numeric / 86400, 3) AS sim_days_checked,
       (SELECT count(*) FROM canary_alerts a WHERE a.canary = c.name AND a.kind = 'kill_switch') AS trips,
       (SELECT count(*) FROM canary_alerts a WHERE a.canary = c.name AND a.kind = 'sample_ratio') AS srm_alerts
  FROM canary_config c
  JOIN canary_window_summaries w ON w.canary = c.name
  CROSS JOIN LATERAL (SELECT min(w2.at) - make_interval(secs => 30) AS t0 FROM canary_window_summaries w2
                       WHERE w2.canary = c.name AND w2.cohort = 'canary') c_t0
 GROUP BY c.name, c.stage, c_t0.t0 ORDER BY c.name"
q -c "SELECT dropped, write_errors FROM canary_stats()"
echo "wall clock: $(( $(date +%s) - start )) s"
