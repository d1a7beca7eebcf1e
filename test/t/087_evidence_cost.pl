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

# --- a late verdict recounts its minute, not the days since ----------------
# A rollout with an hour of rollups (one request per cohort and minute);
# the evidence counted at p_at; then a thumbs-down on an answer of 50
# minutes before, folded (canary_verdict_marks).  The next check recounts
# the minutes of its window and the one marked minute, each alone: the
# evidence rows it writes (their xmin is its transaction) are those 3
# minutes' (an older version recounted every minute from the marked one,
# 51 minutes here, up to 14 days).  Simulated time, an hour ahead, with
# canary_check's monitor off: nothing else consumes the mark.
my $at = $node->safe_psql('postgres', "SELECT date_trunc('minute', now()) + interval '1 hour'");
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'), ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode, evidence_since)
  VALUES ('late', 'ramp_25', 'm-old', 'm-new', 'sequential', '$at'::timestamptz - interval '2 hours');
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms, refusal)
SELECT gen_random_uuid(), '$at'::timestamptz - interval '1 hour' + m * interval '1 minute' + interval '10 seconds',
       'late', 'ramp_25', 'u' || m, c, CASE c WHEN 'canary' THEN 'm-new' ELSE 'm-old' END, 'ok', 100, false
  FROM generate_series(0, 59) m, unnest(ARRAY['canary', 'control']) c;
SELECT canary_collect_evidence('late', '$at', '$at'::timestamptz - interval '2 hours', 0);
});
is($node->safe_psql('postgres', q{
SELECT count(*) || ' ' || sum(samples) || ' ' || sum(thumbs_down) FROM canary_evidence WHERE canary = 'late'}),
	'120 120 0', 'an hour of evidence: 60 minutes, 2 cohorts');
$node->safe_psql('postgres', qq{
SELECT canary_feedback(request_id, true) FROM canary_requests
 WHERE canary = 'late' AND cohort = 'canary' AND ts = '$at'::timestamptz - interval '50 minutes' + interval '10 seconds';
SELECT canary_feedback_fold() >= 0;
});
is($node->safe_psql('postgres', qq{
SELECT count(*) FROM canary_verdict_marks WHERE canary = 'late';
SELECT count(*) FROM canary_feedback_pending WHERE canary = 'late'}) =~ s/\n/ /r, '1 0',
	'the late verdict is folded, its bucket marked');
is($node->safe_psql('postgres', qq{
BEGIN;
SELECT canary_collect_evidence('late', '$at'::timestamptz + interval '30 seconds',
                               '$at'::timestamptz - interval '2 hours', 0);
SELECT string_agg(to_char(bucket - '$at'::timestamptz, 'MI') || ' ' || cohort || ' ' || samples || ' ' || thumbs_down,
                  ',' ORDER BY bucket, cohort)
  FROM canary_evidence WHERE canary = 'late' AND xmin = pg_current_xact_id()::xid;
SELECT count(*) || ' ' || sum(samples) || ' ' || sum(thumbs_down) FROM canary_evidence WHERE canary = 'late';
SELECT count(*) FROM canary_verdict_marks WHERE canary = 'late';
COMMIT;
}) =~ s/^\n//r =~ s/\n/|/gr,
	'-50 canary 1 1,-50 control 1 0,-02 canary 1 0,-02 control 1 0,-01 canary 1 0,-01 control 1 0|120 120 1|0',
	'the next check recounts the marked minute and its window (3 minutes), counts the verdict, uses the mark');

# two late verdicts of different minutes, folded together: both minutes
$node->safe_psql('postgres', qq{
SELECT canary_feedback(request_id, true) FROM canary_requests
 WHERE canary = 'late' AND cohort = 'canary'
   AND ts IN ('$at'::timestamptz - interval '40 minutes' + interval '10 seconds',
              '$at'::timestamptz - interval '20 minutes' + interval '10 seconds');
SELECT canary_feedback_fold() >= 0;
});
is($node->safe_psql('postgres', qq{
BEGIN;
SELECT canary_collect_evidence('late', '$at'::timestamptz + interval '60 seconds',
                               '$at'::timestamptz - interval '2 hours', 0);
SELECT string_agg(to_char(bucket - '$at'::timestamptz, 'MI') || ' ' || cohort || ' ' || thumbs_down,
                  ',' ORDER BY bucket, cohort)
  FROM canary_evidence WHERE canary = 'late' AND xmin = pg_current_xact_id()::xid AND bucket < '$at'::timestamptz - interval '2 minutes';
SELECT sum(thumbs_down) FROM canary_evidence WHERE canary = 'late';
COMMIT;
}) =~ s/^\n//r =~ s/\n/|/gr,
	'-40 canary 1,-40 control 0,-20 canary 1,-20 control 0|3',
	'two late verdicts folded together: each marks its bucket, the check recounts both minutes alone');

$node->stop;
done_testing();
