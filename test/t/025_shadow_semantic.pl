# Shadow mode with semantic similarity and the response cache, against the
# mock LLM server (test/mock_llm.py):
#  - a rollout's shadow_embedding_model is validated like the other model
#    references (23503 with a hint; an Anthropic model is 22023);
#  - with it, a shadow pair's similarity is the cosine of the mock's
#    embeddings of both answers, computed here independently from the
#    mock's documented algorithm, and similarity_method is 'embedding';
#  - when the embeddings endpoint fails, the row has the lexical similarity
#    and similarity_method 'lexical';
#  - with llm_canary.response_cache_ttl set for the server, the worker asks
#    the new model once per prompt and marks the cached answer new_cached.
#
# Needs LLM_CANARY_MOCK_URL and LLM_CANARY_TEST_KEY, as exported by
# test/run_suite.sh.
use strict;
use warnings;

use Digest::SHA qw(sha256);
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



sub mock_requests
{
	my ($model) = @_;
	return mock_get("/_mock/requests?model=$model");
}

# The mock's embedding (see its docstring): every lowercased \w+ word gives
# d = sha256(word); slot int(d[0:4], big-endian) % dim gets +1 if d[4] & 1
# else -1; the sum is L2-normalised.
sub embed
{
	my ($text, $dim) = @_;
	my @v = (0) x $dim;
	for my $w (lc($text) =~ /(\w+)/g)
	{
		my $d = sha256($w);
		my $i = unpack('N', substr($d, 0, 4)) % $dim;
		$v[$i] += (ord(substr($d, 4, 1)) & 1) ? 1 : -1;
	}
	my $norm = 0;
	$norm += $_ * $_ for @v;
	$norm = sqrt($norm);
	return map { $norm > 0 ? $_ / $norm : 0 } @v;
}

sub cosine
{
	my ($a, $b) = @_;
	my @x = embed($a, 64);
	my @y = embed($b, 64);
	my ($dot, $nx, $ny) = (0, 0, 0);
	for my $i (0 .. 63)
	{
		$dot += $x[$i] * $y[$i];
		$nx += $x[$i] * $x[$i];
		$ny += $y[$i] * $y[$i];
	}
	return $dot / (sqrt($nx) * sqrt($ny));
}

my $node = canary_node('semantic', conf => qq{
llm_canary.shadow_grace_ms = '60s'
});

$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, timeout_ms, max_retries, api_key_env)
VALUES ('s-old', 'openai', '$mock/v1', 'sem-old', 5000, 0, 'LLM_CANARY_TEST_KEY'),
       ('s-new', 'anthropic', '$mock/v1', 'sem-new', 5000, 0, 'LLM_CANARY_TEST_KEY'),
       ('s-emb', 'openai', '$mock/v1/', 'sem-emb', 3000, 0, 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
VALUES ('semtest', 'shadow', 's-old', 's-new', 1);
});

# --- the setting is validated like the other model references --------------
my $state = q{
CREATE FUNCTION pg_temp.state(cmd text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END $$;};
is($node->safe_psql('postgres', $state . q{
SELECT pg_temp.state($$UPDATE canary_config SET shadow_embedding_model = 'nope' WHERE name = 'semtest'$$)
    || ' ' || pg_temp.state($$UPDATE canary_config SET shadow_embedding_model = 's-new' WHERE name = 'semtest'$$)
    || ' ' || pg_temp.state($$UPDATE canary_config SET shadow_embedding_model = 's-emb' WHERE name = 'semtest'$$)}),
	'23503 22023 ok', 'shadow_embedding_model: unknown 23503, Anthropic 22023, OpenAI-compatible accepted');
my ($rc, $out, $err) = $node->psql('postgres',
	"UPDATE canary_config SET shadow_embedding_model = 'nope' WHERE name = 'semtest'");
like($err, qr/model "nope" does not exist.*HINT:  Known models: s-emb, s-new, s-old\./s,
	'unknown embeddings model: the hint lists the models');

# One shadowed canary_call; waits for its row and returns the row's columns.
sub shadow_row
{
	my ($prompt, $cols) = @_;
	my $id = $node->safe_psql('postgres',
		"SELECT canary_call(\$p\$$prompt\$p\$, 'u1', 'semtest')->>'request_id'");
	$node->safe_psql('postgres', 'SELECT canary_flush()');
	my $deadline = time + 30;
	my $row = '';
	while (time < $deadline)
	{
		$row = $node->safe_psql('postgres', "SELECT $cols FROM canary_shadow WHERE request_id = '$id'");
		last if $row ne '';
		sleep 0.1;
	}
	return $row;
}

# --- with an embeddings model: the cosine of the mock's vectors -----------
my $old = 'Your order ships tomorrow morning, thanks for waiting.';
my $new = 'Thank you for waiting! Your parcel ships tomorrow.';
mock_profile('sem-old', { fixed_text => $old });
mock_profile('sem-new', { fixed_text => $new });
mock_profile('sem-emb', {});
my $want = cosine($old, $new);
my ($sim, $method, $verdict) = split /\|/,
  shadow_row('Where is my order?', 'similarity, similarity_method, verdict');
ok(abs($sim - $want) < 1e-6, "embedding similarity $sim equals the cosine $want");
is($method, 'embedding', 'similarity_method embedding');
is($verdict, $want >= 0.8 ? 'equivalent' : 'different', "verdict by the 0.8 threshold: $verdict");
my $reqs = mock_requests('sem-emb');
is(scalar(@$reqs), 1, 'one embeddings request per shadow pair');
is_deeply($reqs->[-1]{body}, { model => 'sem-emb', input => [ $old, $new ] },
	'embeddings request: the model id and both answers, old first');
is($reqs->[-1]{path}, '/v1/embeddings', 'embeddings request: {base_url}/embeddings');

# the threshold applies to the embedding similarity
$node->safe_psql('postgres',
	"UPDATE canary_config SET shadow_equivalence_threshold = 0.1 WHERE name = 'semtest'");
($sim, $verdict) = split /\|/, shadow_row('Where is my order, again?', 'similarity, verdict');
is($verdict, $sim >= 0.1 ? 'equivalent' : 'different', "threshold 0.1: $verdict at $sim");
$node->safe_psql('postgres',
	"UPDATE canary_config SET shadow_equivalence_threshold = 0.8 WHERE name = 'semtest'");

# identical answers stay identical
mock_profile('sem-new', { fixed_text => $old });
($sim, $method, $verdict) = split /\|/,
  shadow_row('Where is my order, identical?', 'round(similarity::numeric, 6), similarity_method, verdict');
is("$sim $method $verdict", '1.000000 embedding identical', 'identical answers: identical, cosine 1');
mock_profile('sem-new', { fixed_text => $new });

# --- the embeddings endpoint fails: lexical, and recorded as such ---------
mock_profile('sem-emb', { status => 500, body => { error => { message => 'embeddings down' } } });
is( shadow_row(
		'Where is my order, lexical?',
		q{similarity_method || ' ' || (similarity = (SELECT c.similarity FROM canary_shadow_compare(old_text, new_text) c))
		  || ' ' || verdict}),
	'lexical true different',
	'embeddings failing: lexical similarity, similarity_method lexical');
mock_profile('sem-emb', { malformed => 'no_fields' });
is(shadow_row('Where is my order, malformed?', 'similarity_method'),
	'lexical', 'malformed embeddings response: lexical');
mock_profile('sem-emb', {});

# without an embeddings model the row says lexical too
$node->safe_psql('postgres', "UPDATE canary_config SET shadow_embedding_model = NULL WHERE name = 'semtest'");
is(shadow_row('Where is my order, no embeddings?', 'similarity_method'),
	'lexical', 'no embeddings model: lexical');
is(scalar(@{ mock_requests('sem-emb') }), 5, 'embeddings requested only while configured');
$node->safe_psql('postgres', "UPDATE canary_config SET shadow_embedding_model = 's-emb' WHERE name = 'semtest'");

# --- the worker's response cache -------------------------------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET llm_canary.response_cache_ttl = '1h'");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
sleep 1;
my $before = scalar(@{ mock_requests('sem-new') });
my $first = shadow_row('Cache me, please', q{new_cached || ' ' || similarity_method || ' ' || new_text});
my $second = shadow_row('Cache me, please', q{new_cached || ' ' || similarity_method || ' ' || new_text});
is($first, "false embedding $new", 'worker cache: the first answer comes from the model');
is($second, "true embedding $new", 'worker cache: the second from the cache, compared as usual');
is(scalar(@{ mock_requests('sem-new') }) - $before, 1, 'worker cache: the new model was asked once');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM canary_response_cache WHERE model = 's-new'
		    AND prompt_sha256 = encode(sha256(convert_to('Cache me, please', 'UTF8')), 'hex')}),
	'1', 'worker cache: the answer is stored under the new model');

$node->stop;
done_testing();
