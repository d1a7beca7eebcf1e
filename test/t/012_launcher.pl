# The launcher (src/launcher.c) when llm_canary.database_name names a
# database that does not exist yet: it waits quietly, with one log line, and
# starts the workers as soon as the database is created.  Before the
# launcher, the worker exited FATAL every 5 seconds, forever.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep);
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

# the database does not exist yet: the node is started here, not by canary_node
my $node = canary_node('launcher', database => 'later', start => 0);
$node->start;

sub log_count
{
	my ($re) = @_;
	my $log = slurp_file($node->logfile);
	my @m = $log =~ /$re/g;
	return scalar @m;
}

sleep 12;
is(log_count(qr/database "later" does not exist/), 0,
	'missing database: no FATAL "does not exist" in 12 s');
is(log_count(qr/exited with exit code/), 0, 'missing database: no worker exits in 12 s');
is(log_count(qr/llm_canary is waiting for database "later" to be created/), 1,
	'missing database: exactly one line says what the launcher waits for');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'llm_canary launcher' AND datname IS NULL}),
	'1', 'the launcher runs, connected to no database');

$node->safe_psql('postgres', 'CREATE DATABASE later');
$node->safe_psql('later', 'CREATE EXTENSION llm_canary');
ok($node->poll_query_until('later', q{SELECT worker_state = 'running' FROM canary_stats()}),
	'once the database exists, the worker runs in it');
is(log_count(qr/llm_canary found database "later", starting its workers/), 1,
	'one line says the database was found');
is($node->safe_psql('later',
		q{SELECT string_agg(backend_type, ', ' ORDER BY backend_type) FROM pg_stat_activity
		   WHERE backend_type LIKE 'llm_canary%' AND datname = 'later'}),
	'llm_canary monitor, llm_canary submissions, llm_canary worker',
	'the metrics worker, the monitor and the submissions worker serve the database');

# the records written by the worker really arrive
$node->safe_psql('later', "SELECT canary_record('x', 'u', 'm', 'control', 'ok', 1)");
is($node->safe_psql('later', "SELECT canary_flush('10 s') >= 1"), 't', 'metrics are written');

# a launcher that is terminated comes back, and its workers are never doubled
my $lpid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'llm_canary launcher'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($lpid)");
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'llm_canary launcher' AND pid <> $lpid}),
	'a terminated launcher is restarted');
ok($node->poll_query_until('later', q{SELECT worker_state = 'running' FROM canary_stats()}),
	'the worker runs again after the launcher restarted');
sleep 2;
is($node->safe_psql('postgres',
		q{SELECT count(*) FILTER (WHERE backend_type = 'llm_canary worker') || ' '
		      || count(*) FILTER (WHERE backend_type = 'llm_canary monitor') || ' '
		      || count(*) FILTER (WHERE backend_type = 'llm_canary submissions')
		    FROM pg_stat_activity}),
	'1 1 1', 'one of each worker, never two');

$node->stop;
done_testing();
