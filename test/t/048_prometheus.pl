# Scraped for real: Debian's prometheus-postgres-exporter runs with the
# shipped monitoring/postgres_exporter.yml against this cluster, Debian's
# prometheus scrapes it every second (both on loopback ports, started here,
# stopped at the end; nothing is installed or run as a service), and known
# traffic must come out of Prometheus' HTTP query API exactly: per cohort
# requests, outcomes, refusals, thumbs-down, token counts, the health gauges,
# a histogram_quantile within the documented 1/8 of percentile_cont,
# counters that do not drop when raw rows are deleted, and the age of each
# checked rollout's last kill-switch check with its limit and alert.  Also runs promtool
# on the shipped alerting rules and their unit tests, and every query of the
# shipped Grafana dashboard.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use JSON::PP;
use IPC::Run;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use RollupCheck;

my $top = "$FindBin::Bin/../..";
my $exporter_bin = '/usr/bin/prometheus-postgres-exporter';
my $prometheus_bin = '/usr/bin/prometheus';
my $promtool_bin = '/usr/bin/promtool';
for my $bin ($exporter_bin, $prometheus_bin, $promtool_bin)
{
	# the packages are in .ci/run and test/setup.sh: missing is a failure
	BAIL_OUT("$bin is missing: apt-get install prometheus prometheus-postgres-exporter")
	  unless -x $bin;
}

# --- the rules, checked and unit-tested by promtool -----------------------
my ($out, $err) = ('', '');
ok(IPC::Run::run([ $promtool_bin, 'check', 'rules', "$top/monitoring/alerts.yml" ], '>', \$out, '2>', \$err),
	'promtool check rules accepts monitoring/alerts.yml') or diag("$out$err");
like($out, qr/SUCCESS: 7 rules found/, 'seven alerting rules (five, the fleet fail-safe, the checks stopped)');
($out, $err) = ('', '');
ok(IPC::Run::run([ $promtool_bin, 'test', 'rules', "$top/monitoring/alerts_test.yml" ], '>', \$out, '2>', \$err),
	'promtool test rules: every alert fires when it should and not otherwise') or diag("$out$err");

# --- the cluster and known traffic -----------------------------------------
my $node = canary_node('prometheus', conf => qq{
llm_canary.check_interval = 0
});
$node->safe_psql('postgres', q{
CREATE ROLE exporter LOGIN;
GRANT llm_canary_app, pg_monitor TO exporter;
INSERT INTO canary_models (name, provider, base_url, model) VALUES
  ('model-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
  ('model-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('prom', 'ramp_25', 'model-old', 'model-new');
});
$node->poll_query_until('postgres', "SELECT worker_state = 'running' FROM canary_stats()")
  or die 'the worker did not start';

# control: 300 attempts, 12 errors (every 25th), 24 refusals (every other
# 10th); canary: 100 attempts, 5 timeouts (every 20th), 15 refusals (every
# other 5th); latencies spread over 60 .. 6100 ms; 40 canary answers without
# tokens; thumbs-down on the users whose number ends in 7
sub traffic
{
	my ($tag) = @_;
	$node->safe_psql('postgres', qq{
SELECT count(canary_record('prom', '$tag-c' || i, 'model-old', 'control',
                           CASE WHEN i % 25 = 0 THEN 'error' WHEN i % 10 = 0 THEN 'refusal' ELSE 'ok' END,
                           60 + (i * 7919) % 3000, refusal => i % 10 = 0 AND i % 25 <> 0,
                           completion_tokens => 10 + i % 90))
  FROM generate_series(1, 300) i;
SELECT count(canary_record('prom', '$tag-n' || i, 'model-new', 'canary',
                           CASE WHEN i % 20 = 0 THEN 'timeout' WHEN i % 5 = 0 THEN 'refusal' ELSE 'ok' END,
                           100 + (i * 7919) % 6000, refusal => i % 5 = 0 AND i % 20 <> 0,
                           completion_tokens => CASE WHEN i > 40 THEN 50 + i END))
  FROM generate_series(1, 100) i;
SELECT canary_flush();
SELECT count(canary_feedback(request_id, true)) FROM canary_requests
 WHERE user_id ~ '^$tag-(c|n)[0-9]*7\$';});
}
traffic('a');

# --- the exporter and Prometheus --------------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir;
my $exporter_port = PostgreSQL::Test::Cluster::get_free_port();
my $prometheus_port = PostgreSQL::Test::Cluster::get_free_port();
my ($eout, $pout) = ('', '');
my $exporter = IPC::Run::start(
	[ $exporter_bin, "--web.listen-address=127.0.0.1:$exporter_port",
	  "--extend.query-path=$top/monitoring/postgres_exporter.yml", '--disable-settings-metrics' ],
	'>', "$dir/exporter.log", '2>&1',
	init => sub {
		$ENV{DATA_SOURCE_NAME} = 'host=' . $node->host . ' port=' . $node->port
		  . ' user=exporter dbname=postgres sslmode=disable';
	});
open(my $cf, '>', "$dir/prometheus.yml") or die;
print $cf <<"YML";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $top/monitoring/alerts.yml
scrape_configs:
  - job_name: llm_canary
    static_configs:
      - targets: ['127.0.0.1:$exporter_port']
YML
close $cf;
my $prometheus = IPC::Run::start(
	[ $prometheus_bin, "--config.file=$dir/prometheus.yml", "--storage.tsdb.path=$dir/tsdb",
	  "--web.listen-address=127.0.0.1:$prometheus_port", '--log.level=warn' ],
	'>', "$dir/prometheus.log", '2>&1');

my $http = HTTP::Tiny->new(timeout => 5);

# the value of an instant query, as "label=value ..." lines sorted, or undef
sub query
{
	my ($promql, $label) = @_;
	my $res = $http->get("http://127.0.0.1:$prometheus_port/api/v1/query?query="
		  . join('', map { sprintf('%%%02X', ord) } split //, $promql));
	return undef unless $res->{success};
	my $body = decode_json($res->{content});
	return undef unless $body->{status} eq 'success';
	my @rows = map { ($label ? ($_->{metric}{$label} // '') . '=' : '') . $_->{value}[1] }
	  @{ $body->{data}{result} };
	return join(' ', sort @rows);
}

# poll until the query gives the expected answer (30 s at most)
sub eventually
{
	my ($promql, $label, $expected, $name) = @_;
	my $got;
	for (1 .. 150)
	{
		$got = query($promql, $label);
		last if defined $got && $got eq $expected;
		usleep(200_000);
	}
	is($got, $expected, $name);
}

eventually('sum by (cohort) (llm_requests_total{canary="prom"})', 'cohort',
	'canary=100 control=300', 'llm_requests_total per cohort, through Prometheus');
is(query('sum by (outcome) (llm_requests_total{canary="prom",cohort="canary"})', 'outcome'),
	'error=0 ok=80 refusal=15 timeout=5', 'the canary cohort by outcome');
is(query('sum by (outcome) (llm_requests_total{canary="prom",cohort="control"})', 'outcome'),
	'error=12 ok=264 refusal=24 timeout=0', 'the control cohort by outcome');
is(query('llm_refusals_total{canary="prom"}', 'cohort'), 'canary=15 control=24',
	'llm_refusals_total per cohort');
is(query('llm_thumbs_down_total{canary="prom"}', 'cohort'), 'canary=10 control=30',
	'llm_thumbs_down_total per cohort');
is(query('llm_completion_tokens_count{canary="prom"}', 'cohort'), 'canary=60 control=300',
	'llm_completion_tokens histogram counts the answers with tokens');
is(query('llm_latency_ms_bucket{canary="prom",cohort="control",le="+Inf"}', 'cohort'), 'control=300',
	'llm_latency_ms histogram, +Inf bucket');
is(query('llm_latency_ms_bucket{canary="prom",cohort="canary",le="1024"}', 'cohort'),
	$node->safe_psql('postgres',
		"SELECT 'canary=' || count(*) FROM canary_requests WHERE cohort = 'canary' AND latency_ms <= 1024"),
	'a latency bucket counts exactly the attempts at most its bound');
is(query('count(llm_latency_ms_bucket{canary="prom",cohort="canary"})'), '99',
	'98 finite buckets and +Inf: bounded cardinality');

# histogram_quantile within the export's bound (1/8 above 64 ms)
for my $cohort ('canary', 'control')
{
	my $exact = $node->safe_psql('postgres',
		"SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM canary_requests WHERE cohort = '$cohort'");
	my $prom = query("histogram_quantile(0.95, sum by (le) (llm_latency_ms_bucket{canary=\"prom\",cohort=\"$cohort\"}))");
	ok(defined $prom && abs($prom - $exact) <= $exact / 8,
		"$cohort: histogram_quantile(0.95) = $prom, percentile_cont = $exact, within 1/8");
	my $summary = $node->safe_psql('postgres',
		"SELECT p95_latency_ms FROM canary_summary('prom') WHERE cohort = '$cohort'");
	ok(abs($summary - $exact) <= $exact / 64,
		"$cohort: canary_summary p95 = $summary within 1/64 of percentile_cont");
}

# the health gauges
is(query('llm_canary_worker_up'), '1', 'llm_canary_worker_up');
is(query('llm_canary_kill_switch_armed', 'canary'), 'default=1 prom=1', 'llm_canary_kill_switch_armed');
is(query('llm_canary_percent_new{canary="prom"}'), '25', 'llm_canary_percent_new');
is(query('llm_canary_queue_depth'), '0', 'llm_canary_queue_depth');
is(query('llm_canary_queue_dropped_total'), '0', 'llm_canary_queue_dropped_total');
is(query('llm_canary_csat_pinned{canary="prom"}'), '0', 'llm_canary_csat_pinned');

# a trip shows, and so does its alert
$node->safe_psql('postgres', "SELECT canary_trip('prom', 'test trip')");
eventually('llm_canary_kill_switch_armed{canary="prom"}', undef, '0', 'the trip reaches Prometheus');
eventually('ALERTS{alertname="LLMCanaryKillSwitchTripped",alertstate="firing"}', 'canary', 'prom=1',
	'the LLMCanaryKillSwitchTripped alert fires in Prometheus');

# the age of the last kill-switch check (the worker checks nothing here:
# llm_canary.check_interval = 0).  Exported: the rollouts canary_check
# visits, armed and out of shadow at any percentage.  beat_live is checked
# now; beat_stale was last checked an hour ago; beat_never and beat_zero
# (at 0 %) were never checked; beat_tripped was checked an hour ago, then
# tripped; beat_shadow is in shadow.  None has changed for two hours
# (updated_at and their canary_stage_history moved back, the triggers off).
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, percent_new, old_model, new_model) VALUES
  ('beat_live', 'ramp_5', NULL, 'model-old', 'model-new'),
  ('beat_stale', 'ramp_1', NULL, 'model-old', 'model-new'),
  ('beat_never', 'full', NULL, 'model-old', 'model-new'),
  ('beat_zero', 'ramp_5', 0, 'model-old', 'model-new'),
  ('beat_tripped', 'ramp_25', NULL, 'model-old', 'model-new'),
  ('beat_shadow', 'shadow', NULL, 'model-old', 'model-new');
SELECT canary_check('beat_tripped', now() - interval '1 hour');
SELECT canary_trip('beat_tripped', 'test trip');
SET session_replication_role = replica;
UPDATE canary_config SET updated_at = now() - interval '2 hours' WHERE name LIKE 'beat%';
UPDATE canary_stage_history SET changed_at = changed_at - interval '2 hours' WHERE canary LIKE 'beat%';
RESET session_replication_role;
SELECT canary_check('beat_stale', now() - interval '1 hour');
SELECT canary_check('beat_shadow');
});
$node->safe_psql('postgres', q{SELECT canary_check('beat_live')});
my $ages = q{SELECT string_agg(canary || '=' || (last_check IS NOT NULL) || '/' || floor(age_seconds / 60),
                          ' ' ORDER BY canary)
               FROM canary_check_age() WHERE canary LIKE 'beat%'};
is($node->safe_psql('postgres', $ages),
	'beat_live=true/0 beat_never=false/120 beat_stale=true/60 beat_zero=false/120',
	'canary_check_age: checked, whole minutes since the last check (or the last change, never checked)');
is($node->safe_psql('postgres',
		q{SELECT age_seconds < 30 FROM canary_check_age('beat_live')}), 't',
	'the rollout just checked: under 30 s');
is(join(' ', map { /^llm_canary_check_age_seconds\{canary="(beat\w+)"\} ([0-9.]+)$/ ? ("$1=" . int($2 / 60)) : () }
		split /\n/, $node->safe_psql('postgres', 'SELECT canary_prometheus()')),
	'beat_live=0 beat_never=120 beat_stale=60 beat_zero=120',
	'canary_prometheus: llm_canary_check_age_seconds, the same ages');
eventually('floor(llm_canary_check_age_seconds{canary=~"beat.*"} / 60)', 'canary',
	'beat_live=0 beat_never=120 beat_stale=60 beat_zero=120',
	'llm_canary_check_age_seconds through the exporter, in whole minutes');
# the limit past which the checks count as stopped: 10 minutes here (the
# worker does not check: llm_canary.check_interval = 0)
is($node->safe_psql('postgres',
		q{SELECT string_agg(canary || '=' || alert_after_seconds, ' ' ORDER BY canary)
            FROM canary_check_age() WHERE canary LIKE 'beat%'}),
	'beat_live=600 beat_never=600 beat_stale=600 beat_zero=600',
	'canary_check_age: alert_after_seconds, 600 with check_interval = 0');
is(join(' ', map { /^llm_canary_check_age_limit_seconds\{canary="(beat\w+)"\} ([0-9.]+)$/ ? "$1=$2" : () }
		split /\n/, $node->safe_psql('postgres', 'SELECT canary_prometheus()')),
	'beat_live=600 beat_never=600 beat_stale=600 beat_zero=600',
	'canary_prometheus: llm_canary_check_age_limit_seconds');
eventually('llm_canary_check_age_limit_seconds{canary=~"beat.*"}', 'canary',
	'beat_live=600 beat_never=600 beat_stale=600 beat_zero=600',
	'llm_canary_check_age_limit_seconds through the exporter');
eventually('ALERTS{alertname="LLMCanaryChecksStopped",alertstate="firing"}', 'canary',
	'beat_never=1 beat_stale=1 beat_zero=1',
	'LLMCanaryChecksStopped fires for the rollouts not checked for 10 minutes');

# an UPDATE that changes nothing (config management re-applying its rows)
# sets updated_at but starts no checkable spell: the ages stand
$node->safe_psql('postgres', q{UPDATE canary_config SET stage = stage WHERE name LIKE 'beat%'});
is($node->safe_psql('postgres', $ages),
	'beat_live=true/0 beat_never=false/120 beat_stale=true/60 beat_zero=false/120',
	'canary_check_age after a no-op UPDATE of every rollout: the same ages');

# checked again, and re-armed: the age starts afresh, from the re-arm for
# a rollout whose last check was before its trip
$node->safe_psql('postgres',
	q{SELECT canary_check('beat_live'); SELECT canary_check('beat_stale'); SELECT canary_rearm('beat_tripped')});
is($node->safe_psql('postgres', $ages),
	'beat_live=true/0 beat_never=false/120 beat_stale=true/0 beat_tripped=true/0 beat_zero=false/120',
	'canary_check_age after a check and a re-arm');
eventually('ALERTS{alertname="LLMCanaryChecksStopped",alertstate="firing"}', 'canary',
	'beat_never=1 beat_zero=1', 'LLMCanaryChecksStopped resolves for the rollout checked again');

# counters: retention (raw rows deleted) never makes them drop; new
# traffic adds to them
$node->safe_psql('postgres', 'DELETE FROM canary_feedback; DELETE FROM canary_requests');
traffic('b');
eventually('sum by (cohort) (llm_requests_total{canary="prom"})', 'cohort',
	'canary=200 control=600', 'counters keep counting after the raw rows were deleted');
is(query('sum(resets(llm_requests_total[5m]))'), '0', 'no counter reset');

# the totals never depended on the raw rows
is($node->safe_psql('postgres', 'SELECT sum(requests) FROM canary_rollup_totals'), '800',
	'canary_rollup_totals: every attempt ever written');

# every query of the shipped Grafana dashboard runs and has data
{
	open(my $gf, '<', "$top/monitoring/grafana_dashboard.json") or die;
	my $dash = decode_json(join('', <$gf>));
	close $gf;
	my (@bad, $n);
	# rate() needs two scrapes in its range: poll (30 s at most)
	for (1 .. 60)
	{
		@bad = ();
		$n = 0;
		for my $panel (@{ $dash->{panels} })
		{
			for my $target (@{ $panel->{targets} })
			{
				(my $expr = $target->{expr}) =~ s/\$canary/prom/g;
				$expr =~ s/\$__rate_interval/1m/g;
				$n++;
				my $got = query($expr);
				push @bad, "$panel->{title}: $expr" unless defined $got && $got ne '';
			}
		}
		last unless @bad;
		usleep(500_000);
	}
	is(join("\n", @bad), '', "the $n queries of monitoring/grafana_dashboard.json run and return data");
}

# llm_canary.check_interval = 1h: the limit is ten of it, 10 h, in the
# function and through the exporter (the worker now checks, last of all)
$node->safe_psql('postgres', q{ALTER SYSTEM SET llm_canary.check_interval = '1h'; SELECT pg_reload_conf()});
$node->poll_query_until('postgres',
	q{SELECT bool_and(alert_after_seconds = 36000) FROM canary_check_age() WHERE canary LIKE 'beat%'})
  or diag('the limit did not follow llm_canary.check_interval');
is($node->safe_psql('postgres',
		q{SELECT string_agg(canary || '=' || alert_after_seconds, ' ' ORDER BY canary)
            FROM canary_check_age() WHERE canary LIKE 'beat%'}),
	'beat_live=36000 beat_never=36000 beat_stale=36000 beat_tripped=36000 beat_zero=36000',
	'canary_check_age: alert_after_seconds, 10 x llm_canary.check_interval (1 h)');
eventually('llm_canary_check_age_limit_seconds{canary=~"beat.*"}', 'canary',
	'beat_live=36000 beat_never=36000 beat_stale=36000 beat_tripped=36000 beat_zero=36000',
	'llm_canary_check_age_limit_seconds through the exporter follows llm_canary.check_interval');

$prometheus->signal('TERM');
$exporter->signal('TERM');
$prometheus->finish;
$exporter->finish;
$node->stop;
done_testing();
