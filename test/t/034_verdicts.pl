# Verdicts and users on their way to the kill switch (sql/parts/32_rollups.sql,
# sql/parts/52_decisions.sql, src/worker.c):
#  - an application transaction that called canary_feedback() and stays
#    open does not hold the worker's next write (the verdict is queued in
#    canary_feedback_pending and folded into the rollups by the worker);
#    once it commits, the worker folds the verdict into the rollups;
#  - a verdict given ten minutes after its answer moves the sequential
#    thumbs-down evidence (canary_verdict_marks: the evidence is recounted
#    from the bucket the verdict changed) and trips the switch;
#  - the sample-ratio check's users are recorded as the rows are written
#    (canary_srm_users, canary_rollups.new_users): each user once per
#    evidence period, counted without the raw rows, and a new period counts
#    afresh while the old period's users go.
#  - a canary_check left open in a transaction does not stall the worker's
#    fold nor the metric writes behind it (marks are appended, consumed
#    with SKIP LOCKED; the check reads queued verdicts without folding);
#  - request ids are time-ordered (UUID version 7); ids of other origins
#    still find their requests.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('verdicts', conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 50
});
$node->safe_psql('postgres', q{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('fb', 'ramp_25', 'm-old', 'm-new');
});
canary_create_put($node);
$node->poll_query_until('postgres', "SELECT worker_state = 'running' FROM canary_stats()")
  or die 'the worker did not start';

# --- an open transaction that gave a verdict does not stall the worker ------
my $rid = $node->safe_psql('postgres', q{
SELECT canary_record('fb', 'u1', 'm-new', 'canary', 'ok', 100, stage => 'ramp_25');
SELECT canary_flush('10 seconds')}) =~ s/\n.*//sr;
my $app = $node->background_psql('postgres');
$app->query_safe('BEGIN');
$app->query_safe("SELECT canary_feedback('$rid', true)");
# the worker's next batch adds to the same rollup and totals rows
my $t0 = time;
my ($ret, $stdout, $stderr) = $node->psql('postgres', q{
SELECT canary_record('fb', 'u2', 'm-new', 'canary', 'ok', 200, stage => 'ramp_25') IS NOT NULL;
SELECT canary_flush('5 seconds') > 0;
SELECT canary_check('fb') IS NULL;
SELECT count(*) FROM canary_requests WHERE canary = 'fb'});
my $took = time - $t0;
is("$ret|$stdout", "0|t\nt\nt\n2",
	'with a verdict given in an open transaction, the worker writes the next record and canary_check runs');
cmp_ok($took, '<', 4, sprintf('without waiting for that transaction (%.2f s)', $took));
is($node->safe_psql('postgres', q{
SELECT sum(thumbs_down) || ' ' || sum(verdicts) || ' ' || sum(requests) FROM canary_rollup_totals WHERE canary = 'fb'}),
	'0 0 2', 'the uncommitted verdict is in no rollup yet');
$app->query_safe('COMMIT');
$app->quit;
ok($node->poll_query_until('postgres', q{
SELECT NOT EXISTS (SELECT 1 FROM canary_feedback_pending)
   AND (SELECT sum(thumbs_down) || ' ' || sum(verdicts) FROM canary_rollup_totals WHERE canary = 'fb') = '1 1'}),
	'once committed, the worker folds the verdict into the totals');
is($node->safe_psql('postgres', qq{
SELECT r.thumbs_down || ' ' || r.verdicts || ' ' || r.requests
  FROM canary_rollups r JOIN canary_requests q
    ON r.canary = q.canary AND r.bucket_end = canary_rollup_bucket(q.ts) AND r.cohort = q.cohort
 WHERE q.request_id = '$rid'}) =~ /^1 1 [12]$/ ? 'ok' : 'wrong',
	'ok', 'and into the rollup row of its request, once');
is($node->safe_psql('postgres', q{
SELECT string_agg(user_id || ' ' || cohort, ',' ORDER BY user_id) FROM canary_srm_users WHERE canary = 'fb'}),
	'u1 canary,u2 canary', 'the worker\'s writes record the users of the sample-ratio check');

# --- a check left open in a transaction does not stall the worker ----------------
# (the check consumes the rollout's verdict marks; the fold appends marks and
# never waits for that transaction, so the metric writes go on)
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode)
  VALUES ('stall', 'ramp_25', 'm-old', 'm-new', 'sequential')});
my ($s1, $s2) = split /\n/, $node->safe_psql('postgres', q{
SELECT canary_record('stall', 's1', 'm-new', 'canary', 'ok', 100, stage => 'ramp_25');
SELECT canary_record('stall', 's2', 'm-new', 'canary', 'ok', 100, stage => 'ramp_25');
SELECT canary_flush('10 seconds')});
$node->safe_psql('postgres', "SELECT canary_feedback('$s1', true)");
ok($node->poll_query_until('postgres', q{
SELECT NOT EXISTS (SELECT 1 FROM canary_feedback_pending)
   AND EXISTS (SELECT 1 FROM canary_verdict_marks WHERE canary = 'stall')}),
	'a folded thumbs-down leaves a mark');
my $adm = $node->background_psql('postgres');
$adm->query_safe('BEGIN');
$adm->query_safe("SELECT canary_check('stall')");
$t0 = time;
($ret, $stdout, $stderr) = $node->psql('postgres', qq{
SELECT canary_feedback('$s2', true);
SELECT pg_sleep(0.3);
SELECT canary_record('stall', 's3', 'm-new', 'canary', 'ok', 200, stage => 'ramp_25') IS NOT NULL;
SELECT canary_flush('5 seconds') > 0;
SELECT count(*) FROM canary_requests WHERE canary = 'stall'});
$took = time - $t0;
is("$ret|" . ($stdout =~ s/^[^\n]*\n[^\n]*\n//r), "0|t\nt\n3",
	'with canary_check open in a transaction, a second verdict is folded and the worker writes the next record');
cmp_ok($took, '<', 4, sprintf('without waiting for that transaction (%.2f s)', $took));
ok($node->poll_query_until('postgres', q{
SELECT NOT EXISTS (SELECT 1 FROM canary_feedback_pending)
   AND (SELECT sum(thumbs_down) FROM canary_rollup_totals WHERE canary = 'stall') = 2}),
	'the second verdict reaches the totals while the check is open');
$adm->query_safe('COMMIT');
$adm->quit;
# (the monitor's own check may consume the second mark first: only what is
# left after a check is asserted)
is($node->safe_psql('postgres', q{
SELECT canary_check('stall') IS NULL;
SELECT count(*) FROM canary_verdict_marks WHERE canary = 'stall';
SELECT sum(thumbs_down) FROM canary_evidence WHERE canary = 'stall'}) =~ s/\n/|/gr,
	't|0|2', 'after the open check, the next check has used every mark and counts both verdicts');

# --- request ids carry their time (UUID version 7) ------------------------------
is($node->safe_psql('postgres', qq{
SELECT substr('$rid', 15, 1) || ' ' || (canary_request_time('$rid') BETWEEN now() - interval '5 minutes' AND now())
       || ' ' || (canary_request_time('$rid') - interval '1 minute' <= (SELECT ts FROM canary_requests WHERE request_id = '$rid'))}),
	'7 true true', 'a request id is a version 7 UUID made within a minute of its attempt');
is($node->safe_psql('postgres', q{
SELECT substr(canary_new_request_id()::text, 15, 1)
       || ' ' || (canary_request_time(canary_new_request_id()) BETWEEN now() - interval '1 minute' AND clock_timestamp())
       || ' ' || (SELECT bool_or(prosrc ~ 'canary_new_request_id\(\)') AND NOT bool_or(prosrc ~ 'gen_random_uuid')
                    FROM pg_proc WHERE proname = 'canary_submit')}),
	'7 true true', 'canary_new_request_id makes the same version 7 ids, and canary_submit uses it');
# ids of other origins are found in any partition: a version 4 id, and a
# version 7 id whose time is years before its row's
is($node->safe_psql('postgres', q{
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms)
VALUES ('00000000-0000-4000-8000-00000000f001', now(), 'fb', 'ramp_25', 'b1', 'canary', 'm-new', 'ok', 10),
       ('00100000-0000-7000-8000-00000000f002', now(), 'fb', 'ramp_25', 'b2', 'canary', 'm-new', 'ok', 10);
SELECT canary_feedback('00000000-0000-4000-8000-00000000f001', true);
SELECT canary_feedback('00100000-0000-7000-8000-00000000f002', false);
SELECT canary_request_time('00000000-0000-4000-8000-00000000f001') IS NULL,
       canary_request_time('00100000-0000-7000-8000-00000000f002') < '2000-01-01',
       (SELECT string_agg(user_id || ' ' || thumbs_down, ',' ORDER BY user_id) FROM canary_feedback
         WHERE request_id IN ('00000000-0000-4000-8000-00000000f001', '00100000-0000-7000-8000-00000000f002'))})
	  =~ s/\n/|/gr,
	'||t|t|b1 true,b2 false', 'backfilled ids of other origins still get their verdicts');

# --- a verdict given ten minutes after its answer counts -----------------------
# (simulated time, an hour ahead, on minute boundaries)
my $at = $node->safe_psql('postgres', "SELECT date_trunc('minute', now()) + interval '1 hour'");
sub at { my ($s) = @_; return "'$at'::timestamptz + interval '$s seconds'"; }
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode, evidence_since)
  VALUES ('late', 'ramp_25', 'm-old', 'm-new', 'sequential', '$at'::timestamptz - interval '1 hour');
SELECT put('late', '$at', 'control', 10000, k_td => 200);
SELECT put('late', '$at', 'canary', 1000);
});
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('late', '$at'), 'no trip');
SELECT coalesce(canary_check('late', @{[at(300)]}), 'no trip');
SELECT coalesce(canary_check('late', @{[at(600)]}), 'no trip');
SELECT sum(thumbs_down) FILTER (WHERE cohort = 'canary') || ' ' || sum(thumbs_down) FILTER (WHERE cohort = 'control')
  FROM canary_evidence WHERE canary = 'late'}) =~ s/\n/|/gr,
	'no trip|no trip|no trip|0 200', 'no thumbs-down on the canary for ten minutes');
# 100 of the canary's 1,000 answers get a thumbs-down now
is($node->safe_psql('postgres', q{
SELECT count(canary_feedback(request_id, true))
  FROM (SELECT request_id FROM canary_requests WHERE canary = 'late' AND cohort = 'canary'
         ORDER BY ts LIMIT 100) s}), '100', '100 late verdicts');
# the worker folds them (each fold appends a mark); waiting for the queue to
# empty makes the number of marks the check finds independent of timing
$node->poll_query_until('postgres', 'SELECT NOT EXISTS (SELECT 1 FROM canary_feedback_pending)')
  or die 'the worker did not fold the late verdicts';
like($node->safe_psql('postgres', "SELECT canary_check('late', @{[at(630)]})"),
	qr/^thumbs_down_rate=0\.100 > 2x baseline/, 'ten minutes late, they trip the switch');
is($node->safe_psql('postgres', q{
SELECT sum(thumbs_down) FILTER (WHERE cohort = 'canary') || ' ' || sum(thumbs_down) FILTER (WHERE cohort = 'control')
       || ' ' || (SELECT count(*) FROM canary_verdict_marks WHERE canary = 'late')
  FROM canary_evidence WHERE canary = 'late'}),
	'100 200 0', 'the evidence of the minute they were given for holds them; the mark is used up');

# --- the sample-ratio check's users, recorded at write time ------------------------
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('users', 'ramp_25', 'm-old', 'm-new', '$at'::timestamptz - interval '1 hour');
SELECT put('users', @{[at(-600)]}, 'canary', 300, users => 30);
SELECT put('users', @{[at(-600)]}, 'control', 900, users => 90);
SELECT put('users', @{[at(-300)]}, 'canary', 400, users => 40);
SELECT put('users', @{[at(-300)]}, 'control', 900, users => 90);
});
is($node->safe_psql('postgres', q{
SELECT sum(new_users) FILTER (WHERE cohort = 'canary') || ' ' || sum(new_users) FILTER (WHERE cohort = 'control')
       || ' ' || (SELECT count(*) FROM canary_srm_users WHERE canary = 'users')
  FROM canary_rollups WHERE canary = 'users'}),
	'40 90 130', 'each user counted once in the period, in the bucket of its first request');
# the raw rows are not read: without them the check counts the same users
$node->safe_psql('postgres', "DELETE FROM canary_requests WHERE canary = 'users'");
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('users', '$at'), 'no trip');
SELECT users_canary || ' ' || users_control || ' ' || (alerted_at IS NULL) FROM canary_srm_state WHERE canary = 'users'})
	  =~ s/\n/|/gr,
	'no trip|40 90 true', 'canary_srm_check counts 40 and 90 users from the rollups alone');
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('users', @{[at(600)]}), 'no trip');
SELECT users_canary || ' ' || users_control || ' ' || counted_to FROM canary_srm_state WHERE canary = 'users'})
	  =~ s/\n/|/gr,
	"no trip|40 90 @{[$node->safe_psql('postgres', qq{SELECT '$at'::timestamptz + interval '480 seconds'})]}",
	'buckets older than two minutes are added up once (settled)');
# a new evidence period: the same users count again, the old period's go
$node->safe_psql('postgres', qq{
UPDATE canary_config SET evidence_since = @{[at(600)]} WHERE name = 'users';
SELECT put('users', @{[at(900)]}, 'canary', 50, users => 5);
SELECT put('users', @{[at(900)]}, 'control', 150, users => 15);
});
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('users', @{[at(900)]}), 'no trip');
SELECT users_canary || ' ' || users_control FROM canary_srm_state WHERE canary = 'users';
SELECT count(*) FILTER (WHERE period = @{[at(600)]}) || ' ' || count(*) FILTER (WHERE period <> @{[at(600)]})
  FROM canary_srm_users WHERE canary = 'users'}) =~ s/\n/|/gr,
	'no trip|5 15|20 0', 'a new period counts its users afresh; the check deleted the old period\'s');

# --- canary_maintenance: users and marks of deleted rollouts -----------------------
is($node->safe_psql('postgres', q{
INSERT INTO canary_srm_users (canary, user_id, cohort, period)
SELECT 'gone', 'g' || g, 'canary', '-infinity' FROM generate_series(1, 30) g;
DELETE FROM canary_verdict_marks;
INSERT INTO canary_verdict_marks VALUES ('gone', now()), ('stall', now() + interval '1 minute'), ('stall', now() + interval '1 minute'),
    ('stall', now() - interval '1 minute'),
    ('stall', now() - interval '16 days');
SELECT string_agg(partition || ' ' || moved_rows, ',' ORDER BY partition)
  FROM canary_maintenance() WHERE action = 'expire' AND partition IN ('canary_srm_users', 'canary_verdict_marks');
SELECT (SELECT count(*) FROM canary_srm_users WHERE canary = 'gone') || ' '
       || (SELECT count(*) FROM canary_srm_users WHERE canary = 'users') || ' '
       || (SELECT string_agg(canary || ' ' || (bucket_end < now()), ',' ORDER BY canary, bucket_end) FROM canary_verdict_marks)}) =~ s/\n/|/gr,
	'canary_srm_users 30,canary_verdict_marks 3|0 20 stall true,stall false',
	'canary_maintenance deletes the users and marks of a deleted rollout, marks older than 15 days, and all but one mark of a bucket');

$node->stop;
done_testing();
