# Decisions of the kill switch (src/killswitch.c, src/sequential.c,
# sql/parts/52_decisions.sql), on windows of requests written straight into
# canary_requests with exact counts:
#  - each of the four rules in each decision mode just below, at and just
#    above its threshold, with the verdict that fired or held the trip back
#    (canary_window_summaries.decision) and canary_check's answer;
#  - re-arming after a fix, and changing the stage, start the evidence
#    afresh: the broken model's rows still in the window do not trip again;
#  - the sample-ratio check: an alert of its own kind with what was
#    expected and what was seen, no trip unless srm_trips;
#  - canary_sequential_evidence, the statistic itself.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('decisions', conf => qq{
llm_canary.check_interval = 0
});
canary_create_models($node);
canary_create_put($node);

# A window at an hour ahead (after evidence_since, which the INSERT sets to now())
my $at = $node->safe_psql('postgres',
	"SELECT date_trunc('minute', now()) + interval '1 hour'");

my $n = 0;

# Control: 10,000 requests, errors 0, refusals 1 % (100), thumbs-down 2 %
# (200), latency 1000 ms (p95 1000, limit 1500).  Canary: 1,000 requests,
# nothing wrong but what the case sets.  Returns "verdict of the rule|what
# canary_check returned (trip: the reason's first word, else none)".
sub judge
{
	my ($mode, $rule, %c) = @_;
	my $name = 'r' . ++$n;
	my ($err, $ref, $td, $lat, $clat) =
	  ($c{err} // 0, $c{ref} // 0, $c{td} // 0, $c{lat} // 1000, $c{clat} // 1000);
	my $sql = qq{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode)
  VALUES ('$name', 'ramp_25', 'm-old', 'm-new', '$mode');
SELECT put('$name', '$at', 'control', 10000, 0, 100, 200, $clat);
SELECT put('$name', '$at', 'canary', 1000, $err, $ref, $td, $lat);
SELECT coalesce(split_part(canary_check('$name', '$at'), ' ', 1), 'none');
SELECT decision->'rules'->'$rule'->>'verdict' FROM canary_window_summaries
 WHERE canary = '$name' AND cohort = 'canary';
};
	my @out = split /\n/, $node->safe_psql('postgres', $sql);
	return "$out[-1]|$out[-2]";
}

# --- error rate > 0.02 -------------------------------------------------------
is(judge('raw', 'error_rate', err => 19), 'below_threshold|none', 'raw: errors 0.019 do not trip');
is(judge('raw', 'error_rate', err => 20), 'below_threshold|none',
	'raw: errors exactly 0.020 do not trip (the rule is >, not >=)');
is(judge('raw', 'error_rate', err => 21), 'trip|new-model', 'raw: errors 0.021 trip');
is(judge('confirm_windows', 'error_rate', err => 20), 'below_threshold|none',
	'confirm_windows: errors 0.020 do not breach');
is(judge('confirm_windows', 'error_rate', err => 21), 'not_credible|none',
	'confirm_windows: errors 0.021 breach, the binomial test holds it back');
is(judge('confirm_windows', 'error_rate', err => 60), 'unconfirmed|none',
	'confirm_windows: errors 0.060 are credible, the window before does not confirm');
is(judge('sequential', 'error_rate', err => 20), 'below_threshold|none',
	'sequential: errors 0.020 do not breach');
is(judge('sequential', 'error_rate', err => 21), 'not_credible|none',
	'sequential: errors 0.021 breach without the evidence to trip');
is(judge('sequential', 'error_rate', err => 45), 'trip|new-model',
	'sequential: errors 0.045 in 1,000 requests trip');
# at the stage threshold log(1 / (3/4 x 1/4 x 0.1)) = 3.977 (the error
# rule's quarter of significance 0.1): 35 errors in 1,000 give evidence
# 3.672, 36 give 4.198
is(judge('sequential', 'error_rate', err => 35), 'not_credible|none',
	'sequential: 35 errors in 1,000 stay just below the stage threshold');
is(judge('sequential', 'error_rate', err => 36), 'trip|new-model',
	'sequential: 36 errors in 1,000 pass the stage threshold');

# --- refusal rate > control + 0.05 (control 0.01: limit 0.06) ----------------
is(judge('raw', 'refusal', ref => 59), 'below_threshold|none',
	'raw: refusals 0.059 do not trip (the margin counts)');
is(judge('raw', 'refusal', ref => 60), 'below_threshold|none', 'raw: refusals exactly 0.060 do not trip');
is(judge('raw', 'refusal', ref => 61), 'trip|refusal_rate=0.061', 'raw: refusals 0.061 trip');
is(judge('confirm_windows', 'refusal', ref => 61), 'not_credible|none',
	'confirm_windows: refusals 0.061 are not credible');
is(judge('sequential', 'refusal', ref => 59), 'below_threshold|none',
	'sequential: refusals 0.059 do not breach (the margin counts)');
is(judge('sequential', 'refusal', ref => 61), 'not_credible|none',
	'sequential: refusals 0.061 breach without the evidence to trip');
is(judge('sequential', 'refusal', ref => 130), 'trip|refusal_rate=0.130',
	'sequential: refusals 0.130 trip');
# with control traffic the refusal rule is the paired test (each canary
# request bet on against one control request, src/sequential.c), stage
# threshold log(1 / (3/4 x 1/2 x 0.1)) = 3.283 (the refusal rule's half of
# significance): against control's 100 refusals in 10,000, 82 refusals in
# 1,000 give 3.047, 83 give 3.361
is(judge('sequential', 'refusal', ref => 82), 'not_credible|none',
	'sequential: 82 refusals in 1,000 stay just below the stage threshold');
is(judge('sequential', 'refusal', ref => 83), 'trip|refusal_rate=0.083',
	'sequential: 83 refusals in 1,000 pass the stage threshold');

# --- p95 > 1.5 x control p95 ------------------------------------------------------
# The window p95s come from the rollups' latency histograms (32 buckets per
# power of two): control 1024 ms and canary 1536 ms sit on bucket edges, so
# the canary's p95 is exactly 1.5 x control's however the bucket is read.
is(judge('raw', 'p95', clat => 1024, lat => 1500), 'below_threshold|none', 'raw: p95 1500 ms (1.46x) does not trip');
is(judge('raw', 'p95', clat => 1024, lat => 1536), 'below_threshold|none',
	'raw: p95 exactly 1.5x control does not trip');
is(judge('raw', 'p95', clat => 1024, lat => 1568), 'trip|new-model', 'raw: p95 1568 ms (the next bucket) trips');
is(judge('confirm_windows', 'p95', clat => 1024, lat => 1568), 'unconfirmed|none',
	'confirm_windows: p95 1568 ms is credible, not confirmed');
# the sequential test counts requests slower than 1.5 x control's p95
# (1016.5 read from the histogram: 1524.75 ms), read from the rollups'
# latency histograms, which may misplace values within 1/64 of it (the
# bucket (1504, 1536] holds both sides): the latencies sit in the buckets
# next to it, 1500 ms (bucket (1472, 1504]) and 1568 ms ((1536, 1568])
is(judge('sequential', 'p95', clat => 1024, lat => 1500), 'below_threshold|none',
	'sequential: no request slower than 1.5x control p95, no breach');
is(judge('sequential', 'p95', clat => 1024, lat => 1568), 'trip|new-model',
	'sequential: every request slower than 1.5x control p95 (by a histogram bucket) trips');

# --- thumbs-down > 2 x control (control 0.02: limit 0.04) --------------------
is(judge('raw', 'thumbs_down', td => 39), 'below_threshold|none', 'raw: thumbs-down 0.039 do not trip');
is(judge('raw', 'thumbs_down', td => 40), 'below_threshold|none',
	'raw: thumbs-down exactly 0.040 do not trip');
is(judge('raw', 'thumbs_down', td => 41), 'trip|thumbs_down_rate=0.041', 'raw: thumbs-down 0.041 trip');
is(judge('confirm_windows', 'thumbs_down', td => 41), 'not_credible|none',
	'confirm_windows: thumbs-down 0.041 are not credible');
is(judge('sequential', 'thumbs_down', td => 40), 'below_threshold|none',
	'sequential: thumbs-down 0.040 do not breach');
is(judge('sequential', 'thumbs_down', td => 41), 'not_credible|none',
	'sequential: thumbs-down 0.041 breach without the evidence to trip');
is(judge('sequential', 'thumbs_down', td => 100), 'trip|thumbs_down_rate=0.100',
	'sequential: thumbs-down 0.100 trip');
# control's 200 in 10,000 at the upper end of their confidence sequence
# (log 1 / (1/16 x 1/8 x 0.1) = 7.155): 0.026239, boundary 0.052479; at the
# stage threshold log(1 / ((3/4 - 1/16) x 1/8 x 0.1)) = 4.757, 78
# thumbs-down give 4.669, 79 give 5.057
is(judge('sequential', 'thumbs_down', td => 78), 'not_credible|none',
	'sequential: 78 thumbs-down in 1,000 stay just below the stage threshold');
is(judge('sequential', 'thumbs_down', td => 79), 'trip|thumbs_down_rate=0.079',
	'sequential: 79 thumbs-down in 1,000 pass the stage threshold');

# --- min_samples holds every rule back ----------------------------------------
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode)
  VALUES ('few', 'ramp_25', 'm-old', 'm-new', 'sequential');
});
$node->safe_psql('postgres', qq{
SELECT put('few', '$at', 'control', 10000, 0, 100, 200, 1000);
SELECT put('few', '$at', 'canary', 99, 99, 0, 0, 1000);
});
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('few', '$at'), 'none');
SELECT decision->'rules'->'error_rate'->>'verdict'
  FROM canary_window_summaries WHERE canary = 'few' AND cohort = 'canary'}) =~ s/\n/|/r,
	'none|min_samples', 'sequential: 99 canary requests, all errors, are fewer than min_samples');

# --- the statistic ---------------------------------------------------------------
is($node->safe_psql('postgres', q{
SELECT round(canary_sequential_evidence(45, 1000, 0.02)::numeric, 3) || ' '
    || round(canary_sequential_evidence(20, 1000, 0.02)::numeric, 3) || ' '
    || round(canary_sequential_evidence(1, 10, 0)::numeric, 3) || ' '
    || round(canary_sequential_evidence(50, 1000, 0.05, true)::numeric, 3) || ' '
    || round(canary_sequential_evidence(90, 1000, 0.05, true)::numeric, 3) || ' '
    || round(canary_sequential_evidence(20, 1000, 0.05, true)::numeric, 3)}),
	'10.055 -1.564 Infinity -3.701 11.208 10.900',
	'canary_sequential_evidence: one-sided and two-sided mixture log likelihood ratios');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	'SELECT canary_sequential_evidence(11, 10, 0.5)');
like($stderr, qr/events must be between 0 and trials/, 'more events than trials is refused');
# the paired statistic of one increment, per bet size 0.15, 0.3, 0.5, 0.9
# (values from an independent implementation of the same sums); nothing
# to pair, or counts out of range, are no evidence
is($node->safe_psql('postgres', q{
SELECT array(SELECT round(x::numeric, 4) FROM unnest(canary_paired_evidence(180, 16, 3400, 37, 0.05)) x)::text
    || ' ' || array(SELECT round(x::numeric, 4) FROM unnest(canary_paired_evidence(400, 30, 200, 5, 0.05)) x)::text
    || ' ' || canary_paired_evidence(0, 0, 100, 1, 0.05)::text
    || ' ' || canary_paired_evidence(10, 11, 100, 1, 0.05)::text}),
	'{0.6029,0.9437,1.0765,0.5159} {-0.1355,-0.5627,-1.7005,-9.2023} {0,0,0,0} {0,0,0,0}',
	'canary_paired_evidence: the paired statistic of an increment');
# a minute counted in two increments (a check between them) holds the sum of
# the increments' statistics: the requests of each are paired among themselves
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('inc', 'ramp_25', 'm-old', 'm-new');
SELECT put('inc', '$at', 'control', 5000, 0, 50, 0, 1000);
SELECT put('inc', '$at', 'canary', 500, 0, 40, 0, 1000);
SELECT canary_check('inc', '$at');
SELECT put('inc', '$at', 'control', 3000, 0, 60, 0, 1000);
SELECT put('inc', '$at', 'canary', 300, 0, 20, 0, 1000);
SELECT canary_check('inc', '$at');
});
is($node->safe_psql('postgres', q{
SELECT e.samples || ' ' || e.refusals || ' '
    || (round(e.paired_2::numeric, 6) = round(((canary_paired_evidence(500, 40, 5000, 50, 0.05))[2]
                                               + (canary_paired_evidence(300, 20, 3000, 60, 0.05))[2])::numeric, 6))::text
  FROM canary_evidence e WHERE e.canary = 'inc' AND e.cohort = 'canary'}),
	'800 60 true', 'a minute counted in two increments: the sum of their paired statistics');
# a recount that finds fewer requests than the minute's last count (counts
# that shrank: here the stored count is raised as if a count had seen more)
# leaves the minute no paired evidence: the requests counted again later
# must not be paired twice
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('shrink', 'ramp_25', 'm-old', 'm-new');
SELECT put('shrink', '$at', 'control', 5000, 0, 50, 0, 1000);
SELECT put('shrink', '$at', 'canary', 500, 0, 40, 0, 1000);
SELECT canary_collect_evidence('shrink', '$at', NULL, 0);
});
is($node->safe_psql('postgres', q{
SELECT samples || ' ' || (paired_1 <> 0 AND paired_2 <> 0)::text FROM canary_evidence
 WHERE canary = 'shrink' AND cohort = 'canary'}), '500 true', 'a minute counted once has paired evidence');
$node->safe_psql('postgres', qq{
UPDATE canary_evidence SET samples = samples + 100 WHERE canary = 'shrink' AND cohort = 'canary';
SELECT canary_collect_evidence('shrink', '$at', NULL, 0);
});
is($node->safe_psql('postgres', q{
SELECT concat_ws(' ', samples, paired_1, paired_2, paired_3, paired_4) FROM canary_evidence
 WHERE canary = 'shrink' AND cohort = 'canary'}), '500 0 0 0 0',
	'a recount that found fewer requests leaves the minute no paired evidence');
# the refusal margin is part of the paired statistic: changing it starts the
# evidence afresh; a collection for an evidence period that is no longer
# the rollout's collects nothing
$node->safe_psql('postgres', qq{
UPDATE canary_config SET refusal_delta_threshold = 0.04 WHERE name = 'shrink';
SELECT canary_collect_evidence('shrink', '$at', NULL, 0);
});
is($node->safe_psql('postgres', q{
SELECT (evidence_since IS NOT NULL)::text || ' ' || (SELECT count(*) FROM canary_evidence WHERE canary = 'shrink')
  FROM canary_config WHERE name = 'shrink'}), 'true 0',
	'a change of refusal_delta_threshold starts the evidence afresh; a stale evidence period collects nothing');

# counts in the billions: no evidence, computed promptly (the walks of the
# hypergeometric supports are bounded too)
my $t_paired = time;
is($node->safe_psql('postgres', q{
SET statement_timeout = '20s';
SELECT canary_paired_evidence(4000000000000000000, 2000000000000000000, 4000000000000000000,
                              2000000000000000000, 0.05)::text}), '{0,0,0,0}',
	'canary_paired_evidence of counts in the billions is no evidence');
ok(time - $t_paired < 10, 'and returns promptly');

# r9 (errors 0.045) tripped on its stage statistic: evidence
# 1 / (3/4 x 1/4 x 0.1), the default significance 0.1
is($node->safe_psql('postgres', q{
SELECT concat_ws(' ', d->>'verdict', d->>'minutes', round((d->>'needed')::numeric, 3),
                 round(ln(1 / (0.75 * 0.25 * 0.1))::numeric, 3), c.significance)
  FROM (SELECT decision->'rules'->'error_rate' AS d FROM canary_window_summaries
         WHERE canary = 'r9' AND cohort = 'canary') s, canary_config c WHERE c.name = 'r9'}),
	'trip 0 3.977 3.977 0.1', 'the error rule\'s stage statistic trips at log(1 / (3/4 x 1/4 x significance))');
# the paired refusal test needs log(1 / (3/4 x 1/2 x significance)); the
# thumbs-down rule, log(1 / ((3/4 - 1/16) x 1/8 x significance)) (1/16 of
# the rule's share goes to the control's confidence sequence of the
# statistic)
is($node->safe_psql('postgres', q{
SELECT string_agg(DISTINCT concat_ws(' ', v.r, x.d->>'minutes', round((x.d->>'needed')::numeric, 3)), ', ')
  FROM canary_window_summaries w
 CROSS JOIN (VALUES ('refusal'), ('thumbs_down')) v(r)
 CROSS JOIN LATERAL (SELECT w.decision->'rules'->v.r AS d) x
 WHERE w.cohort = 'canary' AND w.decision->>'mode' = 'sequential' AND x.d->>'verdict' = 'trip'}),
	'refusal 0 3.283, thumbs_down 0 4.757',
	'the paired refusal statistic trips at log(8 / (3 x significance)), thumbs-down at log(128 / (11 x significance))');

# the rules' shares of significance (README): refusal 1/2, errors 1/4, p95
# and thumbs-down 1/8 each; a canary that breaches nothing reports each
# rule's stage threshold, at significance 0.1 and 0.05: log(1 / (3/4 x
# share x significance)), thumbs-down's less 1/16 of its share
for my $sig ('0.1', '0.05')
{
	my $name = 'share' . ($sig =~ s/\.//r);
	$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode, significance)
  VALUES ('$name', 'ramp_25', 'm-old', 'm-new', 'sequential', $sig);
SELECT put('$name', '$at', 'control', 10000, 0, 100, 200, 1000);
SELECT put('$name', '$at', 'canary', 1000, 0, 0, 0, 1000);
SELECT canary_check('$name', '$at');
});
}
is($node->safe_psql('postgres', q{
SELECT string_agg(c.significance || ': ' || (
         SELECT string_agg(v.r || ' ' || round((w.decision->'rules'->v.r->>'needed')::numeric, 3), ', ' ORDER BY v.o)
           FROM (VALUES (1, 'refusal'), (2, 'error_rate'), (3, 'p95'), (4, 'thumbs_down')) v(o, r)), '; '
         ORDER BY c.significance DESC)
  FROM canary_window_summaries w JOIN canary_config c ON c.name = w.canary
 WHERE w.canary IN ('share01', 'share005') AND w.cohort = 'canary'}),
	'0.1: refusal 3.283, error_rate 3.977, p95 4.670, thumbs_down 4.757; '
	  . '0.05: refusal 3.977, error_rate 4.670, p95 5.363, thumbs_down 5.450',
	'each rule\'s stage threshold is its share of significance: refusal 1/2, errors 1/4, p95 1/8, thumbs-down 1/8');

# --- the change statistic: a regression an hour into the stage -------------------
# an hour of good traffic (counted by a check then), then a minute of 15 %
# errors: over the stage 0.7 % (no breach), over the last 2 minutes 15 %
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('late', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '2 hours');
SELECT put('late', timestamptz '$at' - interval '60 minutes', 'control', 10000, 0, 100, 200, 1000);
SELECT put('late', timestamptz '$at' - interval '60 minutes', 'canary', 20000, 0, 0, 0, 1000);
SELECT canary_check('late', timestamptz '$at' - interval '60 minutes');
SELECT put('late', '$at', 'control', 10000, 0, 100, 200, 1000);
SELECT put('late', '$at', 'canary', 1000, 150, 0, 0, 1000);
});
is($node->safe_psql('postgres', qq{
SELECT coalesce(split_part(canary_check('late', '$at'), ' ', 1), 'none');
SELECT concat_ws(' ', d->>'verdict', d->>'minutes', round((d->>'needed')::numeric, 3),
                 round(ln(1440 / (0.25 * 0.25 * 0.1))::numeric, 3))
  FROM (SELECT decision->'rules'->'error_rate' AS d FROM canary_window_summaries
         WHERE canary = 'late' AND cohort = 'canary' ORDER BY at DESC LIMIT 1) s}) =~ s/\n/ /r,
	'new-model trip 2 12.348 12.348',
	'a regression late in the stage trips the change statistic (the segment of the last 2 minutes) at log(1440 / (1/4 x 1/4 x significance))');

# at the change threshold: 47 errors in the last minute's 1,000 give
# evidence 11.587, 48 give 12.400 (threshold 12.348)
for my $k (47, 48)
{
	$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('late$k', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '2 hours');
SELECT put('late$k', timestamptz '$at' - interval '60 minutes', 'canary', 20000, 0, 0, 0, 1000);
SELECT canary_check('late$k', timestamptz '$at' - interval '60 minutes');
SELECT put('late$k', '$at', 'control', 10000, 0, 100, 200, 1000);
SELECT put('late$k', '$at', 'canary', 1000, $k, 0, 0, 1000);
});
}
is($node->safe_psql('postgres', qq{
SELECT coalesce(split_part(canary_check('late47', '$at'), ' ', 1), 'none') || ' '
    || coalesce(split_part(canary_check('late48', '$at'), ' ', 1), 'none');
SELECT string_agg(concat_ws(' ', d->>'verdict', d->>'minutes', round((d->>'evidence')::numeric, 3)), ', '
                  ORDER BY canary)
  FROM (SELECT canary, decision->'rules'->'error_rate' AS d FROM canary_window_summaries
         WHERE canary IN ('late47', 'late48') AND cohort = 'canary' AND at = '$at') s}) =~ s/\n/|/r,
	'none new-model|not_credible 2 11.587, trip 2 12.400',
	'the change statistic: 47 errors in the last minute stay below its threshold, 48 pass it');

# the segment grid: a burst of errors m minutes back is caught by the
# shortest segment that holds it: every minute up to 60, every 5 up to 240,
# every 30 up to 1,440 (the burst's minute is counted by a collection of
# the evidence then; the stage, diluted by a day of good traffic, and the
# last minute's good traffic do not breach)
for my $back (60, 62, 250, 1430)
{
	my $bat = "timestamptz '$at' - interval '$back minutes'";
	$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('grid$back', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '26 hours');
SELECT put('grid$back', timestamptz '$at' - interval '25 hours', 'canary', 40000, 0, 0, 0, 1000);
SELECT canary_collect_evidence('grid$back', timestamptz '$at' - interval '25 hours',
                               timestamptz '$at' - interval '26 hours', 0);
SELECT put('grid$back', $bat + interval '100 s', 'canary', 1000, 150, 0, 0, 1000);
SELECT canary_collect_evidence('grid$back', $bat + interval '100 s',
                               timestamptz '$at' - interval '26 hours', 0);
SELECT put('grid$back', '$at', 'control', 10000, 0, 100, 200, 1000);
SELECT put('grid$back', '$at', 'canary', 1000, 0, 0, 0, 1000);
});
}
is($node->safe_psql('postgres', qq{
SELECT string_agg(coalesce(split_part(canary_check('grid' || b, '$at'), ' ', 1), 'none'), ' ' ORDER BY b)
  FROM unnest(ARRAY[60, 62, 250, 1430]) b;
SELECT string_agg(concat_ws(' ', canary, d->>'verdict', d->>'minutes'), ', ' ORDER BY canary)
  FROM (SELECT canary, decision->'rules'->'error_rate' AS d FROM canary_window_summaries
         WHERE canary LIKE 'grid%' AND cohort = 'canary' AND at = '$at') s}) =~ s/\n/|/r,
	'new-model new-model new-model new-model|grid1430 trip 1440, grid250 trip 270, grid60 trip 60, grid62 trip 65',
	'the change segments start at every minute up to 60, every 5 up to 240 and every 30 up to 1,440');

# --- the stage's running totals (canary_evidence_settled) -----------------------
# three days of evidence minutes, written directly (100 canary and 1,000
# control requests a minute): the first check builds the totals of the
# settled minutes (each check's recount drops the last minute counted,
# which the rollups do not hold); later checks read them and the minutes
# after them only; a late verdict's mark a day back recounts that minute
# alone (from the rollups, which hold none of these minutes: it leaves the
# evidence and the totals alike).  Minutes left after three checks: 4,316
# less the three last ones and the marked one.
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('totals', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '3 days');
INSERT INTO canary_evidence (canary, bucket, cohort, samples, errors, refusals, thumbs_down, slow)
SELECT 'totals', timestamptz '$at' - interval '3 days' + m * interval '1 minute', c.cohort,
       c.n, m % 2, (m % 3) * c.n / 100, (m % 5) * c.n / 100, 0
  FROM generate_series(0, 3 * 1440 - 5) m, (VALUES ('canary', 100), ('control', 1000)) c(cohort, n);
ANALYZE canary_evidence;
CREATE FUNCTION stage_matches(p_at timestamptz) RETURNS text LANGUAGE sql AS \$\$
    SELECT ((SELECT string_agg(concat_ws(' ', s.cohort, s.samples, s.errors, s.refusals, s.thumbs_down), ', '
                               ORDER BY s.cohort)
               FROM canary_evidence_stage('totals', timestamptz '$at' - interval '3 days', p_at) s)
            = (SELECT string_agg(concat_ws(' ', e.cohort, e.samples, e.errors, e.refusals, e.thumbs_down), ', '
                                 ORDER BY e.cohort)
                 FROM (SELECT cohort, sum(samples) AS samples, sum(errors) AS errors, sum(refusals) AS refusals,
                              sum(thumbs_down) AS thumbs_down
                         FROM canary_evidence WHERE canary = 'totals' AND bucket <= p_at GROUP BY 1) e))::text
        || ' ' || (SELECT samples FROM canary_evidence_settled WHERE canary = 'totals' AND cohort = 'canary')
        || ' ' || (SELECT (timestamptz '$at' - through)::text FROM canary_evidence_settled
                    WHERE canary = 'totals' AND cohort = 'canary')
\$\$;
});
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('totals', '$at'), 'no trip');
SELECT stage_matches('$at')}) =~ s/\n/|/r,
	'no trip|true 431500 00:02:00',
	'the first check builds the totals of the minutes settled two minutes before it; the stage sums match a full count');
# a later check: the stage reads the two totals and the minutes after them
is($node->safe_psql('postgres', qq{SELECT coalesce(canary_check('totals', timestamptz '$at' + interval '30 s'), 'no trip')}),
	'no trip', 'a later check');
is($node->safe_psql('postgres', qq{
SELECT count(*) FROM canary_evidence_stage('totals', timestamptz '$at' - interval '3 days',
                                           timestamptz '$at' + interval '30 s');
SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables WHERE relname = 'canary_evidence'}) =~ s/\n/|/gr,
	'2|0', 'the stage statistic reads no evidence row older than the totals');
is($node->safe_psql('postgres', qq{
SELECT count(*) FROM canary_evidence_stage('totals', timestamptz '$at' - interval '3 days' - interval '1 s',
                                           timestamptz '$at' + interval '30 s');
SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) > 8000 FROM pg_stat_xact_user_tables WHERE relname = 'canary_evidence'}) =~ s/\n/|/r,
	'2|t', 'without totals of its evidence period (another since) every minute is read');
$node->safe_psql('postgres', qq{
INSERT INTO canary_verdict_marks (canary, bucket_end) VALUES ('totals', timestamptz '$at' - interval '1 day');
SELECT canary_check('totals', timestamptz '$at' + interval '1 minute');
});
is($node->safe_psql('postgres', qq{SELECT stage_matches(timestamptz '$at' + interval '1 minute')}),
	'true 431200 00:01:00',
	'a late verdict\'s recount of a minute a day ago takes it out of the totals as out of the evidence');

# --- two checks collecting the same rollout at once -----------------------------
# the totals of a former evidence period are still there (as after an
# upgrade or a mismatch: both checks would rebuild them); the first
# collects in a transaction left open, the second meanwhile does not wait
# for it and skips collecting (it would add its full sums to the first's
# totals once that commits): the totals equal a full count
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('conc', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '3 hours');
SELECT put('conc', timestamptz '$at' - interval '30 minutes', 'control', 1000, 0, 10, 0, 1000);
SELECT put('conc', timestamptz '$at' - interval '30 minutes', 'canary', 100, 0, 5, 0, 1000);
INSERT INTO canary_evidence_settled (canary, cohort, since, through, samples, errors, refusals, thumbs_down, slow)
SELECT 'conc', c, timestamptz '$at' - interval '1 day', timestamptz '$at' - interval '23 hours', 7, 0, 0, 0, 0
  FROM unnest(ARRAY['canary', 'control']) c;
});
my $collect = "SELECT canary_collect_evidence('conc', '$at', timestamptz '$at' - interval '3 hours', 0)";
my $first = $node->background_psql('postgres');
$first->query_safe("BEGIN; $collect");
my $second = $node->background_psql('postgres');
$second->query_until(qr/started/, "\\echo started\n$collect;\n");
ok($node->poll_query_until('postgres', q{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE query LIKE 'SELECT canary_collect_evidence(''conc''%' AND (state = 'idle' OR wait_event_type = 'Lock')}),
	'the second collection is done or waits');
$first->query_safe('COMMIT');
$second->query_safe('SELECT 1');
is($node->safe_psql('postgres', qq{
SELECT (SELECT string_agg(concat_ws(' ', s.cohort, s.samples, s.refusals), ', ' ORDER BY s.cohort)
          FROM canary_evidence_stage('conc', timestamptz '$at' - interval '3 hours', '$at') s)
    || '|' || (SELECT string_agg(concat_ws(' ', s.cohort, s.samples, s.refusals), ', ' ORDER BY s.cohort)
                 FROM canary_evidence_settled s WHERE s.canary = 'conc')
    || '|' || (SELECT string_agg(concat_ws(' ', e.cohort, e.samples, e.refusals), ', ' ORDER BY e.cohort)
                 FROM (SELECT cohort, sum(samples) AS samples, sum(refusals) AS refusals FROM canary_evidence
                        WHERE canary = 'conc' GROUP BY cohort) e)}),
	'canary 100 5, control 1000 10|canary 100 5, control 1000 10|canary 100 5, control 1000 10',
	'two checks collecting at once: the running totals equal a full count');
$first->quit;
$second->quit;

# a deleted rollout's evidence goes with it, and a rollout created under its
# name starts with none (rows left by an earlier one are dropped)
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('gone', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '3 hours');
SELECT put('gone', timestamptz '$at' - interval '30 minutes', 'canary', 100, 0, 5, 0, 1000);
SELECT canary_collect_evidence('gone', '$at', timestamptz '$at' - interval '3 hours', 0);
});
is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM canary_evidence WHERE canary = 'gone') || ' '
    || (SELECT count(*) FROM canary_evidence_settled WHERE canary = 'gone')}), '1 2', 'a rollout\'s evidence');
$node->safe_psql('postgres', q{DELETE FROM canary_config WHERE name = 'gone'});
is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM canary_evidence WHERE canary = 'gone') || ' '
    || (SELECT count(*) FROM canary_evidence_settled WHERE canary = 'gone')}), '0 0',
	'deleting the rollout deletes its evidence');
$node->safe_psql('postgres', qq{
INSERT INTO canary_evidence (canary, bucket, cohort, samples, errors, refusals, thumbs_down, slow)
  VALUES ('gone', '$at', 'canary', 5, 5, 5, 5, 5);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('gone', 'ramp_25', 'm-old', 'm-new');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_evidence WHERE canary = 'gone'}), '0',
	'a rollout created under an old name starts with no evidence');

# an upsert that meets the existing rollout (a deploy script's "make sure it
# exists") keeps its evidence: the clean-up runs AFTER INSERT, which an
# INSERT ... ON CONFLICT that takes the conflict path does not fire
$node->safe_psql('postgres', qq{
UPDATE canary_config SET evidence_since = timestamptz '$at' - interval '3 hours' WHERE name = 'gone';
SELECT put('gone', timestamptz '$at' - interval '30 minutes', 'canary', 100, 0, 5, 0, 1000);
SELECT canary_collect_evidence('gone', '$at', timestamptz '$at' - interval '3 hours', 0);
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('gone', 'ramp_25', 'm-old', 'm-new')
  ON CONFLICT (name) DO NOTHING;
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('gone', 'ramp_25', 'm-old', 'm-new')
  ON CONFLICT (name) DO UPDATE SET min_samples = 101;
});
is($node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM canary_evidence WHERE canary = 'gone') || ' '
    || (SELECT count(*) FROM canary_evidence_settled WHERE canary = 'gone')}), '1 2',
	'an upsert meeting the existing rollout keeps its evidence');

# the evidence statement names the extension's schema as CREATE EXTENSION
# wrote it (quoted when it must be): a schema that needs quotes works
$node->safe_psql('postgres', q{CREATE DATABASE odd_schema});
$node->safe_psql('odd_schema', q{CREATE SCHEMA "Odd Canary"; CREATE EXTENSION llm_canary SCHEMA "Odd Canary"});
is($node->safe_psql('odd_schema', qq{
SET search_path = "Odd Canary", public;
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('odd', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '3 hours');
SELECT canary_collect_evidence('odd', '$at', timestamptz '$at' - interval '3 hours', 0);
SELECT count(*) FROM canary_evidence_settled WHERE canary = 'odd';}), "\n2",
	'evidence collected with the extension in a schema whose name needs quotes');
is($node->safe_psql('odd_schema', q{SET search_path = "Odd Canary", public;
SELECT count(*) FROM canary_maintenance(20)
 WHERE action = 'create' AND partition = 'canary_requests_' || to_char((now() AT TIME ZONE 'UTC')::date + 20, 'YYYYMMDD')}), '1',
	'maintenance creates partitions with the extension in a schema whose name needs quotes');
is($node->safe_psql('odd_schema', q{SELECT count(*) FROM pg_tables WHERE schemaname = 'Odd Canary'
    AND tablename = 'canary_requests_' || to_char((now() AT TIME ZONE 'UTC')::date + 20, 'YYYYMMDD')}), '1',
	'the partition twenty days ahead exists in that schema');

# --- re-arm after a fix, and stage changes, start clean --------------------------
# the broken model's window ends a minute ago; evidence since an hour before
for my $mode ('sequential', 'confirm_windows', 'raw')
{
	my $name = "rearm_$mode";
	$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode, evidence_since)
  VALUES ('$name', 'ramp_25', 'm-old', 'm-new', '$mode', now() - interval '1 hour');
SELECT put('$name', now() - interval '60 s', 'control', 10000, 0, 100, 200, 1000);
SELECT put('$name', now() - interval '60 s', 'canary', 1000, 150, 0, 0, 1000);
UPDATE canary_config SET confirm_windows = 1 WHERE name = '$name';
});
	like($node->safe_psql('postgres', "SELECT canary_check('$name', now() - interval '60 s')"),
		qr/^new-model error_rate=0\.150/, "$mode: the broken model trips");
	# fixed: re-arm; good traffic follows, the broken rows are still in the window
	$node->safe_psql('postgres', "SELECT canary_rearm('$name')");
	is($node->safe_psql('postgres', qq{
SELECT evidence_since > now() - interval '1 minute' FROM canary_config WHERE name = '$name'}),
		't', "$mode: canary_rearm starts the evidence afresh");
	# (from a minute after the re-arm: the window summaries count whole
	# 30-second rollup buckets, the one holding the re-arm included)
	$node->safe_psql('postgres', qq{
SELECT put('$name', now() + interval '160 s', 'control', 10000, 0, 100, 200, 1000);
SELECT put('$name', now() + interval '160 s', 'canary', 1000, 10, 0, 0, 1000);
});
	is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('$name', now() + interval '160 s'), 'no trip') || '|'
    || (SELECT count(*) FROM canary_alerts WHERE canary = '$name')
    || '|' || (SELECT samples FROM canary_window_summaries WHERE canary = '$name' AND cohort = 'canary'
                ORDER BY id DESC LIMIT 1)}),
		'no trip|1|1000', "$mode: after the re-arm only the fixed model's 1,000 requests count, no second trip");
}

is($node->safe_psql('postgres',
	"SELECT evidence_since IS NULL FROM canary_config WHERE name = 'r1'"),
	't', 'a new rollout counts all its traffic');
$node->safe_psql('postgres', "UPDATE canary_config SET stage = 'full' WHERE name = 'r1'");
is($node->safe_psql('postgres', qq{
SELECT evidence_since > now() - interval '1 minute' FROM canary_config WHERE name = 'r1'}),
	't', 'a stage change starts the evidence afresh');
my $since = $node->safe_psql('postgres', "SELECT evidence_since FROM canary_config WHERE name = 'r1'");
$node->safe_psql('postgres', "UPDATE canary_config SET min_samples = 50 WHERE name = 'r1'");
is($node->safe_psql('postgres', qq{
SELECT evidence_since = '$since' FROM canary_config WHERE name = 'r1'}),
	't', 'a change of threshold keeps the evidence');
($ret, $stdout, $stderr) = $node->psql('postgres',
	"UPDATE canary_config SET decision_mode = 'bayes' WHERE name = 'r1'");
like($stderr, qr/invalid decision_mode "bayes".*\n.*HINT:  Valid modes are: sequential/,
	'an unknown decision_mode is refused with the valid ones');

# --- sample-ratio mismatch ---------------------------------------------------------
# ramp_25: 25 % of users expected in the canary cohort
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
    ('srm_bad', 'ramp_25', 'm-old', 'm-new'), ('srm_ok', 'ramp_25', 'm-old', 'm-new'),
    ('srm_trip', 'ramp_25', 'm-old', 'm-new');
UPDATE canary_config SET srm_trips = true WHERE name = 'srm_trip';
});
for my $name ('srm_bad', 'srm_trip')
{
	# 1,000 users of each cohort: 50 % instead of 25 %
	$node->safe_psql('postgres', qq{
SELECT put('$name', '$at', 'control', 3000, 0, 0, 0, 1000, 1000);
SELECT put('$name', '$at', 'canary', 3000, 0, 0, 0, 1000, 1000);
});
}
$node->safe_psql('postgres', qq{
SELECT put('srm_ok', '$at', 'control', 6000, 0, 0, 0, 1000, 1500);
SELECT put('srm_ok', '$at', 'canary', 2000, 0, 0, 0, 1000, 500);
});
$node->safe_psql('postgres', 'LISTEN llm_canary_alerts');
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('srm_bad', '$at'), 'no trip') || '|' || coalesce(canary_check('srm_ok', '$at'), 'no trip')}),
	'no trip|no trip', 'a sample-ratio mismatch alone does not trip');
is($node->safe_psql('postgres', q{
SELECT string_agg(canary || ' ' || kind || ' ' || (payload->>'expected_share') || ' '
                  || (payload->>'seen_share') || ' ' || (payload->>'users_canary') || ' '
                  || (payload->>'users_control'), ',')
  FROM canary_alerts WHERE canary LIKE 'srm%'}),
	'srm_bad sample_ratio 0.25 0.50000 1000 1000',
	'one sample_ratio alert says what was expected and what was seen; the correct split raises none');
is($node->safe_psql('postgres', q{
SELECT kill_switch_armed FROM canary_config WHERE name = 'srm_bad'}), 't', 'the rollout stays armed');
is($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('srm_bad', '$at'), 'no trip') || '|'
    || (SELECT count(*) FROM canary_alerts WHERE canary = 'srm_bad')}),
	'no trip|1', 'the mismatch is alerted once per evidence period');
like($node->safe_psql('postgres', qq{SELECT canary_check('srm_trip', '$at')}),
	qr/^sample ratio mismatch: 1000 of 2000 users in the canary cohort \(50\.00 %\), percent_new 25\.00 %$/,
	'with srm_trips the mismatch trips the switch');
is($node->safe_psql('postgres', q{
SELECT kind || ' ' || (payload->>'alert') || ' ' || NOT (SELECT kill_switch_armed FROM canary_config WHERE name = 'srm_trip')
  FROM canary_alerts WHERE canary = 'srm_trip'}),
	'sample_ratio canary kill-switch tripped true', 'the trip is alerted as kind sample_ratio');

# a ramp stage set to 100 %: no control traffic to pair with, so the refusal
# rule tests against the stored baseline (the control's last window)
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('all_new', 'ramp_25', 'm-old', 'm-new');
SELECT put('all_new', timestamptz '$at' - interval '30 minutes', 'control', 10000, 0, 100, 200, 1000);
SELECT put('all_new', timestamptz '$at' - interval '30 minutes', 'canary', 1000, 0, 10, 20, 1000);
SELECT canary_check('all_new', timestamptz '$at' - interval '30 minutes');
UPDATE canary_config SET percent_new = 100, evidence_since = timestamptz '$at' - interval '10 minutes'
 WHERE name = 'all_new';
SELECT put('all_new', '$at', 'canary', 1000, 0, 300, 0, 1000);
});
like($node->safe_psql('postgres', qq{
SELECT coalesce(canary_check('all_new', '$at'), 'none');
SELECT decision->'rules'->'refusal'->>'verdict' FROM canary_window_summaries
 WHERE canary = 'all_new' AND cohort = 'canary' AND at = '$at'}) =~ s/\n/|/r,
	qr/^refusal_rate=0\.300 vs baseline 0\.0\d+\|trip$/,
	'percent_new 100 at a ramp stage: the refusal rule is tested against the baseline and trips');

# the refusal rule at full (no control cohort: against the stored baseline,
# the control's rate at the upper end of its confidence sequence): a
# two-sample test, so its stage statistic trips at log(1 / ((3/4 - 1/16) x
# 1/2 x significance)) = 3.370 against the baseline's sequence at
# log(1 / (1/16 x 1/2 x significance)) = 5.768.  Computed apart from the
# extension (the mixture of src/sequential.c in Python): baseline 100
# refusals in 10,000 gives the boundary 0.06415 (0.01 + 0.05 at its upper
# end); of 1,000 canary requests 88 refusals give evidence 3.275, 89 give
# 3.612.  With the refusal rule's share 1/8 (swapped with thumbs-down's)
# the thresholds would be 4.757 and 7.155 and 93 refusals needed.
for my $k (88, 89)
{
	$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('full$k', 'ramp_25', 'm-old', 'm-new');
SELECT put('full$k', timestamptz '$at' - interval '30 minutes', 'control', 10000, 0, 100, 200, 1000);
SELECT put('full$k', timestamptz '$at' - interval '30 minutes', 'canary', 1000, 0, 10, 20, 1000);
SELECT canary_check('full$k', timestamptz '$at' - interval '30 minutes');
UPDATE canary_config SET stage = 'full', evidence_since = timestamptz '$at' - interval '10 minutes'
 WHERE name = 'full$k';
SELECT put('full$k', '$at', 'canary', 1000, 0, $k, 0, 1000);
SELECT canary_check('full$k', '$at');
});
}
is($node->safe_psql('postgres', qq{
SELECT string_agg(concat_ws(' ', canary, d->>'verdict', d->>'minutes', round((d->>'needed')::numeric, 3),
                            round((d->>'evidence')::numeric, 3)), ', ' ORDER BY canary)
  FROM (SELECT canary, decision->'rules'->'refusal' AS d FROM canary_window_summaries
         WHERE canary IN ('full88', 'full89') AND cohort = 'canary' AND at = '$at') s}),
	'full88 not_credible 0 3.370 3.275, full89 trip 0 3.370 3.612',
	'at full the refusal rule\'s stage statistic trips at log(1 / ((3/4 - 1/16) x 1/2 x significance)) against a baseline sequence at log(1 / (1/16 x 1/2 x significance))');

# the change statistic of a two-sample rule: an hour of good traffic, then
# a minute of 15 % thumbs-down against the control's 2 %.  The segment of
# the last 2 minutes trips at log(1440 / ((1/4 - 1/16) x 1/8 x
# significance)) = 13.328, the control's sequence of the segment at
# log(1440 / (1/16 x 1/8 x significance)) = 14.427: boundary 2 x 0.02895,
# evidence 51.456 (in Python, as above).  Swapped shares: 11.942 and
# 13.041, evidence 53.468.
$node->safe_psql('postgres', qq{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('late_td', 'ramp_25', 'm-old', 'm-new', timestamptz '$at' - interval '2 hours');
SELECT put('late_td', timestamptz '$at' - interval '60 minutes', 'control', 10000, 0, 100, 200, 1000);
SELECT put('late_td', timestamptz '$at' - interval '60 minutes', 'canary', 20000, 0, 0, 0, 1000);
SELECT canary_check('late_td', timestamptz '$at' - interval '60 minutes');
SELECT put('late_td', '$at', 'control', 10000, 0, 100, 200, 1000);
SELECT put('late_td', '$at', 'canary', 1000, 0, 0, 150, 1000);
SELECT canary_check('late_td', '$at');
});
is($node->safe_psql('postgres', qq{
SELECT concat_ws(' ', d->>'verdict', d->>'minutes', round((d->>'needed')::numeric, 3),
                 round((d->>'evidence')::numeric, 3))
  FROM (SELECT decision->'rules'->'thumbs_down' AS d FROM canary_window_summaries
         WHERE canary = 'late_td' AND cohort = 'canary' AND at = '$at') s}),
	'trip 2 13.328 51.456',
	'the thumbs-down change statistic trips at log(1440 / ((1/4 - 1/16) x 1/8 x significance)), its control sequence at log(1440 / (1/16 x 1/8 x significance))');

$node->stop;
done_testing();
