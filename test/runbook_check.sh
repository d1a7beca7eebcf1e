#!/usr/bin/env bash
# Run every ```sql block of RUNBOOK.md, in order, against a throwaway cluster
# with the mock LLM server: each block is one test (passes when psql runs it
# without error).  Run as postgres, after the extension is installed.
# Prints "N passed, N failed" and exits non-zero on a failure.
set -uo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
dir=/tmp/llm_canary_runbook.$$
port=${RUNBOOK_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
out="$top/test/out"; mkdir -p "$out"

python3 "$top/test/mock_llm.py" --port 0 --port-file "$out/runbook_mock.port" --seed 3 \
    > "$out/runbook_mock.log" 2>&1 &
mock=$!
cleanup() { bash "$top/test/cluster.sh" stop "$dir/data"; kill $mock 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 50); do [ -s "$out/runbook_mock.port" ] && break; sleep 0.1; done
export LLM_CANARY_TEST_KEY=sk-runbook-not-a-real-key
mkdir -p "$dir"
bash "$top/test/cluster.sh" start "$dir/data" "$port" runbook >/dev/null

# split the runbook into blocks
python3 - "$top/RUNBOOK.md" "$dir" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
for i, b in enumerate(blocks, 1):
    open(f"{sys.argv[2]}/block{i:02d}.sql", "w").write(b)
print(len(blocks), "blocks")
PY

passed=0; failed=0
for f in "$dir"/block*.sql; do
    if psql -h /tmp -p "$port" -d runbook -X -q -v ON_ERROR_STOP=1 \
         -v mock_url="http://127.0.0.1:$(cat "$out/runbook_mock.port")" \
         -f "$f" > "$out/runbook_$(basename "$f" .sql).log" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "RUNBOOK block $(basename "$f") failed:"; cat "$f"; cat "$out/runbook_$(basename "$f" .sql).log"
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
