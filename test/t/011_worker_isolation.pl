# One slow job must not stall the rest (issue 11): during a trip, under a
# load of 1,000 metric records a second, with an alert webhook that never
# answers and a kill-switch check stuck behind a lock, no metric record is
# dropped, the metrics are written within the flush interval, shadow calls
# finish on time, the check is cut by its statement timeout, and no row of
# canary_alerts stays locked while a POST hangs.
#
# Needs LLM_CANARY_MOCK_URL and LLM_CANARY_TEST_KEY (test/run_suite.sh).
use strict;
use warnings;

use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time sleep);

my $mock = mock_url(need_key => 1);

# A webhook endpoint that accepts connections (the kernel does, up to the
# backlog) and never answers: every POST runs into its 5 s timeout.
my $hang = IO::Socket::INET->new(
	Listen => 64,
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Proto => 'tcp') or die "listen: $!";
my $hang_port = $hang->sockport;

my $node = canary_node('isolation', conf => qq{
llm_canary.queue_size = 512
llm_canary.queue_full_wait_ms = 0
llm_canary.flush_interval_ms = 100
llm_canary.check_interval = 2
llm_canary.webhook_url = 'http://127.0.0.1:$hang_port/webhook'
llm_canary.shadow_grace_ms = '60s'
});

mock_profile('iso-old', '{"fixed_text": "old answer", "latency_ms": 5}');
mock_profile('iso-new', '{"fixed_text": "new answer", "latency_ms": 300}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, timeout_ms, max_retries, api_key_env)
VALUES ('m-old', 'openai', '$mock/v1', 'iso-old', 5000, 0, 'LLM_CANARY_TEST_KEY'),
       ('m-new', 'openai', '$mock/v1', 'iso-new', 5000, 0, 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
VALUES ('sh', 'shadow', 'm-old', 'm-new', 1),
       ('r1', 'full', 'm-old', 'm-new', 0),
       ('r2', 'full', 'm-old', 'm-new', 0),
       ('r3', 'full', 'm-old', 'm-new', 0),
       ('r4', 'full', 'm-old', 'm-new', 0);
});

# --- the trip: three alerts for a webhook that hangs ------------------------
$node->safe_psql('postgres', "SELECT canary_trip('r$_', 'rehearsal $_')") for 1 .. 3;
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'llm_canary: alert webhook'")
  or die 'the webhook POST did not start';

# no row of canary_alerts is locked while the POST hangs
my ($rc, $out, $err) = $node->psql('postgres',
	q{SET lock_timeout = '200ms'; UPDATE canary_alerts SET webhook_attempts = webhook_attempts;
	  SELECT count(*) FROM canary_alerts WHERE webhook_status = 'pending'});
is("$rc $out", '0 3', 'no row lock on canary_alerts while a webhook POST hangs');

# --- load: about 1,000 records a second for 8 s ---------------------------
my $load = $node->background_psql('postgres', on_error_stop => 0);
$load->query_until(qr/started/, q{
\echo started
DO $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    WHILE clock_timestamp() < t0 + interval '8 seconds' LOOP
        PERFORM canary_record('load', 'u' || g, 'm-old', 'control', 'ok', 1) FROM generate_series(1, 10) g;
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;
});

# a check stuck behind a lock on canary_window_summaries, where the check of
# the armed rollout r4 writes its window (check_interval 2 s)
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE canary_window_summaries IN ACCESS EXCLUSIVE MODE');

# the metrics are written within the flush interval meanwhile
my @lags;
for (1 .. 10)
{
	sleep 0.4;
	push @lags, $node->safe_psql('postgres',
		"SELECT coalesce(round(extract(epoch FROM clock_timestamp() - last_write_at) * 1000), -1) FROM canary_stats()");
}
note "time since the last metric write, sampled every 0.4 s: @lags ms";
ok(!(grep { $_ < 0 || $_ > 600 } @lags),
	'metrics keep being written during the hang and the stuck check (no gap over 600 ms)');
sleep 3;
$locker->query_safe('COMMIT');
$locker->quit;

# shadow calls during the hang finish on time
my @ids;
push @ids, $node->safe_psql('postgres',
	"SELECT (canary_call('shadow during the hang $_', 'u$_', 'sh'))->>'request_id'") for 1 .. 5;
my $list = join(',', map { "'$_'::uuid" } @ids);
$node->poll_query_until('postgres',
	"SELECT count(*) = 5 FROM canary_shadow WHERE request_id = ANY(ARRAY[$list])")
  or die 'shadow rows missing';
my $lat = $node->safe_psql('postgres',
	"SELECT string_agg(new_latency_ms::text, ' ' ORDER BY new_latency_ms) FROM canary_shadow WHERE request_id = ANY(ARRAY[$list])");
my @lat = split / /, $lat;
note "shadow new_latency_ms during the hang: @lat (model: 300 ms)";
ok($lat[2] >= 300 && $lat[2] < 350, "shadow calls during the hang: median $lat[2] ms, within 50 ms of the model");

$load->quit;
$node->safe_psql('postgres', "SELECT canary_flush('30 s')");
my $stats = $node->safe_psql('postgres',
	"SELECT dropped || ' ' || (enqueued = written) || ' ' || (enqueued >= 5000) FROM canary_stats()");
is($stats, '0 true true', 'under load during the hang: 0 metric records dropped, all written');
is($node->safe_psql('postgres', "SELECT count(*) >= 5000 FROM canary_requests WHERE canary = 'load'"),
	't', 'the load is in canary_requests');

# the stuck check was cut by its statement timeout (2 s), not its lock timeout (5 s)
ok($node->log_contains('canceling statement due to statement timeout'),
	'the stuck kill-switch check is canceled by its statement timeout');

# the webhook attempts end as timeouts and are retried later
$node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM canary_alerts WHERE webhook_attempts >= 1")
  or die 'webhook attempts missing';
is($node->safe_psql('postgres',
		"SELECT count(*) FROM canary_alerts WHERE webhook_status = 'pending' AND webhook_last_error ILIKE '%timed out%'"),
	'3', 'each alert: the POST timed out, pending for a retry');

ok(!$node->log_contains('terminated by signal'), 'no process crashed');
$node->stop;
close($hang);
done_testing();
