#!/usr/bin/env bash
# Build, install and run some of the tests, for a developer's quick loop:
#   test/run_one.sh [regress [NAME ...]] [tap test/t/NNN_x.pl ...]
# e.g.  bash test/run_one.sh regress tap test/t/030_call.pl   (all of pg_regress, one TAP file)
# Run as root from the top of a checkout.  It installs the extension into a
# private copy of PostgreSQL for this checkout (test/pgroot.sh), so runs from
# several checkouts proceed side by side, copies the tree to a directory the
# postgres user can write, and starts the mock LLM server there.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"
regress=()
tap=()
mode=
all_regress=0
for a in "$@"; do
    case "$a" in
    regress) mode=$a; all_regress=1 ;;
    tap) mode=$a ;;
    *) if [ "$mode" = regress ]; then regress+=("$a"); elif [ "$mode" = tap ]; then tap+=("$a");
       else echo "usage: $0 [regress NAME ...] [tap test/t/X.pl ...]" >&2; exit 2; fi ;;
    esac
done

# "regress" with no names runs every pg_regress file (they build on each other)
if [ "$all_regress" = 1 ] && [ "${#regress[@]}" -eq 0 ]; then
    for f in test/sql/*.sql; do regress+=("$(basename "$f" .sql)"); done
fi

. test/pgroot.sh
PG_CONFIG=$(pgroot_prepare "/tmp/llm_canary_pgroot.$(basename "$top")")
PGBIN=$(dirname "$PG_CONFIG")
make -s PG_CONFIG="$PG_CONFIG" 2>&1 | grep -v '^gcc' || true
make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
work="/tmp/llm_canary_one.$(basename "$top")"
rm -rf "$work"; mkdir -p "$work"
rsync -a --exclude .git --exclude tmp_check --exclude results --exclude log "$top"/ "$work"/
chown -R postgres:postgres "$work"
runuser -u postgres -- env PATH="$PGBIN:/usr/bin:/bin" HOME=/var/lib/postgresql \
    PG_CONFIG="$PG_CONFIG" PGBIN="$PGBIN" REGRESS_LIST="${regress[*]:-}" TAP_LIST="${tap[*]:-}" bash -c '
cd "'"$work"'"
mkdir -p test/out
python3 test/mock_llm.py --port 0 --port-file test/out/mock.port --seed 42 > test/out/mock.log 2>&1 &
mock_pid=$!
trap "kill $mock_pid 2>/dev/null" EXIT
for _ in $(seq 1 50); do [ -s test/out/mock.port ] && break; sleep 0.1; done
export LLM_CANARY_MOCK_URL="http://127.0.0.1:$(cat test/out/mock.port)"
export LLM_CANARY_TEST_KEY="sk-test-not-a-real-key"
export TEMP_CONFIG="$PWD/test/tap.conf"
rc=0
if [ -n "$REGRESS_LIST" ]; then
    make -s PG_CONFIG=$PG_CONFIG installcheck REGRESS="$REGRESS_LIST" || { rc=1; cat regression.diffs 2>/dev/null | head -200; }
fi
if [ -n "$TAP_LIST" ]; then
    make -s PG_CONFIG=$PG_CONFIG PROVE_TESTS="$TAP_LIST" PROVE_FLAGS=--verbose tapcheck || rc=1
fi
exit $rc'
