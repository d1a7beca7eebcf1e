# Partition maintenance under concurrent writes (canary_partition_days in
# sql/parts/30_metrics.sql, the one maintainer behind canary_maintenance and
# canary_shadow_create_partitions).  A row written into the DEFAULT
# partition for a day whose partition is being made must end up in that
# partition: the maintainer waits for the writer instead of failing its
# ATTACH ("updated partition constraint for default partition would be
# violated").  The race is made deterministic: the writer's transaction is
# open (its row uncommitted) when the maintainer starts, and commits only
# once the maintainer waits for a lock.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = canary_node('partitions', conf => qq{
llm_canary.check_interval = 0
llm_canary.retention_days = 0
});

sub race
{
	my ($label, $insert, $maintain, $expected, $table, $day) = @_;
	my $writer = $node->background_psql('postgres');
	$writer->query_safe('BEGIN');
	$writer->query_safe($insert);

	my $maint = $node->background_psql('postgres', on_error_stop => 0);
	$maint->query_until(qr/started\n/, "\\echo started\n$maintain;\n");
	ok( $node->poll_query_until('postgres',
			q{SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'}),
		"$label: the maintainer waits for the writer");
	$writer->query_safe('COMMIT');
	$writer->quit;

	my ($out, $err) = $maint->query(q{SELECT 'done'});
	is($out, "$expected\ndone", "$label: the maintainer made the partition");
	is($maint->{stderr}, '', "$label: no error (the ATTACH did not fail)");
	$maint->quit;
	is( $node->safe_psql('postgres',
			"SELECT string_agg(tableoid::regclass::text, ',') FROM $table WHERE ts >= '$day' AND ts < '$day'::date + 1"),
		"${table}_" . ($day =~ s/-//gr),
		"$label: the writer's row is in its day's partition");
}

race('canary_shadow_create_partitions',
	q{INSERT INTO canary_shadow (request_id, ts, canary) VALUES (gen_random_uuid(), '2098-01-01 12:00+00', 'default')},
	q{SELECT canary_shadow_create_partitions('2098-01-01', 1)},
	'1', 'canary_shadow', '2098-01-01');

race('canary_maintenance',
	q{INSERT INTO canary_requests (request_id, ts, canary) VALUES (gen_random_uuid(), '2098-02-01 12:00+00', 'default')},
	q{SELECT count(*) FROM canary_maintenance(0, '2098-02-01') WHERE action = 'create'},
	'3', 'canary_requests', '2098-02-01');

$node->stop;
done_testing();
