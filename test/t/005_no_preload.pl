# Without shared_preload_libraries: the extension installs and routes, and
# what needs shared memory or the worker says so with SQLSTATE 55000.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('nopreload', preload => 0);
$node->safe_psql('postgres', q{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
  ('old', 'openai', 'http://127.0.0.1:1/v1', 'o'), ('new', 'openai', 'http://127.0.0.1:1/v1', 'n');
UPDATE canary_config SET old_model = 'old', new_model = 'new', stage = 'ramp_25';
});

is($node->safe_psql('postgres', q{SELECT canary_bucket('u_91442')}), '10.60', 'canary_bucket works');
is($node->safe_psql('postgres', q{SELECT canary_route('u_91442') || ' ' || canary_cohort('u_91442')}),
	'new canary', 'routing works without the preloaded library');

for my $call (q{SELECT canary_call('hi', 'u1')}, q{SELECT canary_flush()},
	q{SELECT canary_record('default', 'u', 'old', 'control', 'ok', 1)}, q{SELECT * FROM canary_shadow_stats()})
{
	my ($ret, $out, $err) = $node->psql('postgres', $call, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/ERROR:  55000: .*shared_preload_libraries/, "$call: 55000 naming shared_preload_libraries");
	like($err, qr/HINT:  Add llm_canary to shared_preload_libraries/, "$call: with a hint");
}

$node->stop;
done_testing();
