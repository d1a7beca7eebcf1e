# The llm_canary background worker across restarts, crashes and a full
# queue: what pg_regress cannot test because it needs a server of its own.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('worker', database => 'canary', conf => qq{
restart_after_crash = on
});

sub wait_worker_running
{
	my ($not_pid) = @_;
	my $cond = "SELECT worker_state = 'running'"
	  . ($not_pid ? " AND worker_pid <> $not_pid" : '')
	  . " FROM canary_stats()";
	return $node->poll_query_until('canary', $cond);
}

sub worker_pid
{
	return $node->safe_psql('canary', 'SELECT worker_pid FROM canary_stats()');
}

# enqueue n records of rollout $canary; returns how many were accepted
sub record_n
{
	my ($canary, $n) = @_;
	return $node->safe_psql('canary',
		"SELECT count(canary_record('$canary', 'u' || g, 'model-old', 'control', 'ok', g))"
		  . " FROM generate_series(1, $n) g");
}

sub rows_of
{
	my ($canary) = @_;
	return $node->safe_psql('canary',
		"SELECT count(*) || '/' || count(DISTINCT request_id) FROM canary_requests WHERE canary = '$canary'");
}

ok(wait_worker_running(), 'the worker runs once the database and the extension exist');

# --- a database the worker does not serve --------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION llm_canary');
my ($ret, $out, $err) = $node->psql('other',
	"SELECT canary_record('x', 'u', 'model-old', 'control', 'ok', 1)",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  55000: cannot record llm_canary metrics in database "other"/,
	'canary_record in another database fails with 55000');
($ret, $out, $err) = $node->psql('other', 'SELECT canary_flush()',
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  55000: /, 'canary_flush in another database fails with 55000');

# --- a clean shutdown writes everything that was queued -------------------
# A long flush interval keeps 3000 records (below a quarter of the queue,
# which would wake the worker) queued until the shutdown.
$node->append_conf('postgresql.conf', 'llm_canary.flush_interval_ms = 60000');
$node->reload;
$node->poll_query_until('canary', "SELECT current_setting('llm_canary.flush_interval_ms') = '1min'");
sleep 1;    # the worker serves the reload's wake-up
is(record_n('shutdown', 3000), '3000', '3000 records accepted');
is($node->safe_psql('canary', 'SELECT queue_depth FROM canary_stats()'),
	'3000', 'they are still queued before the shutdown');
$node->stop('fast');
ok( $node->log_contains('llm_canary worker stopped'),
	'the worker stopped cleanly');
ok(!$node->log_contains('unwritten metric records'), 'no record was lost');
$node->start;
ok(wait_worker_running(), 'the worker runs again after the restart');
is(rows_of('shutdown'), '3000/3000',
	'after the restart all 3000 records are in canary_requests, once each');

# --- a terminated worker is restarted -------------------------------------
my $pid = worker_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok(wait_worker_running($pid), 'a terminated worker is back with a new pid');

# --- a killed worker comes back after the crash restart -------------------
$node->append_conf('postgresql.conf', 'llm_canary.flush_interval_ms = 100');
$node->reload;
$pid = worker_pid();
kill 'KILL', $pid;
ok(wait_worker_running($pid), 'after SIGKILL the worker is back with a new pid');
is(record_n('after_kill', 10), '10', 'records are accepted after the crash');
$node->safe_psql('canary', 'SELECT canary_flush()');
is(rows_of('after_kill'), '10/10', 'and written');

# --- a full queue drops and counts ----------------------------------------
$node->append_conf('postgresql.conf', 'llm_canary.queue_size = 16');
$node->restart;
ok(wait_worker_running(), 'the worker runs with a 16-record queue');
is($node->safe_psql('canary', 'SELECT queue_capacity FROM canary_stats()'),
	'16', 'the queue holds 16 records');

# a lock on canary_requests blocks the worker's INSERT: nothing is consumed
my $locker = $node->background_psql('canary');
$locker->query_safe('BEGIN');
$locker->query_safe('LOCK TABLE canary_requests IN ACCESS EXCLUSIVE MODE');
is(record_n('full', 100), '16', 'of 100 records 16 fit in the queue');
is( $node->safe_psql('canary',
		'SELECT enqueued, dropped, written, queue_depth FROM canary_stats()'),
	'16|84|0|16',
	'84 drops are counted, 16 records wait');
$locker->query_safe('COMMIT');
$locker->quit;
$node->safe_psql('canary', 'SELECT canary_flush()');
is(rows_of('full'), '16/16', 'the 16 queued records are written once the lock is gone');
is($node->safe_psql('canary', 'SELECT written, dropped, queue_depth FROM canary_stats()'),
	'16|84|0', 'counters after the flush');
is($node->safe_psql('canary', "SELECT count(*) FROM canary_backend_stats()"),
	'0', 'backends that made calls and left are not listed');

$node->stop;
done_testing();
