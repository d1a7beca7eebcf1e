# Fuzzing of the shadow worker's parser path: in stage shadow, the new
# model answers through the mock LLM server's fuzz_seed profile (every
# answer a deterministic pseudo-random mutation of a valid body, see
# test/t/070_fuzz.pl), so the background worker parses hostile bodies of
# both dialects.  The worker must never crash or restart, every job must
# end in exactly one canary_shadow row, and a row without an answer must
# name its error.
#
# LLM_CANARY_SHADOW_FUZZ_N sets the number of calls (default 400, half per
# dialect); LLM_CANARY_FUZZ_SEED the seed (default 1).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time);

my $mock = mock_url();
my $n = $ENV{LLM_CANARY_SHADOW_FUZZ_N} || 400;
my $seed = $ENV{LLM_CANARY_FUZZ_SEED} // 1;

my $node = canary_node('fuzz_shadow', conf => q{
llm_canary.check_interval = 0
llm_canary.shadow_grace_ms = '60s'
});

mock_profile('fzs-old', '{"fixed_text": "old answer"}');
mock_profile('fzs-oa', qq({"fuzz_seed": $seed}));
mock_profile('fzs-an', sprintf('{"fuzz_seed": %d}', $seed + 1000003));
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, max_retries, timeout_ms, api_key_env) VALUES
  ('old',   'openai',    '$mock/v1', 'fzs-old', 0, 5000, 'LLM_CANARY_TEST_KEY'),
  ('fz-oa', 'openai',    '$mock/v1', 'fzs-oa',  0, 5000, 'LLM_CANARY_TEST_KEY'),
  ('fz-an', 'anthropic', '$mock/v1', 'fzs-an',  0, 5000, 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate) VALUES
  ('fz-oa', 'shadow', 'old', 'fz-oa', 1),
  ('fz-an', 'shadow', 'old', 'fz-an', 1);
});

$node->poll_query_until('postgres', "SELECT worker_state = 'running' FROM canary_stats()")
  or die 'the worker did not start';
my $worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM canary_stats()');
my $t0 = time;
for (my $lo = 1; $lo <= $n; $lo += 200)
{
	my $hi = $lo + 199 > $n ? $n : $lo + 199;
	$node->safe_psql('postgres', qq{
SELECT count(canary_call('shadow fuzz ' || i, 'u' || i, CASE WHEN i % 2 = 0 THEN 'fz-oa' ELSE 'fz-an' END))
  FROM generate_series($lo, $hi) i});
}
$node->safe_psql('postgres', "SELECT canary_flush('120 s')");
my $took = time - $t0;

ok(!$node->log_contains('terminated by signal'), 'no process crashed (server log)');
ok(!$node->log_contains('PANIC'), 'no PANIC');
is($node->safe_psql('postgres', 'SELECT worker_pid FROM canary_stats()'), $worker,
	'the same worker served every job');
is($node->safe_psql('postgres',
		"SELECT count(*) || ' ' || count(DISTINCT request_id) FROM canary_shadow WHERE prompt LIKE 'shadow fuzz %'"),
	"$n $n", "$n jobs, one row each");
is($node->safe_psql('postgres', 'SELECT dropped_queue_full + dropped_no_worker + dropped_memory + rows_lost FROM canary_shadow_stats()'),
	'0', 'no job dropped or lost');
my $odd = $node->safe_psql('postgres', q{SELECT string_agg(format('%s text=%s error=%s refusal=%s',
    prompt, new_text IS NOT NULL, new_error, new_refusal), '; ') FROM canary_shadow
  WHERE prompt LIKE 'shadow fuzz %'
    AND NOT ((new_text IS NOT NULL AND new_error IS NULL)
          OR (new_text IS NULL AND new_error IS NOT NULL)
          OR (new_text IS NULL AND new_error IS NULL AND new_refusal))});
is($odd, '', 'every row has an answer, an error, or a provider refusal (new_refusal true) without text');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_shadow
  WHERE prompt LIKE 'shadow fuzz %' AND old_text IS DISTINCT FROM 'old answer'}),
	'0', 'every row has the old answer');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_shadow
  WHERE prompt LIKE 'shadow fuzz %' AND new_error IS NOT NULL
    AND new_error !~ '^(http_[0-9]{3}|malformed_response|provider_error|response_too_large|timeout|connect|transport)$'}),
	'0', 'every error is one of the known codes');

my $dist = $node->safe_psql('postgres', q{
SELECT string_agg(x || ' ' || n, ', ' ORDER BY n DESC) FROM (
  SELECT coalesce(CASE WHEN new_error LIKE 'http_%' THEN 'http_xxx' ELSE new_error END, 'answer') AS x, count(*) AS n
    FROM canary_shadow WHERE prompt LIKE 'shadow fuzz %' GROUP BY 1) d});
diag sprintf("shadow fuzz: %d jobs in %.1f s, seed %s: %s", $n, $took, $seed, $dist);

$node->stop;
done_testing();
