# Interrupts and exits around the concurrent transport (batch.c):
#  - canary_batch waiting for its transfers processes every interrupt at
#    once: a ProcSignalBarrier (DROP DATABASE of another database emits one)
#    and a memory-context log request were served only when the batch
#    ended (up to the models' timeout), as canary_call's were before
#    045_http's fix;
#  - the server-wide limit of model requests in flight
#    (llm_canary.max_concurrent_requests) after the submission worker exits
#    with transfers in flight, terminated (SIGTERM) or canceled (an ERROR):
#    the worker must come back, and the slots its transfers held must be
#    free again (they stayed taken until the server restarted, so a few
#    such exits left no slot for any canary_batch or submission).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time usleep);

my $mock = mock_url();

my $node = canary_node('slots', conf => qq{
llm_canary.max_concurrent_requests = 4
llm_canary.submit_concurrency = 4
});

mock_profile('sl-good', '{"echo": true}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('good', 'openai', '$mock/v1', 'sl-good', 'LLM_CANARY_TEST_KEY', 0, 3000),
  ('hang', 'openai', '$mock/v1', 'sl-hang', 'LLM_CANARY_TEST_KEY', 0, 60000);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
  ('r-good', 'full', 'good', 'good'), ('r-hang', 'full', 'hang', 'hang');
});

# --- interrupts while a batch waits for its transfers
$node->safe_psql('postgres', 'CREATE DATABASE doomed');
mock_profile('sl-hang', '{"hang": true}');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT count(*) FROM canary_batch(ARRAY['w1', 'w2'], ARRAY['u-wait'], 'r-hang', concurrency => 2);
});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT count(*) FROM canary_batch(%'}),
	'a batch waits for a hanging model (timeout_ms 60000)');
usleep(300_000);
my $bpid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT count(*) FROM canary_batch(%'});
my $log_offset = -s $node->logfile;
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($bpid)");
my $logged = 0;
for (1 .. 60)
{
	if (slurp_file($node->logfile, $log_offset) =~ /logging memory contexts of PID $bpid/)
	{
		$logged = 1;
		last;
	}
	usleep(50_000);
}
my $took = time - $t0;
ok($logged && $took < 3, sprintf('a batch in flight processes interrupts: memory contexts logged after %.2f s', $took));
$t0 = time;
$node->safe_psql('postgres', 'DROP DATABASE doomed');
$took = time - $t0;
cmp_ok($took, '<', 3, sprintf('DROP DATABASE of another database finishes in %.2f s during the batch', $took));
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT count(*) FROM canary_batch(%'}),
	'1', 'and the batch is still waiting for its model');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($bpid)");
$bg->quit;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE query LIKE 'SELECT count(*) FROM canary_batch(%'});

# --- the submission worker exits with transfers in flight
sub worker_pid
{
	return $node->safe_psql('postgres',
		q{SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE backend_type = 'llm_canary submissions'});
}

sub mock_in_flight
{
	my $s = mock_get('/_mock/stats');
	return $s->{models}{'sl-hang'}{in_flight} // 0;
}

for my $how ([ 'terminated', 'pg_terminate_backend' ], [ 'canceled', 'pg_cancel_backend' ])
{
	my ($what, $fn) = @$how;

	# four submissions take every slot of the server, hanging in the mock
	mock_profile('sl-hang', '{"hang": true}');
	$node->safe_psql('postgres',
		qq{SELECT count(canary_submit('$what ' || g, 'u-$what', 'r-hang')) FROM generate_series(1, 4) g});
	my $deadline = time + 10;
	usleep(100_000) while mock_in_flight() < 4 && time < $deadline;
	is(mock_in_flight(), 4, "$what: four transfers in flight");

	my $pid = worker_pid();
	ok($pid > 0, "$what: the submission worker runs");
	$node->safe_psql('postgres', "SELECT $fn($pid)");
	mock_profile('sl-hang', '{"echo": true}');

	# it comes back (an exit code 0 would have unregistered it)
	my $new = 0;
	$deadline = time + 15;
	while (time < $deadline)
	{
		$new = worker_pid();
		last if $new > 0 && $new != $pid;
		usleep(100_000);
	}
	ok($new > 0 && $new != $pid, "$what: the submission worker is restarted");

	# the restarted worker answers the four again: there are slots for them
	my $done = 0;
	$deadline = time + 15;
	while (time < $deadline)
	{
		$done = $node->safe_psql('postgres',
			qq{SELECT count(*) FROM canary_submissions WHERE user_id = 'u-$what' AND state = 'done'});
		last if $done == 4;
		usleep(100_000);
	}
	is($done, 4, "$what: the submissions claimed before the exit are answered after it");

	# and a batch finds all four slots free (3 s model timeout: a taken slot fails it)
	is($node->safe_psql('postgres', qq{
SELECT string_agg(ok::text, ',' ORDER BY ord) FROM canary_batch(ARRAY['a', 'b', 'c', 'd'], ARRAY['u-$what'], 'r-good', concurrency => 4)}),
		'true,true,true,true', "$what: a batch of four gets every slot");
}

$node->stop;
done_testing();
