#!/usr/bin/env bash
# Monitoring at constant cost (issue 12), side by side in one run on one
# throwaway cluster:
#   1. the metrics writer: records/s of the worker writing 200,000 queued
#      records, and its CPU per record, with the rollup and sample-ratio
#      triggers on, the rollup trigger alone, and neither (alternating,
#      BENCH_WRITER_ROUNDS rounds, default 3; the records' users come from a
#      pool of 20,000 that the first round brings in; with the triggers on,
#      the worker does their work for its batches), then the sample-ratio
#      users' worst case, every record a user not seen before (3 rounds),
#      and the pool once more after that flood;
#   2. canary_call at 8 clients (pgbench against a local nginx upstream),
#      rollup trigger on and off (alternating, 4 rounds of BENCH_SECONDS);
#   3. canary_check of one rollout with 1,000 requests/s in its 300 s window,
#      and a full scrape (every query of monitoring/postgres_exporter.yml),
#      at 300 thousand retained rows (the window alone) and again after
#      INSERT ... SELECT generate_series has grown canary_requests (and, by
#      the trigger, the rollups) to BENCH_ROWS rows over the previous 7 days.
# Run as postgres with the extension installed: test/bench/run.sh rollups
# (or PGBIN=<a private PostgreSQL with the build installed>).
# BENCH_ROWS (default 20000000), BENCH_SECONDS (default 10), BENCH_PARTS
# (default "1 2 3": which of the three to run), BENCH_PORT (default 55490;
# the upstream takes the next port).
set -euo pipefail
top="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=${PGBIN:-/usr/lib/postgresql/15/bin}
port=${BENCH_PORT:-55490}; nport=$(( port + 1 )); dir=/tmp/llm_canary_bench_rollups.$port
parts=" ${BENCH_PARTS:-1 2 3} "
rows=${BENCH_ROWS:-20000000}; secs=${BENCH_SECONDS:-10}
rm -rf "$dir"; mkdir -p "$dir"
. "$top/test/bench/fast_upstream.sh"
fast_upstream_start "$dir" "$nport"
cleanup() {
    fast_upstream_stop "$dir"
    bash "$top/test/cluster.sh" stop "$dir/data"
}
trap cleanup EXIT
bash "$top/test/cluster.sh" start "$dir/data" "$port" bench >/dev/null
flock -u 9 2>/dev/null || true     # the install lock guards the install only
cat >> "$dir/data/postgresql.conf" <<CONF
llm_canary.queue_size = 262144
llm_canary.check_interval = 0
max_wal_size = 8GB
CONF
"$BIN/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w restart >/dev/null
PSQL="$BIN/psql -h /tmp -p $port -d bench -X -q -v ON_ERROR_STOP=1"
$PSQL -c "SELECT canary_flush('60 seconds')" >/dev/null
$PSQL <<SQL
INSERT INTO canary_models (name, provider, base_url, model, api_key_env)
VALUES ('fast-old', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY'),
       ('fast-new', 'openai', 'http://127.0.0.1:$nport/v1', 'fast', 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('default', 'ramp_25', 'fast-old', 'fast-new')
ON CONFLICT (name) DO UPDATE SET stage = excluded.stage, old_model = excluded.old_model, new_model = excluded.new_model;
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('bench', 'ramp_25', 'fast-old', 'fast-new');
-- partitions for the past 8 days too, as a server running for a week has
SELECT count(*) FROM canary_maintenance(8, current_date - 8);

-- the median and max of n runs of a statement (or of a list run in turn)
CREATE FUNCTION bench_ms(stmts text[], n integer, OUT median_ms numeric, OUT max_ms numeric)
LANGUAGE plpgsql AS \$\$
DECLARE
    t timestamptz;
    ms float8[] := '{}';
    s text;
BEGIN
    FOR i IN 1 .. n LOOP
        t := clock_timestamp();
        FOREACH s IN ARRAY stmts LOOP
            EXECUTE s;
        END LOOP;
        ms := ms || extract(epoch FROM clock_timestamp() - t) * 1000;
    END LOOP;
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 2), round(max(x)::numeric, 2)
      INTO median_ms, max_ms FROM unnest(ms) x;
END;
\$\$;
-- the worker writing n queued records: records per second of wall clock,
-- and microseconds of the worker's CPU (user + system, from /proc) per
-- record, which other load on the machine does not change
CREATE FUNCTION bench_writer(n integer, prefix text, users integer, OUT per_s numeric, OUT cpu_us numeric)
LANGUAGE plpgsql AS \$\$
DECLARE
    t timestamptz := clock_timestamp();
    pid integer := (SELECT worker_pid FROM canary_stats());
    ticks0 bigint;
    ticks1 bigint;
BEGIN
    SELECT f[14]::bigint + f[15]::bigint INTO ticks0
      FROM regexp_split_to_array(split_part(pg_read_file('/proc/' || pid || '/stat'), ') ', 2), ' ') f0,
           LATERAL (SELECT ARRAY['', ''] || f0 AS f) x;
    PERFORM count(canary_record('bench', prefix || (i % users), 'fast-old', 'control', 'ok', 100 + i % 900,
                                completion_tokens => i % 300))
       FROM generate_series(1, n) i;
    PERFORM canary_flush('600 seconds');
    SELECT f[14]::bigint + f[15]::bigint INTO ticks1
      FROM regexp_split_to_array(split_part(pg_read_file('/proc/' || pid || '/stat'), ') ', 2), ' ') f0,
           LATERAL (SELECT ARRAY['', ''] || f0 AS f) x;
    per_s := round(n / extract(epoch FROM clock_timestamp() - t));
    cpu_us := round((ticks1 - ticks0) * 10000.0 / n, 1);   -- 100 ticks per second
END;
\$\$;
-- rows like a day of traffic: cohorts 25/75, 1 % errors, 1 % refusals
CREATE FUNCTION bench_rows(n bigint, newest timestamptz, per_second float8) RETURNS void
LANGUAGE sql AS \$\$
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, http_status,
                             latency_ms, prompt_tokens, completion_tokens, refusal, fallback, cost)
SELECT gen_random_uuid(), newest - make_interval(secs => i / per_second), 'bench', 'ramp_25', 'u' || (i % 100000),
       CASE WHEN i % 4 = 0 THEN 'canary' ELSE 'control' END,
       CASE WHEN i % 4 = 0 THEN 'fast-new' ELSE 'fast-old' END,
       CASE WHEN i % 100 = 7 THEN 'error' WHEN i % 100 = 8 THEN 'refusal' ELSE 'ok' END, 200,
       (400 + 600 * -ln(1 - ((i * 7919) % 10007 + 0.5) / 10007.0))::int, 20, 50 + i % 200,
       i % 100 = 8, false, 0.0001
  FROM generate_series(1, n) i
\$\$;
SQL
# the exporter's queries, as shipped
scrape=$(python3 - "$top/monitoring/postgres_exporter.yml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
qs = []
for m in re.finditer(r'^  query: (?:"(.*)"|>-\n((?:    .*\n)+))', text, re.M):
    qs.append(m.group(1) if m.group(1) is not None else ' '.join(l.strip() for l in m.group(2).splitlines()))
print("ARRAY[" + ", ".join("$q$" + q + "$q$" for q in qs) + "]")
PY
)
nq=$($PSQL -At -c "SELECT cardinality($scrape)")

# the sample-ratio trigger (1.1 after issue 13's users moved to write time)
has_srm=$($PSQL -At -c "SELECT count(*) FROM pg_trigger WHERE tgname = 'canary_requests_srm'")
triggers() {	# rollup on|off, srm on|off
    $PSQL -c "ALTER TABLE canary_requests $( [ "$1" = on ] && echo ENABLE || echo DISABLE ) TRIGGER canary_requests_rollup"
    if [ "$has_srm" = 1 ]; then
        $PSQL -c "ALTER TABLE canary_requests $( [ "$2" = on ] && echo ENABLE || echo DISABLE ) TRIGGER canary_requests_srm"
    fi
}
if [[ $parts == *" 1 "* ]]; then
echo "== 1. metrics writer: records/s writing 200,000 queued records (rollup and sample-ratio triggers)"
writer() {	# round, rollups, users (on, off, new: every record a new user)
    local r
    [ "$has_srm" = 1 ] || [ "$3" = off ] || return 0
    triggers "$2" "${3/new/on}"
    if [ "$3" = new ]; then
        r=$($PSQL -At -F ' ' -c "SELECT * FROM bench_writer(200000, 'new$1', 200000)")
    else
        r=$($PSQL -At -F ' ' -c "SELECT * FROM bench_writer(200000, 'w', 20000)")
    fi
    echo "   round $1  rollups $2, sample-ratio users $3: ${r% *} records/s, ${r#* } us of worker CPU per record"
    echo "writer $2_$3 $r" >> "$dir/results"
}
# the three settings alternate; the worst case (200,000 users never seen)
# comes after, and then the known users once more (the worker's cache of
# known users is bounded: the flood of new users pushed them out)
for round in $(seq 1 "${BENCH_WRITER_ROUNDS:-3}"); do
    for mode in "on on" "on off" "off off"; do
        writer "$round" $mode
    done
done
for round in 1 2 3; do
    writer "$round" on new
done
writer after-flood on on
triggers on on
fi

if [[ $parts == *" 2 "* ]]; then
echo "== 2. canary_call at 8 clients, ${secs} s each (rollup trigger on / off)"
echo "SELECT canary_call('Where is my order?', 'u_' || (random() * 100000)::int);" > "$dir/call.pgbench"
$PSQL -At -c "SELECT canary_call('Where is my order?', 'u_1')->>'model'" >/dev/null
for round in 1 2 3 4; do
    for mode in ENABLE DISABLE; do
        if [ $mode = ENABLE ]; then triggers on on; else triggers off off; fi
        "$BIN/pgbench" -h /tmp -p "$port" -n -c 8 -j 2 -T "$secs" -f "$dir/call.pgbench" bench > "$dir/pgbench.out" 2>&1
        $PSQL -c "SELECT canary_flush('120 seconds')" >/dev/null
        tps=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$dir/pgbench.out")
        echo "   round $round  rollups $( [ $mode = ENABLE ] && echo on || echo off ): $tps calls/s"
        echo "call $mode $tps" >> "$dir/results"
    done
done
triggers on on
fi
$PSQL -c "DELETE FROM canary_requests; DELETE FROM canary_rollups; DELETE FROM canary_feedback" -c "VACUUM ANALYZE"

measure() {	# label
    $PSQL -c "VACUUM ANALYZE canary_rollups" -c "VACUUM ANALYZE canary_rollup_totals"
    local n rr check scr
    n=$($PSQL -At -c "SELECT count(*) FROM canary_requests")
    rr=$($PSQL -At -c "SELECT count(*) FROM canary_rollups")
    $PSQL -At -c "SELECT coalesce(canary_check('bench'), 'no trip')" > "$dir/reason"
    check=$($PSQL -At -F ' ' -c "SELECT * FROM bench_ms(ARRAY['SELECT canary_check(''bench'')'], 30)")
    scr=$($PSQL -At -F ' ' -c "SELECT * FROM bench_ms($scrape, 30)")
    printf '   %-12s retained rows %10s, rollup rows %8s: canary_check median/max %s ms; scrape (%s queries) median/max %s ms; check says: %s\n' \
        "$1" "$n" "$rr" "$check" "$nq" "$scr" "$(cat "$dir/reason")"
    echo "check $1 $n $rr $check $scr" >> "$dir/results"
}
[[ $parts == *" 3 "* ]] || exit 0
echo "== 3. canary_check (1,000 requests/s in its 300 s window) and a full scrape"
$PSQL -c "SELECT bench_rows(300000, now(), 1000)"
measure small
start=$(date +%s)
left=$(( rows - 300000 )); chunk=1000000; done_rows=0
while [ "$left" -gt 0 ]; do
    n=$(( left < chunk ? left : chunk ))
    # the previous 7 days, newest first, at the rate that spreads the rest over them
    $PSQL -c "SELECT bench_rows($n, now() - interval '300 seconds' - make_interval(secs => $done_rows * 604800.0 / $(( rows - 300000 ))), $(( rows - 300000 )) / 604800.0)"
    left=$(( left - n )); done_rows=$(( done_rows + n ))
done
echo "   (grew to $rows rows in $(( $(date +%s) - start )) s)"
$PSQL -c "SELECT bench_rows(300000, now(), 1000)"   # the window again, at the new now()
measure large
$PSQL -At -c "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) || ' raw (canary_requests), '
              || pg_size_pretty(pg_total_relation_size('canary_rollups')) || ' rollups'
                FROM pg_partition_tree('canary_requests')" | sed 's/^/   sizes: /'
