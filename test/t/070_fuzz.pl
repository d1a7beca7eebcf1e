# Fuzzing of the response parser (ProviderParseResponse) of both dialects,
# through canary_probe and the mock LLM server's fuzz_seed profile: every
# answer is a deterministic pseudo-random mutation of a valid body (byte
# flips, truncation, nesting up to 100,000 levels, huge numbers, wrong types,
# duplicate keys, lone surrogates and NUL as escapes and as raw bytes,
# invalid UTF-8, odd top-level values, random statuses).  The backend must
# never crash, and every call must return a jsonb result or a clean ERROR
# with a SQLSTATE that is not an internal error (XX class).
#
# LLM_CANARY_FUZZ_N sets the number of calls (default 3,000, half per
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
my $n = $ENV{LLM_CANARY_FUZZ_N} || 3000;
my $seed = $ENV{LLM_CANARY_FUZZ_SEED} // 1;

my $node = canary_node('fuzz', conf => qq{
llm_canary.check_interval = 0
});

mock_profile('fz-oa', qq({"fuzz_seed": $seed}));
mock_profile('fz-an', sprintf('{"fuzz_seed": %d}', $seed + 1000003));
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, max_retries, timeout_ms, api_key_env) VALUES
  ('fz-oa', 'openai',    '$mock/v1', 'fz-oa', 0, 5000, 'LLM_CANARY_TEST_KEY'),
  ('fz-an', 'anthropic', '$mock/v1', 'fz-an', 0, 5000, 'LLM_CANARY_TEST_KEY');
CREATE TABLE fuzz_results (i int, model text, outcome text, error text, status int,
                           has_text boolean, sqlstate text, message text);
CREATE FUNCTION fuzz_run(lo int, hi int) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE
    j jsonb;
    m text;
BEGIN
    FOR i IN lo .. hi LOOP
        m := CASE WHEN i % 2 = 0 THEN 'fz-oa' ELSE 'fz-an' END;
        BEGIN
            j := canary_probe(m, 'fuzz ' || i);
            INSERT INTO fuzz_results VALUES (i, m, j->>'outcome', j->>'error',
                (j->>'http_status')::int, j->>'text' IS NOT NULL, NULL, NULL);
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO fuzz_results VALUES (i, m, NULL, NULL, NULL, NULL, SQLSTATE, SQLERRM);
        END;
    END LOOP;
END
\$\$;
});

my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
my $t0 = time;
for (my $lo = 1; $lo <= $n; $lo += 1000)
{
	my $hi = $lo + 999 > $n ? $n : $lo + 999;
	$s->query("SELECT fuzz_run($lo, $hi)");
	last if $s->{stderr} ne '';
}
my $took = time - $t0;
is($s->{stderr}, '', 'no batch failed');
is($s->query_safe('SELECT pg_backend_pid()'), $pid, 'the same backend survived every call');
$s->quit;
ok(!$node->log_contains('terminated by signal'), 'no backend crashed (server log)');
ok(!$node->log_contains('PANIC'), 'no PANIC');

is($node->safe_psql('postgres', 'SELECT count(*) FROM fuzz_results'), $n, "$n calls answered");
is($node->safe_psql('postgres', q{SELECT count(*) FROM fuzz_results WHERE sqlstate LIKE 'XX%'}),
	'0', 'no internal error (XX000 class)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fuzz_results
  WHERE sqlstate IS NULL AND (outcome IS NULL OR outcome NOT IN ('ok', 'refusal', 'error', 'timeout'))}),
	'0', 'every result has an outcome');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fuzz_results
  WHERE outcome = 'ok' AND (NOT has_text OR status NOT BETWEEN 200 AND 299)}),
	'0', 'every ok has a text and a 2xx status');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fuzz_results
  WHERE status NOT BETWEEN 200 AND 299 AND error IS DISTINCT FROM 'http_' || status}),
	'0', 'every non-2xx status is the error http_<status>');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fuzz_results
  WHERE outcome = 'error' AND error IS NULL}),
	'0', 'every error names its cause');

my $dist = $node->safe_psql('postgres', q{
SELECT string_agg(x || ' ' || n, ', ' ORDER BY n DESC) FROM (
  SELECT coalesce(outcome || coalesce('/' || CASE WHEN error LIKE 'http_%' THEN 'http_xxx' ELSE error END, ''),
                  'ERROR ' || sqlstate) AS x, count(*) AS n
    FROM fuzz_results GROUP BY 1) d});
my $per = $node->safe_psql('postgres',
	q{SELECT string_agg(model || ' ' || count, ', ' ORDER BY model) FROM (SELECT model, count(*) FROM fuzz_results GROUP BY 1) d});
diag sprintf("fuzz: %d calls (%s) in %.1f s, seed %s: %s", $n, $per, $took, $seed, $dist);

$node->stop;
done_testing();
