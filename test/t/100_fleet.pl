# The fleet on real logical replication: one control database and two
# members, three local clusters, traffic through canary_call on both members
# (the mock LLM server).  Configuration flows down (a trip on the control
# stops new-model calls on every member, a member refuses writes of its
# own), evidence flows up (canary_fleet on the control), a member cut off
# from the control fails safe after llm_canary.fleet_max_lag, and a member
# that restarts catches up.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use MockLLM;
use Time::HiRes qw(time usleep);

my $mock = $ENV{LLM_CANARY_MOCK_URL}
  or plan skip_all => 'LLM_CANARY_MOCK_URL is not set (run through test/run_suite.sh)';

mock_profile('f-old', '{"fixed_text": "old answer", "latency_ms": 2}');
mock_profile('f-new', '{"fixed_text": "new answer", "latency_ms": 2}');

# --- three clusters ----------------------------------------------------------
sub fleet_node
{
	my ($name, $role) = @_;
	my $node = PostgreSQL::Test::Cluster->new("fleet_$name");
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'llm_canary'
llm_canary.database_name = 'postgres'
llm_canary.check_interval = 0
llm_canary.fleet_role = '$role'
llm_canary.member = '$name'
llm_canary.fleet_heartbeat_interval = '200ms'
llm_canary.fleet_max_lag = '3s'
max_worker_processes = 16
});
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION llm_canary');
	return $node;
}

my $control = fleet_node('control', 'control');
my @members = (fleet_node('m1', 'member'), fleet_node('m2', 'member'));
my ($m1, $m2) = @members;

$control->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
  ('old', 'openai', '$mock/v1', 'f-old', 'LLM_CANARY_TEST_KEY', 0),
  ('new', 'openai', '$mock/v1', 'f-new', 'LLM_CANARY_TEST_KEY', 0);
UPDATE canary_config SET old_model = 'old', new_model = 'new', stage = 'full';
INSERT INTO canary_refusal_patterns (pattern) VALUES ('fleet test refusal');
});
is($control->safe_psql('postgres', 'SELECT canary_fleet_publish()'), 'llm_canary_config',
	'the control publishes llm_canary_config');
is($control->safe_psql('postgres', q{SELECT string_agg(tablename, ',' ORDER BY tablename)
	FROM pg_publication_tables WHERE pubname = 'llm_canary_config'}),
	'canary_config,canary_fleet_heartbeat,canary_models,canary_refusal_patterns',
	'with the configuration tables and the heartbeat');

my $control_conn = $control->connstr . ' dbname=postgres';
for my $m (@members)
{
	my $name = $m->name =~ s/^fleet_//r;
	is($m->safe_psql('postgres', 'SELECT canary_fleet_join()'), '11',
		"$name: canary_fleet_join empties the fresh install's rollout, models and patterns (1 + 0 + 10 rows)");
	# m1 was set up by an earlier build, which published the raw rows too
	$m->safe_psql('postgres', q{
CREATE PUBLICATION llm_canary_requests FOR TABLE canary_requests, canary_feedback
  WITH (publish = 'insert', publish_via_partition_root = true);}) if $name eq 'm1';
	is($m->safe_psql('postgres', 'SELECT canary_fleet_publish()'), 'llm_canary_evidence',
		"$name publishes llm_canary_evidence");
	$m->safe_psql('postgres',
		"CREATE SUBSCRIPTION llm_canary_config CONNECTION '$control_conn' PUBLICATION llm_canary_config"
		  . " WITH (slot_name = 'llm_canary_config_$name')");
	my $mconn = $m->connstr . ' dbname=postgres';
	$control->safe_psql('postgres',
		"CREATE SUBSCRIPTION llm_canary_from_$name CONNECTION '$mconn' PUBLICATION llm_canary_evidence"
		  . ($name eq 'm1' ? ', llm_canary_requests' : ''));
}
is($m1->safe_psql('postgres', q{SELECT count(*) FROM pg_publication_tables WHERE pubname = 'llm_canary_requests'}),
	'0', 'the raw rows\' publication of an earlier build is emptied, not dropped (the control still lists it)');

# --- configuration flows down ----------------------------------------------
for my $m (@members)
{
	ok($m->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM canary_config WHERE name = 'default' AND stage = 'full' AND new_model = 'new'}),
		$m->name . ': the control\'s rollout arrives');
	# each table has its own initial copy: wait for all of them
	ok($m->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate <> 'r'}),
		$m->name . ': every configuration table is copied');
	is($m->safe_psql('postgres', q{SELECT count(*) FROM canary_refusal_patterns WHERE pattern = 'fleet test refusal'}),
		'1', $m->name . ': with the control\'s refusal patterns');
	is($m->safe_psql('postgres', q{SELECT canary_call('hi', 'u1') ->> 'response'}), 'new answer',
		$m->name . ': canary_call is served by the new model at stage full');
}

# a member refuses writes of its own, naming the control database
my ($ret, $out, $err) = $m1->psql('postgres', q{UPDATE canary_config SET stage = 'ramp_1'},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000: cannot change table "canary_config" on fleet member "m1"/,
	'a member refuses an UPDATE of canary_config (55000)');
like($err, qr/replicated from the control database "postgres" \(fleet member "control"\)/,
	'the error names the control database');
($ret, $out, $err) = $m2->psql('postgres', q{SELECT canary_trip('default', 'local trip')});
like($err, qr/cannot change table "canary_config" on fleet member "m2"/,
	'a trip on a member is refused too');
($ret, $out, $err) = $m2->psql('postgres', q{SELECT canary_check()});
like($err, qr/canary_check runs on the fleet's control database, not on member "m2"/,
	'canary_check on a member is refused');
# so a member exports no age of the last check (LLMCanaryChecksStopped would
# page for every member); the control, which checks, does
is($m2->safe_psql('postgres', q{SELECT string_agg(name, ',' ORDER BY name) FROM canary_config
                                WHERE kill_switch_armed AND stage <> 'shadow'})
	. ' / ' . $m2->safe_psql('postgres', q{SELECT count(*) FROM canary_check_age()}),
	'default / 0', 'a member has the armed rollout but no age of its last check (canary_check_age)');
is($control->safe_psql('postgres', q{SELECT string_agg(canary, ',' ORDER BY canary) FROM canary_check_age()}),
	'default', 'the control has it');
unlike($m2->safe_psql('postgres', 'SELECT canary_prometheus()'), qr/^llm_canary_check_age_seconds\{/m,
	'nor does the member\'s canary_prometheus');
($ret, $out, $err) = $m1->psql('postgres', q{DELETE FROM canary_models});
like($err, qr/cannot change table "canary_models" on fleet member "m1"/, 'so is a DELETE of canary_models');

# --- a trip on the control stops new-model calls on every member -------------
# Long-lived backends: the trip must reach them through the cache invalidation
# sent by the applied rows, not through a new connection.
my @apps = map { $_->background_psql('postgres') } @members;
for my $i (0, 1)
{
	is($apps[$i]->query_safe(q{SELECT canary_call('hi', 'u1') ->> 'model'}), 'new',
		"member " . ($i + 1) . ": a long-lived backend calls the new model before the trip");
}
my $t0 = time;
$control->safe_psql('postgres', q{SELECT canary_trip('default', 'fleet trip test')});
my @seen = (0, 0);
for my $attempt (1 .. 200)
{
	for my $i (0, 1)
	{
		next if $seen[$i];
		$seen[$i] = time - $t0
		  if $apps[$i]->query_safe(q{SELECT canary_route('u1')}) eq 'old';
	}
	last if $seen[0] && $seen[1];
	usleep(25_000);
}
ok($seen[0] && $seen[0] < 2, "member 1 routes to the old model ${seen[0]} s after the trip's commit");
ok($seen[1] && $seen[1] < 2, "member 2 routes to the old model ${seen[1]} s after the trip's commit");
for my $i (0, 1)
{
	is($apps[$i]->query_safe(q{SELECT canary_call('hi', 'u1') ->> 'model'}), 'old',
		"member " . ($i + 1) . ": the next canary_call in the same backend is served by the old model");
}
$control->safe_psql('postgres', q{SELECT canary_rearm('default')});
for my $i (0, 1)
{
	ok(poll_bg($apps[$i], q{SELECT canary_route('u1')}, 'new'),
		"member " . ($i + 1) . ": the re-arm reaches it too");
}

# Poll a background session until the query returns the expected value (10 s).
sub poll_bg
{
	my ($bg, $sql, $want) = @_;
	for (1 .. 400)
	{
		return 1 if $bg->query_safe($sql) eq $want;
		usleep(25_000);
	}
	return 0;
}

# The control's combined rollups against the members' rows it holds: the
# number of rows (combined rollups and combined totals) that differ from
# the sum over members, in either direction; 0 when they agree exactly.
# Every column after the key is summed, read from the catalog: a counter
# added to the tables is compared without a change here.
my $sum_q = q{
SELECT string_agg(a.attname, ', ' ORDER BY a.attnum) FILTER (WHERE a.attnum = ANY (k.conkey))
       || ', ' || string_agg(CASE a.atttypid WHEN 'int8[]'::regtype THEN format('canary_hist_sum(%I)', a.attname)
                                             WHEN 'numeric'::regtype THEN format('sum(%I)', a.attname)
                                             ELSE format('sum(%I)::bigint', a.attname) END,
                             ', ' ORDER BY a.attnum) FILTER (WHERE a.attnum <> ALL (k.conkey))
  FROM pg_attribute a JOIN pg_constraint k ON k.conrelid = a.attrelid AND k.contype = 'p'
 WHERE a.attrelid = '%s'::regclass AND a.attnum > 0 AND NOT a.attisdropped};
my $combined_diff_q = sprintf(q{
WITH s AS (SELECT %s FROM canary_rollups GROUP BY 1, 2, 3, 4, 5, 6, 7),
t AS (SELECT %s FROM canary_rollup_totals GROUP BY 1, 2, 3, 4)
SELECT (SELECT count(*) FROM (SELECT * FROM s EXCEPT ALL SELECT * FROM canary_fleet_rollups) a)
     + (SELECT count(*) FROM (SELECT * FROM canary_fleet_rollups EXCEPT ALL SELECT * FROM s) b)
     + (SELECT count(*) FROM (SELECT * FROM t EXCEPT ALL SELECT * FROM canary_fleet_rollup_totals) c)
     + (SELECT count(*) FROM (SELECT * FROM canary_fleet_rollup_totals EXCEPT ALL SELECT * FROM t) d)},
	map { $control->safe_psql('postgres', sprintf($sum_q, $_)) } qw(canary_fleet_rollups canary_fleet_rollup_totals));
like($combined_diff_q, qr/sum\(new_users\)::bigint FROM canary_rollups .*canary_hist_sum\(tokens_hist\) FROM canary_rollup_totals/s,
	'the members\' sums read from the catalog name every counter');
is($control->safe_psql('postgres', q{
SELECT string_agg(n, ' ')
  FROM (SELECT (SELECT string_agg(a.attname, ',' ORDER BY a.attnum)
                  FROM pg_attribute a JOIN pg_constraint k ON k.conrelid = a.attrelid AND k.contype = 'p'
                 WHERE a.attrelid = r AND a.attnum > 0 AND NOT a.attisdropped AND a.attnum <> ALL (k.conkey)) n
          FROM unnest(ARRAY['canary_rollups', 'canary_fleet_rollups',
                            'canary_rollup_totals', 'canary_fleet_rollup_totals']::regclass[]) r) x}),
	join(' ', map { $control->safe_psql('postgres', qq{
SELECT string_agg(counter, ',') FROM canary_rollup_counters() WHERE in_totals OR NOT $_}) } qw(false false true true)),
	'canary_rollup_counters() lists every column after the key of the rollups, the totals and their combined rows');

# --- evidence flows up: canary_fleet on the control --------------------------
ok($control->poll_query_until('postgres',
	q{SELECT string_agg(member || ':' || state, ',' ORDER BY member) = 'm1:ok,m2:ok' FROM canary_fleet()}),
	'canary_fleet on the control: both members report, routing as the control says');
cmp_ok($control->safe_psql('postgres',
	q{SELECT extract(epoch FROM max(config_lag)) FROM canary_fleet()}), '<', 2,
	'the members\' configuration lag, measured on the control\'s clock, is under 2 s');

# --- a regression that shows only in the fleet's combined traffic -----------
# Each member alone has fewer canary samples than min_samples; together they
# have enough, and the control's check trips the rollout for the whole fleet.
my $have_rollups = $control->safe_psql('postgres',
	q{SELECT to_regclass('canary_rollups') IS NOT NULL}) eq 't';
SKIP:
{
	skip 'this tree has no canary_rollups yet (issue 12)', 14 unless $have_rollups;

	mock_profile('f-flaky', '{"fixed_text": "flaky answer", "latency_ms": 2, "error_rate": 0.2}');
	$control->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries)
  VALUES ('flaky', 'openai', '$mock/v1', 'f-flaky', 'LLM_CANARY_TEST_KEY', 0);
INSERT INTO canary_config (name, stage, old_model, new_model, min_samples, confirm_windows)
  VALUES ('comb', 'full', 'old', 'flaky', 150, 1);
});
	is($control->safe_psql('postgres', 'SELECT canary_fleet_publish()'), 'llm_canary_config',
		'canary_fleet_publish is idempotent');
	for my $m (@members)
	{
		$m->poll_query_until('postgres', q{SELECT count(*) = 1 FROM canary_config WHERE name = 'comb'})
		  or die 'rollout comb did not reach ' . $m->name;
	}
	my %local;
	my $calls = sub {
		my ($m, $name) = @_;
		$m->safe_psql('postgres', qq{
SELECT count(canary_call('$name prompt ' || i, '$name-user-' || i, 'comb')) FROM generate_series(1, 100) i;
SELECT canary_flush();});
		$local{$name} = $m->safe_psql('postgres',
			q{SELECT sum(requests) FILTER (WHERE NOT fallback) || '/' || sum(outcome_error) FILTER (WHERE NOT fallback)
			    FROM canary_rollups WHERE canary = 'comb'});
		ok($control->poll_query_until('postgres',
			qq{SELECT coalesce(sum(requests) FILTER (WHERE NOT fallback) || '/' || sum(outcome_error) FILTER (WHERE NOT fallback), '')
			     = '$local{$name}' FROM canary_rollups WHERE canary = 'comb' AND member = '$name'}),
			"$name: its rollups ($local{$name} new-model attempts/errors) reach the control");
	};
	$calls->($m1, 'm1');
	like($local{m1}, qr{^100/(1[0-9]|2[0-9]|3[0-9])$}, 'member 1: 100 new-model attempts, about 20 % failed');
	is($control->safe_psql('postgres', q{SELECT canary_check('comb')}), '',
		'member 1 alone is below min_samples: the control does not trip');
	$calls->($m2, 'm2');
	like($control->safe_psql('postgres', q{SELECT canary_check('comb')}),
		qr/^new-model error_rate=0\.[12][0-9]* > 0\.02/,
		'with member 2\'s traffic the combined evidence trips the rollout on the control');
	is($control->safe_psql('postgres',
		q{SELECT payload -> 'members' FROM canary_alerts WHERE canary = 'comb' ORDER BY id DESC LIMIT 1}),
		'["m1", "m2"]', 'the alert says which members the evidence came from');
	is($control->safe_psql('postgres',
		q{SELECT (payload ->> 'samples_new')::int FROM canary_alerts WHERE canary = 'comb' ORDER BY id DESC LIMIT 1}),
		'200', 'and counts both members\' samples');
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'the control\'s combined rollups and totals equal the sum of both members\' rows exactly');
	is($control->safe_psql('postgres',
		q{SELECT sum(requests) FILTER (WHERE NOT fallback) FROM canary_fleet_rollups WHERE canary = 'comb'}),
		'200', 'one combined count of the 200 new-model attempts');
	# the summaries read the combined rows only: without the members' rows
	# (deleted in a transaction rolled back) they do not change
	is($control->safe_psql('postgres', q{
BEGIN;
DELETE FROM canary_rollups WHERE canary = 'comb';
SELECT cohort || ':' || requests FROM canary_summary('comb');
ROLLBACK;}), 'canary:200',
		'canary_summary on the control reads the combined rows; a member\'s DELETE takes nothing out of them');
	my $member_total = 0;
	$member_total += $_->safe_psql('postgres', q{SELECT sum(total) FROM canary_prometheus_requests('comb')}) for @members;
	is($control->safe_psql('postgres', q{SELECT sum(total) FROM canary_prometheus_requests('comb')}),
		$member_total, "the control's Prometheus counters are the members' summed ($member_total attempts)");
	is($control->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE canary = 'comb'}),
		'0', 'the members\' raw rows stay on the members');
	for my $m (@members)
	{
		ok($m->poll_query_until('postgres', q{SELECT canary_route('anyone', 'comb') = 'old'}),
			$m->name . ': the fleet-wide trip routes everyone to the old model');
	}
	like($control->safe_psql('postgres',
		q{SELECT string_agg(member || ':' || (last_evidence IS NOT NULL), ',' ORDER BY member) FROM canary_fleet()}),
		qr/^m1:true,m2:true$/, 'canary_fleet shows each member\'s last evidence');

	# a member's rebuild reaches the control as UPDATEs: the combined rows follow
	my $m1_comb_q = q{SELECT sum(requests) || '/' || sum(outcome_error) FROM canary_rollups WHERE canary = 'comb' AND member = 'm1'};
	my $before = $m1->safe_psql('postgres', $m1_comb_q);
	$m1->safe_psql('postgres', q{UPDATE canary_rollups SET requests = requests + 1000 WHERE canary = 'comb'});
	ok($control->poll_query_until('postgres', "SELECT ($m1_comb_q) = '"
		  . $m1->safe_psql('postgres', $m1_comb_q) . "'"), 'member 1\'s damaged rollups reach the control');
	cmp_ok($m1->safe_psql('postgres', q{SELECT canary_rollup_rebuild(now() - interval '1 hour')}), '>', 0,
		'member 1 rebuilds its rollups from its raw rows');
	is($m1->safe_psql('postgres', $m1_comb_q), $before, 'the rebuild recounts member 1\'s rows');
	ok($control->poll_query_until('postgres', "SELECT ($m1_comb_q) = '$before'"),
		'the rebuilt rows reach the control');
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'and the combined rows follow the rebuild exactly (zeroed, then recounted)');
	is($control->safe_psql('postgres',
		q{SELECT sum(requests) FILTER (WHERE NOT fallback) FROM canary_fleet_rollups WHERE canary = 'comb'}),
		'200', 'still one count of the 200 new-model attempts');
	# the control's own rebuild recounts only its own raw rows
	is($control->safe_psql('postgres', q{SELECT canary_rollup_rebuild(now() - interval '1 hour')}), '0',
		'a rebuild on the control recounts only its own (no) traffic');
	is($control->safe_psql('postgres', q{SELECT count(*) FROM canary_rollups WHERE member NOT IN ('m1', 'm2')}),
		'0', 'it counts no member\'s raw rows as its own');
	is($control->safe_psql('postgres', $combined_diff_q), '0', 'and leaves the combined rows equal to the members\' sum');

	# an UPDATE that changes a key takes OLD out of the old key's combined row
	my $m1_sync = sub {
		my ($q) = @_;
		my $v = $m1->safe_psql('postgres', $q);
		ok($control->poll_query_until('postgres', "SELECT ($q) = '$v'"), "member 1's change reaches the control ($v)");
	};
	my $m1_moved_q = q{SELECT count(*) || '/' || coalesce(sum(requests), 0) FROM canary_rollups
	                   WHERE member = 'm1' AND canary = 'comb' AND stage LIKE '%~moved'};
	$m1->safe_psql('postgres', q{UPDATE canary_rollups SET stage = stage || '~moved' WHERE canary = 'comb'});
	$m1_sync->($m1_moved_q);
	my $m1_totals_q = q{SELECT count(*) || '/' || coalesce(sum(requests), 0) FROM canary_rollup_totals
	                    WHERE member = 'm1' AND canary = 'comb' AND cohort LIKE '%~moved'};
	$m1->safe_psql('postgres', q{UPDATE canary_rollup_totals SET cohort = cohort || '~moved' WHERE canary = 'comb'});
	$m1_sync->($m1_totals_q);
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'key-changing UPDATEs: the combined rows and totals still equal the members\' sum (counted once)');
	is($control->safe_psql('postgres',
		q{SELECT sum(requests) FILTER (WHERE NOT fallback) FROM canary_fleet_rollups WHERE canary = 'comb'}),
		'200', 'still one count of the 200 new-model attempts');
	$m1->safe_psql('postgres', q{UPDATE canary_rollups SET stage = left(stage, -6) WHERE canary = 'comb' AND stage LIKE '%~moved'});
	$m1->safe_psql('postgres', q{UPDATE canary_rollup_totals SET cohort = left(cohort, -6) WHERE canary = 'comb' AND cohort LIKE '%~moved'});
	$m1_sync->($m1_moved_q);
	$m1_sync->($m1_totals_q);
	is($control->safe_psql('postgres', q{
SELECT (SELECT coalesce(sum(requests + latency_count), -1) || '/' || bool_and(latency_hist = '{}')
          FROM canary_fleet_rollups WHERE stage LIKE '%~moved')
    || ' ' || (SELECT coalesce(sum(requests + latency_count), -1) || '/' || bool_and(latency_hist = '{}')
                 FROM canary_fleet_rollup_totals WHERE cohort LIKE '%~moved')}),
		'0/true 0/true', 'moved back: the moved keys\' combined rows and totals are empty again');
	$control->safe_psql('postgres', q{DELETE FROM canary_fleet_rollups WHERE stage LIKE '%~moved';
DELETE FROM canary_fleet_rollup_totals WHERE cohort LIKE '%~moved';});
	is($control->safe_psql('postgres', $combined_diff_q), '0', 'and the others equal the members\' sum');

	# every counter, each non-zero (the columns from the catalog, so that a
	# counter added later is covered): a row and a totals row of member 1
	# added, doubled, moved to another key, recombined and rebuilt away; the
	# combined rows follow each step exactly
	my %vals;
	for my $tab (qw(canary_rollups canary_rollup_totals))
	{
		$vals{$tab} = $m1->safe_psql('postgres', qq{
SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) || '|'
       || string_agg(CASE a.atttypid WHEN 'int8[]'::regtype THEN format('''{%s,2}''', a.attnum)
                                     WHEN 'numeric'::regtype THEN format('%s.5', a.attnum)
                                     ELSE a.attnum::text END, ', ' ORDER BY a.attnum) || '|'
       || string_agg(CASE a.atttypid WHEN 'int8[]'::regtype THEN format('%1\$I = canary_hist_merge(%1\$I, %1\$I)', a.attname)
                                     ELSE format('%1\$I = %1\$I + %1\$I', a.attname) END, ', ' ORDER BY a.attnum) || '|'
       || string_agg(CASE a.atttypid WHEN 'int8[]'::regtype THEN format('%I = ''{}''', a.attname)
                                     ELSE format('%I = 0', a.attname) END, ' AND ' ORDER BY a.attnum)
  FROM pg_attribute a JOIN pg_constraint k ON k.conrelid = a.attrelid AND k.contype = 'p'
 WHERE a.attrelid = '$tab'::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attnum <> ALL (k.conkey)});
	}
	my ($rcols, $rvals, $rdouble, $rzero) = split /\|/, $vals{canary_rollups};
	my ($tcols, $tvals, $tdouble, $tzero) = split /\|/, $vals{canary_rollup_totals};
	my $allcols_q = q{SELECT count(*) || '/' || coalesce(sum(requests), 0) || '/' || coalesce(max(stage), '-')
	                        || (SELECT '/' || count(*) || '/' || coalesce(sum(requests), 0) || '/' || coalesce(max(cohort), '-')
	                              FROM canary_rollup_totals WHERE canary = 'allcols')
	                    FROM canary_rollups WHERE canary = 'allcols'};
	$m1->safe_psql('postgres', qq{
INSERT INTO canary_rollups (canary, bucket_end, member, stage, cohort, model, fallback, cached, $rcols)
VALUES ('allcols', '2026-01-01 00:01:00+00', 'm1', 'ramp_1', 'canary', 'n', false, false, $rvals);
INSERT INTO canary_rollup_totals (canary, member, model, cohort, fallback, $tcols)
VALUES ('allcols', 'm1', 'n', 'canary', false, $tvals);});
	$m1_sync->($allcols_q);
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'every counter of an added row reaches the combined row and totals');
	$m1->safe_psql('postgres', qq{
UPDATE canary_rollups SET $rdouble WHERE canary = 'allcols';
UPDATE canary_rollup_totals SET $tdouble WHERE canary = 'allcols';});
	$m1_sync->($allcols_q);
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'every counter of an updated row: NEW less OLD added');
	$m1->safe_psql('postgres', q{
UPDATE canary_rollups SET stage = 'ramp_5' WHERE canary = 'allcols';
UPDATE canary_rollup_totals SET cohort = 'control' WHERE canary = 'allcols';});
	$m1_sync->($allcols_q);
	is($control->safe_psql('postgres', qq{
SELECT (SELECT count(*) FROM canary_fleet_rollups WHERE canary = 'allcols' AND stage = 'ramp_1' AND $rzero)
       || '/' || (SELECT count(*) FROM canary_fleet_rollup_totals WHERE canary = 'allcols' AND cohort = 'canary' AND $tzero);
DELETE FROM canary_fleet_rollups WHERE canary = 'allcols' AND stage = 'ramp_1';
DELETE FROM canary_fleet_rollup_totals WHERE canary = 'allcols' AND cohort = 'canary';
$combined_diff_q}), "1/1\n0",
		'a key-changing UPDATE takes every counter out of the old key\'s rows, adds it to the new key\'s');
	is($control->safe_psql('postgres', q{
UPDATE canary_fleet_rollups SET requests = requests + 1 WHERE canary = 'allcols';
UPDATE canary_fleet_rollup_totals SET requests = requests + 1 WHERE canary = 'allcols';
SELECT canary_fleet_combine('2026-01-01 00:00:30+00', '2026-01-01 00:01:00+00');}), '1',
		'canary_fleet_combine recomputes the range\'s one combined row');
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'with every counter, and every counter of the combined totals');
	is($m1->safe_psql('postgres', q{SELECT canary_rollup_rebuild('2026-01-01 00:00:30+00', '2026-01-01 00:01:00+00')}),
		'0', 'member 1 rebuilds the range from its (no) raw rows');
	$m1_sync->($allcols_q);
	is($control->safe_psql('postgres',
		qq{SELECT count(*) FROM canary_fleet_rollups WHERE canary = 'allcols' AND $rzero}), '1',
		'the rebuild set every counter of the row to zero before deleting it: the combined row is empty');
	$m1->safe_psql('postgres', q{DELETE FROM canary_rollup_totals WHERE canary = 'allcols'});
	$m1_sync->($allcols_q);
	$control->safe_psql('postgres', q{DELETE FROM canary_fleet_rollups WHERE canary = 'allcols';
DELETE FROM canary_fleet_rollup_totals WHERE canary = 'allcols';});
	is($control->safe_psql('postgres', $combined_diff_q), '0', 'and the others equal the members\' sum');

	# a member without the CHECK (dropped, another version) sends a row with a
	# bad histogram: the control's trigger combines its counters, skips its
	# histograms with a WARNING, and replication goes on
	my $ctl_log = -s $control->logfile;
	$m1->safe_psql('postgres', q{
ALTER TABLE canary_rollups DROP CONSTRAINT canary_rollups_hist_check;
INSERT INTO canary_rollups (canary, bucket_end, member, stage, cohort, model, fallback, cached, requests, latency_hist)
VALUES ('badhist', '2026-01-01 00:00:30+00', 'm1', 'ramp_1', 'canary', 'n', false, false, 7, '{5,-3,9}');});
	ok($control->poll_query_until('postgres',
		q{SELECT requests = 7 AND latency_hist = '{}' FROM canary_fleet_rollups WHERE canary = 'badhist'}),
		'a row with an invalid histogram is applied on the control: counters combined, histogram skipped');
	ok($control->wait_for_log(qr/WARNING:  skipping the histograms of a row of canary_rollups with an invalid histogram/, $ctl_log),
		'with a WARNING, not an error that would stall the apply worker');
	$m1->safe_psql('postgres', q{DELETE FROM canary_rollups WHERE canary = 'badhist';
ALTER TABLE canary_rollups ADD CONSTRAINT canary_rollups_hist_check
    CHECK (canary_fleet_is_control() OR (canary_hist_valid(latency_hist) AND canary_hist_valid(tokens_hist)));});
	ok($control->poll_query_until('postgres', q{SELECT count(*) = 0 FROM canary_rollups WHERE canary = 'badhist'}),
		'replication goes on after it');
	$control->safe_psql('postgres', q{DELETE FROM canary_fleet_rollups WHERE canary = 'badhist'});
}

# --- CSAT for the whole fleet: the members' users, the control's scores ------
# The members keep their raw rows; each publishes, per rollout, day and user,
# the cohort that served the user (canary_csat_user_days).  Member 1 serves
# the canary's users, member 2 control's: neither alone shows a drop, and a
# user served by the canary on one member and by control on the other is
# mixed only in the combination.
$control->safe_psql('postgres',
	q{INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('csat', 'ramp_25', 'old', 'new')});
for my $m (@members)
{
	$m->poll_query_until('postgres', q{SELECT count(*) = 1 FROM canary_config WHERE name = 'csat'})
	  or die 'rollout csat did not reach ' . $m->name;
}
# 1 am (UTC) of $d days ago
my $csat_ts = sub {
	my ($d) = @_;
	return "(date_trunc('day', now() AT TIME ZONE 'UTC') - interval '$d days' + interval '1 hour') AT TIME ZONE 'UTC'";
};
my $record = sub {
	my ($m, $users, $cohort, $d) = @_;
	$m->safe_psql('postgres', qq{
SELECT count(canary_record(canary => 'csat', user_id => u, model => 'm', cohort => '$cohort', outcome => 'ok',
                           latency_ms => 100, ts => ${\ $csat_ts->($d)}))
  FROM unnest(ARRAY[$users]) u;
SELECT canary_flush();});
};
# member 1 publishes as a fleet updated from 1.0 does until the RUNBOOK's
# upgrade step: without the feed
$m1->safe_psql('postgres', 'ALTER PUBLICATION llm_canary_evidence DROP TABLE canary_csat_user_days');
$control->safe_psql('postgres', 'ALTER SUBSCRIPTION llm_canary_from_m1 REFRESH PUBLICATION');
$record->($m1, q{'c1', 'c2', 'c3'}, 'canary', 2);
$record->($m1, q{'c1', 'c2', 'c3', 'x', 'y'}, 'canary', 1);
$record->($m1, q{'y'}, 'control', 1);
$record->($m1, q{'c1'}, 'canary', 1);
$record->($m2, q{'k1', 'k2', 'k3'}, 'control', 2);
$record->($m2, q{'k1', 'k2', 'k3', 'x'}, 'control', 1);
my $feed_q = q{SELECT string_agg(((now() AT TIME ZONE 'UTC')::date - day) || ':' || user_id || ':' || cohort, ','
                                 ORDER BY day DESC, user_id)
                 FROM canary_csat_user_days WHERE canary = 'csat' AND member = '%s'};
is($m1->safe_psql('postgres', sprintf($feed_q, 'm1')),
	'1:c1:canary,1:c2:canary,1:c3:canary,1:x:canary,1:y:mixed,2:c1:canary,2:c2:canary,2:c3:canary',
	'member 1\'s CSAT feed: one row per day and user (8), y served by both cohorts is mixed');
ok($control->poll_query_until('postgres',
	q{SELECT count(*) = 7 FROM canary_csat_user_days WHERE canary = 'csat'}),
	'member 2\'s feed reaches the control (7 rows)');
is($control->safe_psql('postgres', q{SELECT count(*) FROM canary_csat_user_days WHERE member = 'm1'}), '0',
	'member 1\'s does not while its publication lacks the table');
# the RUNBOOK's step after an upgrade ("Upgrading the extension in a fleet")
is($m1->safe_psql('postgres', 'SELECT canary_fleet_publish()'), 'llm_canary_evidence',
	'member 1: canary_fleet_publish adds the feed to its publication');
$control->safe_psql('postgres', 'ALTER SUBSCRIPTION llm_canary_from_m1 REFRESH PUBLICATION');
ok($control->poll_query_until('postgres',
	q{SELECT count(*) = 15 AND count(*) FILTER (WHERE cohort = 'mixed') = 1 FROM canary_csat_user_days WHERE canary = 'csat'}),
	'after REFRESH PUBLICATION on the control, member 1\'s 8 rows are copied too (15, one mixed)');
# live: a user's first row, then its update to mixed
$record->($m1, q{'z'}, 'canary', 1);
ok($control->poll_query_until('postgres',
	q{SELECT cohort = 'canary' FROM canary_csat_user_days WHERE canary = 'csat' AND member = 'm1' AND user_id = 'z'}),
	'a new user of member 1 reaches the control as it is served');
$record->($m1, q{'z'}, 'control', 1);
ok($control->poll_query_until('postgres',
	q{SELECT cohort = 'mixed' FROM canary_csat_user_days WHERE canary = 'csat' AND member = 'm1' AND user_id = 'z'}),
	'and so does its update to mixed when control serves it too');
is($control->safe_psql('postgres', sprintf($feed_q, 'm2')),
	'1:k1:control,1:k2:control,1:k3:control,1:x:control,2:k1:control,2:k2:control,2:k3:control',
	'member 2\'s rows on the control, keyed by member');
is($control->safe_psql('postgres', q{SELECT count(*) FROM canary_csat_user_days WHERE member NOT IN ('m1', 'm2')}),
	'0', 'the control writes no feed of its own (its own raw rows serve its users)');
is($control->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE canary = 'csat'}),
	'0', 'and holds none of the members\' raw rows');
# the scores, from the support system, loaded on the control; c1's first
# names a request the control does not hold (member 1 served it)
$control->safe_psql('postgres', q{
INSERT INTO canary_csat (user_id, score, recorded_at, request_id)
SELECT u, CASE WHEN u LIKE 'c%' THEN 5 WHEN u LIKE 'k%' THEN 9 ELSE 1 END,
       (date_trunc('day', now() AT TIME ZONE 'UTC') - make_interval(days => d) + interval '2 hours') AT TIME ZONE 'UTC',
       CASE WHEN u = 'c1' AND d = 2 THEN gen_random_uuid() END
  FROM (VALUES (2, 'c1'), (2, 'c2'), (2, 'c3'), (2, 'k1'), (2, 'k2'), (2, 'k3'),
               (1, 'c1'), (1, 'c2'), (1, 'c3'), (1, 'k1'), (1, 'k2'), (1, 'k3'),
               (1, 'x'), (1, 'y')) s (d, u);});
my $report_q = q{SELECT string_agg(format('%s/%s/%s/%s/%s/%s/%s', (now() AT TIME ZONE 'UTC')::date - day, cohort,
                                          responses, mean_csat, coalesce(delta_vs_control::text, '-'), mixed_users,
                                          coalesce(drop_rule_holds::text, '-')), ' ' ORDER BY day, cohort)
                   FROM canary_csat_report('csat', 3) WHERE day < (now() AT TIME ZONE 'UTC')::date};
is($control->safe_psql('postgres', $report_q),
	'2/canary/3/5.000/-4.000/0/true 2/control/3/9.000/-/0/- 1/canary/3/5.000/-4.000/2/true 1/control/3/9.000/-/2/-',
	'canary_csat_report on the control: the members\' users, x (both members) and y (member 1) mixed, the drop holds on both days');
is($control->safe_psql('postgres', q{
BEGIN;
DELETE FROM canary_csat_user_days WHERE member = 'm2';
SELECT coalesce(canary_csat_check('csat'), 'none');
ROLLBACK;}), 'none', 'without member 2\'s feed (a transaction rolled back) the drop does not hold for 48 hours');
is($control->safe_psql('postgres', q{
BEGIN;
DELETE FROM canary_csat_user_days WHERE member = 'm1';
SELECT coalesce(canary_csat_check('csat'), 'none');
ROLLBACK;}), 'none', 'nor without member 1\'s');
like($control->safe_psql('postgres', q{SELECT canary_csat_check('csat')}),
	qr/^csat: csat canary -4\.000 vs control for 2 days >= drop 3 sustained /,
	'with both, the control\'s CSAT check pins the rollout');
is($control->safe_psql('postgres', q{
SELECT percent_new || '/' || (csat_pinned_at IS NOT NULL) || '/'
       || (SELECT count(*) FROM canary_alerts a WHERE a.canary = 'csat' AND a.kind = 'csat_pin')
  FROM canary_config WHERE name = 'csat'}), '0.00/true/1', 'at 0 percent, with one csat_pin alert');
is($control->safe_psql('postgres',
	q{SELECT payload -> 'members' FROM canary_alerts WHERE canary = 'csat' AND kind = 'csat_pin'}),
	'["m1", "m2"]', 'the alert says which members the users came from');
for my $m (@members)
{
	ok($m->poll_query_until('postgres', q{SELECT percent_new = 0 FROM canary_config WHERE name = 'csat'}),
		$m->name . ': the pin reaches the member');
}

# The day a rollout goes to full: a user served by control and then, after
# the stage change, by the canary is mixed on the control as on a standalone
# database.  Each request counts by the stage it was routed in (a ramp_25
# row flushed after the change still counts) and, once its day holds users
# of the rollout, at any stage; a day at full alone writes no feed row.
$control->safe_psql('postgres',
	q{INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('csatfull', 'ramp_25', 'old', 'new')});
ok($m2->poll_query_until('postgres', q{SELECT percent_new = 25 FROM canary_config WHERE name = 'csatfull'}),
	'rollout csatfull (ramp_25) reaches member 2');
my $record_stage = sub {
	my ($user, $cohort, $stage, $d) = @_;
	$m2->safe_psql('postgres', qq{
SELECT canary_record(canary => 'csatfull', user_id => '$user', model => 'm', cohort => '$cohort', outcome => 'ok',
                     latency_ms => 100, ts => ${\ $csat_ts->($d)}, stage => '$stage');
SELECT canary_flush();});
};
$record_stage->('w', 'control', 'ramp_25', 0);
$control->safe_psql('postgres', q{UPDATE canary_config SET stage = 'full' WHERE name = 'csatfull'});
ok($m2->poll_query_until('postgres', q{SELECT percent_new = 100 FROM canary_config WHERE name = 'csatfull'}),
	'the stage change to full reaches member 2');
$record_stage->('w', 'canary', 'full', 0);
$record_stage->('v', 'control', 'ramp_25', 0);
$record_stage->('f', 'canary', 'full', 1);
ok($control->poll_query_until('postgres', q{
SELECT string_agg(((now() AT TIME ZONE 'UTC')::date - day) || ':' || user_id || ':' || cohort, ',' ORDER BY day, user_id)
       = '0:v:control,0:w:mixed'
  FROM canary_csat_user_days WHERE canary = 'csatfull'}),
	'member 2\'s feed on the control: w (control, then the canary at full) mixed, v routed at ramp_25 recorded after the change, no row for a day at full alone');
# the same scores on the control and on member 2, whose report reads its
# own raw rows as a standalone database does
for my $node ($control, $m2)
{
	$node->safe_psql('postgres', q{
INSERT INTO canary_csat (user_id, score, recorded_at)
SELECT u, 4, (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '2 hours') AT TIME ZONE 'UTC'
  FROM unnest(ARRAY['w', 'v']) u;});
	is($node->safe_psql('postgres', q{
SELECT string_agg(cohort || '/' || responses || '/' || mixed_users, ' ' ORDER BY cohort)
  FROM canary_csat_report('csatfull', 1)}), 'control/1/1',
		$node->name . ': canary_csat_report counts v in control and w as mixed');
}

# The feed's retention (llm_canary.retention_days, 30): a member deletes its
# own rows, and the delete reaches the control through replication; the
# control deletes only rows of members no longer in canary_fleet_members,
# and a member's two days later.
is($control->safe_psql('postgres', q{SELECT string_agg(member, ',' ORDER BY member) FROM canary_fleet_members}),
	'm1,m2', 'the control knows members m1 and m2');
$m2->safe_psql('postgres', q{
INSERT INTO canary_csat_user_days (day, canary, member, user_id, cohort)
VALUES ((now() AT TIME ZONE 'UTC')::date - 31, 'csatexp', 'm2', 'old', 'canary');});
ok($control->poll_query_until('postgres', q{SELECT count(*) = 1 FROM canary_csat_user_days WHERE canary = 'csatexp'}),
	'member 2\'s row of 31 days ago reaches the control');
$control->safe_psql('postgres', q{
INSERT INTO canary_csat_user_days (day, canary, member, user_id, cohort)
SELECT (now() AT TIME ZONE 'UTC')::date - d, 'csatexp', m, 'u' || d, 'control'
  FROM (VALUES ('gone', 30), ('gone', 31), ('m1', 31), ('m1', 32), ('m1', 33)) v (m, d);});
is($control->safe_psql('postgres', q{
SELECT moved_rows FROM canary_maintenance(0) WHERE partition = 'canary_csat_user_days'}), '2',
	'canary_maintenance on the control deletes 2 feed rows');
is($control->safe_psql('postgres', q{
SELECT string_agg(member || ':' || ((now() AT TIME ZONE 'UTC')::date - day), ',' ORDER BY member, day DESC)
  FROM canary_csat_user_days WHERE canary = 'csatexp'}), 'gone:30,m1:31,m1:32,m2:31',
	'a departed member\'s row older than 30 days and a member\'s older than 32; a member\'s own are left to it');
is($m2->safe_psql('postgres', q{
SELECT moved_rows FROM canary_maintenance(0) WHERE partition = 'canary_csat_user_days'}), '1',
	'canary_maintenance on member 2 deletes its row of 31 days ago');
ok($control->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM canary_csat_user_days WHERE canary = 'csatexp' AND member = 'm2'}),
	'and the delete reaches the control');
$control->safe_psql('postgres', q{DELETE FROM canary_csat_user_days WHERE canary = 'csatexp'});
# a member refuses TRUNCATE of its feed (the control keeps the rows: the
# users recorded again would stop its subscription on a duplicate key)
{
	my ($ret, $out, $err) = $m2->psql('postgres', q{\set VERBOSITY verbose
TRUNCATE canary_csat_user_days});
	like($err, qr/ERROR:  55000: cannot truncate table "canary_csat_user_days" on fleet member "m2"/,
		'member 2 refuses TRUNCATE of its CSAT feed (SQLSTATE 55000)');
	like($err, qr/HINT:  Delete the rows instead/, 'and says to delete the rows instead');
}
is($m2->safe_psql('postgres', q{
SELECT 'canary_csat_user_days'::regclass = ANY (extconfig) FROM pg_extension WHERE extname = 'llm_canary'}), 't',
	'the feed is dumped with the extension (pg_dump keeps a member\'s rows)');

# --- a member cut off from the control fails safe ----------------------------
# (and calls no new model at all: a rollout in shadow stops its shadow calls)
mock_profile('f-shadow', '{"fixed_text": "shadow answer", "latency_ms": 2}');
$control->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries)
  VALUES ('shadnew', 'openai', '$mock/v1', 'f-shadow', 'LLM_CANARY_TEST_KEY', 0);
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
  VALUES ('shad', 'shadow', 'old', 'shadnew', 1);});
ok(poll_bg($apps[1], q{SELECT count(*) FROM canary_config WHERE name = 'shad'}, '1'),
	'rollout shad (stage shadow) reaches member 2');
my $shadow_requests = sub { mock_get('/_mock/stats')->{models}{'f-shadow'}{requests} // 0 };
is($apps[1]->query_safe(q{SELECT canary_call('hi', 'u1', 'shad') ->> 'model'}), 'old',
	'in shadow, member 2 serves the old model');
for (1 .. 400) { last if $shadow_requests->() >= 1; usleep(25_000); }
is($shadow_requests->(), 1, 'and shadows the call to the new model (1 request)');
my $dispatched = $apps[1]->query_safe(q{SELECT dispatched FROM canary_shadow_stats()});
my $log_offset = -s $m2->logfile;
$m2->safe_psql('postgres', 'ALTER SUBSCRIPTION llm_canary_config DISABLE');
my $cut = time;
ok(poll_bg($apps[1], q{SELECT canary_route('u1')}, 'old'), 'member 2, cut off, routes to the old model');
my $after = time - $cut;
# the last heartbeat was applied up to one heartbeat interval (200 ms) plus the
# apply delay (which reaches a second on a loaded two-core machine running
# three clusters) before the cut: the fail-safe may engage that much before 3 s
cmp_ok($after, '>=', 1.5, "not before llm_canary.fleet_max_lag (3 s) less the heartbeat and apply delay (up to 1.5 s on a loaded machine): after ${after} s");
cmp_ok($after, '<', 6, 'but soon after it');
is($apps[0]->query_safe(q{SELECT canary_route('u1')}), 'new', 'member 1, still connected, routes to the new model');
is($apps[1]->query_safe(q{SELECT canary_call('hi', 'u1') ->> 'model'}), 'old',
	'member 2 serves canary_call with the old model');
is($apps[1]->query_safe(q{SELECT count(canary_call('hi ' || i, 'u' || i, 'shad')) FROM generate_series(1, 5) i}),
	'5', 'member 2 serves 5 calls of the shadowed rollout');
is($apps[1]->query_safe(q{SELECT dispatched FROM canary_shadow_stats()}), $dispatched,
	'failing safe, it queues no shadow call');
usleep(500_000);
is($shadow_requests->(), 1, 'and the new model gets no shadow request');
ok($m2->wait_for_log(qr/llm_canary fleet member "m2" is failing safe: every user is routed to the old model/, $log_offset),
	'member 2 says so in its log');
like($m2->safe_psql('postgres', 'SELECT canary_prometheus()'),
	qr/^llm_canary_fleet_fail_safe\{member="m2",role="member"\} 1$/m,
	'and in its Prometheus metrics (canary_prometheus)');
ok($control->poll_query_until('postgres',
	q{SELECT state = 'fail_safe' FROM canary_fleet() WHERE member = 'm2'}),
	'canary_fleet on the control shows member 2 failing safe');

# the fail-safe can be switched off (the worker logs each change at its next
# step: wait for it, so that it sees every state of the test)
$log_offset = -s $m2->logfile;
$m2->safe_psql('postgres', q{ALTER SYSTEM SET llm_canary.fleet_max_lag = 0; SELECT pg_reload_conf()});
ok(poll_bg($apps[1], q{SELECT canary_route('u1')}, 'new'), 'llm_canary.fleet_max_lag = 0 switches the fail-safe off');
ok($m2->wait_for_log(qr/llm_canary fleet member "m2" hears from the control database again/, $log_offset),
	'its worker logs the change');
$m2->safe_psql('postgres', q{ALTER SYSTEM RESET llm_canary.fleet_max_lag; SELECT pg_reload_conf()});
$log_offset = -s $m2->logfile;
$m2->safe_psql('postgres', q{ALTER SYSTEM SET llm_canary.fleet_max_lag = '3s'; SELECT pg_reload_conf()});
ok(poll_bg($apps[1], q{SELECT canary_route('u1')}, 'old'), 'switched on again, it fails safe again');
ok($m2->wait_for_log(qr/llm_canary fleet member "m2" is failing safe/, $log_offset),
	'its worker logs the fail-safe again');

# reconnected, it follows the control again
$log_offset = -s $m2->logfile;
$m2->safe_psql('postgres', 'ALTER SUBSCRIPTION llm_canary_config ENABLE');
ok(poll_bg($apps[1], q{SELECT canary_route('u1')}, 'new'), 'member 2, reconnected, routes by the rollout again');
ok($m2->wait_for_log(qr/llm_canary fleet member "m2" hears from the control database again/, $log_offset),
	'and logs it');
like($m2->safe_psql('postgres', 'SELECT canary_fleet_prometheus()'),
	qr/^llm_canary_fleet_fail_safe\{member="m2",role="member"\} 0$/m, 'its fail-safe gauge is 0 again');
cmp_ok($m2->safe_psql('postgres', 'SELECT fail_safe_routes FROM canary_fleet_local()'), '>=', 2,
	'the fail-safe routing decisions were counted');
$_->quit for @apps;

# --- a member that restarts catches up ----------------------------------------
# Evidence written just before an immediate stop reaches the control once
# the member is back: nothing lost, nothing counted twice.
my $evidence_q = q{SELECT coalesce(sum(requests), 0) FROM canary_rollups WHERE member = 'm1'};
if ($have_rollups)
{
	$m1->safe_psql('postgres', q{
SELECT count(canary_call('late prompt ' || i, 'late-user-' || i)) FROM generate_series(1, 50) i;
SELECT canary_flush();});
}
$m1->stop('immediate');
$control->safe_psql('postgres', q{UPDATE canary_config SET stage = 'ramp_5'});
$m1->start;
ok($m1->poll_query_until('postgres', q{SELECT stage = 'ramp_5' FROM canary_config WHERE name = 'default'}),
	'member 1 restarted: the stage changed while it was down arrives');
ok($m1->poll_query_until('postgres', q{SELECT NOT fail_safe FROM canary_fleet_local()}),
	'and it does not fail safe once it hears from the control');
is($m1->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 2000) i
	WHERE canary_route('user' || i) = 'new'}),
	$control->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 2000) i
	WHERE canary_bucket('user' || i, '') < 5}),
	'member 1 routes the same users to the new model as the control\'s stage says');
SKIP:
{
	skip 'this tree has no canary_rollups yet (issue 12)', 7 unless $have_rollups;
	my $m1_total = $m1->safe_psql('postgres', $evidence_q);
	ok($control->poll_query_until('postgres', "SELECT ($evidence_q) = $m1_total"),
		"member 1's evidence on the control equals its own after the restart ($m1_total requests)");
	sleep 1;
	is($control->safe_psql('postgres', $evidence_q), $m1_total, 'and is not counted twice');
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'the combined rows still equal the members\' sum after member 1\'s restart');

	# the control restarts in the middle of a member's stream: the apply
	# worker replays from the subscription's origin, each change once
	$m2->safe_psql('postgres', q{
SELECT count(canary_call('restart prompt ' || i, 'restart-user-' || i)) FROM generate_series(1, 60) i;
SELECT canary_flush();});
	$control->stop('immediate');
	$m2->safe_psql('postgres', q{
SELECT count(canary_call('down prompt ' || i, 'down-user-' || i)) FROM generate_series(1, 40) i;
SELECT canary_flush();});
	$control->start;
	my $m2_q = q{SELECT coalesce(sum(requests), 0) FROM canary_rollups WHERE member = 'm2'};
	my $m2_total = $m2->safe_psql('postgres', $m2_q);
	ok($control->poll_query_until('postgres', "SELECT ($m2_q) = $m2_total"),
		"the control restarted: member 2's evidence catches up ($m2_total requests)");
	is($control->safe_psql('postgres', $combined_diff_q), '0',
		'the combined rows equal the members\' sum exactly after the control\'s restart');
	is($control->safe_psql('postgres', q{SELECT sum(requests) FROM canary_fleet_rollups}),
		$m2_total + $m1->safe_psql('postgres', q{SELECT sum(requests) FROM canary_rollups}),
		'and count every member attempt once');

	# removing a member (RUNBOOK): its traffic stays in the combined rows
	# until the operator deletes its rows and recomputes them
	$control->safe_psql('postgres', q{
DROP SUBSCRIPTION llm_canary_from_m2;
DELETE FROM canary_fleet_members WHERE member = 'm2';
DELETE FROM canary_csat_user_days WHERE member = 'm2';
DELETE FROM canary_rollups WHERE member = 'm2';
DELETE FROM canary_rollup_totals WHERE member = 'm2';});
	is($control->safe_psql('postgres', q{SELECT count(*) FROM canary_csat_report('csat', 3) WHERE cohort = 'control'}),
		'0', 'without its CSAT feed, its users (all of control\'s) leave the CSAT report');
	is($control->safe_psql('postgres', q{SELECT sum(requests) FROM canary_fleet_rollups}),
		$m2_total + $m1->safe_psql('postgres', q{SELECT sum(requests) FROM canary_rollups}),
		'a removed member\'s deleted rows stay in the combined rows');
	cmp_ok($control->safe_psql('postgres', q{SELECT canary_fleet_combine('-infinity')}), '>', 0,
		'canary_fleet_combine recomputes them');
	is($control->safe_psql('postgres', $combined_diff_q), '0', 'from the rows left');
	is($control->safe_psql('postgres', q{SELECT sum(requests) FROM canary_fleet_rollups}),
		$m1->safe_psql('postgres', q{SELECT sum(requests) FROM canary_rollups}),
		'which are member 1\'s alone');
}

$_->stop for ($control, @members);
done_testing();
