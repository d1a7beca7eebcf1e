#!/usr/bin/env bash
# Decision-quality simulator (test/bench/simulate.sql) on a throwaway
# cluster: the two long scenarios (A/A and the slightly worse canary, 24
# simulated hours each) run in sessions of their own, side by side with the
# short trip scenarios; the outcomes do not depend on that (every draw is a
# function of the seed and the request number), only the wall clock does.
# Run as postgres with the extension installed (test/bench/run.sh simulate).
# SIM_AA_SECONDS, SIM_SLIGHT_SECONDS (86400), SIM_TRIP_SECONDS (7200), SIM_RPS (100).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
dir=/tmp/llm_canary_bench_sim; port=55494
trap 'bash "$top/test/cluster.sh" stop "$dir"' EXIT
rm -rf "$dir"
bash "$top/test/cluster.sh" start "$dir" "$port" bench >/dev/null
flock -u 9 2>/dev/null || true     # the install lock guards the install only
psql -h /tmp -p "$port" -d bench -X -q -c "ALTER SYSTEM SET llm_canary.check_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
sim() {
    psql -h /tmp -p "$port" -d bench -X -q -v ON_ERROR_STOP=1 \
        -v aa_seconds="${SIM_AA_SECONDS:-86400}" -v slight_seconds="${SIM_SLIGHT_SECONDS:-86400}" \
        -v trip_seconds="${SIM_TRIP_SECONDS:-7200}" -v rps="${SIM_RPS:-100}" \
        -v scenarios="$1" -v define="$2" -f "$top/test/bench/simulate.sql"
}
start=$(date +%s)
sim none true > /dev/null                    # definitions only
sim aa false > "$dir/aa.out" &
a=$!
sim slight false > "$dir/slight.out" &
b=$!
sim article,errors,p95,thumbs false > "$dir/trips.out"
wait $a $b
psql -h /tmp -p "$port" -d bench -X -c "SELECT scenario, stage, round(sim_seconds / 3600.0, 2) AS sim_hours, requests,
       canary_share, dropped, thumbs_down, checks, trips, first_trip_s,
       round(first_trip_s / 60.0, 1) AS first_trip_min, first_reason, run_seconds
  FROM sim_results ORDER BY scenario"
psql -h /tmp -p "$port" -d bench -X -c "SELECT dropped, write_errors FROM canary_stats()"
echo "wall clock: $(( $(date +%s) - start )) s"
