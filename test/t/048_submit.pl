# canary_submit / canary_result and the submission worker against the mock
# LLM server: prompts and chat requests in both provider formats, NOTIFY,
# validation at submit time, a rolled-back submission never called, the
# fault matrix (each fault fails the submission as canary_call fails, with
# the same SQLSTATE, and falls back the same way), a burst with nothing lost,
# a crash restart losing no committed submission, retention.
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

my $node = canary_node('submit', conf => qq{
llm_canary.submit_concurrency = 32
});

mock_profile('s-good', '{"echo": true}');
mock_profile('s-slow', '{"echo": true, "latency_ms": 1500}');
mock_profile('s-tool', '{"fixed_text": "x", "tool_call": {"name": "lookup", "arguments": {"q": 2}}}');
mock_profile('s-never', '{"echo": true}');

my @faults = (
	[ 'hang', 'openai', '{"hang": true}', 500, 0 ],
	[ 'reset', 'anthropic', '{"reset": true}', 5000, 0 ],
	[ 'http_503', 'openai', '{"error_rate": 1, "error_status": 503, "retry_after": null}', 5000, 1 ],
	[ 'rate_limit', 'anthropic', '{"rate_limit_rate": 1, "retry_after": 0.1}', 5000, 1 ],
	[ 'not_json', 'openai', '{"malformed": "not_json"}', 5000, 0 ],
);
my $sql = qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('good', 'openai', '$mock/v1', 's-good', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('good-an', 'anthropic', '$mock/v1', 's-good', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('slow', 'openai', '$mock/v1', 's-slow', 'LLM_CANARY_TEST_KEY', 0, 10000),
  ('tool-an', 'anthropic', '$mock/v1', 's-tool', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('never', 'openai', '$mock/v1', 's-never', 'LLM_CANARY_TEST_KEY', 0, 5000);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
  ('r-oa', 'full', 'good', 'good'), ('r-an', 'full', 'good-an', 'good-an'),
  ('r-slow', 'full', 'slow', 'slow'), ('r-tool', 'full', 'tool-an', 'tool-an'),
  ('r-never', 'full', 'never', 'never');
};
for my $f (@faults)
{
	my ($name, $provider, $profile, $timeout, $retries) = @$f;
	mock_profile("sf-$name", $profile);
	$sql .= qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('sf-$name', '$provider', '$mock/v1', 'sf-$name', 'LLM_CANARY_TEST_KEY', $retries, $timeout);
INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old) VALUES
  ('nf-$name', 'full', 'good', 'sf-$name', false), ('fb-$name', 'full', 'good', 'sf-$name', true);
};
}
$node->safe_psql('postgres', $sql);

sub result
{
	my ($id, $wait) = @_;
	$wait //= '10 s';
	return $node->safe_psql('postgres', qq{SELECT state || ':' || coalesce(sqlstate, '-') || ':' || coalesce(result->>'response', '-')
		FROM canary_result('$id', '$wait')});
}

# --- both formats, prompts and chat requests
my $id = $node->safe_psql('postgres', q{SELECT canary_submit('hello async', 'u1', 'r-oa')});
like($id, qr/^[0-9a-f-]{36}$/, 'canary_submit returns a request id');
is(result($id), 'done:-:hello async', 'openai: the worker answered the prompt');
is($node->safe_psql('postgres', qq{SELECT result->>'request_id' = '$id' FROM canary_result('$id')}), 't',
	'the call\'s request id is the submission\'s');
$id = $node->safe_psql('postgres',
	q{SELECT canary_submit('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "chat async"}]}'::jsonb, 'u1', 'r-an')});
is(result($id), 'done:-:chat async', 'anthropic: the worker answered the chat request');
$id = $node->safe_psql('postgres',
	q{SELECT canary_submit('{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "lookup"}}]}'::jsonb, 'u1', 'r-tool')});
is($node->safe_psql('postgres', qq{SELECT result->'tool_calls'->0->'function'->>'arguments' FROM canary_result('$id', '10 s')}),
	'{"q": 2}', 'a tool call comes back in OpenAI\'s shape');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM canary_requests WHERE request_id = '$id'}), '1',
	'the attempt is recorded under the submission\'s id');

# --- NOTIFY on the result
my $bg = $node->background_psql('postgres');
$bg->query_safe('LISTEN llm_canary_result');
$id = $node->safe_psql('postgres', q{SELECT canary_submit('notify me', 'u1', 'r-oa')});
result($id);
my $seen = '';
for (1 .. 50)
{
	$seen .= $bg->query_safe('SELECT 1');
	last if $seen =~ /\Q$id\E/;
	usleep(100_000);
}
like($seen, qr/Asynchronous notification "llm_canary_result" with payload "\Q$id\E"/,
	'the result is announced on llm_canary_result with the request id');
$bg->quit;

# --- validation at submit time; a rolled back submission is never made
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT canary_submit('{"messages": [{"role": "wizard", "content": "x"}]}'::jsonb, 'u1', 'r-oa')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/22023: invalid chat request/, 'an invalid chat request fails at submit (22023)');
($ret, $out, $err) = $node->psql('postgres', q{SELECT canary_submit('x', 'u1', 'no-such-rollout')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/42704/, 'an unknown rollout fails at submit (42704)');
($ret, $out, $err) = $node->psql('postgres', q{SELECT canary_submit('', 'u1', 'r-oa')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/22023: prompt must not be empty/, 'an empty prompt fails at submit');
$id = $node->safe_psql('postgres', q{BEGIN; SELECT canary_submit('never sent', 'u1', 'r-never'); ROLLBACK;});
sleep 1;
my $stats = mock_get('/_mock/stats');
is($stats->{models}{'s-never'}{requests} // 0, 0, 'a rolled back submission is never sent');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT * FROM canary_result('$id')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/42704: submission .* does not exist/, 'and has no result (42704)');

# --- the fault matrix: as canary_call fails, and falls back
for my $f (@faults)
{
	my ($name) = @$f;
	my ($r, $o, $e) = $node->psql('postgres', qq{SELECT canary_call('p', 'u1', 'nf-$name')},
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	my ($call_state) = $e =~ /ERROR:  ([0-9A-Z]{5}):/;
	$id = $node->safe_psql('postgres', qq{SELECT canary_submit('p', 'u1', 'nf-$name')});
	is(result($id), "failed:$call_state:-", "$name: the submission fails with canary_call's SQLSTATE $call_state");
	$id = $node->safe_psql('postgres', qq{SELECT canary_submit('p', 'u1', 'fb-$name')});
	is(result($id), 'done:-:p', "$name: with fallback the old model answers");
	is($node->safe_psql('postgres', qq{SELECT (result->>'fallback') || ':' || (result->>'model') FROM canary_result('$id')}),
		'true:good', "$name: the answer says fallback");
}
$node->safe_psql('postgres', 'SELECT canary_flush()');
for my $f (@faults)
{
	my ($name) = @$f;
	is($node->safe_psql('postgres', qq{SELECT count(*) || ':' || count(DISTINCT outcome || ':' || error)
		FROM canary_requests WHERE canary = 'nf-$name'}), '2:1', "$name: the call and the submission recorded alike");
}

# --- a burst: 500 submissions in one statement, nothing lost
my $t0 = time;
$node->safe_psql('postgres', q{SELECT count(canary_submit('burst ' || g, 'u-burst', 'r-oa')) FROM generate_series(1, 500) g});
my $submit_s = time - $t0;
my $done = 0;
for (1 .. 300)
{
	$done = $node->safe_psql('postgres', q{SELECT count(*) FROM canary_submissions WHERE user_id = 'u-burst' AND state = 'done'});
	last if $done == 500;
	usleep(100_000);
}
is($done, 500, sprintf('a burst of 500 (submitted in %.2f s): every one answered', $submit_s));
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_submissions WHERE user_id = 'u-burst' AND (request #>> '{}') <> (result->>'response')}), '0',
	'every answer is its own request\'s');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT count(*) || ':' || count(DISTINCT request_id) FROM canary_requests WHERE user_id = 'u-burst'}),
	'500:500', 'one attempt recorded per submission');

# --- crash restart: a committed submission is never lost
$node->safe_psql('postgres', q{SELECT count(canary_submit('crash ' || g, 'u-crash', 'r-slow')) FROM generate_series(1, 40) g});
for (1 .. 50)
{
	last if $node->safe_psql('postgres', q{SELECT count(*) FROM canary_submissions WHERE user_id = 'u-crash' AND state = 'running'}) > 0;
	usleep(100_000);
}
ok($node->safe_psql('postgres', q{SELECT count(*) FROM canary_submissions WHERE user_id = 'u-crash' AND state = 'running'}) > 0,
	'some submissions are in flight');
$node->stop('immediate');
$node->start;
for (1 .. 300)
{
	$done = $node->safe_psql('postgres', q{SELECT count(*) FROM canary_submissions WHERE user_id = 'u-crash' AND state = 'done'});
	last if $done == 40;
	usleep(100_000);
}
is($done, 40, 'after a crash restart every committed submission is answered');
ok($node->safe_psql('postgres', q{SELECT max(attempts) FROM canary_submissions WHERE user_id = 'u-crash'}) >= 2,
	'the ones claimed before the crash were claimed again');
like(slurp_file($node->logfile), qr/requests claimed before a restart are pending again/, 'the worker logs the recovery');

# --- retention: canary_maintenance() and canary_submissions_purge()
$node->safe_psql('postgres', q{UPDATE canary_submissions SET finished_at = now() - interval '2 days' WHERE user_id = 'u-burst'});
is($node->safe_psql('postgres', q{SELECT moved_rows FROM canary_maintenance() WHERE partition = 'canary_submissions'}), '500',
	'canary_maintenance() deletes finished submissions older than llm_canary.submit_retention');
$node->safe_psql('postgres', q{UPDATE canary_submissions SET finished_at = now() - interval '2 hours' WHERE user_id = 'u-crash'});
is($node->safe_psql('postgres', q{SELECT canary_submissions_purge('1 hour')}), '40', 'canary_submissions_purge(older_than)');

# --- the application role
$node->safe_psql('postgres', q{CREATE ROLE app LOGIN; GRANT llm_canary_app TO app; CREATE ROLE other LOGIN; GRANT llm_canary_app TO other;});
$id = $node->safe_psql('postgres', q{SELECT canary_submit('as app', 'u1', 'r-oa')}, extra_params => [ '-U', 'app' ]);
is($node->safe_psql('postgres', qq{SELECT state FROM canary_result('$id', '10 s')}, extra_params => [ '-U', 'app' ]), 'done',
	'the application role submits and reads its result');
($ret, $out, $err) = $node->psql('postgres', qq{SELECT * FROM canary_result('$id')}, extra_params => [ '-U', 'other' ]);
like($err, qr/permission denied for submission/, 'another role cannot read it');
($ret, $out, $err) = $node->psql('postgres', q{SELECT count(*) FROM canary_submissions}, extra_params => [ '-U', 'app' ]);
like($err, qr/permission denied for table canary_submissions/, 'the table itself is not readable by the application');

$node->stop;
done_testing();
