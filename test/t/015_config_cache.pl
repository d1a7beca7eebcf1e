# The per-backend configuration cache (src/config.c) under failure and load:
#
#  - an ERROR in the middle of a cache rebuild (here a lock timeout on
#    pg_extension) must leave the cache stale, not "valid" with NULL hash
#    tables: the next call must answer, not crash the server;
#  - DROP EXTENSION while shadow jobs are in flight (the worker's path),
#    ALTER EXTENSION UPDATE and DROP DATABASE while calls run;
#  - a long statement (INSERT ... SELECT canary_call(...)) sees another
#    session's trip within one call.
#
# After each scenario the server log must show no process "terminated by
# signal" and no "reinitializing", and the postmaster must be the same.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;

my $mock = mock_url(need_key => 1);

my $node = canary_node('config_cache', extension => 0, conf => qq{
llm_canary.check_interval = 1
llm_canary.flush_interval_ms = 50
restart_after_crash = on
});

sub postmaster_pid
{
	my $line = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
	return $line + 0;
}
my $pm_pid = postmaster_pid();

# Since the last check: no process died of a signal, nothing reinitialized,
# and the postmaster is the one that started.
my $log_offset = 0;
sub no_crash
{
	my ($what) = @_;
	my $log = slurp_file($node->logfile, $log_offset);
	$log_offset += length($log);
	my @died = $log =~ /(.*terminated by signal.*)/g;
	is(scalar(@died), 0, "$what: no process terminated by a signal")
	  or diag join("\n", @died);
	unlike($log, qr/all server processes terminated; reinitializing/,
		"$what: the server did not reinitialize");
	is(postmaster_pid(), $pm_pid, "$what: the postmaster is the same process");
}

mock_profile('cc-old', '{"fixed_text": "old answer", "latency_ms": 5}');
mock_profile('cc-new', '{"fixed_text": "new answer", "latency_ms": 5}');
mock_profile('cc-slow', '{"fixed_text": "slow answer", "latency_ms": 2000}');
mock_profile('cc-batch', '{"fixed_text": "batch answer", "latency_ms": 100}');

my $setup = qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries) VALUES
  ('old', 'openai', '$mock/v1', 'cc-old', 'LLM_CANARY_TEST_KEY', 0),
  ('new', 'openai', '$mock/v1', 'cc-new', 'LLM_CANARY_TEST_KEY', 0),
  ('slow', 'openai', '$mock/v1', 'cc-slow', 'LLM_CANARY_TEST_KEY', 0),
  ('batchnew', 'openai', '$mock/v1', 'cc-batch', 'LLM_CANARY_TEST_KEY', 0);
UPDATE canary_config SET old_model = 'old', new_model = 'new', stage = 'full' WHERE name = 'default';
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_sample_rate)
VALUES ('shadowed', 'shadow', 'old', 'slow', 1);
};
$node->safe_psql('postgres', 'CREATE EXTENSION llm_canary');
$node->safe_psql('postgres', $setup);

# --- 1. backend: an ERROR in the middle of the cache rebuild --------------
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	is($s->query_safe(q{SELECT canary_route('u1')}), 'new', 'cache loaded: full stage routes new');

	# hold pg_extension, which the rebuild reads first, then make the cache stale
	my $locker = $node->background_psql('postgres');
	$locker->query_safe('BEGIN');
	$locker->query_safe('LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE');
	$node->safe_psql('postgres', q{UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'default'});

	$s->query_safe(q{SET lock_timeout = '200ms'});
	my $r = $s->query(q{SELECT canary_route('u1')});
	like($s->{stderr}, qr/lock timeout/, 'the rebuild fails with a lock timeout');
	$s->{stderr} = '';
	$locker->query_safe('ROLLBACK');
	$locker->quit;

	is($s->query_safe(q{SELECT canary_stage_percent(stage) FROM canary_config WHERE name = 'default'}),
		'25', 'the session is still usable');
	# (on the old code this call dereferenced a NULL hash table)
	my $routed = eval {
		$s->query_safe(q{SELECT count(*) FROM generate_series(1, 200) u WHERE canary_route('u' || u) = 'new'});
	};
	is($routed // 'backend died',
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM generate_series(1, 200) u WHERE canary_bucket('u' || u) < 25}),
		'after the failed rebuild the next calls route by the new stage');
	eval { $s->quit; };
	no_crash('lock timeout during the cache rebuild');
}

# --- 2. worker: DROP EXTENSION with shadow jobs in flight -------------------
my $dir = PostgreSQL::Test::Utils::tempdir;
open(my $fs, '>', "$dir/shadow.sql") or die;
print $fs "\\set u random(1, 100000)\n"
  . "SELECT canary_call('Where is my order?', 'u' || :u, 'shadowed');\n";
close $fs;

sub pgbench_start
{
	my ($db, $script, @opts) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ '/usr/lib/postgresql/15/bin/pgbench', '-n', @opts, '-f', $script,
		  '-h', $node->host, '-p', $node->port, $db ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	return ($h, \$out, \$err);
}

{
	my ($pb) = pgbench_start('postgres', "$dir/shadow.sql", '-c', 20, '-j', 2, '-t', 1);
	# the calls are answered by the old model at once; the shadow calls take 2 s
	my $deadline = time + 20;
	usleep(100_000)
	  while time < $deadline
	  && $node->safe_psql('postgres', q{SELECT coalesce(sum(in_flight), 0) FROM canary_shadow_stats()}) eq '0';
	$node->safe_psql('postgres', 'DROP EXTENSION llm_canary CASCADE');
	$pb->finish;
	# the shadow calls end and the worker goes to write their rows
	sleep(4);
	no_crash('DROP EXTENSION with shadow jobs in flight');

	$node->safe_psql('postgres', 'CREATE EXTENSION llm_canary');
	$node->safe_psql('postgres', $setup);
	is($node->safe_psql('postgres', q{SELECT canary_call('hi', 'u1') ->> 'response'}),
		'new answer', 'after CREATE EXTENSION again, canary_call answers');
	is($node->safe_psql('postgres', q{SELECT canary_flush('20 s') >= 1}), 't',
		'and the worker writes its metrics');
	no_crash('recreating the extension');
}

# --- 3. ALTER EXTENSION UPDATE while calls run -------------------------------
open(my $fc, '>', "$dir/call.sql") or die;
print $fc "\\set u random(1, 100000)\n"
  . "SELECT canary_call('Refund please', 'u' || :u);\n";
close $fc;
{
	$node->safe_psql('postgres', 'DROP EXTENSION llm_canary CASCADE');
	$node->safe_psql('postgres', q{CREATE EXTENSION llm_canary VERSION '1.0'});
	$node->safe_psql('postgres', $setup);
	my ($pb, $out, $err) = pgbench_start('postgres', "$dir/call.sql", '-c', 4, '-j', 2, '-T', 4);
	usleep(1_000_000);
	$node->safe_psql('postgres', 'ALTER EXTENSION llm_canary UPDATE');
	my $pb_ok = $pb->finish;
	note "pgbench: $$out\n$$err";
	ok($pb_ok && $$out =~ /number of failed transactions: 0 /,
		'no call fails while the extension is updated under load');
	is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'llm_canary'}),
		'1.1', 'the extension was updated');
	is($node->safe_psql('postgres', q{SELECT canary_call('hi', 'u1') ->> 'response'}),
		'new answer', 'canary_call answers after the update');
	no_crash('ALTER EXTENSION UPDATE under load');
}

# --- 4. DROP DATABASE while its sessions route --------------------------------
{
	$node->safe_psql('postgres', 'CREATE DATABASE other');
	$node->safe_psql('other', 'CREATE EXTENSION llm_canary');
	$node->safe_psql('other', $setup);
	$node->safe_psql('other', q{UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'default'});
	open(my $fr, '>', "$dir/route.sql") or die;
	print $fr "\\set u random(1, 100000)\n"
	  . "SELECT canary_route('u' || :u);\n"
	  . "UPDATE canary_config SET percent_new = percent_new WHERE name = 'default';\n";
	close $fr;
	my ($pb) = pgbench_start('other', "$dir/route.sql", '-c', 4, '-j', 2, '-T', 10);
	usleep(1_000_000);
	my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE other WITH (FORCE)',
		timeout => 30);
	diag $stderr if $ret;
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_database WHERE datname = 'other'}),
		'0', 'DROP DATABASE WITH (FORCE) succeeds while sessions route');
	$pb->finish;
	no_crash('DROP DATABASE under load');
}

# --- 5. a long statement sees another session's trip within one call ----------
{
	$node->safe_psql('postgres', q{
		INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('batch', 'full', 'old', 'batchnew');
		CREATE TABLE batch_out (i int, model text, done_at timestamptz);
	});
	my $b = $node->background_psql('postgres', on_error_stop => 0);
	$b->query_until(qr/started/, q{\echo started
INSERT INTO batch_out
SELECT i, canary_call('p', 'u' || i, 'batch') ->> 'model', clock_timestamp()
  FROM generate_series(1, 40) i;
});
	# let about ten calls go to the new model (100 ms each), then trip
	usleep(1_000_000);
	$node->safe_psql('postgres', q{SELECT canary_trip('batch', 'tap: trip during a batch')});
	my $tripped = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
	$b->query_safe('SELECT 1');	# waits for the INSERT
	$b->quit;

	my $before = $node->safe_psql('postgres',
		q{SELECT count(*) FROM batch_out WHERE model = 'batchnew'});
	cmp_ok($before, '>=', 3, 'the batch called the new model before the trip');
	is($node->safe_psql('postgres',
			qq{SELECT count(*) FROM batch_out WHERE model = 'batchnew' AND done_at > '$tripped'::timestamptz + interval '250 ms'}),
		'0', 'no call that started after the trip committed went to the new model');
	is($node->safe_psql('postgres', q{
			SELECT count(*) FROM batch_out o
			 WHERE o.model = 'batchnew'
			   AND o.i > (SELECT min(i) FROM batch_out WHERE model = 'old')}),
		'0', 'once the batch switched to the old model it never went back');
	cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM batch_out WHERE model = 'old'}),
		'>=', 20, 'the rest of the batch was served by the old model');
	no_crash('trip during a batch');
}

# --- 6. DROP DATABASE of the worker's own database while calls run ------------
{
	my ($pb) = pgbench_start('postgres', "$dir/call.sql", '-c', 4, '-j', 2, '-T', 10);
	sleep(1);
	my $t0 = time;
	my ($ret, $stdout, $stderr) = $node->psql('template1', 'DROP DATABASE postgres WITH (FORCE)',
		timeout => 60);
	is($ret, 0, "DROP DATABASE of the worker's database succeeds while calls run") or diag $stderr;
	cmp_ok(time - $t0, '<', 15, 'and does not wait for the worker longer than its drain');
	$pb->finish;
	sleep(1);
	no_crash("DROP DATABASE of the worker's database");
}

$node->stop;
done_testing();
