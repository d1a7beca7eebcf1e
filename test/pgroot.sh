# Sourced by test/run_all.sh and test/run_one.sh.
#
# pgroot_prepare DIR: make DIR a private copy of the system's PostgreSQL 15
# (binaries, libraries, share/) and print its pg_config.  PostgreSQL finds
# its share/ and lib/ directories relative to its binaries, so the extension
# installed there with that pg_config is seen only by servers started from
# that copy: several checkouts on one machine can then build and test at
# the same time without installing into (and fighting over) the system one.
pgroot_prepare() {
    local dir=$1
    mkdir -p "$dir/usr/lib/postgresql/15" "$dir/usr/share/postgresql/15"
    rsync -a --delete --exclude 'llm_canary*' /usr/lib/postgresql/15/ "$dir/usr/lib/postgresql/15/"
    rsync -a --delete --exclude 'extension/llm_canary*' /usr/share/postgresql/15/ "$dir/usr/share/postgresql/15/"
    [ -e "$dir/usr/include" ] || ln -s /usr/include "$dir/usr/include"
    chmod 755 "$dir" "$dir/usr"
    echo "$dir/usr/lib/postgresql/15/bin/pg_config"
}
