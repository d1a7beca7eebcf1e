# The decision-quality simulator (test/bench/simulate.sql), scaled down:
# synthetic traffic with known properties through the real metrics path and
# the real canary_check at simulated times.  Every draw is a function of a
# fixed seed and the request number, so the outcomes below are exact:
#   A/A (identical cohorts, ramp_1, 100 requests/s, 1 simulated hour,
#     checked every 30 s): no trip;
#   the article's trip (ramp_5, refusals 8.7 % vs 1.1 %): trips 120
#     simulated seconds after the ramp started;
#   errors 5 % vs 1 %, p95 2x, thumbs-down 3x (ramp_5): each trips at the
#     first check, 30 s in;
#   slightly worse (errors 1.5 % vs 1 %, ramp_1, 1 simulated hour): no trip;
#   no metric record dropped anywhere.
# test/bench/run.sh simulate runs the full-size version (24 hours).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('simulator');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'llm_canary'
llm_canary.database_name = 'postgres'
llm_canary.check_interval = 0
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_canary');
$node->poll_query_until('postgres',
	"SELECT worker_state = 'running' FROM canary_stats()")
  or die 'the worker did not start';

my $script = ($ENV{TESTDIR} // '.') . '/test/bench/simulate.sql';
my ($ret, $out, $err) = $node->psql(
	'postgres', undef,
	extra_params => [
		'-f', $script,
		'-v', 'aa_seconds=3600', '-v', 'slight_seconds=3600',
		'-v', 'trip_seconds=1800', '-v', 'rps=100'
	],
	on_error_stop => 1);
is($ret, 0, 'the simulator ran') or diag($err);

sub result
{
	my ($scenario) = @_;
	return $node->safe_psql('postgres',
		"SELECT concat_ws('|', requests, dropped, checks, trips, first_trip_s, first_reason)"
		  . " FROM sim_results WHERE scenario = '$scenario'");
}

is(result('sim_aa'), '360000|0|120|0',
	'A/A: 120 checks over one simulated hour, no trip');
# a trip needs the breach in two consecutive windows (confirm_windows = 2):
# the first check whose previous 300 s window is also in the ramp
is(result('sim_article'),
	'42000|0|14|1|420|refusal_rate=0.081 vs baseline 0.012',
	"the article's refusal regression trips 7 minutes into the ramp");
is(result('sim_errors'),
	'33000|0|11|1|330|new-model error_rate=0.048 > 0.02',
	'errors 5 % vs 1 % trip at the first check that can confirm (330 s)');
# the p95s come from the rollups' latency histograms (within 1/64 of
# percentile_cont): 4288 and 2208 where the raw rows give 4301 and 2188
is(result('sim_p95'),
	'33000|0|11|1|330|new-model p95=4288 > 1.5x baseline (2208)',
	'a p95 twice the control trips at the first check that can confirm (330 s)');
is(result('sim_thumbs'),
	'33000|0|11|1|330|thumbs_down_rate=0.068 > 2x baseline 0.021',
	'thumbs-down three times the control trips at the first check that can confirm (330 s)');
is(result('sim_slight'), '360000|0|120|0',
	'errors 1.5 % vs 1 % at ramp_1 do not trip in one simulated hour');

# the canary cohort is the routed share: about 1 % at ramp_1, 5 % at ramp_5
is($node->safe_psql('postgres',
		"SELECT string_agg(scenario || '=' || canary_share, ',' ORDER BY scenario)"
		  . " FROM sim_results WHERE scenario IN ('sim_aa', 'sim_article')"),
	'sim_aa=0.0098,sim_article=0.0523',
	'the cohorts come from canary_route');

is($node->safe_psql('postgres', 'SELECT dropped FROM canary_stats()'),
	'0', 'no metric record dropped');

$node->stop;
done_testing();
