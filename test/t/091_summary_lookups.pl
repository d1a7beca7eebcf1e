# The kill switch's lookups of one rollout's newest window summary must
# cost the same however many summaries are retained (sql/parts/50_killswitch.sql,
# src/killswitch.c, sql/parts/55_plan.sql):
#  - LastControlBaseline (the baseline at stage full: the last control
#    summary with traffic, which may be weeks old);
#  - CheckBlind and TripDeferredAlerted (the rollout's last decision);
#  - canary_plan_gates' 'no breach' gate (the last decision; plpgsql, so a
#    generic plan from the sixth call of a session).
# With "canary = $1 ... ORDER BY at DESC LIMIT 1" the planner walks
# canary_window_summaries_at_idx backwards from 'at', filtering on canary,
# and reads every rollout's summaries since the one it looks for (measured
# at 5 million rows: 0.3-0.6 s a lookup; BENCHMARKS.md).  Here 36 rollouts
# checked every 30 s for two days (408,960 summaries, interleaved in time
# order as the checks write them): r01 at full for the last day (its control
# cohort without traffic), r02 not checked for a day (tripped, say).
#
# Pinned two ways: the plans (EXPLAIN (COSTS OFF), custom and generic) of
# the statements as they are in the sources (the C string literals read from
# src/killswitch.c, the plpgsql statement from the installed function), and
# the real calls (canary_check at full, canary_check with the check lock
# held elsewhere, canary_plan with generic plans), counted with the
# transaction's own counters: a handful of summaries read, none through
# canary_window_summaries_at_idx but the planner's probes of its end, with
# the values they must find.  TripDeferredAlerted's is pinned by its plan only (it
# runs with another transaction holding the rollout's row; 088_check_locks).
# With the statements before this change the plans scan the at index
# (custom for LastControlBaseline, generic for all four), canary_check at
# full reads 201,602 summaries through it and canary_plan 201,607.
# Also the webhook's claim of a pending alert (src/webhook.c), about once
# a second: through the partial index of the pending alerts, not a scan of
# every alert kept.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = canary_node('summary_lookups', conf => qq{
llm_canary.check_interval = 0
});
canary_create_models($node);

my $t0 = $node->safe_psql('postgres', "SELECT date_trunc('minute', now())");
$node->safe_psql('postgres', qq{
INSERT INTO canary_window_summaries
    (canary, at, window_seconds, stage, cohort, samples, errors, error_rate, p95_latency_ms,
     refusals, refusal_rate, thumbs_down, thumbs_down_rate, decision)
SELECT 'r' || lpad(r::text, 2, '0'), '$t0'::timestamptz - interval '2 days' + s * interval '30 seconds', 300,
       CASE WHEN r = 1 AND s >= 2880 THEN 'full' ELSE 'ramp_25' END, c,
       CASE WHEN c = 'control' AND r = 1 AND s >= 2880 THEN 0 ELSE 100 END,
       1, 0.01, 900, 1, 0.01, 2, 0.02,
       CASE WHEN c = 'canary' THEN '{"trip": null, "rules": {}, "check_lock": true}'::jsonb END
  FROM generate_series(0, 2 * 2880 - 1) s, generate_series(1, 36) r, unnest(ARRAY['canary', 'control']) c
 WHERE NOT (r = 2 AND s >= 2880)
 ORDER BY s, r, c;
VACUUM ANALYZE canary_window_summaries;
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
    ('r01', 'full', 'm-old', 'm-new'), ('r02', 'ramp_25', 'm-old', 'm-new');
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM canary_window_summaries'),
	'408960', 'two days of summaries of 36 rollouts (r02 not checked for the last day)');

# --- the plans of the statements as the sources spell them ----------------

# The SQL of the nth (default first) appendStringInfo(&sql, ...) in a
# function of a file of src/ (default killswitch.c): its string literals
# joined, %s the schema, %d 60.
sub c_sql
{
	my ($fn, $file, $nth) = @_;
	$file = "$FindBin::Bin/../../src/" . ($file // 'killswitch.c');
	open my $fh, '<', $file or die "$file: $!";
	my $src = do { local $/; <$fh> };
	close $fh;
	$src =~ /^\Q$fn\E\((.*?)^}/ms or die "no function $fn in $file";
	my @calls = $1 =~ /appendStringInfo\(&sql,\s*((?:"(?:[^"\\]|\\.)*"\s*)+)/g;
	my $lits = $calls[ ($nth // 1) - 1 ] // die "no SQL $fn in $file";
	my $sql = join '', $lits =~ /"((?:[^"\\]|\\.)*)"/g;
	$sql =~ s/\\(.)/$1/g;
	$sql =~ s/%s/public/g;
	$sql =~ s/%d/60/g;
	return $sql;
}

# canary_plan_gates' lookup of the last decision, from the installed
# function, its variables as parameters
my $gates_src = $node->safe_psql('postgres',
	"SELECT prosrc FROM pg_proc WHERE oid = 'canary_plan_gates(text, timestamptz)'::regprocedure");
$gates_src =~ /(SELECT w\.decision INTO last_decision .*? LIMIT 1);/s
  or die "no lookup of the last decision in canary_plan_gates";
(my $gates_sql = $1) =~ s/ INTO last_decision//;
$gates_sql =~ s/\bp_canary\b/\$1/g;
$gates_sql =~ s/\bp_at\b/\$2/g;

my @lookups = (
	[ 'LastControlBaseline', c_sql('LastControlBaseline'), 'text, timestamptz', "'r01', '$t0'",
	  'canary_window_summaries_baseline_idx' ],
	[ 'CheckBlind', c_sql('CheckBlind'), 'text, timestamptz, bigint', "'r02', '$t0', 3600",
	  'canary_window_summaries_idx' ],
	[ 'TripDeferredAlerted', c_sql('TripDeferredAlerted'), 'text, timestamptz', "'r02', '$t0'",
	  'canary_window_summaries_idx' ],
	[ 'canary_plan_gates', $gates_sql, 'text, timestamptz', "'r02', '$t0'",
	  'canary_window_summaries_idx' ],
);
for my $l (@lookups)
{
	my ($name, $sql, $types, $args, $index) = @$l;
	for my $mode ('force_custom_plan', 'force_generic_plan')
	{
		my $plan = $node->safe_psql('postgres', qq{
SET plan_cache_mode = $mode;
PREPARE q($types) AS $sql;
EXPLAIN (COSTS OFF) EXECUTE q($args);
});
		# the scan of canary_window_summaries: one backward scan of the
		# index, bounded by the rollout (no scan of the at index, no sort
		# of the rollout's rows)
		my @scans = $plan =~ /^\s*(?:->\s+)?(\w.* on canary_window_summaries\b.*)$/mg;
		my ($cond) = $plan =~ /Index Cond: (.*)/;
		is(join("\n", @scans),
			"Index Scan Backward using $index on canary_window_summaries"
			  . ($name eq 'LastControlBaseline' ? '' : ' w'),
			"$name ($mode): one backward scan of $index")
		  or diag $plan;
		like($cond // '', qr/^\(\(canary >= .*\) AND \(canary <= .*\) AND \(at <= /,
			"$name ($mode): bounded by the rollout and at");
		unlike($plan, qr/^\s*(?:->\s+)?Sort$/m, "$name ($mode): no full sort");
	}
}

# --- the webhook's claim of a pending alert --------------------------------

# About once a second the worker claims the oldest pending alert
# (WebhookClaimStep, src/webhook.c), or with no webhook sets them all to
# 'none'; the alerts are kept.  Both go through canary_alerts_pending_idx,
# not a scan of every alert (before it: Seq Scan, 5,000 rows here).
$node->safe_psql('postgres', q{
INSERT INTO canary_alerts (canary, ts, kind, payload, webhook_status)
SELECT 'r01', now() - g * interval '1 minute', 'advance', '{}', 'delivered'
  FROM generate_series(1, 5000) g;
ANALYZE canary_alerts;
});
for my $nth (1, 2)
{
	my $sql = c_sql('WebhookClaimStep', 'webhook.c', $nth);
	my $plan = $node->safe_psql('postgres', "EXPLAIN (COSTS OFF) $sql");
	my @scans = $plan =~ /^\s*(?:->\s+)?((?:Seq|Index|Bitmap)\b.* on canary_alerts\b.*)$/mg;
	is(join("\n", @scans), 'Index Scan using canary_alerts_pending_idx on canary_alerts'
		  . ($nth == 2 ? "\nIndex Scan using canary_alerts_pkey on canary_alerts a" : ''),
		"the webhook's claim ($nth of 2): the pending alerts' index") or diag $plan;
}

# --- the real calls, counted ----------------------------------------------

# the summaries read in the transaction so far through each index of
# canary_window_summaries (heap fetches): the at index, (canary, at), the
# baseline index.  Planning a custom plan, the planner probes the at index
# for its actual end, and fetches the newest summary when it is not yet
# all-visible (stored after the VACUUM).
my $counts = q{
SELECT pg_stat_get_xact_tuples_fetched('canary_window_summaries_at_idx'::regclass) || ' '
       || pg_stat_get_xact_tuples_fetched('canary_window_summaries_idx'::regclass) || ' '
       || pg_stat_get_xact_tuples_fetched('canary_window_summaries_baseline_idx'::regclass);
};

# canary_check of r01 at full: no control traffic in the window, so the
# baseline is the last stored control summary with traffic, a day ago
my $out = $node->safe_psql('postgres', qq{
SELECT pg_stat_force_next_flush();
BEGIN;
SELECT canary_check('r01', '$t0') IS NULL;
$counts
COMMIT;
SELECT baseline_from = '$t0'::timestamptz - interval '1 day 30 seconds', samples
  FROM canary_window_summaries WHERE canary = 'r01' AND at = '$t0' AND cohort = 'canary';
});
my @lines = grep { $_ ne '' } split /\n/, $out;
is($lines[-2], '0 0 1',
	'canary_check at full: the baseline is the one summary read, through the baseline index');
is($lines[-1], 't|0', 'the baseline is the control summary of a day ago');

# canary_check of r02 while another session holds its check lock:
# CheckBlind reads the last decision, a day old
my $holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('r02')");
$out = $node->safe_psql('postgres', qq{
SELECT pg_stat_force_next_flush();
BEGIN;
SELECT canary_check('r02', '$t0') IS NULL;
$counts
COMMIT;
SELECT (decision->>'blind_since')::timestamptz = '$t0'::timestamptz - interval '1 day 30 seconds'
  FROM canary_window_summaries WHERE canary = 'r02' AND at = '$t0' AND cohort = 'canary';
});
$holder->query_safe('COMMIT');
$holder->quit;
@lines = grep { $_ ne '' } split /\n/, $out;
# (canary, at): CheckBlind's 4 (it reads the last decision once, also for
# the spell of deferred trips a check without the lock carries on), the
# last check's two summaries and two of the check before (the incremental
# sort reads past the end of the newest (canary, at)); the baseline: 1; the
# at index: 2, the planner's probes of its end, one per custom plan
# (CheckBlind, LastControlBaseline), each fetching the newest summary
# (r01's, just stored)
is($lines[-2], '2 4 1',
	'canary_check with the check lock held elsewhere: the last decision and the baseline, a handful of summaries');
is($lines[-1], 't', 'blind since the check of a day ago');

# canary_plan of r02 with generic plans (as from a session's sixth call),
# half a minute later: the last decision is the check just stored
$out = $node->safe_psql('postgres', qq{
SET plan_cache_mode = force_generic_plan;
SELECT count(*) FROM canary_plan('r02', '$t0'::timestamptz + interval '30 seconds');
SELECT pg_stat_force_next_flush();
BEGIN;
SELECT string_agg(gate || ' ' || ok || ' ' || detail, '; ' ORDER BY gate)
  FROM canary_plan('r02', '$t0'::timestamptz + interval '30 seconds') WHERE gate = 'no breach';
$counts
COMMIT;
});
@lines = grep { $_ ne '' } split /\n/, $out;
is($lines[-2],
	'no breach false the last check judged on older evidence: another transaction held its check lock (another check, or an operator changing the evidence period)',
	'canary_plan reads the last decision (the blind check)');
is($lines[-1], '0 4 0', 'canary_plan (generic plans): the last decision, 4 summaries read through (canary, at)');

done_testing();
