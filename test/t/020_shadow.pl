# Shadow mode against the mock LLM server (test/mock_llm.py): which requests
# are shadowed, that the user's latency never includes the new model's, how
# the new model's failures and a canceled call are recorded, and that a
# shutdown with shadow calls in flight records each of them exactly once.
#
# Needs LLM_CANARY_MOCK_URL and LLM_CANARY_TEST_KEY, as exported by
# test/run_suite.sh.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time sleep);

my $mock = mock_url(need_key => 1);



sub mock_in_flight
{
	my ($model) = @_;
	return mock_get('/_mock/stats')->{models}{$model}{in_flight} // 0;
}

my $node = canary_node('shadow', conf => qq{
llm_canary.shadow_grace_ms = '60s'
});

# canary_shadow comes from sql/parts/35_shadow.sql; a stand-in with the
# public columns when that part is not there.
$node->safe_psql('postgres', q{
DO $$
BEGIN
    IF to_regclass('canary_shadow') IS NULL THEN
        CREATE TABLE canary_shadow (
            request_id uuid, ts timestamptz, canary text, user_id text,
            prompt_hash text, prompt text, prompt_class text, old_model text,
            new_model text, old_text text, old_tokens int, old_latency_ms int,
            old_refusal boolean, old_error text, new_text text, new_tokens int,
            new_latency_ms int, new_refusal boolean, new_error text,
            verdict text, similarity float8, old_opening text,
            new_opening text, length_ratio float8);
    END IF;
END $$;
});

# the old model speaks OpenAI, the new one Anthropic
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, timeout_ms, max_retries, api_key_env)
VALUES ('m-old', 'openai', '$mock/v1', 'shadow-old', 5000, 0, 'LLM_CANARY_TEST_KEY'),
       ('m-new', 'anthropic', '$mock/v1', 'shadow-new', 5000, 0, 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
VALUES ('shadowtest', 'shadow', 'm-old', 'm-new', 1);
});
mock_profile('shadow-old', {});
mock_profile('shadow-new', {});

# One canary_call; returns (request_id, response, latency_ms, wall ms).
sub call
{
	my ($prompt, $user, $pre) = @_;
	$pre //= '';
	my $t0 = time;
	my $out = $node->safe_psql('postgres',
		"$pre SELECT r->>'request_id', r->>'latency_ms', r->>'response'"
		  . " FROM canary_call(\$p\$$prompt\$p\$, '$user', 'shadowtest') r");
	my $wall = int((time - $t0) * 1000);
	my ($id, $lat, $resp) = split /\|/, $out, 3;
	return ($id, $resp, $lat, $wall);
}

sub ids_sql { return "ARRAY[" . join(',', map { "'$_'::uuid" } @_) . "]" }

# Wait (at most 30 s) until the rows of these requests are there.
sub wait_rows
{
	my ($n, @ids) = @_;
	my $got;
	my $deadline = time + 30;
	do
	{
		$got = $node->safe_psql('postgres',
			"SELECT count(*) FROM canary_shadow WHERE request_id = ANY(" . ids_sql(@ids) . ")");
		return $got if $got >= $n;
		sleep 0.1;
	} while (time < $deadline);
	return $got;
}

sub row
{
	my ($id, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT $cols FROM canary_shadow WHERE request_id = '$id'");
}

# --- sample rate 1: every request is shadowed, both answers recorded ------
my (@ids, %resp);
for my $i (1 .. 5)
{
	my ($id, $resp) = call("How do I reset my password? ($i)", "user$i");
	push @ids, $id;
	$resp{$id} = $resp;
}
is(wait_rows(5, @ids), 5, 'rate 1: one row per request');
my $ok = 0;
for my $id (@ids)
{
	# same mock profile, same prompt: the mock gives both models the same text
	$ok++ if row($id, q{old_text = new_text AND old_error IS NULL AND new_error IS NULL
		AND old_tokens = new_tokens AND old_tokens > 0 AND new_latency_ms >= 0
		AND old_latency_ms >= 0 AND NOT old_refusal AND NOT new_refusal
		AND old_model = 'm-old' AND new_model = 'm-new' AND canary = 'shadowtest'
		AND prompt LIKE 'How do I reset my password? (_)'
		AND prompt_hash = left(encode(sha256(convert_to(prompt, 'UTF8')), 'hex'), 16)
		AND user_id LIKE 'user_' AND prompt_class IS NULL})
		eq 't';
}
is($ok, 5, 'rate 1: rows hold both answers and the request');
is(row($ids[0], 'old_text'), $resp{ $ids[0] }, 'old_text is what the user got');

# --- sample rate 0: none ---------------------------------------------------
$node->safe_psql('postgres', "UPDATE canary_config SET shadow_sample_rate = 0 WHERE name = 'shadowtest'");
my @none = map { (call("Where is my order? ($_)", "user$_"))[0] } 1 .. 5;
$node->safe_psql('postgres', "UPDATE canary_config SET shadow_sample_rate = 1 WHERE name = 'shadowtest'");
my ($barrier) = call('barrier after rate 0', 'user9');
is(wait_rows(1, $barrier), 1, 'rate 0: the barrier request is shadowed');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM canary_shadow WHERE request_id = ANY(" . ids_sql(@none) . ")"),
	'0', 'rate 0: no request is shadowed');

# --- sample rate 0.5: some ------------------------------------------------
$node->safe_psql('postgres', "UPDATE canary_config SET shadow_sample_rate = 0.5 WHERE name = 'shadowtest'");
$node->safe_psql('postgres', q{
CREATE TABLE half AS
SELECT (canary_call('Half ' || i, 'user' || i, 'shadowtest'))->>'request_id' AS id
FROM generate_series(1, 100) i});
$node->safe_psql('postgres', "UPDATE canary_config SET shadow_sample_rate = 1 WHERE name = 'shadowtest'");
($barrier) = call('barrier after rate 0.5', 'user9');
wait_rows(1, $barrier);
sleep 1;
my $half = $node->safe_psql('postgres',
	"SELECT count(*) FROM canary_shadow WHERE request_id::text IN (SELECT id FROM half)");
ok($half >= 20 && $half <= 80, "rate 0.5: $half of 100 requests shadowed");

# --- a slow new model does not slow the user down -------------------------
mock_profile('shadow-new', { latency_ms => 2000 });
my ($id, $resp, $lat, $wall) = call('Slow new model, please', 'user1');
ok($lat < 1000 && $wall < 1500, "slow new model: the call took $lat ms ($wall ms wall)");
is(wait_rows(1, $id), 1, 'slow new model: row written');
is(row($id, 'new_text IS NOT NULL AND new_error IS NULL AND new_latency_ms >= 2000'),
	't', 'slow new model: its answer and latency are recorded');

# --- a hanging new model: the shadow call times out -----------------------
mock_profile('shadow-new', { hang => JSON::PP::true });
$node->safe_psql('postgres', "UPDATE canary_models SET timeout_ms = 1500 WHERE name = 'm-new'");
($id, $resp, $lat, $wall) = call('Hanging new model', 'user2');
ok($lat < 1000 && $wall < 1500, "hanging new model: the call took $lat ms ($wall ms wall)");
is(wait_rows(1, $id), 1, 'hanging new model: row written');
is(row($id, q{new_error || ' ' || (new_text IS NULL) || ' ' || (new_latency_ms BETWEEN 1400 AND 10000)
	|| ' ' || (old_text IS NOT NULL)}),
	'timeout true true true', 'hanging new model: new_error timeout after timeout_ms');

# --- a failing new model ----------------------------------------------------
mock_profile('shadow-new', { error_rate => 1, error_status => 503 });
($id, $resp, $lat, $wall) = call('Failing new model', 'user3');
ok($lat < 1000, "failing new model: the call took $lat ms");
is(wait_rows(1, $id), 1, 'failing new model: row written');
is(row($id, q{new_error || ' ' || (new_text IS NULL) || ' ' || (new_refusal IS NULL)}),
	'http_503 true true', 'failing new model: new_error http_503');
mock_profile('shadow-new', {});
$node->safe_psql('postgres', "UPDATE canary_models SET timeout_ms = 5000 WHERE name = 'm-new'");

# --- the old answer never comes: the caller was canceled ------------------
mock_profile('shadow-old', { hang => JSON::PP::true });
my ($rc, $stdout, $stderr) = $node->psql('postgres',
	"SET statement_timeout = '500ms'; SELECT canary_call('Canceled call', 'user4', 'shadowtest')");
like($stderr, qr/statement timeout/, 'canceled call: the caller got the cancel');
mock_profile('shadow-old', {});
my $deadline = time + 30;
my $missing;
do
{
	$missing = $node->safe_psql('postgres',
		q{SELECT old_error || ' ' || (old_text IS NULL) || ' ' || (new_text IS NOT NULL)
		  FROM canary_shadow WHERE prompt = 'Canceled call'});
	sleep 0.1 unless $missing;
} while (!$missing && time < $deadline);
is($missing, 'missing true true', 'canceled call: old_error missing, the new answer kept');

# --- prompts: stored clipped to 512 characters, or not at all -------------
mock_profile('shadow-old', { echo => JSON::PP::true });
mock_profile('shadow-new', { echo => JSON::PP::true });
my $big = $node->safe_psql('postgres', q{
SELECT (canary_call(repeat('é', 300000), 'user5', 'shadowtest'))->>'request_id'});
is(wait_rows(1, $big), 1, 'big prompt: row written');
is(row($big, q{char_length(prompt) || ' ' || char_length(old_text) || ' ' || char_length(new_text)
	|| ' ' || (new_text = old_text)}),
	'512 300000 300000 true', 'big prompt: 600 kB each way, prompt clipped to 512 characters');
($id) = call('Do not keep this prompt', 'user6', 'SET llm_canary.shadow_store_prompt = off;');
is(wait_rows(1, $id), 1, 'shadow_store_prompt off: row written');
is(row($id, q{(prompt IS NULL) || ' ' || (prompt_hash IS NOT NULL)}), 'true true',
	'shadow_store_prompt off: no prompt, only its hash');
mock_profile('shadow-old', {});
mock_profile('shadow-new', {});

# --- shutdown with shadow calls in flight ---------------------------------
mock_profile('shadow-new', { hang => JSON::PP::true });
$node->safe_psql('postgres', "UPDATE canary_models SET timeout_ms = 60000 WHERE name = 'm-new'");
my @inflight = map { (call("In flight at shutdown ($_)", "user$_"))[0] } 1 .. 3;
$deadline = time + 30;
sleep 0.1 while mock_in_flight('shadow-new') < 3 && time < $deadline;
is(mock_in_flight('shadow-new'), 3, 'shutdown: three shadow calls in flight');
$node->stop('fast');
$node->start;
is($node->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(*) FILTER (WHERE new_error = 'shutdown' AND old_text IS NOT NULL)"
		  . " FROM canary_shadow WHERE request_id = ANY(" . ids_sql(@inflight) . ")"),
	'3 3', 'shutdown: every call in flight recorded as shutdown');
sleep 2;
is($node->safe_psql('postgres',
		"SELECT count(*) FROM canary_shadow WHERE request_id = ANY(" . ids_sql(@inflight) . ")"),
	'3', 'shutdown: no duplicate after the restart');
is($node->safe_psql('postgres',
		'SELECT count(*) = count(DISTINCT request_id) FROM canary_shadow'),
	't', 'no request recorded twice');
mock_profile('shadow-new', {});

$node->stop;
done_testing();
