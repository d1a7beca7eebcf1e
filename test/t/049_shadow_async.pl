# Shadow mode for the calls that do not end with their statement:
# canary_batch (many calls in one transaction, each step in its own
# subtransaction) and the submission worker (a call begins in one
# transaction and ends in a later one).  Each call's shadow job must get
# the old model's answer.  Before the fix the backend tracked 8 open jobs
# (a batch of 20 left 12 "missing"), closed every open job at any
# subtransaction abort (one invalid row of a batch closed the others'), and
# closed them at every commit (every submission's old half was "missing").
# And a chat request's shadow answer kept in the response cache is a whole
# chat answer (the worker stored the text alone, and canary_chat served
# that hit without finish_reason or tool calls).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time usleep);

my $mock = mock_url();

my $node = canary_node('shadow_async', conf => qq{
llm_canary.response_cache_ttl = 600
});

mock_profile('sa-old', '{"echo": true}');
mock_profile('sa-new', '{"echo": true, "latency_ms": 20}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('old', 'openai', '$mock/v1', 'sa-old', 'LLM_CANARY_TEST_KEY', 0, 5000),
  ('new', 'openai', '$mock/v1', 'sa-new', 'LLM_CANARY_TEST_KEY', 0, 5000);
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
  VALUES ('r-shadow', 'shadow', 'old', 'new', 1);
});

# Wait (at most 30 s) until n shadow rows of user_id exist; returns
# "rows|rows with the old answer".
sub shadow_rows
{
	my ($user, $n) = @_;
	my $got;
	my $deadline = time + 30;
	do
	{
		$got = $node->safe_psql('postgres',
			qq{SELECT count(*) || '|' || count(*) FILTER (WHERE old_error IS NULL AND old_text = new_text)
				FROM canary_shadow WHERE user_id = '$user'});
		return $got if (split /\|/, $got)[0] >= $n;
		usleep(100_000);
	} while (time < $deadline);
	return $got;
}

# a batch of 20 prompts and one invalid row (its step fails in a subtransaction)
is($node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE ok) || '|' || count(*) FILTER (WHERE NOT ok)
  FROM canary_batch(ARRAY(SELECT to_jsonb('batch ' || g) FROM generate_series(1, 10) g)
                    || '42'::jsonb
                    || ARRAY(SELECT to_jsonb('batch ' || g) FROM generate_series(11, 20) g),
                    ARRAY['u-batch'], 'r-shadow')}),
	'20|1', 'a shadow-stage batch: 20 answered, the invalid row failed');
is(shadow_rows('u-batch', 20), '20|20', 'each of the 20 shadow jobs got the old answer');

# submissions: the call begins in one transaction of the worker, ends in another
$node->safe_psql('postgres',
	q{SELECT count(canary_submit('submitted ' || g, 'u-submit', 'r-shadow')) FROM generate_series(1, 5) g});
is(shadow_rows('u-submit', 5), '5|5', 'each of 5 submissions\' shadow jobs got the old answer');

# a canary_call canceled between dispatch and answer still closes its job at once
mock_profile('sa-old', '{"hang": true}');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET statement_timeout = '500ms'; SELECT canary_call('canceled', 'u-cancel', 'r-shadow')});
like($err, qr/canceling statement due to statement timeout/, 'the call is canceled');
is(shadow_rows('u-cancel', 1), '1|0', 'its job is written without the old answer');
is($node->safe_psql('postgres', q{SELECT old_error FROM canary_shadow WHERE user_id = 'u-cancel'}),
	'missing', 'old_error "missing" (closed by the abort, not after the grace period)');

# a chat request's shadow answer in the response cache is a whole chat answer
mock_profile('sa-chat', '{"fixed_text": "Sunny."}');
mock_profile('sa-old', '{"echo": true}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('chat', 'openai', '$mock/v1', 'sa-chat', 'LLM_CANARY_TEST_KEY', 0, 5000);
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate) VALUES
  ('r-chat-shadow', 'shadow', 'old', 'chat', 1), ('r-chat-full', 'full', 'chat', 'chat', 1);
});
my $chat = q{'{"messages": [{"role": "user", "content": "Weather in Paris?"}]}'::jsonb};
is($node->safe_psql('postgres', qq{SELECT r->>'model' FROM canary_chat($chat, 'u-chat', 'r-chat-shadow') r}),
	'old', 'shadow stage: the old model answers the chat request');
is(shadow_rows('u-chat', 1), '1|0', 'the shadow job was answered by the new model');
is($node->safe_psql('postgres', qq{SELECT (r->>'cached') || '|' || (r->>'response') || '|' || coalesce(r->>'finish_reason', '-')
	FROM canary_chat($chat, 'u-chat', 'r-chat-full') r}),
	'true|Sunny.|stop', 'the shadow answer served from the cache is a whole chat answer (finish_reason stop)');

$node->stop;
done_testing();
