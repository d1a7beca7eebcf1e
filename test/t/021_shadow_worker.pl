# The shadow worker's reliability (issue 11): transfers move as soon as
# their sockets are ready, whatever llm_canary.flush_interval_ms; jobs
# dispatched while no worker runs wait in the queue; a shared-memory
# allocation that raises (fault injection) neither leaks its slot nor fails
# the user's call; canary_feedback of an unknown request never waits for
# shadow jobs.
#
# Needs LLM_CANARY_MOCK_URL and LLM_CANARY_TEST_KEY (test/run_suite.sh).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time sleep);

my $mock = mock_url(need_key => 1);

my $node = canary_node('shadow_worker', conf => q{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 2000
llm_canary.shadow_grace_ms = '60s'
});

mock_profile('sw-old', '{"fixed_text": "old answer", "latency_ms": 5}');
mock_profile('sw-new', '{"fixed_text": "new answer", "latency_ms": 300}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, timeout_ms, max_retries, api_key_env)
VALUES ('m-old', 'openai', '$mock/v1', 'sw-old', 5000, 0, 'LLM_CANARY_TEST_KEY'),
       ('m-new', 'openai', '$mock/v1', 'sw-new', 5000, 0, 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
VALUES ('sw', 'shadow', 'm-old', 'm-new', 1);
});

sub call
{
	my ($prompt, $pre) = @_;
	$pre //= '';
	return $node->safe_psql('postgres',
		"$pre SELECT (canary_call(\$p\$$prompt\$p\$, 'u1', 'sw'))->>'request_id'");
}

# Wait (at most 30 s) for the shadow rows of these requests; returns the count.
sub wait_rows
{
	my @ids = @_;
	my $list = join(',', map { "'$_'::uuid" } @ids);
	my $got = 0;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		$got = $node->safe_psql('postgres',
			"SELECT count(*) FROM canary_shadow WHERE request_id = ANY(ARRAY[$list])");
		last if $got == @ids;
		sleep 0.05;
	}
	return $got;
}

sub stats
{
	return $node->safe_psql('postgres',
		'SELECT dispatched || \' \' || dropped_queue_full || \' \' || dropped_no_worker || \' \''
		  . ' || dropped_memory || \' \' || in_flight || \' \' || bytes_in_use FROM canary_shadow_stats()');
}

# --- latency: recorded as the model's, whatever the flush interval ---------
for my $interval (2000, 100)
{
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET llm_canary.flush_interval_ms = $interval; SELECT pg_reload_conf()");
	sleep 0.5;
	my @lat;
	for my $i (1 .. 5)
	{
		my $id = call("latency $interval $i");
		is(wait_rows($id), 1, "flush_interval_ms $interval: row $i written");
		push @lat, $node->safe_psql('postgres',
			"SELECT new_latency_ms FROM canary_shadow WHERE request_id = '$id'");
	}
	my @sorted = sort { $a <=> $b } @lat;
	my $median = $sorted[2];
	note "flush_interval_ms $interval: new_latency_ms @lat (model: 300 ms)";
	ok($median >= 300 && $median < 350,
		"flush_interval_ms $interval: median new_latency_ms $median within 50 ms of the model's 300");
	ok($sorted[-1] < 600, "flush_interval_ms $interval: every latency under 600 ms (max $sorted[-1])");
}
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET llm_canary.flush_interval_ms; SELECT pg_reload_conf()");
mock_profile('sw-new', '{"fixed_text": "new answer", "latency_ms": 5}');

# --- the allocation of the prompt raises: no leak, the call answers --------
my $before = stats();
my ($d0, $q0, $n0, $m0) = split / /, $before;
my $ans = $node->safe_psql('postgres',
	q{SET llm_canary.debug_fail_shadow_alloc = 'prompt';
	  SELECT (canary_call('fault at dispatch', 'u1', 'sw'))->>'response'});
is($ans, 'old answer', 'prompt allocation raises: the call still gets its answer');
my ($d1, $q1, $n1, $m1, $inflight1, $bytes1) = split / /, stats();
is($m1 - $m0, 1, 'prompt allocation raises: counted as dropped_memory');
is("$inflight1 $bytes1", '0 0', 'prompt allocation raises: no slot left filling, no bytes counted');
ok($node->log_contains('could not store a shadow job in shared memory: could not allocate shadow memory: injected fault'),
	'prompt allocation raises: logged');
my $t0 = time;
$node->safe_psql('postgres', "SELECT canary_flush('5 s')");
ok(time - $t0 < 2, 'prompt allocation raises: canary_flush does not wait for a leaked slot');
# the backend's queue lock was released by the subtransaction's abort
is($node->safe_psql('postgres',
		q{SET llm_canary.debug_fail_shadow_alloc = 'prompt';
		  SELECT (canary_call('fault twice', 'u1', 'sw'))->>'response';
		  RESET llm_canary.debug_fail_shadow_alloc;
		  SELECT (canary_call('no fault', 'u1', 'sw'))->>'response'}),
	"old answer\nold answer", 'prompt allocation raises: the same session shadows again once it stops');

# --- the allocation of the old answer raises: not_stored, no leak ----------
my $id = $node->safe_psql('postgres',
	q{SET llm_canary.debug_fail_shadow_alloc = 'old_answer';
	  SELECT (canary_call('fault at the old answer', 'u1', 'sw'))->>'request_id'});
is(wait_rows($id), 1, 'old answer allocation raises: the row is written');
is($node->safe_psql('postgres',
		"SELECT old_error || ' ' || (old_text IS NULL) || ' ' || new_text FROM canary_shadow WHERE request_id = '$id'"),
	'not_stored true new answer', 'old answer allocation raises: old_error not_stored, the new answer kept');
$node->safe_psql('postgres', "SELECT canary_flush('5 s')");
my (undef, undef, undef, undef, $inflight2, $bytes2) = split / /, stats();
is("$inflight2 $bytes2", '0 0', 'old answer allocation raises: no slot or byte left behind');

# --- jobs dispatched while no worker runs wait in the queue ---------------
mock_profile('sw-new', '{"fixed_text": "new answer", "latency_ms": 5}');
my $wpid = $node->safe_psql('postgres', 'SELECT worker_pid FROM canary_stats()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($wpid)");
$node->poll_query_until('postgres', "SELECT worker_pid IS NULL FROM canary_stats()")
  or die 'the worker did not stop';
my (@down, $dropped_before);
$dropped_before = (split / /, stats())[2];
push @down, call("while the worker is down $_") for 1 .. 20;
my $no_worker = (split / /, stats())[2] - $dropped_before;
is($no_worker, 0, 'worker down: no job dropped for want of a worker');
is(wait_rows(@down), 20, 'worker down: all 20 jobs are written once the worker is back');
is($node->safe_psql('postgres', "SELECT count(*) FROM canary_shadow WHERE prompt LIKE 'while the worker is down%'"
		  . " AND new_text = 'new answer' AND old_text = 'old answer'"),
	'20', 'worker down: each with both answers');

# ... and right after a server start
$node->restart;
my @boot = map { call("right after the start $_") } 1 .. 20;
is((split / /, stats())[2], '0', 'after a restart: no job dropped for want of a worker');
is(wait_rows(@boot), 20, 'after a restart: all 20 jobs are written');

# --- canary_feedback of an unknown request never waits for shadow jobs ----
mock_profile('sw-new', '{"hang": true}');
$node->safe_psql('postgres', "UPDATE canary_models SET timeout_ms = 60000 WHERE name = 'm-new'");
call('a shadow job that hangs');
$t0 = time;
my ($rc, $out, $err) = $node->psql('postgres',
	"SELECT canary_feedback('00000000-0000-0000-0000-000000000001', true)",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
my $took = time - $t0;
like($err, qr/ERROR:  P0002: request "00000000-0000-0000-0000-000000000001" does not exist/,
	'canary_feedback of an unknown request: P0002 (not 57014)');
ok($took < 3, sprintf('canary_feedback of an unknown request answers in %.1f s with a shadow job hanging', $took));
$node->safe_psql('postgres', "UPDATE canary_models SET timeout_ms = 5000 WHERE name = 'm-new'");
mock_profile('sw-new', '{}');

ok(!$node->log_contains('terminated by signal'), 'no process crashed');
$node->stop;
done_testing();
