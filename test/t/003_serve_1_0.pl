# The 1.1 library serving a 1.0 catalog, between the package upgrade and
# ALTER EXTENSION llm_canary UPDATE: the kill switch must keep working.
# canary_check summarises the window from the raw canary_requests (1.0 had
# no canary_rollups) and applies 1.0's rules (confirm_windows); a trip
# while an application's transaction pins a new session is deferred, not
# waited for; after the update it reads the rollups.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;

my $mock = mock_url(need_key => 1);
mock_profile('s10-old', '{"fixed_text": "old answer", "latency_ms": 1}');
mock_profile('s10-new', '{"fixed_text": "new answer", "latency_ms": 1}');

my $node = canary_node('serve_1_0', extension => 0, conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 50
});
$node->safe_psql('postgres', q{CREATE EXTENSION llm_canary VERSION '1.0'});
canary_create_models($node);
canary_create_put($node);
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows) VALUES
  ('bad', 'ramp_25', 'm-old', 'm-new', 2),
  ('good', 'ramp_25', 'm-old', 'm-new', 2);
-- two windows of five minutes: the canary errs 30 of 200 times in both
SELECT put('bad', '2026-06-01 12:00:00+00', 'control', 600);
SELECT put('bad', '2026-06-01 12:00:00+00', 'canary', 200, 30);
SELECT put('bad', '2026-06-01 12:05:00+00', 'control', 600);
SELECT put('bad', '2026-06-01 12:05:00+00', 'canary', 200, 30);
SELECT put('good', '2026-06-01 12:00:00+00', 'control', 600);
SELECT put('good', '2026-06-01 12:00:00+00', 'canary', 200);
SELECT put('good', '2026-06-01 12:05:00+00', 'control', 600);
SELECT put('good', '2026-06-01 12:05:00+00', 'canary', 200);
});

my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT coalesce(canary_check('bad', '2026-06-01 12:00:00+00'), 'none')});
is($out . $err, 'none', '1.0 catalog: the first breaching window is not yet a trip (confirm_windows = 2)');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT canary_check('bad', '2026-06-01 12:05:00+00')});
is($out . $err, 'new-model error_rate=0.150 > 0.02',
	'1.0 catalog: the second breaching window trips, summarised from canary_requests');
is($node->safe_psql('postgres',
		q{SELECT kill_switch_armed || ' ' || trip_reason FROM canary_config WHERE name = 'bad'}),
	'false new-model error_rate=0.150 > 0.02', 'the rollout is disarmed with the reason');
is($node->safe_psql('postgres',
		q{SELECT string_agg(kind || ' ' || (payload ->> 'reason'), ', ') FROM canary_alerts WHERE canary = 'bad'}),
	'kill_switch new-model error_rate=0.150 > 0.02', 'the 1.0 alert row is written');
is($node->safe_psql('postgres',
		q{SELECT string_agg(cohort || ' ' || samples || ' ' || errors, ', ' ORDER BY at, cohort)
		    FROM canary_window_summaries WHERE canary = 'bad'}),
	'canary 200 30, control 600 0, canary 200 30, control 600 0',
	'the window summaries are stored from the raw rows');

($rc, $out, $err) = $node->psql('postgres',
	q{SELECT coalesce(canary_check('good', '2026-06-01 12:05:00+00'), 'none')
	         || ' ' || (SELECT kill_switch_armed FROM canary_config WHERE name = 'good')});
is($out . $err, 'none true', '1.0 catalog: a clean window does not trip');

# thumbs-down from canary_feedback, bounded by the window on both sides
# (feedback follows its request): 30 of the canary's 200 requests and 12 of
# the control's 600 got one inside the window; one more thumbs-down, given
# after the window, is not counted
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows) VALUES
  ('td', 'ramp_25', 'm-old', 'm-new', 2);
SELECT put('td', '2026-06-01 12:00:00+00', 'control', 600, 0, 0, 12);
SELECT put('td', '2026-06-01 12:00:00+00', 'canary', 200, 0, 0, 30);
INSERT INTO canary_feedback (request_id, ts, thumbs_down, canary, cohort)
SELECT request_id, '2026-06-01 12:00:01+00', true, 'td', 'canary'
  FROM canary_requests r
 WHERE canary = 'td' AND cohort = 'canary'
   AND NOT EXISTS (SELECT 1 FROM canary_feedback f WHERE f.request_id = r.request_id)
 LIMIT 1;
SELECT canary_check('td', '2026-06-01 12:00:00+00');
});
is($node->safe_psql('postgres',
		q{SELECT string_agg(cohort || ' ' || samples || ' ' || thumbs_down, ', ' ORDER BY cohort)
		    FROM canary_window_summaries WHERE canary = 'td'}),
	'canary 200 30, control 600 12',
	'1.0 catalog: thumbs-down counted from canary_feedback inside the window only');

# --- the other paths a 1.0 catalog reaches with this library ---------------
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env) VALUES
  ('c-old', 'openai', '$mock/v1', 's10-old', 'LLM_CANARY_TEST_KEY'),
  ('c-new', 'openai', '$mock/v1', 's10-new', 'LLM_CANARY_TEST_KEY');
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('calls', 'full', 'c-old', 'c-new');
});
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT canary_call('hi', 'u1', 'calls') ->> 'response'});
is($out . $err, 'new answer', '1.0 catalog: canary_call answers');
$node->safe_psql('postgres', q{SELECT canary_flush('20 s')});
is($node->safe_psql('postgres',
		q{SELECT count(*) || ' ' || min(model) || ' ' || min(outcome) FROM canary_requests WHERE canary = 'calls'}),
	'1 c-new ok', '1.0 catalog: the metrics writer records the call');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT coalesce(canary_check(), 'none')});
is($out . $err, 'none', '1.0 catalog: canary_check() over every rollout runs');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT count(*) FROM canary_summary('good', '100 years')});
is($out . $err, '2', '1.0 catalog: canary_summary runs');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT canary_prometheus() LIKE '%llm_canary%'});
is($out . $err, 't', '1.0 catalog: canary_prometheus runs');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT 'ran ' || count(*) FROM canary_maintenance(1, current_date) WHERE action IS NULL});
is($out . $err, 'ran 0', '1.0 catalog: canary_maintenance runs');

# the monitor worker's scheduled check
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "llm_canary.check_interval = 1\n");
$node->reload;
ok($node->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM canary_window_summaries WHERE canary = 'good' AND at > '2026-07-01'}),
	"1.0 catalog: the worker's scheduled check stores summaries");
unlike(slurp_file($node->logfile, $log_offset), qr/ERROR/, 'and logs no error');
$node->append_conf('postgresql.conf', "llm_canary.check_interval = 0\n");
$node->reload;

# --- a trip while an application's transaction pins a new session ----------
# canary_cohort pins a new session: canary_sessions' foreign key holds FOR
# KEY SHARE on the rollout's row until the application's transaction ends.
# 1.0's canary_trip_internal takes the row FOR UPDATE, which conflicts with
# it: the check must not wait for the application (under the monitor's
# lock_timeout, the whole check would fail, every rollout's trip rolled
# back) but defer the trip, with a WARNING, to the next check.
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows) VALUES
  ('pinned', 'ramp_25', 'm-old', 'm-new', 1);
SELECT put('pinned', '2026-06-01 12:20:00+00', 'control', 600);
SELECT put('pinned', '2026-06-01 12:20:00+00', 'canary', 200, 30);
});
my $app = $node->background_psql('postgres');
$app->query_safe(q{BEGIN; SELECT canary_cohort('u1', 'pinned', 's1')});
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
		   WHERE c.relname = 'canary_config' AND l.pid <> pg_backend_pid() AND l.mode = 'RowShareLock'}),
	'1', '1.0 catalog: the application\'s open transaction pinned a new session (its foreign key locks the row)');
($rc, $out, $err) = $node->psql('postgres',
	q{SET lock_timeout = '2s'; SELECT coalesce(canary_check('pinned', '2026-06-01 12:20:00+00'), 'none')});
is("$rc|$out", '0|none', '1.0 catalog, application pin: the check runs without an error and does not trip');
is($err, qq{psql:<stdin>:1: WARNING:  could not trip the kill switch of rollout "pinned" now
DETAIL:  Another transaction holds the rollout's row in canary_config.
HINT:  The next check trips it if the rules still say so; end that transaction.},
	'1.0 catalog, application pin: it defers the trip with a WARNING (and nothing else)');
is($node->safe_psql('postgres',
		q{SELECT kill_switch_armed || ' ' || (SELECT count(*) FROM canary_alerts WHERE canary = 'pinned')
		    FROM canary_config WHERE name = 'pinned'}),
	'true 0', '1.0 catalog, application pin: the switch is still armed, no alert');
$app->query_safe('COMMIT');
$app->quit;
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT canary_check('pinned', '2026-06-01 12:20:00+00')});
is("$rc|$out|$err", '0|new-model error_rate=0.150 > 0.02|',
	'1.0 catalog: after the application commits, the next check trips');
is($node->safe_psql('postgres',
		q{SELECT kill_switch_armed || ' ' || (SELECT string_agg(kind, ',') FROM canary_alerts WHERE canary = 'pinned')
		    FROM canary_config WHERE name = 'pinned'}),
	'false kill_switch', '1.0 catalog: the switch is off, one trip alert');

# --- after ALTER EXTENSION UPDATE: the rollups (backfilled) serve the check ---
$node->safe_psql('postgres', q{ALTER EXTENSION llm_canary UPDATE});
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows, decision_mode)
  VALUES ('after', 'ramp_25', 'm-old', 'm-new', 2, 'confirm_windows');
SELECT put('after', '2026-06-01 12:10:00+00', 'control', 600);
SELECT put('after', '2026-06-01 12:10:00+00', 'canary', 200, 30);
SELECT put('after', '2026-06-01 12:15:00+00', 'control', 600);
SELECT put('after', '2026-06-01 12:15:00+00', 'canary', 200, 30);
});
is($node->safe_psql('postgres', q{SELECT coalesce(canary_check('after', '2026-06-01 12:10:00+00'), 'none')}),
	'none', '1.1 catalog: the first breaching window is not yet a trip');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT canary_check('after', '2026-06-01 12:15:00+00')});
is($out . $err, 'new-model error_rate=0.150 > 0.02', '1.1 catalog: the check reads the rollups and trips');
is($node->safe_psql('postgres',
		q{SELECT sum(requests) FROM canary_rollups WHERE canary = 'after'}),
	'1600', 'the rows reached the rollups');

done_testing();
