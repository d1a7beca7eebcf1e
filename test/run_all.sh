#!/usr/bin/env bash
# Run every test of llm_canary: set up (packages, build, install) as root,
# then run the suite as the postgres user on a copy of the tree it can write.
# Ends with a line "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

# By default the extension installs into the one system-wide PostgreSQL
# (as CI and a user's machine do), and runs from several checkouts on one
# machine take turns.  LLM_CANARY_PRIVATE_PG=1 installs it into a private
# copy of PostgreSQL for this checkout instead (test/pgroot.sh), so that
# developers' checkouts can run the suite side by side.
if [ "${LLM_CANARY_PRIVATE_PG:-0}" = 1 ]; then
    . test/pgroot.sh
    LLM_CANARY_PACKAGES_ONLY=1 bash test/setup.sh
    export PG_CONFIG=$(pgroot_prepare "/tmp/llm_canary_pgroot.$(basename "$top")")
    make -s PG_CONFIG="$PG_CONFIG" 2>&1 | grep -v '^gcc' || true
    make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
else
    exec 9>/tmp/llm_canary_install.lock
    flock 9
    bash test/setup.sh
    export PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
fi
PGBIN=$(dirname "$PG_CONFIG")

work="/tmp/llm_canary_test.$(basename "$top")"
rm -rf "$work"
mkdir -p "$work"
rsync -a --exclude .git --exclude tmp_check --exclude results --exclude log "$top"/ "$work"/
chown -R postgres:postgres "$work"
cd "$work"
runuser -u postgres -- env PATH="$PGBIN:/usr/bin:/bin" PG_CONFIG="$PG_CONFIG" PGBIN="$PGBIN" \
    HOME=/var/lib/postgresql bash test/run_suite.sh
