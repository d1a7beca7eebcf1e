# canary_call against the mock LLM server, for what pg_regress cannot show:
# cancel and termination of a call in flight (SQLSTATE and how fast), metrics
# of rolled-back and failed calls, a trip seen by another backend's next
# call, NOTIFY of the alert, and the worker's own periodic check.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time usleep);

my $mock = mock_url();
my $http = HTTP::Tiny->new(timeout => 5);

my $node = canary_node('call', conf => qq{
llm_canary.check_interval = 1
llm_canary.webhook_url = '$mock/hooks/webhook'
});

mock_profile('t-old', '{"fixed_text": "old answer", "latency_ms": 5}');
mock_profile('t-new', '{"fixed_text": "new answer", "latency_ms": 5}');
mock_profile('t-hang', '{"hang": true}');
mock_profile('t-500', '{"status": 500, "body": {"error": {"message": "upstream exploded", "type": "server_error"}}}');

$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
  ('old', 'openai', '$mock/v1', 't-old', 'LLM_CANARY_TEST_KEY', 0),
  ('new', 'openai', '$mock/v1', 't-new', 'LLM_CANARY_TEST_KEY', 0),
  ('hang', 'openai', '$mock/v1', 't-hang', 'LLM_CANARY_TEST_KEY', 0),
  ('broken', 'openai', '$mock/v1', 't-500', 'LLM_CANARY_TEST_KEY', 0);
UPDATE canary_config SET old_model = 'old', new_model = 'new', stage = 'full';
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('hanging', 'full', 'old', 'hang');
INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old)
VALUES ('failing', 'full', 'old', 'broken', false);
});

is($node->safe_psql('postgres', q{SELECT canary_call('hi', 'u1') ->> 'response'}),
	'new answer', 'full stage: the new model answers');

# --- cancel: statement_timeout, pg_cancel_backend, pg_terminate_backend
my ($ret, $out, $err);
my $t0 = time;
($ret, $out, $err) = $node->psql('postgres',
	q{SET statement_timeout = '300ms'; SELECT canary_call('hi', 'u1', 'hanging')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
my $elapsed = time - $t0;
like($err, qr/57014/, 'statement_timeout during a call: SQLSTATE 57014');
cmp_ok($elapsed, '<', 1.5, "statement_timeout ends the call promptly (${elapsed}s for a 0.3 s timeout)");

my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$bg->query_until(qr/started/, q{\echo started
SELECT canary_call('hi', 'u1', 'hanging');
});
usleep(300_000);
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
my $res = $bg->query('SELECT 1');
$elapsed = time - $t0;
like($bg->{stderr}, qr/canceling statement due to user request/, 'pg_cancel_backend cancels the call');
cmp_ok($elapsed, '<', 1.0, "cancel returns promptly (${elapsed}s)");
$bg->{stderr} = '';
is($bg->query_safe(q{SELECT canary_call('again', 'u1') ->> 'response'}), 'new answer',
	'the next call in the same backend works');
$bg->quit;

my $bg2 = $node->background_psql('postgres', on_error_stop => 0);
my $pid2 = $bg2->query_safe('SELECT pg_backend_pid()');
$bg2->query_until(qr/started/, q{\echo started
SELECT canary_call('hi', 'u1', 'hanging');
});
usleep(300_000);
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid2)");
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid2"),
	'pg_terminate_backend ends the backend during a call');
eval { $bg2->quit; };

# --- metrics never lost
$node->safe_psql('postgres', 'SELECT canary_flush()');
my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM canary_requests');
$node->safe_psql('postgres', q{BEGIN; SELECT canary_call('rolled back', 'u-rb'); ROLLBACK;});
($ret, $out, $err) = $node->psql('postgres', q{SELECT canary_call('fails', 'u-fail', 'failing')});
like($err, qr/could not get an answer from model "broken"/, 'a failing model raises a clear error');
like($err, qr/HTTP status 500.*upstream exploded/, 'the error carries the status and the provider message');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', qq{SELECT string_agg(user_id || ':' || outcome || ':' || coalesce(http_status::text, '-'), ',' ORDER BY user_id)
	FROM canary_requests WHERE user_id IN ('u-rb', 'u-fail')}),
	'u-fail:error:500,u-rb:ok:200', 'rolled-back and raising calls are both recorded');
my $canceled = $node->safe_psql('postgres',
	q{SELECT count(*) FROM canary_requests WHERE model = 'hang' AND error = 'canceled'});
cmp_ok($canceled, '>=', 2, 'interrupted attempts are recorded as canceled');

# --- a trip is seen by another backend's next call, and NOTIFY carries the payload
my $app = $node->background_psql('postgres');
is($app->query_safe(q{SELECT canary_route('u1')}), 'new', 'before the trip: new model');
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN llm_canary_alerts');
$node->safe_psql('postgres', q{SELECT canary_trip('default', 'tap test trip')});
is($app->query_safe(q{SELECT canary_route('u1')}), 'old', 'after the trip: the next call in another backend routes old');
is($app->query_safe(q{SELECT canary_call('x', 'u1') ->> 'model'}), 'old', 'and canary_call is served by the old model');
my $heard = $listener->query_safe('SELECT 1');
like($heard, qr/Asynchronous notification "llm_canary_alerts" with payload ".*tap test trip.*all traffic routed to old/s,
	'LISTEN llm_canary_alerts receives the alert payload');
$app->quit;
$listener->quit;

# --- the worker POSTs the alert to the webhook after the trip committed
ok($node->poll_query_until('postgres',
	q{SELECT webhook_status = 'delivered' FROM canary_alerts WHERE payload->>'reason' = 'tap test trip'}),
	'the alert is delivered to llm_canary.webhook_url');
my $hooks = $http->get("$mock/_mock/webhooks");
like($hooks->{content}, qr/"reason": ?"tap test trip".*"auto_action": ?"all traffic routed to old"/s,
	'the webhook received the alert payload');
is($node->safe_psql('postgres',
	q{SELECT webhook_attempts || ' ' || (delivered_at IS NOT NULL) FROM canary_alerts WHERE payload->>'reason' = 'tap test trip'}),
	'1 true', 'delivered at the first attempt');
$node->safe_psql('postgres', q{SELECT canary_rearm('default')});

# a failing webhook is retried with backoff and its error recorded
$node->safe_psql('postgres', qq{ALTER SYSTEM SET llm_canary.webhook_url = '$mock/hooks/webhook?status=503'; SELECT pg_reload_conf();});
sleep 1;
$node->safe_psql('postgres', q{SELECT canary_trip('default', 'webhook down')});
ok($node->poll_query_until('postgres',
	q{SELECT webhook_attempts >= 1 FROM canary_alerts WHERE payload->>'reason' = 'webhook down'}),
	'a failing webhook is attempted');
is($node->safe_psql('postgres',
	q{SELECT webhook_status || ' ' || webhook_last_error || ' ' || (webhook_next_at > now()) FROM canary_alerts WHERE payload->>'reason' = 'webhook down'}),
	'pending HTTP status 503 true', 'its error is recorded and a retry is scheduled');
is($node->safe_psql('postgres', q{SELECT kill_switch_armed FROM canary_config WHERE name = 'default'}),
	'f', 'a failing webhook does not undo the trip');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET llm_canary.webhook_url; SELECT pg_reload_conf(); SELECT canary_rearm('default');});

# --- the worker checks by itself every llm_canary.check_interval
$node->safe_psql('postgres', q{
-- one window is enough here (confirm_windows = 1): the records are 10 s old
INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows) VALUES ('auto', 'ramp_5', 'old', 'new', 1);
SELECT count(canary_record(canary => 'auto', user_id => 'c' || i, model => 'old', cohort => 'control',
                           outcome => 'ok', latency_ms => 50, ts => now() - interval '10 seconds'))
  FROM generate_series(1, 500) i;
SELECT count(canary_record(canary => 'auto', user_id => 'n' || i, model => 'new', cohort => 'canary',
                           outcome => CASE WHEN i % 5 = 0 THEN 'error' ELSE 'ok' END, latency_ms => 50,
                           ts => now() - interval '10 seconds'))
  FROM generate_series(1, 200) i;
SELECT canary_flush();
});
ok($node->poll_query_until('postgres', q{SELECT NOT kill_switch_armed FROM canary_config WHERE name = 'auto'}),
	'the worker trips the switch without pg_cron');
is($node->safe_psql('postgres', q{SELECT trip_reason FROM canary_config WHERE name = 'auto'}),
	'new-model error_rate=0.200 > 0.02', 'with the article\'s reason');

$node->stop;
done_testing();
