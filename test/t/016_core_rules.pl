# Rules of the core that need a preloaded library and a second session:
#
#  - text written to fixed-size fields is clipped at a character boundary
#    (a multibyte prompt_class at the 63-byte boundary stays valid text);
#    names too long to be cache keys are refused rather than clipped;
#  - a session pin never sends anyone to the new model when the
#    configuration sends no one there (shadow, percent_new = 0);
#  - canary_check reports no trip when the rollout is being tripped by
#    another session (no spurious "tripped" line in the worker's log), and
#    does not wait for the row that session holds; when that session is
#    another check (holding the rollout's check lock), no check_blocked
#    alert says the trip waits.
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

my $node = canary_node('core_rules', initdb => [ '--encoding=UTF8', '--locale=C' ], conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 50
});

mock_profile('cr-old', '{"fixed_text": "old answer", "latency_ms": 1}');
mock_profile('cr-new', '{"fixed_text": "new answer", "latency_ms": 1}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
  ('old', 'openai', '$mock/v1', 'cr-old', 'LLM_CANARY_TEST_KEY', 0),
  ('new', 'openai', '$mock/v1', 'cr-new', 'LLM_CANARY_TEST_KEY', 0);
UPDATE canary_config SET old_model = 'old', new_model = 'new', stage = 'full' WHERE name = 'default';
});

# --- text clipped at a character boundary ------------------------------------
{
	# 62 ASCII bytes then a 2-byte character: byte 63 is half of it
	my $id = $node->safe_psql('postgres',
		qq{SELECT canary_call('hi', 'u1', 'default', repeat('a', 62) || chr(233)) ->> 'request_id'});
	$node->safe_psql('postgres', q{SELECT canary_flush('20 s')});
	# (before the fix: "invalid byte sequence for encoding "UTF8": 0xc3")
	my ($rc, $row, $fail) = $node->psql('postgres',
		qq{SELECT octet_length(prompt_class) || ' ' || (prompt_class = repeat('a', 62))::text
		     || ' ' || length(upper(prompt_class)) FROM canary_requests WHERE request_id = '$id'});
	is($row || $fail, '62 true 62',
		'a multibyte prompt_class at the boundary is clipped before the character, not inside it');

	# a user id of 300 two-byte characters: clipped to 255 bytes, i.e. 127 characters
	$id = $node->safe_psql('postgres',
		q{SELECT canary_call('hi', repeat(chr(233), 300)) ->> 'request_id'});
	$node->safe_psql('postgres', q{SELECT canary_flush('20 s')});
	is($node->safe_psql('postgres',
			qq{SELECT octet_length(user_id) || ' ' || length(upper(user_id)) FROM canary_requests WHERE request_id = '$id'}),
		'254 127', 'a long multibyte user_id is clipped at a character boundary');

	# canary_record takes the same path
	$id = $node->safe_psql('postgres',
		q{SELECT canary_record('default', 'u2', 'new', 'canary', 'ok', 10,
		                      prompt_class => repeat('b', 61) || chr(8364))});
	$node->safe_psql('postgres', q{SELECT canary_flush('20 s')});
	is($node->safe_psql('postgres',
			qq{SELECT octet_length(prompt_class) FROM canary_requests WHERE request_id = '$id'}),
		'61', 'canary_record clips a 3-byte character at the boundary whole');

	# a rollout name longer than a cache key is refused, not clipped
	my ($ret, $out, $err) = $node->psql('postgres',
		qq{\\set VERBOSITY verbose\nSELECT canary_route('u1', repeat('r', 70))});
	like($err, qr/42622: rollout name "r+\.\.\." is too long/,
		'a 70-byte rollout name is refused with 42622');
}

# --- session pins never outlive a stage regression ----------------------------
{
	$node->safe_psql('postgres', q{
		INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('pins', 'full', 'old', 'new');
	});
	is($node->safe_psql('postgres', q{SELECT canary_route('u1', 'pins', 'sess-1')}),
		'new', 'full stage: the session is pinned to the new model');
	$node->safe_psql('postgres', q{UPDATE canary_config SET stage = 'shadow' WHERE name = 'pins'});
	is($node->safe_psql('postgres', q{SELECT canary_route('u1', 'pins', 'sess-1')}),
		'old', 'back to shadow: the pin no longer sends the session to the new model');
	is($node->safe_psql('postgres', q{SELECT canary_call('hi', 'u1', 'pins', NULL, 'sess-1') ->> 'model'}),
		'old', 'and canary_call with that session is served by the old model');

	is($node->safe_psql('postgres', q{SELECT canary_route('u2', 'pins', 'sess-2')}),
		'old', 'shadow: a new session is pinned to the old model');
	$node->safe_psql('postgres', q{UPDATE canary_config SET stage = 'full' WHERE name = 'pins'});
	is($node->safe_psql('postgres', q{SELECT canary_route('u3', 'pins', 'sess-3')}),
		'new', 'full again: a new session goes to the new model');
	$node->safe_psql('postgres', q{UPDATE canary_config SET stage = 'ramp_25', percent_new = 0 WHERE name = 'pins'});
	is($node->safe_psql('postgres', q{SELECT percent_new FROM canary_config WHERE name = 'pins'}),
		'0.00', 'percent_new is 0');
	is($node->safe_psql('postgres', q{SELECT canary_route('u3', 'pins', 'sess-3')}),
		'old', 'percent_new = 0: the pin no longer sends the session to the new model');
	is($node->safe_psql('postgres', q{SELECT model FROM canary_sessions WHERE canary = 'pins' AND session_id = 'sess-3'}),
		'old', 'and the session is pinned to the old model now');
}

# --- a rollout tripped meanwhile is not reported as tripped by canary_check ----
{
	$node->safe_psql('postgres', q{
		INSERT INTO canary_config (name, stage, old_model, new_model, raw_rules, min_samples, confirm_windows)
		VALUES ('race', 'ramp_25', 'old', 'new', true, 1, 1);
		SELECT count(canary_record('race', 'u' || i, 'new', 'canary', 'error', 10)) FROM generate_series(1, 20) i;
		SELECT count(canary_record('race', 'c' || i, 'old', 'control', 'ok', 10)) FROM generate_series(1, 20) i;
		SELECT canary_flush('20 s');
	});
	my $manual = $node->background_psql('postgres');
	$manual->query_safe('BEGIN');
	$manual->query_safe(q{SELECT canary_trip('race', 'manual trip first')});

	# canary_check finds the rollout armed and its row held: it does not
	# wait for the row (a check holding check locks never does: the trigger
	# of an operator's UPDATE may be waiting for one of them), says so and
	# leaves the trip to the next check
	my ($ret, $reason, $err) = $node->psql('postgres',
		"SET lock_timeout = '5s'; SELECT coalesce(canary_check('race'), 'NULL')");
	$manual->query_safe('COMMIT');
	$manual->quit;
	is("$ret|$reason", '0|NULL', 'canary_check reports no trip of its own while another session trips');
	like($err, qr/WARNING:  could not trip the kill switch of rollout "race" now\nDETAIL:  Another transaction holds the rollout's row in canary_config\./,
		'and says why, without waiting for the row');
	is($node->safe_psql('postgres', q{SELECT coalesce(canary_check('race'), 'NULL')}), 'NULL',
		'the next check finds the rollout tripped');
	is($node->safe_psql('postgres', q{SELECT trip_reason FROM canary_config WHERE name = 'race'}),
		'manual trip first', 'the first trip stands');
	is($node->safe_psql('postgres', q{SELECT string_agg(kind || ' ' || coalesce(payload->>'reason', ''), ', ' ORDER BY kind)
	                                     FROM canary_alerts WHERE canary = 'race'}),
		'check_blocked trip_deferred, manual_trip manual trip first',
		'one trip alert (the manual one), and the deferred trip\'s check_blocked alert');
	# (the check held the rollout's check lock: it cannot tell an operator's
	# open canary_trip from an operator's open SELECT ... FOR UPDATE, and had
	# that transaction stayed open the trip would indeed have waited)
}

# --- two checks overlapping: the one without the check lock defers quietly ---
# (the monitor worker and pg_cron's job): the first check, left open here,
# holds the rollout's check lock and trips, holding the row; the second
# finds both taken, defers its trip (a WARNING) and records "trip":
# "deferred", but raises no check_blocked alert: the check holding the lock
# is the one that says whether a trip waits, and here it is tripping
{
	$node->safe_psql('postgres', q{
		INSERT INTO canary_config (name, stage, old_model, new_model, raw_rules, min_samples, confirm_windows)
		VALUES ('race2', 'ramp_25', 'old', 'new', true, 1, 1);
		SELECT count(canary_record('race2', 'u' || i, 'new', 'canary', 'error', 10)) FROM generate_series(1, 20) i;
		SELECT count(canary_record('race2', 'c' || i, 'old', 'control', 'ok', 10)) FROM generate_series(1, 20) i;
		SELECT canary_flush('20 s');
	});
	my $first = $node->background_psql('postgres');
	$first->query_safe('BEGIN');
	is($first->query_safe(q{SELECT canary_check('race2')}), 'new-model error_rate=1.000 > 0.02',
		'overlap: the first check, left open, trips');
	my ($ret, $reason, $err) = $node->psql('postgres',
		"SET lock_timeout = '5s'; SELECT coalesce(canary_check('race2'), 'NULL')");
	is("$ret|$reason", '0|NULL', 'overlap: the second check reports no trip, without an error');
	like($err, qr/WARNING:  could not trip the kill switch of rollout "race2" now/,
		'overlap: and says its trip waits');
	is($node->safe_psql('postgres', q{SELECT (decision->>'check_lock') || ' ' || (decision->>'trip') || ' '
	                                          || (decision->>'trip_kind')
	                                     FROM canary_window_summaries WHERE canary = 'race2' AND cohort = 'canary'}),
		'false deferred kill_switch', 'overlap: its decision records the deferred trip (the first check\'s is not committed)');
	$first->query_safe('COMMIT');
	$first->quit;
	is($node->safe_psql('postgres', q{SELECT string_agg(kind || ' ' || coalesce(payload->>'reason', ''), ', ' ORDER BY id)
	                                     FROM canary_alerts WHERE canary = 'race2'}),
		'kill_switch new-model error_rate=1.000 > 0.02',
		'overlap: the trip\'s alert alone, no check_blocked alert from the check without the lock');
}

$node->stop;
done_testing();
