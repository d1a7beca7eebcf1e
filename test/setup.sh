#!/usr/bin/env bash
# Install what llm_canary needs on Debian 12, then build and install it.
# Run as root from the top of a clone.  Safe to run again: packages that are
# already present are not fetched again unless LLM_CANARY_APT_UPDATE=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(make gcc postgresql-15 postgresql-server-dev-15 postgresql-15-cron
          libcurl4-openssl-dev python3 libipc-run-perl rsync
          prometheus prometheus-postgres-exporter)

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages and the extension)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${LLM_CANARY_APT_UPDATE:-0}" = 1 ]; then
    echo "== installing packages: ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi

[ "${LLM_CANARY_PACKAGES_ONLY:-0}" = 1 ] && exit 0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
echo "== building llm_canary"
make -s PG_CONFIG="$PG_CONFIG" 2>&1 | grep -v '^gcc' || true
make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
echo "== installed into $($PG_CONFIG --pkglibdir)"
