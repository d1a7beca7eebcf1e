# 50 concurrent clients call canary_call (pgbench, against the mock LLM
# server) while another session changes stages and trips and re-arms the
# kill switch in a loop: no client error, no deadlock, every call recorded,
# and no call that started after a trip had committed is served by the new
# model while the switch stays off.
#
# How the last point is proven.  A call routes once, somewhere between the
# start of its statement and the start of its HTTP attempt.  Each call
# passes statement_timestamp() as its prompt_class, so canary_requests holds
# a lower bound of the routing time (the statement's start, taken before its
# transaction and snapshot); ts - latency_ms is an upper bound (ts is taken
# after the attempt ends, latency_ms is its duration rounded down).  The
# operator session takes clock_timestamp() after COMMIT of each trip has
# returned (the trip is visible to every statement that starts later) and
# again before it re-arms.  A call whose routing interval lies inside such a
# window was routed while the switch was off: it must be on the old model.
# Calls that started inside a window but may have routed after the re-arm
# (a client descheduled for a while on a busy machine) prove nothing and are
# only counted.  There must be many calls inside the windows for the check to
# mean anything.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use IPC::Run;
use Time::HiRes qw(time usleep);

my $mock = mock_url();

my $clients = 50;
my $per_client = 200;
my $total = $clients * $per_client;

my $node = canary_node('concurrency', conf => qq{
llm_canary.check_interval = 0
max_connections = 80
log_lock_waits = on
deadlock_timeout = 100ms
});

mock_profile('c-old', '{"fixed_text": "old answer", "latency_ms": 3, "latency_jitter_ms": 5}');
mock_profile('c-new', '{"fixed_text": "new answer", "latency_ms": 3, "latency_jitter_ms": 5}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
  ('old', 'openai', '$mock/v1', 'c-old', 'LLM_CANARY_TEST_KEY', 0),
  ('new', 'anthropic', '$mock/v1', 'c-new', 'LLM_CANARY_TEST_KEY', 0);
UPDATE canary_config SET old_model = 'old', new_model = 'new', stage = 'ramp_25';
CREATE TABLE trip_windows (t_from timestamptz, t_to timestamptz);
});

# --- a backend whose transaction began before a trip ----------------------
# Deterministic: a repeatable-read transaction open across the trip.  Its
# next statement accepts the invalidation; reading the configuration under
# the transaction's (older) snapshot would cache the pre-trip row as valid,
# so this backend would route to the new model even after COMMIT, until the
# next change.  (The race in the pgbench run below is the same bug in read
# committed: a trip that commits after a statement's snapshot was taken.)
$node->safe_psql('postgres',
	q{INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('rr', 'full', 'old', 'new')});
my $rr = $node->background_psql('postgres');
$rr->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
is($rr->query_safe(q{SELECT canary_route('u1', 'rr')}), 'new', 'repeatable read: the new model before the trip');
$node->safe_psql('postgres', q{SELECT canary_trip('rr', 'trip during a repeatable-read transaction')});
is($rr->query_safe(q{SELECT canary_route('u1', 'rr')}), 'old',
	'repeatable read: the next statement after the trip routes to the old model');
$rr->query_safe('COMMIT');
is($rr->query_safe(q{SELECT canary_route('u1', 'rr')}), 'old',
	'and so does every statement after that transaction');
$rr->quit;

# half the calls without a session, half with one (pins in canary_sessions:
# concurrent upserts, and a tripped switch must win over a pin)
my $dir = PostgreSQL::Test::Utils::tempdir;
open(my $fa, '>', "$dir/plain.sql") or die;
print $fa "\\set u random(1, 100000)\n"
  . "SELECT canary_call('Where is my order?', 'u' || :u, 'default', statement_timestamp()::text);\n";
close $fa;
open(my $fb, '>', "$dir/session.sql") or die;
print $fb "\\set u random(1, 300)\n"
  . "SELECT canary_call('Refund please', 's' || :u, 'default', statement_timestamp()::text, 'sess-' || :u);\n";
close $fb;

my $log_offset = -s $node->logfile;
my ($pb_out, $pb_err) = ('', '');
my $t0 = time;
my $pgbench = IPC::Run::start(
	[ '/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', $clients, '-j', 4, '-t', $per_client,
	  '-f', "$dir/plain.sql\@1", '-f', "$dir/session.sql\@1",
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$pb_out, '2>', \$pb_err,
	IPC::Run::timeout(120));

# the operator: stage changes, trips and re-arms until pgbench is done
my $op = $node->background_psql('postgres');
my @stages = qw(ramp_1 ramp_5 ramp_25 full);
my ($trips, $stage_changes) = (0, 0);
while ($pgbench->pumpable)
{
	$op->query_safe("UPDATE canary_config SET stage = '$stages[$stage_changes++ % 4]' WHERE name = 'default'");
	usleep(30_000);
	$op->query_safe("SELECT canary_trip('default', 'tap trip $trips')");
	my $from = $op->query_safe('SELECT clock_timestamp()');	# after COMMIT returned
	$trips++;
	usleep(80_000);
	# a stage change while tripped must not route anyone to the new model
	$op->query_safe("UPDATE canary_config SET stage = '$stages[$stage_changes++ % 4]' WHERE name = 'default'");
	usleep(40_000);
	my $to = $op->query_safe('SELECT clock_timestamp()');	# before the re-arm starts
	$op->query_safe("INSERT INTO trip_windows VALUES ('$from', '$to')");
	$op->query_safe("SELECT canary_rearm('default')");
	usleep(40_000);
	$pgbench->pump_nb;
}
my $pgbench_ok = $pgbench->finish;
my $pgbench_status = $? >> 8;
my $took = time - $t0;
$op->quit;
note "pgbench: $pb_out\n$pb_err";

diag "pgbench exited with status $pgbench_status" unless $pgbench_ok;
like($pb_out, qr/number of transactions actually processed: $total\/$total/,
	"all $total calls of $clients clients completed");
unlike($pb_out . $pb_err, qr/number of failed transactions: [1-9]|aborted/,
	'no failed or aborted client');
cmp_ok($trips, '>=', 10, "the kill switch was tripped and re-armed $trips times during the run ($stage_changes stage changes, ${took}s)");

my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/deadlock/i, 'no deadlock in the server log');
unlike($log, qr/ERROR:/, 'no error in the server log');

$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE canary = 'default'}),
	$total, 'every call recorded once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE canary = 'default' AND outcome <> 'ok'}),
	'0', 'every call answered');

my $windowed = q{
  FROM canary_requests r JOIN trip_windows w
    ON r.prompt_class::timestamptz > w.t_from
   AND r.ts - r.latency_ms * interval '1 ms' < w.t_to
 WHERE r.canary = 'default'};
my ($inside, $old_inside, $violations) = split /\|/, $node->safe_psql('postgres',
	"SELECT count(*), count(*) FILTER (WHERE r.model = 'old'), count(*) FILTER (WHERE r.model = 'new') $windowed");
my $straddling = $node->safe_psql('postgres', q{
SELECT count(*) FROM canary_requests r JOIN trip_windows w
    ON r.prompt_class::timestamptz > w.t_from AND r.prompt_class::timestamptz < w.t_to
   AND r.ts - r.latency_ms * interval '1 ms' >= w.t_to
 WHERE r.canary = 'default'});
my $new_total = $node->safe_psql('postgres',
	q{SELECT count(*) FROM canary_requests WHERE canary = 'default' AND model = 'new'});
diag "concurrency: $total calls by $clients clients in ${took}s, $trips trips; "
  . "$inside calls routed while tripped, $violations of them on the new model; "
  . "$straddling started while tripped but may have routed after the re-arm; $new_total new-model calls in all";
cmp_ok($inside, '>=', 500, "many calls were routed while the switch was off ($inside)");
cmp_ok($new_total, '>', 0, "the new model served calls while armed ($new_total)");
is($old_inside, $inside, 'every call that started after a trip committed went to the old model');
is($violations, '0', 'no new-model call was routed inside a trip window');
diag "violations:\n" . $node->safe_psql('postgres', qq{
SELECT r.user_id, r.stage, r.cohort, r.prompt_class::timestamptz - w.t_from AS after_trip,
       w.t_to - r.prompt_class::timestamptz AS before_rearm, r.ts - r.prompt_class::timestamptz AS to_end, r.latency_ms
  $windowed AND r.model = 'new'}) if $violations;
is($node->safe_psql('postgres', 'SELECT dropped FROM canary_stats()'), '0', 'the metrics queue dropped nothing');
is($node->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE action = 'trip') || '/' || count(*) FILTER (WHERE action = 'rearm') FROM canary_stage_history WHERE canary = 'default'}),
	"$trips/$trips", 'every trip and re-arm is in canary_stage_history');

$node->stop;
done_testing();
