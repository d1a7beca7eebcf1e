#!/usr/bin/env bash
# Run every ```sql block of RUNBOOK.md, in order, against a throwaway cluster
# with the mock LLM server, and compare what psql prints with the ```output
# block that follows it in RUNBOOK.md (the exact text, as psql prints it with
# -X -q).  Run as postgres, after the extension is installed.
#
# A block with an output block is one check: it passes when the output is
# the same.  A block without one is only run (it must not fail) and is
# reported on its own line, not counted as passed.  Every block's actual
# output is written to test/out/runbook_actual.md, RUNBOOK.md with the output
# blocks filled in, to review and copy when a change is intended.
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

# split the runbook into blocks: blockNN.sql, and blockNN.expected when an
# ```output block follows (only blank lines in between)
python3 - "$top/RUNBOOK.md" "$dir" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
n = 0
for m in re.finditer(r"```sql\n(.*?)```\n(?:\s*```output\n(.*?)```\n)?", text, re.S):
    n += 1
    open(f"{sys.argv[2]}/block{n:02d}.sql", "w").write(m.group(1))
    if m.group(2) is not None:
        open(f"{sys.argv[2]}/block{n:02d}.expected", "w").write(m.group(2))
print(n, "blocks")
PY

passed=0; failed=0; unchecked=0
for f in "$dir"/block*.sql; do
    b=$(basename "$f" .sql)
    log="$out/runbook_$b.log"
    psql -h /tmp -p "$port" -d runbook -X -q -v ON_ERROR_STOP=1 -P pager=off \
        -v mock_url="http://127.0.0.1:$(cat "$out/runbook_mock.port")" \
        -f "$f" > "$log" 2>&1
    rc=$?
    # times differ from run to run: the output blocks show them as a pattern
    # and trailing blanks are dropped (editors strip them from RUNBOOK.md)
    sed -i -E -e 's/[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}/YYYY-MM-DD HH:MI:SS/g' \
        -e 's/[[:space:]]+$//' "$log"
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        echo "RUNBOOK $b failed:"; cat "$f"; cat "$log"
    elif [ ! -f "$dir/$b.expected" ]; then
        unchecked=$((unchecked + 1))
        echo "RUNBOOK $b ran; it has no output block to compare with"
    elif diff -u "$dir/$b.expected" "$log" > "$out/runbook_$b.diff"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "RUNBOOK $b printed something else than its output block:"; cat "$out/runbook_$b.diff"
    fi
done

# RUNBOOK.md with every output block as this run printed it
python3 - "$top/RUNBOOK.md" "$out" > "$out/runbook_actual.md" <<'PY'
import re, sys
text, out = open(sys.argv[1]).read(), sys.argv[2]
n = 0
def fill(m):
    global n
    n += 1
    try:
        actual = open(f"{out}/runbook_block{n:02d}.log").read()
    except OSError:
        actual = ""
    return f"```sql\n{m.group(1)}```\n\n```output\n{actual}```\n"
sys.stdout.write(re.sub(r"```sql\n(.*?)```\n(?:\s*```output\n(.*?)```\n)?", fill, text, flags=re.S))
PY

[ "$unchecked" -gt 0 ] && echo "$unchecked RUNBOOK blocks ran without an output block to compare with (not counted)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
