# The extension in a schema whose name needs quotes ("Odd Canary") and in
# one whose name holds a % and a space ("pct%s canary") and in one named
# like a placeholder of the fleet combine trigger's template ("{keys}"),
# against a default install in public: CREATE EXTENSION writes @extschema@
# quoted, so SQL a function builds must name the schema with %I of
# canary_schema_name(), never quote it again, never put it into a format()
# template, and put it into generated text last ({nsp}).  The
# install itself, the SQL generated at install (the fleet combine
# trigger), the pg_cron jobs' commands, rollups (trigger, metrics worker,
# rebuild), the fleet's combined rollups, partitions, evidence, the
# sample-ratio users, the summary and the shadow columns' privileges.
#
# And string literals: with standard_conforming_strings = off in the
# calling session, the shadow comparison's word split and canary_unschedule
# answer exactly as with it on (no backslash in a plain literal).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;

my $mock = mock_url();
mock_profile('sn-old', '{"fixed_text": "old answer", "latency_ms": 1}');
mock_profile('sn-new', '{"fixed_text": "new answer", "latency_ms": 1}');

# the worker and pg_cron in database postgres, where the extension lives in
# "pct%s canary"; the control role, so that the combine trigger runs
my $node = canary_node('schema_names', preload => 0, extension => 0, conf => q{
shared_preload_libraries = 'pg_cron,llm_canary'
llm_canary.database_name = 'postgres'
cron.database_name = 'postgres'
llm_canary.fleet_role = 'control'
});

my %schema = (plain => 'public', odd => 'Odd Canary', postgres => 'pct%s canary', braces => '{keys}');
my @dbs = qw(plain odd postgres braces);
for my $db (@dbs)
{
	my $s = $schema{$db};
	$node->safe_psql('postgres', qq{CREATE DATABASE $db}) unless $db eq 'postgres';
	$node->safe_psql('postgres', qq{ALTER DATABASE $db SET search_path = "$s", public});
	$node->safe_psql($db, qq{CREATE SCHEMA "$s"}) unless $s eq 'public';
	my ($rc, $out, $err) = $node->psql($db, qq{CREATE EXTENSION llm_canary SCHEMA "$s"});
	is($rc, 0, "$db: CREATE EXTENSION in schema \"$s\"") or diag($err);
}
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');
# (names PostgreSQL refuses to write into an extension's script)
$node->safe_psql('postgres', q{CREATE DATABASE quote});
$node->safe_psql('quote', q{CREATE SCHEMA "it's"});
my ($rc, $out, $err) = $node->psql('quote', q{CREATE EXTENSION llm_canary SCHEMA "it's"},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/22P02: invalid character in extension "llm_canary" schema/,
	'a schema whose name holds a quote is refused by CREATE EXTENSION itself (22P02)');

# canary_schedule in a database without pg_cron: its hint names the
# commands to run in pg_cron's database, the schema written as $nsp
sub schedule_hint_is
{
	my ($db, $nsp, $label) = @_;
	my ($rc, $out, $err) = $node->psql($db, 'SELECT canary_schedule()');
	for my $job (['llm_canary_check', '* * * * *', 'canary_check'],
		['llm_canary_csat', '15 0 * * *', 'canary_csat_check'],
		['llm_canary_maintenance', '5 0 * * *', 'canary_maintenance'])
	{
		my $line = "SELECT cron.schedule_in_database('$job->[0]', '$job->[1]', "
		  . "'SELECT $nsp.$job->[2]()', '$db');";
		like($err, qr/^\Q$line\E$/m, "$label the hint reads $line");
	}
}

# --- every function's text is the default install's, schema aside ----------
# (pg_get_functiondef with an empty search_path: every name qualified; the
# quoted schema written as public)
my $defs_q = q{
SET search_path = pg_catalog;
SELECT replace(p.oid::regprocedure::text, quote_ident(n.nspname), 'public') || ' '
       || md5(replace(pg_get_functiondef(p.oid), quote_ident(n.nspname), 'public'))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'llm_canary'
 WHERE p.prokind <> 'a'
 ORDER BY 1};
my $defs_plain = $node->safe_psql('plain', $defs_q);
cmp_ok(scalar(split /\n/, $defs_plain), '>', 100, 'the default install has over 100 functions');
for my $db (qw(odd postgres braces))
{
	is($node->safe_psql($db, $defs_q), $defs_plain,
		"$db: every function (the generated combine trigger's too) is the default install's text");
}

# --- 1.0, updated to 1.1, in a schema other than public ----------------------
# 1.0 does not install into a schema whose name needs quotes: its install
# creates the first shadow partitions, naming the schema quoted twice, and
# stops.  So no 1.0 install (and no pg_cron job of 1.0) exists in such a
# schema and that upgrade case cannot be tested; the update is tested in a
# plain schema other than public instead, against a fresh 1.1 install in
# the same-named schema.
$node->safe_psql('postgres', q{CREATE DATABASE upodd});
$node->safe_psql('upodd', q{CREATE SCHEMA "Odd Canary"});
($rc, $out, $err) = $node->psql('upodd', q{CREATE EXTENSION llm_canary VERSION '1.0' SCHEMA "Odd Canary"});
like($err, qr/ERROR:  schema ""Odd Canary"" does not exist\n.*\n.*\nQUERY:  CREATE TABLE """Odd Canary""".canary_shadow_/,
	'upodd: 1.0 does not install in schema "Odd Canary" (it names the schema quoted twice)');
for my $db (qw(upgraded fresh))
{
	$node->safe_psql('postgres', qq{CREATE DATABASE $db});
	$node->safe_psql('postgres', qq{ALTER DATABASE $db SET search_path = zz_canary, public});
	$node->safe_psql($db, q{CREATE SCHEMA zz_canary});
	$node->safe_psql($db, 'CREATE EXTENSION llm_canary SCHEMA zz_canary'
		  . ($db eq 'upgraded' ? q{ VERSION '1.0'; ALTER EXTENSION llm_canary UPDATE} : ''));
}
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'llm_canary'}),
	$node->safe_psql('fresh', q{SELECT extversion FROM pg_extension WHERE extname = 'llm_canary'}),
	'zz_canary: 1.0 updated to the default version');
is($node->safe_psql('upgraded', $defs_q), $node->safe_psql('fresh', $defs_q),
	'zz_canary: after the update every function is a fresh install\'s');
schedule_hint_is('upgraded', 'zz_canary', 'zz_canary: after the update');

# --- the pg_cron jobs' commands ---------------------------------------------
is($node->safe_psql('postgres', q{SELECT jobname || ' ' || command FROM canary_schedule() ORDER BY 1}),
	join("\n",
		'llm_canary_check SELECT "pct%s canary".canary_check()',
		'llm_canary_csat SELECT "pct%s canary".canary_csat_check()',
		'llm_canary_maintenance SELECT "pct%s canary".canary_maintenance()'),
	'canary_schedule: the jobs name the schema quoted once');
is($node->safe_psql('postgres', q{SELECT string_agg(command, '; ' ORDER BY jobname) FROM cron.job}),
	'SELECT "pct%s canary".canary_check(); SELECT "pct%s canary".canary_csat_check(); '
	  . 'SELECT "pct%s canary".canary_maintenance()',
	'pg_cron holds those commands');
for my $cmd (split /\n/, $node->safe_psql('postgres', q{SELECT command FROM cron.job ORDER BY jobname}))
{
	my ($rc, $out, $err) = $node->psql('postgres', $cmd);
	is($rc, 0, "the job's command runs: $cmd") or diag($err);
}
# pg_cron lives in another database: the hint names the commands to run there
($rc, $out, $err) = $node->psql('odd', 'SELECT canary_schedule()');
like($err, qr/pg_cron lives in database "postgres"/, 'odd: canary_schedule points at pg_cron\'s database');
schedule_hint_is('odd', '"Odd Canary"', 'odd:');

# --- canary_unschedule with standard_conforming_strings = off ---------------
# a job whose name only a LIKE without its escapes would match stays
$node->safe_psql('postgres', q{SELECT cron.schedule('llmXcanaryYdecoy', '0 0 * * *', 'SELECT 1')});
is($node->safe_psql('postgres', q{SET standard_conforming_strings = off; SELECT canary_unschedule()}),
	'3', 'standard_conforming_strings off: canary_unschedule removes its three jobs');
is($node->safe_psql('postgres', q{SELECT string_agg(jobname, ', ') FROM cron.job}),
	'llmXcanaryYdecoy', 'standard_conforming_strings off: the other job is left');

# --- rollups, rebuild, combined rollups, evidence, sample-ratio users -------
# the same rows in each database, and the same answers
my $t0 = $node->safe_psql('postgres',
	q{SELECT date_bin('30 seconds', now() - interval '2 hours', timestamptz 'epoch')});
my $at = "timestamptz '$t0' + interval '110 seconds'";
my %answer;
for my $db (@dbs)
{
	canary_create_put($node, $db);
	$node->safe_psql($db, qq{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('sn', 'ramp_25', 'm-old', 'm-new', timestamptz '$t0' - interval '1 hour');
SELECT put('sn', $at, 'control', 100, 3, 5, 2, 1000, 60);
SELECT put('sn', $at, 'canary', 50, 4, 0, 1, 2000, 30);
SELECT canary_feedback_fold();
});
	my @a;
	push @a, $node->safe_psql($db, q{
SELECT count(*) || ' ' || sum(requests) || ' ' || sum(outcome_error) || ' ' || sum(refusals) || ' ' || sum(thumbs_down)
       || ' ' || sum(new_users)
  FROM canary_rollups WHERE canary = 'sn'});
	# counters off, then recounted from the raw rows
	$node->safe_psql($db, q{UPDATE canary_rollups SET requests = requests + 1000, latency_hist = '{}' WHERE canary = 'sn'});
	push @a, $node->safe_psql($db, qq{SELECT canary_rollup_rebuild(timestamptz '$t0', timestamptz '$t0' + interval '1 minute')});
	push @a, $node->safe_psql($db, q{
SELECT sum(requests) || ' ' || sum(outcome_error) || ' ' || sum(thumbs_down) || ' '
       || canary_hist_quantile(canary_hist_sum(latency_hist), 0.5)
  FROM canary_rollups WHERE canary = 'sn'});
	# the combined rollups follow (control), and canary_fleet_combine recombines
	push @a, $node->safe_psql($db, q{SELECT sum(requests) FROM canary_fleet_rollups WHERE canary = 'sn'});
	push @a, $node->safe_psql($db, qq{SELECT canary_fleet_combine(timestamptz '$t0', timestamptz '$t0' + interval '1 minute')});
	push @a, $node->safe_psql($db, q{
SELECT (SELECT sum(requests) || ' ' || sum(thumbs_down) || ' ' || canary_hist_quantile(canary_hist_sum(latency_hist), 0.5)
          FROM canary_fleet_rollups WHERE canary = 'sn')
       || ' totals ' || (SELECT sum(requests) FROM canary_fleet_rollup_totals WHERE canary = 'sn')});
	push @a, $node->safe_psql($db, q{SELECT count(*) FROM canary_srm_users WHERE canary = 'sn'});
	push @a, $node->safe_psql($db, q{SELECT '[' || member || '] ' || requests FROM canary_fleet_evidence('1 day', 'sn')});
	push @a, $node->safe_psql($db, q{SELECT cohort, requests, error_rate, refusal_rate, p50_latency_ms, thumbs_down_rate FROM canary_summary('sn', '1 day')});
	$node->safe_psql($db, qq{SELECT canary_collect_evidence('sn', $at, timestamptz '$t0' - interval '1 hour', 0)});
	push @a, $node->safe_psql($db, q{
SELECT string_agg(cohort || ' ' || samples || ' ' || errors || ' ' || refusals || ' ' || thumbs_down, ', ' ORDER BY cohort)
  FROM (SELECT cohort, sum(samples) AS samples, sum(errors) AS errors, sum(refusals) AS refusals,
               sum(thumbs_down) AS thumbs_down
          FROM canary_evidence WHERE canary = 'sn' GROUP BY cohort) e});
	$answer{$db} = join("\n", @a);
}
is($answer{plain}, join("\n",
	'2 150 7 5 3 90',
	'2',
	'150 7 3 1000.5',
	'150',
	'2',
	'150 3 1000.5 totals 150',
	'90',
	'[] 150',
	"canary|50|0.0800|0.0000|2000.5|0.0200\ncontrol|100|0.0300|0.0500|1000.5|0.0200",
	'canary 50 4 0 1, control 100 3 5 2'),
	'public: rollups, rebuild, combined rollups, sample-ratio users, fleet evidence, summary, evidence');
is($answer{odd}, $answer{plain}, '"Odd Canary": the same answers');
is($answer{postgres}, $answer{plain}, '"pct%s canary": the same answers');
is($answer{braces}, $answer{plain}, '"{keys}": the same answers (the combine trigger fired)');

# --- partitions --------------------------------------------------------------
for my $db (qw(odd postgres))
{
	is($node->safe_psql($db, q{
SELECT count(*) FROM canary_maintenance(20)
 WHERE action = 'create' AND partition = 'canary_requests_' || to_char((now() AT TIME ZONE 'UTC')::date + 20, 'YYYYMMDD')}),
		'1', "$db: maintenance creates the partition twenty days ahead");
	is($node->safe_psql($db, qq{SELECT count(*) FROM pg_tables WHERE schemaname = '$schema{$db}'
    AND tablename = 'canary_requests_' || to_char((now() AT TIME ZONE 'UTC')::date + 20, 'YYYYMMDD')}), '1',
		"$db: it is in schema \"$schema{$db}\"");
}

# --- the shadow columns' privileges -------------------------------------------
for my $db (qw(odd postgres))
{
	is($node->safe_psql($db, q{
SELECT canary_set_shadow_private(false) || ' ' || canary_shadow_is_private()
       || ' ' || canary_set_shadow_private(true) || ' ' || canary_shadow_is_private()
       || ' ' || has_column_privilege('llm_canary_app', 'canary_shadow', 'canary', 'SELECT')}),
		'false false true true true', "$db: shadow texts hidden and shown, the other columns readable");
}

# --- the metrics worker's batches (rollups and sample-ratio users) ------------
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
    ('w-old', 'openai', '$mock/v1', 'sn-old', 'LLM_CANARY_TEST_KEY', 0),
    ('w-new', 'openai', '$mock/v1', 'sn-new', 'LLM_CANARY_TEST_KEY', 0);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('wk', 'ramp_25', 'w-old', 'w-new');
});
$node->safe_psql('postgres', q{SELECT canary_call('hi', 'user' || g, 'wk') FROM generate_series(1, 40) g});
is($node->safe_psql('postgres', q{
SELECT canary_flush() > 0;
SELECT sum(requests) || ' ' || count(DISTINCT cohort) FROM canary_rollups WHERE canary = 'wk';
SELECT count(*) FROM canary_srm_users WHERE canary = 'wk';
SELECT sum(requests) FROM canary_fleet_rollups WHERE canary = 'wk'}), "t\n40 2\n40\n40",
	'"pct%s canary": the worker writes rollups, sample-ratio users and combined rollups');

# --- the shadow comparison with standard_conforming_strings = off -------------
# (each psql a new session: the function is compiled in the setting given)
my $compare_q = q{
SELECT c.verdict || ' ' || round(c.similarity::numeric, 4) || ' [' || c.old_opening || '] [' || c.new_opening || ']'
  FROM (VALUES (1, 'Hello, world!  It''s  fine.', 'hello world it''s fine'),
               (2, 'swiss watches', 'swiss  watches' || chr(10)),
               (3, 'what was said was wise', 'what is said is wise'),
               (4, 'A_b c-d', 'a_b c d')) v (i, o, n),
       canary_shadow_compare(v.o, v.n) c
 ORDER BY v.i};
my $compare_expected = join("\n",
	q{equivalent 1.0000 [hello world it's fine] [hello world it's fine]},
	'identical 1.0000 [swiss watches] [swiss watches]',
	'different 0.4286 [what was said was wise] [what is said is wise]',
	'equivalent 1.0000 [a_b c d] [a_b c d]');
for my $db (qw(plain postgres))
{
	is($node->safe_psql($db, $compare_q), $compare_expected, "$db: the shadow comparison's words");
	is($node->safe_psql($db, "SET standard_conforming_strings = off; $compare_q"), $compare_expected,
		"$db: the same with standard_conforming_strings off");
}

done_testing();
