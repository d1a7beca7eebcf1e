#!/usr/bin/env bash
# The test suite proper, run as an unprivileged user (postgres) in a tree it
# can write, after test/setup.sh installed the extension:
#   1. the mock LLM server's own self-test (reported on its own line: it
#      checks the test tool, not the extension, so it is not in the total)
#   2. pg_regress (test/sql/*.sql against expected/) on a throwaway,
#      preloaded cluster, with the mock server running
#   3. the TAP integration tests (test/t/*.pl)
#   4. every SQL block of RUNBOOK.md against its expected output
# Prints "N passed, N failed" (checks of the extension) and exits non-zero on
# any failure, the mock server's self-test included.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test/out
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGBIN=${PGBIN:-$(dirname "$PG_CONFIG")}
passed=0
failed=0

count() {	# count <passed> <failed> <label>
    passed=$((passed + $1))
    failed=$((failed + $2))
    echo "-- $3: $1 passed, $2 failed"
}

# 1. the mock server (not counted in the total)
tool_failed=0
if [ -f test/mock_llm_selftest.py ]; then
    python3 test/mock_llm_selftest.py > test/out/mock_selftest.log 2>&1
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' test/out/mock_selftest.log | tail -1)
    if [ -n "$line" ]; then
        echo "-- mock server self-test (the test tool, not counted below): $line"
        grep -q ' 0 failed' <<<"$line" || tool_failed=1
    else
        echo "-- mock server self-test: no result line"; tail -20 test/out/mock_selftest.log
        tool_failed=1
    fi
fi

# a mock LLM server for the regression tests
rm -f test/out/mock.port
python3 test/mock_llm.py --port 0 --port-file test/out/mock.port --seed 42 \
    > test/out/mock.log 2>&1 &
mock_pid=$!
trap 'kill $mock_pid 2>/dev/null' EXIT
for _ in $(seq 1 50); do [ -s test/out/mock.port ] && break; sleep 0.1; done
export LLM_CANARY_MOCK_URL="http://127.0.0.1:$(cat test/out/mock.port 2>/dev/null)"
export LLM_CANARY_TEST_KEY="sk-test-not-a-real-key"
export TEMP_CONFIG="$PWD/test/tap.conf"

# 2. pg_regress
make -s PG_CONFIG="$PG_CONFIG" installcheck > test/out/regress.log 2>&1
ok=$(grep -cE '^(ok|test) .*\.\.\. ok|^ok [0-9]+ ' test/out/regress.log || true)
bad=$(grep -cE '\.\.\. FAILED|^not ok ' test/out/regress.log || true)
if [ "$ok" -eq 0 ] && [ "$bad" -eq 0 ]; then
    bad=1
    tail -20 test/out/regress.log
fi
count "$ok" "$bad" "pg_regress"
[ "$bad" -gt 0 ] && [ -f regression.diffs ] && head -150 regression.diffs

# 3. TAP
if ls test/t/*.pl >/dev/null 2>&1; then
    make -s PG_CONFIG="$PG_CONFIG" PROVE_FLAGS=--verbose tapcheck > test/out/tap.log 2>&1
    ok=$(grep -cE '^\s*ok [0-9]+' test/out/tap.log || true)
    bad=$(grep -cE '^\s*not ok [0-9]+' test/out/tap.log || true)
    if ! grep -q '^Result: PASS' test/out/tap.log; then
        [ "$bad" -eq 0 ] && bad=1
        grep -E 'not ok|Failed|Dubious|Result' test/out/tap.log | head -30
    fi
    count "$ok" "$bad" "TAP"
fi

# 4. every SQL block of RUNBOOK.md, on its own throwaway cluster
bash test/runbook_check.sh > test/out/runbook.log 2>&1
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' test/out/runbook.log | tail -1)
if [ -n "$line" ]; then
    count "$(echo "$line" | cut -d' ' -f1)" "$(echo "$line" | cut -d' ' -f3)" "RUNBOOK.md blocks"
    grep 'without an output block' test/out/runbook.log || true
    grep -q ' 0 failed' <<<"$line" || tail -40 test/out/runbook.log
else
    count 0 1 "RUNBOOK.md blocks (no result line)"; tail -20 test/out/runbook.log
fi

echo "$passed passed, $failed failed"
[ "$tool_failed" -eq 0 ] || echo "the mock server's self-test failed (see above)"
[ "$failed" -eq 0 ] && [ "$tool_failed" -eq 0 ]
