# canary_batch against the mock LLM server: prompts and chat requests in
# both provider formats, results in input order with a per-row outcome,
# raise_on_error, the fault matrix of RELIABILITY.md (each fault fails a row
# exactly as canary_call fails, with the same SQLSTATE, and falls back the
# same way), retries, every attempt recorded, the concurrency limits, and a
# cancel that stops every transfer at once.
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

my $node = canary_node('batch', conf => qq{
llm_canary.max_concurrent_requests = 40
});

mock_profile('b-good', '{"echo": true, "latency_ms": 5}');
mock_profile('b-slow', '{"fixed_text": "slow answer", "latency_ms": 300}');
mock_profile('b-hang', '{"hang": true}');
mock_profile('b-tool', '{"fixed_text": "x", "tool_call": {"name": "lookup", "arguments": {"q": 1}}}');

my $refused = 'http://127.0.0.1:1/v1';
# name => provider, profile, model overrides
my @faults = (
	[ 'hang', 'openai', '{"hang": true}', "timeout_ms => 500" ],
	[ 'refused', 'anthropic', '{}', qq{base_url => "'$refused'"} ],
	[ 'reset', 'openai', '{"reset": true}', '' ],
	[ 'http_500', 'openai', '{"error_rate": 1, "error_status": 500}', '' ],
	[ 'http_529', 'anthropic', '{"error_rate": 1, "error_status": 529}', '' ],
	[ 'rate_limit', 'openai', '{"rate_limit_rate": 1, "retry_after": 0.1}', "max_retries => 1" ],
	[ 'html_200', 'openai', '{"malformed": "html"}', '' ],
	[ 'truncated_json', 'anthropic', '{"malformed": "truncated_json"}', '' ],
	[ 'content_null', 'openai', '{"malformed": "content_null"}', '' ],
);

my $sql = qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('good', 'openai', '$mock/v1', 'b-good', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('good-an', 'anthropic', '$mock/v1', 'b-good', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('slow', 'openai', '$mock/v1', 'b-slow', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('hang', 'openai', '$mock/v1', 'b-hang', 'LLM_CANARY_TEST_KEY', 0, 60000),
  ('tool-an', 'anthropic', '$mock/v1', 'b-tool', 'LLM_CANARY_TEST_KEY', 0, 5000);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
  ('r-oa', 'full', 'good', 'good'), ('r-an', 'full', 'good-an', 'good-an'),
  ('r-slow', 'full', 'slow', 'slow'), ('r-hang', 'full', 'hang', 'hang'),
  ('r-tool', 'full', 'tool-an', 'tool-an');
};
for my $f (@faults)
{
	my ($name, $provider, $profile, $set) = @$f;
	mock_profile("bf-$name", $profile);
	my %m = (base_url => "'$mock/v1'", timeout_ms => 5000, max_retries => 0,
		eval "($set)");
	$sql .= qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('bf-$name', '$provider', $m{base_url}, 'bf-$name', 'LLM_CANARY_TEST_KEY', $m{max_retries}, $m{timeout_ms});
INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old) VALUES
  ('nf-$name', 'full', 'good', 'bf-$name', false), ('fb-$name', 'full', 'good', 'bf-$name', true);
};
}
$node->safe_psql('postgres', $sql);

# --- prompts and chat requests, both formats, input order
for my $r ([ 'r-oa', 'openai' ], [ 'r-an', 'anthropic' ])
{
	my ($rollout, $name) = @$r;
	is($node->safe_psql('postgres', qq{
SELECT string_agg(ord || ':' || ok || ':' || (result->>'response'), ',' ORDER BY ord)
  FROM canary_batch(ARRAY['one', 'two', 'three', 'four'], ARRAY['u1'], '$rollout')}),
		'1:true:one,2:true:two,3:true:three,4:true:four', "$name: prompts answered in input order");
	is($node->safe_psql('postgres', qq{
SELECT string_agg(ord || ':' || ok || ':' || coalesce(result->>'response', sqlstate), ',' ORDER BY ord)
  FROM canary_batch(ARRAY['"a prompt"', '{"messages": [{"role": "user", "content": "a chat"}]}',
                          '{"messages": []}', '""', '42', NULL]::jsonb[],
                    ARRAY['u1', 'u2', 'u3', 'u4', 'u5', 'u6'], '$rollout')}),
		'1:true:a prompt,2:true:a chat,3:false:22023,4:false:22023,5:false:22023,6:false:22004',
		"$name: prompts, chat requests and invalid rows side by side");
}
is($node->safe_psql('postgres', q{
SELECT string_agg(ord || ':' || ok || ':' || coalesce(sqlstate, '-'), ',' ORDER BY ord)
  FROM canary_batch(ARRAY['x', 'y'], ARRAY['u1', NULL], 'r-oa')}),
	'1:true:-,2:false:22004', 'a NULL user id fails its row only');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM canary_batch(ARRAY['x'], ARRAY['u1'], 'no-such-rollout') WHERE NOT ok AND sqlstate = '42704'}),
	'1', 'an unknown rollout fails the rows with 42704');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT * FROM canary_batch(ARRAY['"ok"', '{"messages": 1}']::jsonb[], ARRAY['u1'], 'r-oa', raise_on_error => true)},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  22023: invalid chat request/, 'raise_on_error raises the failed row\'s error');
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT * FROM canary_batch(ARRAY['a', 'b'], ARRAY['u1', 'u2', 'u3'], 'r-oa')});
like($err, qr/user_ids must have one element, or as many as requests/, 'user_ids of the wrong length');
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT * FROM canary_batch(ARRAY['a'], ARRAY['u1'], 'r-oa', concurrency => 0)});
like($err, qr/concurrency must be between 1 and 1024/, 'concurrency out of range');
is($node->safe_psql('postgres', q{
SELECT result->'tool_calls'->0->'function'->>'name' || ':' || (result->>'finish_reason')
  FROM canary_batch(ARRAY['{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "lookup"}}]}']::jsonb[], ARRAY['u1'], 'r-tool')}),
	'lookup:tool_calls', 'a chat request in a batch: tool calls translated back from Anthropic');

# --- the fault matrix: each row fails as canary_call fails, and falls back
for my $f (@faults)
{
	my ($name) = @$f;
	my ($r, $o, $e) = $node->psql('postgres', qq{SELECT canary_call('p', 'u1', 'nf-$name')},
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	my ($call_state) = $e =~ /ERROR:  ([0-9A-Z]{5}):/;
	ok(defined $call_state, "$name: canary_call fails (" . ($call_state // 'no error') . ')');
	is($node->safe_psql('postgres', qq{
SELECT string_agg(DISTINCT ok || ':' || sqlstate, ',') FROM canary_batch(ARRAY['p1', 'p2', 'p3'], ARRAY['u1'], 'nf-$name')}),
		"false:$call_state", "$name: every batch row fails with canary_call's SQLSTATE $call_state");
	is($node->safe_psql('postgres', qq{
SELECT string_agg(DISTINCT ok || ':' || (result->>'fallback') || ':' || (result->>'model') || ':' || (result->>'response'), ',')
  FROM canary_batch(ARRAY['p'], ARRAY['u1'], 'fb-$name')}),
		'true:true:good:p', "$name: with fallback the old model answers");
}
$node->safe_psql('postgres', 'SELECT canary_flush()');
for my $f (@faults)
{
	my ($name) = @$f;
	my $want = $node->safe_psql('postgres', qq{SELECT outcome || ':' || error FROM canary_requests
		WHERE canary = 'nf-$name' ORDER BY ts LIMIT 1});
	is($node->safe_psql('postgres', qq{SELECT count(*) || ':' || count(DISTINCT outcome || ':' || error)
		FROM canary_requests WHERE canary = 'nf-$name'}),
		'4:1', "$name: the call and the 3 batch rows recorded alike ($want)");
	is($node->safe_psql('postgres', qq{SELECT string_agg(model || ':' || fallback, ',' ORDER BY fallback)
		FROM canary_requests WHERE canary = 'fb-$name'}),
		"bf-$name:false,good:true", "$name: both attempts of the fallback recorded");
}

# --- a retried 503 in a batch: retried like a single call
mock_profile('b-flaky', '{"fail_first_n": 2, "fail_status": 503, "retry_after": 0, "fixed_text": "third time"}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
  ('flaky', 'openai', '$mock/v1', 'b-flaky', 'LLM_CANARY_TEST_KEY', 2);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('r-flaky', 'full', 'flaky', 'flaky');});
is($node->safe_psql('postgres', q{SELECT ok || ':' || (result->>'response') FROM canary_batch(ARRAY['p'], ARRAY['u1'], 'r-flaky')}),
	'true:third time', 'a 503 twice, then an answer: retried within the attempt');

# --- concurrency: 20 answers of 300 ms, 10 at a time
my $t0 = time;
is($node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE ok) FROM canary_batch(ARRAY(SELECT 'p' || g FROM generate_series(1, 20) g), ARRAY['u1'], 'r-slow', concurrency => 10)}),
	'20', '20 slow requests answered');
my $took = time - $t0;
cmp_ok($took, '<', 2.0, "concurrency 10: 20 x 300 ms in ${took}s (serial: 6 s)");
cmp_ok($took, '>=', 0.55, "at most 10 at once: at least 2 rounds (${took}s)");

# the server-wide limit (llm_canary.max_concurrent_requests = 40) caps a batch asking for 100
$t0 = time;
is($node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE ok) FROM canary_batch(ARRAY(SELECT 'q' || g FROM generate_series(1, 80) g), ARRAY['u1'], 'r-slow', concurrency => 100)}),
	'80', '80 slow requests answered under the global limit');
$took = time - $t0;
cmp_ok($took, '>=', 0.55, "global limit 40: 80 x 300 ms take at least 2 rounds (${took}s)");

# --- cancel stops every transfer at once
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $bg->query_safe('SELECT pg_backend_pid()');
$bg->query_until(qr/started/, q{\echo started
SELECT count(*) FROM canary_batch(ARRAY(SELECT 'h' || g FROM generate_series(1, 30) g), ARRAY['u-cancel'], 'r-hang', concurrency => 30);
});
my $inflight = 0;
for (1 .. 50)
{
	my $s = mock_get('/_mock/stats');
	$inflight = $s->{models}{'b-hang'}{in_flight} // 0;
	last if $inflight == 30;
	usleep(100_000);
}
is($inflight, 30, '30 transfers in flight');
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$bg->query('SELECT 1');
$took = time - $t0;
like($bg->{stderr}, qr/canceling statement due to user request/, 'cancel: 57014');
cmp_ok($took, '<', 1.0, "cancel returns promptly (${took}s)");
for (1 .. 50)
{
	my $s = mock_get('/_mock/stats');
	$inflight = $s->{models}{'b-hang'}{in_flight} // 0;
	last if $inflight == 0;
	usleep(100_000);
}
is($inflight, 0, 'every transfer was stopped (the mock sees no open request)');
$bg->{stderr} = '';
is($bg->query_safe(q{SELECT string_agg(ok::text, ',') FROM canary_batch(ARRAY['again'], ARRAY['u1'], 'r-oa')}), 'true',
	'the next batch in the same backend works');
$bg->quit;
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE user_id = 'u-cancel' AND error = 'canceled'}),
	'30', 'every interrupted attempt is recorded as canceled');
is($node->safe_psql('postgres', q{SELECT dropped FROM canary_stats()}), '0', 'no metric dropped');

$node->stop;
done_testing();
