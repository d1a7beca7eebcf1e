#!/usr/bin/env bash
# Run every test of llm_canary: set up (packages, build, install) as root,
# then run the suite as the postgres user on a copy of the tree it can write.
# Ends with a line "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

# The extension installs into the one system-wide PostgreSQL: runs from
# several checkouts on one machine take turns.
exec 9>/tmp/llm_canary_install.lock
flock 9

bash test/setup.sh

work="/tmp/llm_canary_test.$(basename "$top")"
rm -rf "$work"
mkdir -p "$work"
rsync -a --exclude .git --exclude tmp_check --exclude results --exclude log "$top"/ "$work"/
chown -R postgres:postgres "$work"
cd "$work"
runuser -u postgres -- env PATH="/usr/lib/postgresql/15/bin:/usr/bin:/bin" \
    HOME=/var/lib/postgresql bash test/run_suite.sh
