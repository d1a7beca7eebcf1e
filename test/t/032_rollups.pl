# Rollups under load and failures: canary_rollups must equal a recount of
# the raw rows, exactly (every counter, both histograms), and
# canary_rollup_totals the sum of what was ever written, after
#   - concurrent writers: pgbench clients queueing records (canary_record)
#     and verdicts (canary_feedback), and a backfill writing straight into
#     canary_requests, all into the same 30-second buckets;
#   - a worker restart in the middle of the load (pg_terminate_backend);
#   - a crash restart in the middle of the load (a backend killed with
#     SIGKILL: the postmaster resets shared memory; records still queued
#     are lost, but never half-counted, since a rollup increment commits
#     with its raw rows).
# Then canary_maintenance applies llm_canary.rollup_retention_days.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use RollupCheck;
use IPC::Run;

my $node = canary_node('rollups', conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 50
llm_canary.retention_days = 0
restart_after_crash = on
max_connections = 40
});
$node->safe_psql('postgres', q{
-- prices: the records carry a cost (the worker sums it as numeric, exactly)
INSERT INTO canary_models (name, provider, base_url, model, price_input_per_1k, price_output_per_1k) VALUES
  ('model-old', 'openai', 'http://127.0.0.1:9/v1', 'old', 0.5, 1.5),
  ('model-new', 'openai', 'http://127.0.0.1:9/v1', 'new', 0.25, 2.0);
-- stage full (no sample-ratio check), decisions as in 1.0 (two windows)
-- and thresholds no traffic can breach: the checks below only summarise,
-- they never trip
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode, error_rate_threshold,
                           p95_ratio_threshold, refusal_delta_threshold, thumbs_down_ratio_threshold)
VALUES ('roll', 'full', 'model-old', 'model-new', 'confirm_windows', 1, 1000, 1, 1000);
});
$node->poll_query_until('postgres', "SELECT worker_state = 'running' FROM canary_stats()")
  or die 'the worker did not start';

my $dir = PostgreSQL::Test::Utils::tempdir;
open(my $fr, '>', "$dir/record.sql") or die;
print $fr <<'SQL';
\set u random(1, 5000)
\set l random(1, 20000)
SELECT quote_literal(coalesce(canary_record('roll', 'u' || :u, CASE WHEN :u % 4 = 0 THEN 'model-new' ELSE 'model-old' END,
                              CASE WHEN :u % 4 = 0 THEN 'canary' ELSE 'control' END,
                              (ARRAY['ok', 'ok', 'error', 'refusal', 'timeout'])[1 + :l % 5], :l,
                              refusal => :l % 5 = 3, completion_tokens => :l % 700,
                              prompt_tokens => nullif(:u % 60, 0),
                              stage => 'ramp_25')::text, '')) AS rid \gset
SELECT canary_feedback(nullif(:rid, '')::uuid, :l % 3 = 0) WHERE :rid <> '' AND :l % 7 = 0;
SQL
close $fr;
open(my $fb, '>', "$dir/backfill.sql") or die;
print $fb <<'SQL';
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms, cached)
SELECT gen_random_uuid(), now() - random() * interval '2 minutes', 'roll', 'ramp_25', 'b' || g,
       CASE WHEN g % 2 = 0 THEN 'canary' ELSE 'control' END,
       CASE WHEN g % 2 = 0 THEN 'model-new' ELSE 'model-old' END, 'ok', (random() * 5000)::int, g % 5 = 0
  FROM generate_series(1, 20) g;
SQL
close $fb;

# pgbench for $seconds seconds; returns the IPC::Run handle
my ($pb_out, $pb_err) = ('', '');
sub load
{
	my ($seconds) = @_;
	($pb_out, $pb_err) = ('', '');
	return IPC::Run::start(
		[ '/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', 6, '-j', 2, '-T', $seconds,
		  '-f', "$dir/record.sql\@9", '-f', "$dir/backfill.sql\@1",
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$pb_out, '2>', \$pb_err, IPC::Run::timeout(120));
}

sub settle
{
	$node->poll_query_until('postgres', "SELECT worker_state = 'running' FROM canary_stats()")
	  or die 'the worker did not come back';
	$node->safe_psql('postgres', "SELECT canary_flush('60 seconds')");
}

sub check_exact
{
	my ($when) = @_;
	is($node->safe_psql('postgres', rollup_recount_query()), '0',
		"$when: canary_rollups and the queued verdicts equal a recount of the raw rows");
	# fold what is still queued (the worker may be folding it too: each
	# pending row is folded once, by whichever fold took it)
	$node->safe_psql('postgres', 'SELECT canary_feedback_fold()');
	$node->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM canary_feedback_pending)')
	  or die 'verdicts stayed queued';
	is($node->safe_psql('postgres', rollup_recount_query()), '0',
		"$when: after the fold, canary_rollups alone equal a recount of the raw rows");
	is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM canary_requests) = (SELECT sum(requests) FROM canary_rollup_totals)
   AND (SELECT count(*) FROM canary_feedback) = (SELECT sum(verdicts) FROM canary_rollup_totals)
   AND (SELECT sum(latency_sum) FROM canary_rollups) = (SELECT sum(latency_sum) FROM canary_rollup_totals)
   AND (SELECT sum(cost) FROM canary_requests) = (SELECT sum(cost) FROM canary_rollup_totals)
   AND (SELECT sum(cost) FROM canary_rollup_totals) > 0}),
		't', "$when: canary_rollup_totals count every raw row once (and its cost)");
}

# --- concurrent writers, and a worker restart in the middle ----------------
my $pgbench = load(8);
sleep 3;
my $old_pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM canary_stats()');
$node->safe_psql('postgres', 'SELECT pg_terminate_backend(worker_pid) FROM canary_stats()');
$pgbench->finish;
$node->poll_query_until('postgres',
	"SELECT worker_state = 'running' AND worker_pid <> $old_pid FROM canary_stats()")
  or die 'the worker was not restarted';
settle();
my $n1 = $node->safe_psql('postgres', 'SELECT count(*) FROM canary_requests');
cmp_ok($n1, '>', 1000, "the load wrote $n1 rows");
check_exact('after concurrent load and a worker restart');

# --- a crash restart in the middle of the load ----------------------------
$pgbench = load(6);
sleep 2;
my $victim = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
	  . " AND query ~ 'canary_' LIMIT 1");
ok($victim =~ /^\d+$/, 'a pgbench backend to kill');
kill 'KILL', $victim;
$pgbench->finish;
$node->poll_query_until('postgres', 'SELECT 1', '1') or die 'the server did not restart';
settle();
my $n2 = $node->safe_psql('postgres', 'SELECT count(*) FROM canary_requests');
cmp_ok($n2, '>', $n1, "rows were written around the crash ($n1 -> $n2)");
check_exact('after a crash restart');
like(slurp_file($node->logfile), qr/terminated by signal 9/, 'the crash happened');

# --- the kill switch reads the same counts ---------------------------------
# (the backfill leaves fallback NULL: the rollups count such a row as not a
# fallback)
my $at = $node->safe_psql('postgres', 'SELECT canary_rollup_bucket(now())');
$node->safe_psql('postgres', "SELECT canary_check('roll', '$at')");
is($node->safe_psql('postgres', qq{
SELECT s.samples || ' ' || s.errors || ' ' || s.refusals
  FROM canary_window_summaries s WHERE s.canary = 'roll' AND s.cohort = 'canary' AND s.at = '$at'}),
	$node->safe_psql('postgres', qq{
SELECT count(*) || ' ' || count(*) FILTER (WHERE outcome IN ('error', 'timeout')) || ' ' || count(*) FILTER (WHERE refusal)
  FROM canary_requests r, canary_config c
 WHERE r.canary = 'roll' AND r.cohort = 'canary' AND NOT coalesce(r.fallback, false) AND NOT r.cached
   AND c.name = 'roll'
   AND r.ts > '$at'::timestamptz - make_interval(secs => c.window_seconds) AND r.ts <= '$at'}),
	'canary_check counts the samples, errors and refusals of its window as the raw rows do');

# --- retention -------------------------------------------------------------
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM canary_rollups');
is($node->safe_psql('postgres', q{
SELECT action || ' ' || partition || ' ' || moved_rows FROM canary_maintenance(0, current_date + 400)
 WHERE partition = 'canary_rollups'}), '', 'rollups of the last 400 days are kept');
# with a finished submission to expire too: rollups come before submissions,
# as they did before the expiries became one loop
$node->safe_psql('postgres', q{
INSERT INTO canary_submissions (request_id, canary, user_id, request, state, finished_at)
VALUES (gen_random_uuid(), 'roll', 'u-ret', '"p"', 'done', now() - interval '2 days')});
is($node->safe_psql('postgres', q{
SELECT string_agg(action || ' ' || partition || ' ' || moved_rows, ', ')
  FROM canary_maintenance(0, current_date + 402)
 WHERE partition IN ('canary_rollups', 'canary_submissions')}),
	"expire canary_rollups $rows, expire canary_submissions 1",
	'canary_maintenance deletes rollups older than llm_canary.rollup_retention_days (400), then submissions');
is($node->safe_psql('postgres', 'SELECT sum(requests) FROM canary_rollup_totals'), $n2,
	'the totals outlive the rollups');

$node->stop;
done_testing();
