# The kill switch's evidence (canary_collect_evidence, sql/parts/52_decisions.sql)
# must cost the buckets of the minutes it recounts, not the retention: it
# must not read the daily partitions of canary_feedback from days before.
# It reads canary_rollups, where verdicts were folded (canary_feedback_fold);
# an older version recounted raw rows and hashed every retained thumbs-down
# verdict or probed every partition per request.  Counted with the
# transaction's own scan counters of an old partition and of its indexes.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = canary_node('evidence_cost', conf => qq{
llm_canary.check_interval = 0
llm_canary.retention_days = 0
});

my $old = $node->safe_psql('postgres', q{
SELECT count(*) FROM canary_partition_days('canary_requests', current_date - 5, 6);
SELECT count(*) FROM canary_partition_days('canary_feedback', current_date - 5, 6);
-- 200 requests of the current minutes, 20 of them with a thumbs-down
INSERT INTO canary_requests (request_id, ts, canary, cohort, model, outcome, latency_ms, refusal)
SELECT gen_random_uuid(), now() - interval '30 seconds', 'default',
       CASE WHEN g % 2 = 0 THEN 'canary' ELSE 'control' END, 'm', 'ok', 100, false
  FROM generate_series(1, 200) g;
INSERT INTO canary_feedback (request_id, ts, thumbs_down, canary)
SELECT request_id, now() - interval '10 seconds', true, canary
  FROM canary_requests ORDER BY request_id LIMIT 20;
-- verdicts of four days ago, on requests no longer in the window
INSERT INTO canary_feedback (request_id, ts, thumbs_down, canary)
SELECT gen_random_uuid(), (current_date - 4) + time '12:00', true, 'default'
  FROM generate_series(1, 5000);
ANALYZE canary_requests; ANALYZE canary_feedback;
SELECT 'canary_feedback_' || to_char(current_date - 4, 'YYYYMMDD');
});
$old = (split /\n/, $old)[-1];
like($old, qr/^canary_feedback_\d{8}$/, 'old feedback partition made');

my $out = $node->safe_psql('postgres', qq{
SELECT canary_feedback_fold() >= 0;
SELECT pg_stat_force_next_flush();
BEGIN;
SELECT canary_collect_evidence('default', now(), NULL, 0);
SELECT pg_stat_get_xact_numscans('$old'::regclass)
       + (SELECT coalesce(sum(pg_stat_get_xact_numscans(i.indexrelid)), 0)
            FROM pg_index i WHERE i.indrelid = '$old'::regclass);
SELECT sum(samples), sum(thumbs_down) FROM canary_evidence WHERE canary = 'default';
COMMIT;
});
my @lines = grep { $_ ne '' } split /\n/, $out;
is($lines[-2], '0', 'the evidence does not scan the feedback partition of four days ago');
is($lines[-1], '200|20', 'every request and thumbs-down of the window is counted');

$node->stop;
done_testing();
