# canary_chat against the mock LLM server, in both provider formats: tool
# definitions, tool calls and tool results translated for Anthropic and read
# back in OpenAI's shape, the request as each provider received it, stop
# sequences, the response cache keyed on the normalised request, fallback,
# refusals, metrics, and invalid requests failing before any HTTP.
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

my $mock = mock_url();
my $json = JSON::PP->new->canonical;

my $node = canary_node('chat');

mock_profile('t-chat', '{"fixed_text": "Sunny, 21 degrees.", "tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}');
mock_profile('t-refuse', '{"fixed_text": "I cannot help with that."}');
mock_profile('t-chat-500', '{"status": 500, "body": {"error": {"message": "boom"}}}');

$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, max_tokens) VALUES
  ('oa', 'openai', '$mock/v1', 't-chat', 'LLM_CANARY_TEST_KEY', 0, NULL),
  ('an', 'anthropic', '$mock/v1', 't-chat', 'LLM_CANARY_TEST_KEY', 0, 77),
  ('oa-refuse', 'openai', '$mock/v1', 't-refuse', 'LLM_CANARY_TEST_KEY', 0, NULL),
  ('broken', 'anthropic', '$mock/v1', 't-chat-500', 'LLM_CANARY_TEST_KEY', 0, NULL);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
  ('r-oa', 'full', 'oa', 'oa'), ('r-an', 'full', 'an', 'an'),
  ('r-refuse', 'full', 'oa', 'oa-refuse'), ('r-fb', 'full', 'an', 'broken');
});

sub last_request
{
	my ($model) = @_;
	return mock_get("/_mock/requests?model=$model&limit=1")->[-1];
}

sub mock_total
{
	return mock_get('/_mock/stats')->{total}{requests} // 0;
}

sub chat
{
	my ($req, $rollout) = @_;
	my $q = $req;
	$q =~ s/'/''/g;
	return decode_json($node->safe_psql('postgres',
		"SELECT canary_chat('$q'::jsonb, 'u1', '$rollout')"));
}

my $tools = q{"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]};
my $ask = qq{{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather in Paris?"}], $tools, "seed": 7, "tool_choice": "auto"}};

for my $p ([ 'r-oa', 'openai', 'call_' ], [ 'r-an', 'anthropic', 'toolu_' ])
{
	my ($rollout, $name, $prefix) = @$p;
	my $r = chat($ask, $rollout);
	is($r->{outcome}, 'ok', "$name: a tool-call answer is an answer");
	is($r->{response}, undef, "$name: no text with a tool call");
	is($r->{finish_reason}, 'tool_calls', "$name: finish_reason tool_calls");
	is(scalar @{ $r->{tool_calls} }, 1, "$name: one tool call");
	my $tc = $r->{tool_calls}[0];
	is($tc->{type}, 'function', "$name: tool call in OpenAI's shape");
	is($tc->{function}{name}, 'get_weather', "$name: tool name");
	is_deeply(decode_json($tc->{function}{arguments}), { city => 'Paris' },
		"$name: arguments as a JSON string");
	like($tc->{id}, qr/^\Q$prefix\E[0-9a-f]{16}$/, "$name: the provider's call id");

	# the conversation goes on with the tool's result
	my $id = $tc->{id};
	my $args = $tc->{function}{arguments};
	$args =~ s/"/\\"/g;
	my $cont = qq{{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "$id", "type": "function", "function": {"name": "get_weather", "arguments": "$args"}}]}, {"role": "tool", "tool_call_id": "$id", "content": "21 C and sunny"}], $tools, "seed": 7, "stop": ["zzz"]}};
	$r = chat($cont, $rollout);
	is($r->{response}, 'Sunny, 21 degrees.', "$name: the answer after the tool result");
	is($r->{finish_reason}, 'stop', "$name: finish_reason stop");
	is($r->{tool_calls}, undef, "$name: no tool calls");
	is($r->{usage}{prompt_tokens}, 10, "$name: prompt tokens of the whole conversation");
	is($r->{usage}{completion_tokens}, 3, "$name: completion tokens");
	is($r->{usage}{total_tokens}, 13, "$name: total tokens");
	is($r->{model}, $name eq 'openai' ? 'oa' : 'an', "$name: the model row");
	is($r->{cached}, JSON::PP::false, "$name: not cached");
}

# what each provider received
my $an = last_request('t-chat');
my $b = $an->{body};
is($an->{path}, '/v1/messages', 'anthropic: /messages');
is($b->{system}, 'You are terse.', 'anthropic: the system turn became "system"');
is($b->{max_tokens}, 77, 'anthropic: max_tokens from the model row');
ok(!exists $b->{seed} && !exists $b->{tool_choice}, 'anthropic: OpenAI-only seed dropped, no tool_choice when absent');
is_deeply($b->{stop_sequences}, ['zzz'], 'anthropic: stop became stop_sequences');
is_deeply($b->{tools}, [ { name => 'get_weather', description => 'Weather of a city',
	input_schema => { type => 'object', properties => { city => { type => 'string' } } } } ],
	'anthropic: tool definition with input_schema');
is(scalar @{ $b->{messages} }, 3, 'anthropic: user, assistant, user');
is($b->{messages}[1]{content}[0]{type}, 'tool_use', 'anthropic: the tool call became tool_use');
is_deeply($b->{messages}[1]{content}[0]{input}, { city => 'Paris' }, 'anthropic: arguments parsed into input');
is($b->{messages}[2]{content}[0]{type}, 'tool_result', 'anthropic: the tool turn became tool_result');
is($b->{messages}[2]{content}[0]{content}, '21 C and sunny', 'anthropic: tool_result content');
is($b->{messages}[2]{role}, 'user', 'anthropic: tool_result in a user turn');

$node->safe_psql('postgres', q{SELECT canary_chat('{"messages": [{"role": "user", "content": "hi"}], "seed": 3, "top_p": 0.5}', 'u1', 'r-oa')});
my $oa = last_request('t-chat');
is($oa->{path}, '/v1/chat/completions', 'openai: /chat/completions');
is($oa->{body}{model}, 't-chat', 'openai: model id from the model row');
is($oa->{body}{seed}, 3, 'openai: seed passed through');
is($oa->{body}{top_p}, 0.5, 'openai: the rest passed through');

# tool_choice "required" -> any, response_format json_object -> system instruction
$node->safe_psql('postgres', qq{SELECT canary_chat('{"messages": [{"role": "user", "content": "hi"}], $tools, "tool_choice": "required", "response_format": {"type": "json_object"}}', 'u1', 'r-an')});
$b = last_request('t-chat')->{body};
is_deeply($b->{tool_choice}, { type => 'any' }, 'anthropic: tool_choice required became any');
is($b->{system}, 'Respond with a single JSON object and nothing else.', 'anthropic: JSON mode as a system instruction');

# stop sequences, both formats
for my $rollout ('r-oa', 'r-an')
{
	my $r = chat(q{{"messages": [{"role": "user", "content": "hi"}], "stop": [", 21"]}}, $rollout);
	is($r->{response}, 'Sunny', "$rollout: the stop sequence cut the answer");
	is($r->{finish_reason}, 'stop', "$rollout: finish_reason stop after a stop sequence");
}

# refusal detection and fallback work as for canary_call
my $r = chat(q{{"messages": [{"role": "user", "content": "hi"}]}}, 'r-refuse');
is($r->{outcome}, 'refusal', 'refusal patterns apply to chat answers');
$r = chat($ask, 'r-fb');
is($r->{fallback}, JSON::PP::true, 'a failing new model falls back to the old one');
is($r->{model}, 'an', 'the old model answered');
is($r->{tool_calls}[0]{function}{name}, 'get_weather', 'the fallback answer keeps its tool call');

# metrics: one row per attempt
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', qq{SELECT string_agg(model || ':' || outcome || ':' || fallback, ',' ORDER BY fallback)
	FROM canary_requests WHERE request_id = '$r->{request_id}'}),
	'broken:error:false,an:ok:true', 'both attempts of the fallback are recorded');

# the response cache, keyed on the normalised request
my ($c1, $c2) = split /\n/, $node->safe_psql('postgres', qq{
SET llm_canary.response_cache_ttl = 60;
SELECT canary_chat('$ask', 'u1', 'r-an')::text;
SELECT canary_chat('$ask', 'u2', 'r-an')::text;});
$c1 = decode_json($c1);
$c2 = decode_json($c2);
is($c2->{cached}, JSON::PP::true, 'the same request is answered from the cache');
is($c1->{cached}, JSON::PP::false, 'the first one was not');
is_deeply($c2->{tool_calls}, $c1->{tool_calls}, 'the cached answer has the same tool calls');
is($c2->{finish_reason}, 'tool_calls', 'and the same finish reason');

# shadow mode: the new model gets its copy of the whole chat request, in its own dialect
$node->safe_psql('postgres', q{INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
	VALUES ('r-shadow', 'shadow', 'oa', 'an', 1.0)});
$r = chat(q{{"messages": [{"role": "system", "content": "Shadowed."}, {"role": "user", "content": "hi"}], "stop": ["zzz"]}}, 'r-shadow');
is($r->{model} . ':' . $r->{response}, 'oa:Sunny, 21 degrees.', 'shadow stage: the old model answers the chat request');
my $shadow = '';
for (1 .. 100)
{
	$shadow = $node->safe_psql('postgres', qq{SELECT new_model || ':' || coalesce(new_text, '-') || ':' || coalesce(new_error, '-') || ':' || coalesce(verdict, '-')
		FROM canary_shadow WHERE request_id = '$r->{request_id}'});
	last if $shadow ne '';
	select(undef, undef, undef, 0.1);
}
is($shadow, 'an:Sunny, 21 degrees.:-:identical', 'the shadow copy of the chat request was answered by the new model');
# the worker may send the shadow copy before the old model's call reaches the
# mock (dispatch comes first): of the last two requests, take the Anthropic one
($b) = grep { exists $_->{system} } map { $_->{body} } @{ mock_get('/_mock/requests?model=t-chat&limit=2') };
is($b->{system} . '|' . $b->{messages}[0]{content}[0]{text} . '|' . join(',', @{ $b->{stop_sequences} }),
	'Shadowed.|hi|zzz', 'the shadow copy went out in Anthropic\'s dialect, translated');

# invalid requests fail before any HTTP, with specific SQLSTATEs
my $before = mock_total();
my @bad = (
	[ q{{"model": "x"}}, '22023', qr/no "messages"/, 'no messages' ],
	[ q{{"messages": []}}, '22023', qr/"messages" is empty/, 'empty messages' ],
	[ q{{"messages": [{"role": "wizard", "content": "hi"}]}}, '22023', qr/role "wizard"/, 'unknown role' ],
	[ q{{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}}, '22023', qr/has no id/, 'a tool call without an id' ],
	[ q{{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}}, '22023', qr/tool call "nope"/, 'a tool result for no tool call' ],
	[ q{{"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]}}, '22023', qr/not a JSON object/, 'arguments that are not JSON' ],
	[ q{{"messages": [{"role": "user", "content": "hi"}], "stream": true}}, '0A000', qr/streaming is not supported/, 'streaming' ],
	[ q{"just a string"}, '22023', qr/not a JSON object/, 'not an object' ],
	[ q{{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}}, '22023', qr/max_tokens/, 'max_tokens 0' ],
);
for my $t (@bad)
{
	my ($req, $state, $re, $what) = @$t;
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT canary_chat('$req', 'u1', 'r-an')",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/$state/, "$what: SQLSTATE $state");
	like($err, $re, "$what: the error says why");
}
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET llm_canary.max_request_bytes = 1024; SELECT canary_chat(jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat('x', 2000)))), 'u1', 'r-an')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/54000.*chat request is too large/s, 'a body over the size cap: 54000');
is(mock_total(), $before, 'no invalid request reached the mock');

# an Anthropic content block without "type" is skipped (it was read through
# an uninitialised JsonbValue: after a text block it counted as text)
mock_profile('t-typeless', '{"status": 200, "body": {"id": "m", "type": "message", "role": "assistant", "model": "t-typeless", "content": [{"type": "text", "text": "kept"}, {"text": " ghost"}], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}}');
$node->safe_psql('postgres', qq{INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries)
	VALUES ('typeless', 'anthropic', '$mock/v1', 't-typeless', 'LLM_CANARY_TEST_KEY', 0);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('r-typeless', 'full', 'typeless', 'typeless')});
$r = chat(q{{"messages": [{"role": "user", "content": "hi"}]}}, 'r-typeless');
is($r->{response} . '|' . $r->{finish_reason}, 'kept|stop', 'a content block without "type" is skipped');

$node->stop;
done_testing();
