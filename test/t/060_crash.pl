# Crash and cancel: an immediate shutdown (a crash, as far as recovery is
# concerned) under load, a cancel during a retry's backoff, and a cancel
# while a shadow call is in flight.
#
# After the crash: the server restarts, the worker runs again, the kill
# switches keep their state, every metric row committed before the crash is
# still there, and no request or shadow row is duplicated.  Records still in
# the shared-memory queue at the crash are lost: that queue is not durable
# (see RELIABILITY.md); the test prints how many were queued.
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

my $node = canary_node('crash', conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 200
restart_after_crash = on
});

mock_profile('k-old', '{"fixed_text": "old answer", "latency_ms": 2}');
mock_profile('k-new', '{"fixed_text": "new answer", "latency_ms": 2}');
mock_profile('k-shadow', '{"fixed_text": "shadow answer", "latency_ms": 30}');
mock_profile('k-slow-old', '{"fixed_text": "slow old answer", "latency_ms": 1500}');
mock_profile('k-hang', '{"hang": true}');
mock_profile('k-flaky', '{"fail_first_n": 1000, "fail_status": 503, "retry_after": 5}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('old', 'openai', '$mock/v1', 'k-old', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('new', 'openai', '$mock/v1', 'k-new', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('shadow-new', 'anthropic', '$mock/v1', 'k-shadow', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('slow-old', 'openai', '$mock/v1', 'k-slow-old', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('hang', 'openai', '$mock/v1', 'k-hang', 'LLM_CANARY_TEST_KEY', 0, 1500),
  ('flaky', 'openai', '$mock/v1', 'k-flaky', 'LLM_CANARY_TEST_KEY', 3, 60000);
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate, fallback_to_old) VALUES
  ('armed', 'ramp_25', 'old', 'new', 1, true),
  ('tripped', 'full', 'old', 'new', 1, true),
  ('shadow', 'shadow', 'old', 'shadow-new', 1, true),
  ('shadowhang', 'shadow', 'slow-old', 'hang', 1, true),
  ('retry', 'full', 'old', 'flaky', 1, false);
SELECT canary_trip('tripped', 'tripped before the crash');
});

# --- an immediate shutdown under load -------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir;
open(my $fh, '>', "$dir/load.sql") or die;
print $fh "\\set u random(1, 100000)\n"
  . "SELECT canary_call('Where is my order?', 'u' || :u, 'armed');\n"
  . "SELECT canary_call('Shadow me', 's' || :u, 'shadow');\n"
  . "SELECT canary_call('Tripped', 't' || :u, 'tripped');\n";
close $fh;
my ($pb_out, $pb_err) = ('', '');
my $pgbench = IPC::Run::start(
	[ '/usr/lib/postgresql/15/bin/pgbench', '-n', '-c', 8, '-j', 2, '-T', 30,
	  '-f', "$dir/load.sql", '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$pb_out, '2>', \$pb_err, IPC::Run::timeout(60));
$node->poll_query_until('postgres', q{SELECT count(*) >= 500 FROM canary_requests})
  or die 'no load reached canary_requests';
$node->poll_query_until('postgres', q{SELECT count(*) >= 50 FROM canary_shadow})
  or die 'no shadow rows';

# what was committed just before the crash, kept outside the database
my $stats = $node->safe_psql('postgres', 'SELECT enqueued || \'/\' || written || \'/\' || queue_depth FROM canary_stats()');
my $req_before = $node->safe_psql('postgres', q{SELECT string_agg(request_id || ':' || model, ',') FROM canary_requests});
my $shadow_before = $node->safe_psql('postgres', q{SELECT string_agg(request_id::text, ',') FROM canary_shadow});
my $old_worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM canary_stats()');
$node->stop('immediate');
$pgbench->finish;
my @req = split /,/, $req_before;
my @shadow = split /,/, $shadow_before;
my ($enq, $written, $depth) = split m{/}, $stats;
note "at the crash: $enq records enqueued, $written written, $depth queued; "
  . scalar(@req) . ' request rows and ' . scalar(@shadow) . ' shadow rows committed';

$node->start;
ok($node->poll_query_until('postgres',
		"SELECT worker_state = 'running' AND worker_pid <> $old_worker FROM canary_stats()"),
	'after the crash the server restarts and a new worker runs');
is($node->safe_psql('postgres',
		q{SELECT string_agg(name || '=' || kill_switch_armed, ',' ORDER BY name) FROM canary_config WHERE name IN ('armed', 'tripped')}),
	'armed=true,tripped=false', 'the kill switches kept their state (armed stays armed, tripped stays tripped)');
is($node->safe_psql('postgres', q{SELECT trip_reason FROM canary_config WHERE name = 'tripped'}),
	'tripped before the crash', 'with the reason of the trip');

my $values = join(',', map { my ($id, $m) = split /:/; "('$id'::uuid, '$m')" } @req);
my ($kept, $after) = split /\|/, $node->safe_psql('postgres', qq{
SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM canary_requests r WHERE r.request_id = b.id AND r.model = b.model)),
       (SELECT count(*) FROM canary_requests)
  FROM (VALUES $values) b(id, model)});
is($kept, scalar(@req), "every one of the " . scalar(@req) . " request rows committed before the crash is still there");
my $shadow_values = join(',', map { "('$_'::uuid)" } @shadow);
is($node->safe_psql('postgres', qq{
SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM canary_shadow s WHERE s.request_id = b.id))
  FROM (VALUES $shadow_values) b(id)}),
	scalar(@shadow), 'every shadow row committed before the crash is still there');
is($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT (request_id, model)) FROM canary_requests}),
	'0', 'no request row is duplicated');
is($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT request_id) FROM canary_shadow}),
	'0', 'no shadow row is duplicated');
diag "crash: $written records written and $depth queued at the crash; " . scalar(@req)
  . " request rows seen committed, $after after recovery (the worker's last batch may land in between); "
  . scalar(@shadow) . ' shadow rows kept';

# the rollouts work as before: tripped routes old, armed routes by hash
is($node->safe_psql('postgres', q{SELECT canary_call('after', 'u1', 'tripped') ->> 'model'}),
	'old', 'a tripped rollout still serves the old model');
# u-after's bucket decides its model at ramp_25: the answer must be that model's
my $route = $node->safe_psql('postgres',
	q{SELECT CASE WHEN canary_bucket('u-after') < 25 THEN 'new' ELSE 'old' END});
is($node->safe_psql('postgres',
		q{SELECT r ->> 'model' || '|' || (r ->> 'response') FROM canary_call('after the crash', 'u-after', 'armed') r}),
	"$route|$route answer", "canary_call after the restart answers with the routed model ($route)");
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE user_id = 'u-after'}),
	'1', 'and is recorded by the new worker');

# --- cancel during a retry's backoff -----------------------------------------
# k-flaky answers 503 with Retry-After: 5; the caller sleeps 5 s before its
# second try, on its latch.  A cancel must end the sleep at once.
$node->safe_psql('postgres', q{
CREATE FUNCTION cancel_and_wait(p int) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    st text;
BEGIN
    PERFORM pg_cancel_backend(p);
    t0 := clock_timestamp();
    LOOP
        PERFORM pg_stat_clear_snapshot();
        SELECT state INTO st FROM pg_stat_activity WHERE pid = p;
        EXIT WHEN st IS DISTINCT FROM 'active' OR clock_timestamp() - t0 > interval '10 s';
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN round(extract(epoch FROM clock_timestamp() - t0) * 1000, 1);
END
$$;
});
my $v = $node->background_psql('postgres', on_error_stop => 0);
$v->query_safe('\set VERBOSITY verbose');
my $vpid = $v->query_safe('SELECT pg_backend_pid()');
$v->query_until(qr/started/, q{\echo started
SELECT canary_call('retry me', 'u-retry', 'retry');
});
# wait for the first 503, then a little more: the backend is in its backoff
my $tries = 0;
for (1 .. 100)
{
	$tries = mock_get('/_mock/stats')->{models}{'k-flaky'}{requests};
	last if $tries;
	usleep(20_000);
}
usleep(300_000);
my $ms = $node->safe_psql('postgres', "SELECT cancel_and_wait($vpid)");
$v->query('SELECT 1');
like($v->{stderr}, qr/ERROR:  57014: canceling statement due to user request/,
	'a cancel during the backoff ends the call with 57014');
cmp_ok($ms, '<', 200, "within 200 ms of pg_cancel_backend ($ms ms, during a 5 s Retry-After)");
diag "cancel during backoff: $ms ms";
$tries = mock_get('/_mock/stats')->{models}{'k-flaky'}{requests};
is($tries, 1, 'no retry was sent after the cancel');
$v->{stderr} = '';
is($v->query_safe(q{SELECT canary_call('next', 'u1', 'armed') IS NOT NULL}), 't', 'the next call of that backend works');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT outcome || ':' || error FROM canary_requests WHERE user_id = 'u-retry'}),
	'error:canceled', 'the canceled attempt is recorded');

# --- cancel while a shadow call is in flight ---------------------------------
# The caller waits 1.5 s for the old model; the worker's shadow call hangs.
$v->query_until(qr/started/, q{\echo started
SELECT canary_call('shadow me', 'u-shadow-cancel', 'shadowhang');
});
$node->poll_query_until('postgres', q{SELECT dispatched > 0 FROM canary_shadow_stats()})
  or diag 'shadow job not seen as dispatched';
usleep(200_000);
$ms = $node->safe_psql('postgres', "SELECT cancel_and_wait($vpid)");
$v->query('SELECT 1');
like($v->{stderr}, qr/ERROR:  57014: /, 'a cancel while the shadow call is in flight: 57014');
cmp_ok($ms, '<', 200, "promptly ($ms ms)");
$v->{stderr} = '';
is($v->query_safe(q{SELECT canary_call('shadow again', 'u-shadow-next', 'shadow') ->> 'response'}),
	'old answer', 'the next call (in shadow stage) works');
is($node->safe_psql('postgres', 'SELECT worker_state FROM canary_stats()'), 'running', 'the worker is still running');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT request_id) FROM canary_shadow}),
	'0', 'still no duplicated shadow row');
$v->quit;
ok(!$node->log_contains('terminated by signal'), 'no backend crashed');

$node->stop;
done_testing();
