# The outbound HTTP layer (src/http.c): what a backend's transfer must not
# do to the rest of the server, and answers in a database that is not UTF8.
#
#  - Interrupts are processed while a call waits for its model: a
#    ProcSignalBarrier (DROP DATABASE emits one) is absorbed, and a
#    memory-context log request is served at once, in well under the
#    model's timeout instead of after it.
#  - In a LATIN1 database, answers are converted with the server's encoding
#    conversion (raw UTF-8 and \u escapes alike); a character LATIN1 lacks
#    becomes '?', and the answer is an answer (outcome ok), not a malformed
#    response that counts against the kill switch.  Prompts and chat
#    requests go out as UTF-8.
#
# Needs LLM_CANARY_MOCK_URL and LLM_CANARY_TEST_KEY (allowed by test/tap.conf),
# as exported by test/run_suite.sh.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use CanaryNode;
use MockLLM;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $mock = mock_url();

my $node = canary_node('http', database => 'lat', database_options => q{TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'}, conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 100
});
$node->safe_psql('postgres', 'CREATE DATABASE doomed');
# the worker serves "lat" once it exists (it retries every few seconds)
$node->safe_psql('lat', q{SELECT canary_flush('60 seconds')});

# --- a signal barrier during a transfer
mock_profile('h-hang', '{"hang": true}');
$node->safe_psql('lat', qq{INSERT INTO canary_models (name, provider, base_url, model, max_retries, timeout_ms, api_key_env)
	VALUES ('h-hang', 'openai', '$mock/v1', 'h-hang', 0, 30000, 'LLM_CANARY_TEST_KEY')});
my $bg = $node->background_psql('lat', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT canary_probe('h-hang', 'wait for me') ->> 'outcome';
});
ok($node->poll_query_until('lat',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT canary_probe(''h-hang''%'}),
	'a call waits for a hanging model (timeout_ms 30000)');
usleep(300_000);
# Interrupts are processed while the call waits: a request to log the
# backend's memory contexts (handled in CHECK_FOR_INTERRUPTS, like a signal
# barrier) is served at once, not when the model answers.  Before the fix
# both checks failed: 3 s without the log line, DROP DATABASE 27 s.
my $pid = $node->safe_psql('lat',
	q{SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT canary_probe(''h-hang''%'});
my $log_offset = -s $node->logfile;
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_log_backend_memory_contexts($pid)");
my $logged = 0;
for (1 .. 60)
{
	if (slurp_file($node->logfile, $log_offset) =~ /logging memory contexts of PID $pid/)
	{
		$logged = 1;
		last;
	}
	usleep(50_000);
}
my $took = time - $t0;
ok($logged && $took < 3, sprintf('a call in flight processes interrupts: memory contexts logged after %.2f s', $took));
$t0 = time;
$node->safe_psql('postgres', 'DROP DATABASE doomed');
$took = time - $t0;
cmp_ok($took, '<', 3, sprintf('DROP DATABASE of another database finishes in %.2f s during the call', $took));
is($node->safe_psql('lat',
		q{SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT canary_probe(''h-hang''%'}),
	'1', 'and the call is still waiting for its model');
$node->safe_psql('lat',
	q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT canary_probe(''h-hang''%'});
$bg->quit;

# --- answers in a LATIN1 database
# U+2019 (’) and U+2014 (—) have no LATIN1 character, é (U+00E9) has one.
mock_profile('l-raw', qq{{"fixed_text": "It\\u2019s done \\u2014 caf\\u00e9"}});
mock_profile('l-esc', q{{"status": 200, "body": "{\"id\":\"x\",\"object\":\"chat.completion\",\"model\":\"l-esc\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"It\\\\u2019s done \\\\u2014 caf\\\\u00e9 \\\\ud83d\\\\ude00\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":5}}"}});
mock_profile('l-echo', '{"echo": true}');
mock_profile('l-old', '{"fixed_text": "old"}');
$node->safe_psql('lat', qq{
INSERT INTO canary_models (name, provider, base_url, model, max_retries, timeout_ms, api_key_env)
  SELECT m, p, '$mock/v1', m, 0, 5000, 'LLM_CANARY_TEST_KEY'
    FROM (VALUES ('l-raw', 'openai'), ('l-esc', 'openai'), ('l-echo', 'anthropic'), ('l-old', 'openai')) v(m, p);
INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old) VALUES
  ('l-full', 'full', 'l-old', 'l-raw', false),
  ('l-shadow', 'shadow', 'l-old', 'l-esc', false),
  ('l-chat', 'full', 'l-old', 'l-echo', false);
});
is($node->safe_psql('lat', q{SELECT r ->> 'outcome', (r ->> 'text') = 'It?s done ? caf' || chr(233)
	FROM canary_probe('l-raw', 'hello') r}),
	"ok|t", 'raw UTF-8 answer: converted to LATIN1, unrepresentable characters as ?');
is($node->safe_psql('lat', q{SELECT r ->> 'outcome', (r ->> 'text') = 'It?s done ? caf' || chr(233) || ' ?'
	FROM canary_probe('l-esc', 'hello') r}),
	"ok|t", '\u escapes (a surrogate pair too): the same');
is($node->safe_psql('lat', q{SELECT (r ->> 'text') = 'caf' || chr(233) || ' cr' || chr(232) || 'me'
	FROM canary_probe('l-echo', 'caf' || chr(233) || ' cr' || chr(232) || 'me') r}),
	't', 'a LATIN1 prompt goes out as UTF-8 and comes back unchanged');
is($node->safe_psql('lat', q{SELECT (canary_chat(jsonb_build_object('messages', jsonb_build_array(
		jsonb_build_object('role', 'user', 'content', 'caf' || chr(233)))), 'u1', 'l-chat') ->> 'response')
	= 'caf' || chr(233)}),
	't', 'canary_chat: a LATIN1 chat request goes out as UTF-8 and comes back unchanged');
is($node->safe_psql('lat', q{SELECT r ->> 'outcome', (r ->> 'response') = 'It?s done ? caf' || chr(233)
	FROM canary_call('hello', 'u1', 'l-full') r}),
	"ok|t", 'canary_call: the converted answer');
$node->safe_psql('lat', q{SELECT canary_call('hello', 'u' || i, 'l-shadow') FROM generate_series(1, 3) i});
$node->safe_psql('lat', 'SELECT canary_flush()');
ok($node->poll_query_until('lat', q{SELECT count(*) = 3 FROM canary_shadow WHERE canary = 'l-shadow'}),
	'the shadow rows are written');
is($node->safe_psql('lat', q{SELECT count(*) FILTER (WHERE new_error IS NULL
		AND new_text = 'It?s done ? caf' || chr(233) || ' ?') || '/' || count(*)
	FROM canary_shadow WHERE canary = 'l-shadow'}),
	'3/3', 'shadow calls: the converted answer, no error');
is($node->safe_psql('lat', q{SELECT string_agg(DISTINCT outcome || ':' || coalesce(error, '-'), ',')
	FROM canary_requests WHERE model IN ('l-raw', 'l-old', 'l-echo')}),
	'ok:-', 'no attempt is recorded as an error (the kill switch sees none)');

$node->stop;
done_testing();
