#!/usr/bin/env bash
# Run the benchmarks on a throwaway cluster (as root: sets up, then runs as
# postgres).  Usage: bash test/bench/run.sh [routing|call|shadow|simulate]
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
which="${1:-routing}"
if [ "$(id -u)" -eq 0 ]; then
    exec 9>/tmp/llm_canary_install.lock; flock 9
    bash "$top/test/setup.sh" >/dev/null
    # the call and shadow benchmarks need a fast fixed upstream and a load generator
    need=()
    for p in nginx-light wrk; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
    if [ "${#need[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    chmod -R a+rX "$top/test"
    exec runuser -u postgres -- env PATH="/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/bin" bash "$top/test/bench/run.sh" "$which"
fi
if [ -x "$top/test/bench/$which.sh" ]; then
    export LLM_CANARY_TEST_KEY=sk-bench-not-a-real-key
    exec bash "$top/test/bench/$which.sh"
fi
dir=/tmp/llm_canary_bench; port=55499
trap 'bash "$top/test/cluster.sh" stop "$dir"' EXIT
rm -rf "$dir"
bash "$top/test/cluster.sh" start "$dir" "$port" bench
flock -u 9 2>/dev/null || true     # the install lock guards the install only
psql -h /tmp -p "$port" -d bench -X -v ON_ERROR_STOP=1 -f "$top/test/bench/$which.sql"
