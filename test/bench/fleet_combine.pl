# The fleet combine trigger's apply cost (BENCHMARKS.md, "Fleet"), run like
# a TAP file so that it gets the private PostgreSQL copy of test/run_one.sh:
#   bash test/run_one.sh tap test/bench/fleet_combine.pl
#
# One control database (llm_canary.fleet_role = control).  A loop of
# FLEET_COMBINE_ROWS (default 20,000) single-row writes to canary_rollups,
# as a subscription's apply worker makes them, 200 to a transaction:
# UPDATEs that add to a member's row (every counter and both histograms
# change; 200 keys, each once a transaction) and INSERTs of new rows, each
# loop timed in the server (one session per loop, the first call's compile
# and plans included), with the
# installed trigger and with the trigger disabled (the table's own cost),
# alternating, 3 rounds, medians reported in microseconds per row.
#
# Side by side with another version of the trigger function:
# FLEET_COMBINE_BEFORE names a file that creates it as
# public.bench_before_trigger() (e.g. the function of an earlier
# sql/parts/33_fleet_combined.sql, renamed, @extschema@ replaced by
# public); it is measured in the same rounds.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $rows = $ENV{FLEET_COMBINE_ROWS} // 20000;
my $before = $ENV{FLEET_COMBINE_BEFORE};

my $node = PostgreSQL::Test::Cluster->new('bench_combine');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'llm_canary'
llm_canary.database_name = 'postgres'
llm_canary.check_interval = 0
llm_canary.fleet_role = 'control'
llm_canary.member = 'control'
synchronous_commit = off
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_canary');
my @variants = ('installed', 'no trigger');
if ($before)
{
	open my $fh, '<', $before or die "$before: $!";
	$node->safe_psql('postgres', do { local $/; <$fh> });
	close $fh;
	$node->safe_psql('postgres', q{
CREATE TRIGGER bench_before AFTER INSERT OR UPDATE ON canary_rollups
    FOR EACH ROW WHEN (canary_fleet_is_control()) EXECUTE FUNCTION bench_before_trigger();
ALTER TABLE canary_rollups DISABLE TRIGGER bench_before;});
	push @variants, 'before';
}

# the 200 rows the UPDATEs add to (two members' 100 keys, buckets of now)
$node->safe_psql('postgres', q{
INSERT INTO canary_rollups (canary, bucket_end, member, stage, cohort, model, fallback, cached, requests)
SELECT 'b', '2026-02-01 00:00:30+00', 'm' || (g % 2), 'ramp_25', CASE WHEN g % 4 < 2 THEN 'canary' ELSE 'control' END,
       'n' || (g / 4), false, false, 1
  FROM generate_series(0, 199) g;
CREATE PROCEDURE bench_loop(op text, n integer, INOUT us numeric DEFAULT NULL) LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
    base timestamptz := '2026-01-01 00:00:00+00';
BEGIN
    FOR i IN 0 .. n - 1 LOOP
        IF op = 'update' THEN
            UPDATE canary_rollups
               SET requests = requests + 3, outcome_ok = outcome_ok + 2, outcome_error = outcome_error + 1,
                   refusals = refusals + 1, thumbs_down = thumbs_down + 1, verdicts = verdicts + 2,
                   prompt_tokens = prompt_tokens + 300, completion_tokens = completion_tokens + 120,
                   completions = completions + 3, cost = cost + 0.003, latency_count = latency_count + 3,
                   latency_sum = latency_sum + 2400,
                   latency_hist = canary_hist_merge(latency_hist, '{200,2,230,1}'),
                   tokens_hist = canary_hist_merge(tokens_hist, '{40,3}')
             WHERE canary = 'b' AND bucket_end = '2026-02-01 00:00:30+00'
               AND member = 'm' || (i % 2) AND stage = 'ramp_25'
               AND cohort = CASE WHEN i % 4 < 2 THEN 'canary' ELSE 'control' END
               AND model = 'n' || ((i % 200) / 4) AND NOT fallback AND NOT cached;
        ELSE
            INSERT INTO canary_rollups (canary, bucket_end, member, stage, cohort, model, fallback, cached,
                                        requests, outcome_ok, prompt_tokens, completion_tokens, completions,
                                        cost, latency_count, latency_sum, latency_hist, tokens_hist)
            VALUES ('i', base + (i / 8) * interval '30 s', 'm' || (i % 2), 'ramp_25',
                    CASE WHEN i % 4 < 2 THEN 'canary' ELSE 'control' END, 'n' || (i % 8 / 4), false, false,
                    3, 3, 300, 120, 3, 0.003, 3, 2400, '{200,2,230,1}', '{40,3}');
        END IF;
        IF i % 200 = 199 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
    us := round(extract(epoch FROM clock_timestamp() - t) * 1e6 / n, 1);
END;
$$;
});

sub use_variant
{
	my ($v) = @_;
	my $installed = $v eq 'installed' ? 'ENABLE ALWAYS' : 'DISABLE';
	my $sql = "ALTER TABLE canary_rollups $installed TRIGGER canary_rollups_fleet_combine;";
	$sql .= 'ALTER TABLE canary_rollups ' . ($v eq 'before' ? 'ENABLE ALWAYS' : 'DISABLE')
	  . ' TRIGGER bench_before;' if $before;
	$node->safe_psql('postgres', $sql);
}

my %us;
for my $round (1 .. 3)
{
	for my $v (@variants)
	{
		for my $op (qw(update insert))
		{
			use_variant($v);
			push @{ $us{$v}{$op} }, $node->safe_psql('postgres', "CALL bench_loop('$op', $rows)");
			# the next variant starts from the same tables
			$node->safe_psql('postgres', q{
ALTER TABLE canary_rollups DISABLE TRIGGER canary_rollups_fleet_combine;
DELETE FROM canary_rollups WHERE canary = 'i';
TRUNCATE canary_fleet_rollups, canary_verdict_marks;
ALTER TABLE canary_rollups ENABLE ALWAYS TRIGGER canary_rollups_fleet_combine;
VACUUM canary_rollups, canary_fleet_rollups;});
		}
	}
}
sub median { my @s = sort { $a <=> $b } @_; return $s[int(@s / 2)]; }
for my $op (qw(update insert))
{
	my %m = map { ($_ => median(@{ $us{$_}{$op} })) } @variants;
	my $line = sprintf('%s, us/row (3 rounds of %d): %s', $op, $rows,
		join(', ', map { "$_ $m{$_} [" . join(' ', @{ $us{$_}{$op} }) . ']' } @variants));
	if ($before)
	{
		my $base = $m{'no trigger'};
		$line .= sprintf('; installed/before: whole write %.2f, trigger alone %.2f',
			$m{installed} / $m{before}, ($m{installed} - $base) / ($m{before} - $base));
	}
	diag($line);
	cmp_ok($m{installed}, '>', 0, "$op: timed");
}
is($node->safe_psql('postgres', q{SELECT sum(requests) FROM canary_rollups WHERE canary = 'b'}),
	200 + 3 * $rows * 3 * @variants, 'every UPDATE found its row');
is($node->safe_psql('postgres', 'SELECT count(*) FROM canary_fleet_rollups'), '0', 'the tables were reset');
$node->stop;
done_testing();
