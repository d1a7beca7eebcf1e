#!/usr/bin/env bash
# The kill switch's lookups of one rollout's newest window summary on a
# throwaway cluster with days of summaries (test/bench/summary_lookups.sql):
# EXPLAIN (ANALYZE, BUFFERS) of each lookup as 1.1 had it (without the
# baseline index) and as it is now, the median of 3 runs.  36 rollouts
# checked every 30 s for BENCH_DAYS days; one at full, one not checked,
# for the last BENCH_SINCE days.  Run as postgres:
#   PGBIN=/path/to/bin BENCH_DAYS=24 BENCH_ROLLOUTS=36 BENCH_SINCE=10 bash test/bench/summary_lookups.sh
# 24 days (4.9 million summaries): about 1 minute; 96 days (19.7 million,
# 5 GB of disk): about 3.
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=${PGBIN:-/usr/lib/postgresql/15/bin}
dir=${BENCH_DIR:-/tmp/llm_canary_bench_lookups}; port=${BENCH_PORT:-55933}
trap 'PGBIN=$BIN bash "$top/test/cluster.sh" stop "$dir"' EXIT
rm -rf "$dir"
PGBIN=$BIN bash "$top/test/cluster.sh" start "$dir" "$port" bench
timeout 900 "$BIN/psql" -h /tmp -p "$port" -U postgres -d bench -X -v ON_ERROR_STOP=1 \
    -v days="${BENCH_DAYS:-24}" -v rollouts="${BENCH_ROLLOUTS:-36}" \
    -v since="${BENCH_SINCE:-10}" -f "$top/test/bench/summary_lookups.sql"
