# The kill switch's check never waits for another check of the same
# rollout (src/private_locks.c, canary_collect_evidence and canary_srm_check
# in sql/parts/52_decisions.sql, the plan's gates in 55_plan.sql):
#  - a check left open in a transaction (here its rollout's first check,
#    which inserted the sample-ratio state) does not stall the next one:
#    that one, under lock_timeout 5 s as the monitor runs it, returns at
#    once, judges on the committed evidence and says in its decision that
#    it did not collect and skipped the sample-ratio update; after the
#    first commits, the next check does both;
#  - a check that did not collect does not advance the plan (nor raise
#    the decommission alert at full); the next one that collects does;
#  - the check lock is apart from the applications' advisory locks: an
#    application holding pg_advisory_lock(1819043683, hashtext(rollout))
#    (the key the collection used before) does not stop the collection,
#    while two collectors still exclude each other.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('check_locks', conf => qq{
llm_canary.check_interval = 0
});
canary_create_models($node);
canary_create_put($node);
sub sq { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }

# simulated time: an hour ahead (after evidence_since, which the INSERT sets)
my $at = sq("SELECT date_trunc('minute', now()) + interval '1 hour'");
sub at { my ($s) = @_; return sq("SELECT timestamptz '$at' + interval '$s seconds'"); }

# the decision of the last check of a rollout: evidence_collected|sample_ratio
sub last_decision
{
	my ($name) = @_;
	return sq(qq{
SELECT coalesce(decision->>'evidence_collected', '-') || '|' || coalesce(decision->>'sample_ratio', '-')
  FROM canary_window_summaries WHERE canary = '$name' AND cohort = 'canary' ORDER BY id DESC LIMIT 1});
}

# --- a check left open in a transaction -----------------------------------------
# ramp_25 with a correct split: 500 canary and 1,500 control users
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('open', 'ramp_25', 'm-old', 'm-new');
SELECT put('open', '$at', 'control', 6000, 0, 60, 0, 1000, 1500);
SELECT put('open', '$at', 'canary', 2000, 0, 20, 0, 1000, 500);
});
my $holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe("SELECT canary_check('open', '$at')");
is($holder->query_safe(q{SELECT users_canary || ' ' || users_control FROM canary_srm_state WHERE canary = 'open'}),
	'500 1500', 'the open check (the rollout\'s first) counted the users into a new state row');

my $t0 = time;
my ($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '5s'; SELECT coalesce(canary_check('open', '" . at(30) . "'), 'no trip')");
my $elapsed = time - $t0;
is("$ret|$out|$err", '0|no trip|', 'a second check, under lock_timeout 5 s, runs without an error');
cmp_ok($elapsed, '<', 3, 'and without waiting for the open one');
is(last_decision('open'), 'false|skipped: another check holds it',
	'its decision says it did not collect the evidence and skipped the sample-ratio update');
is(sq(q{SELECT count(*) FROM canary_srm_state WHERE canary = 'open'}) . '|'
	  . sq(q{SELECT count(*) FROM canary_evidence WHERE canary = 'open'}),
	'0|0', 'it wrote neither (the open check\'s rows are not committed)');
$holder->query_safe('COMMIT');
$holder->quit;

# 100 more canary and 300 more control users later on; the next check counts them
sq("SELECT put('open', '" . at(600) . "', 'control', 1800, 0, 18, 0, 1000, 1800)");
sq("SELECT put('open', '" . at(600) . "', 'canary', 600, 0, 6, 0, 1000, 600)");
is(sq("SELECT coalesce(canary_check('open', '" . at(600) . "'), 'no trip')"), 'no trip',
	'after the open check commits, the next check');
is(last_decision('open'), 'true|-', 'collects the evidence and runs the sample-ratio check');
is(sq(q{SELECT users_canary || ' ' || users_control FROM canary_srm_state WHERE canary = 'open'}),
	'600 1800', 'and updates the sample-ratio state');

# --- a check that did not collect does not advance ------------------------------
# 'adv' at ramp_5 and 'dec' at full, dwell 0: every gate opens on the evidence
# of the first check (committed, auto_advance still off).  An open check holds
# the check locks; auto_advance is set on; the next check must not act on the
# evidence it did not collect.
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
    ('adv', 'ramp_5', 'm-old', 'm-new'), ('dec', 'full', 'm-old', 'm-new');
INSERT INTO canary_plan_stages (canary, stage, min_dwell) VALUES ('adv', 'ramp_5', '0'), ('dec', 'full', '0');
SELECT put('adv', '$at', 'control', 40000, 0, 400, 800, 1000, 9500);
SELECT put('adv', '$at', 'canary', 10000, 0, 100, 200, 1000, 500);
SELECT put('dec', '$at', 'canary', 2000, 0, 20, 40, 1000);
});
is(sq("SELECT coalesce(canary_check('adv', '$at'), 'no trip') || ' ' || coalesce(canary_check('dec', '$at'), 'no trip')"),
	'no trip no trip', 'plan: the first checks');
is(sq("SELECT string_agg(gate, ', ') FROM canary_plan('adv', '$at') WHERE NOT ok"), '',
	'plan: every gate of adv is open');
$holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
$holder->query_safe("SELECT canary_check('adv', '" . at(30) . "'), canary_check('dec', '" . at(30) . "')");
sq(q{UPDATE canary_config SET auto_advance = true WHERE name IN ('adv', 'dec')});
# (one statement per rollout: at full there is no sample-ratio check, so
# dec's check shows the plan's part alone)
for my $name ('adv', 'dec')
{
	($ret, $out, $err) = $node->psql('postgres',
		"SET lock_timeout = '5s'; SELECT coalesce(canary_check('$name', '" . at(60) . "'), 'no trip')");
	is("$ret|$out|$err", '0|no trip|', "plan: $name: the check while another holds the lock runs without an error");
}
is(last_decision('adv') . ' ' . last_decision('dec'), 'false|skipped: another check holds it false|-',
	'plan: their decisions say they did not collect');
is(sq(q{SELECT stage || ' ' || (SELECT count(*) FROM canary_alerts a WHERE a.canary IN ('adv', 'dec'))
          FROM canary_config WHERE name = 'adv'}),
	'ramp_5 0', 'plan: no advance and no decommission alert from them');
is(sq("SELECT ok || ' ' || detail FROM canary_plan('adv', '" . at(60) . "') WHERE gate = 'no breach'"),
	'false the last check judged on older evidence: another check was collecting it',
	'plan: canary_plan says why');
$holder->query_safe('COMMIT');
$holder->quit;
is(sq("SELECT coalesce(canary_check('adv', '" . at(90) . "'), 'no trip') || ' ' || coalesce(canary_check('dec', '"
	. at(90) . "'), 'no trip')"), 'no trip no trip', 'plan: the next checks');
is(last_decision('adv') . ' ' . last_decision('dec'), 'true|- true|-', 'plan: collect');
is(sq(q{SELECT stage || ' ' || (SELECT string_agg(a.canary || ' ' || a.kind, ', ' ORDER BY a.id) FROM canary_alerts a
                                 WHERE a.canary IN ('adv', 'dec'))
          FROM canary_config WHERE name = 'adv'}),
	'ramp_25 adv advance, dec decommission', 'plan: and advance (and raise the decommission alert)');

# --- apart from the applications' advisory locks --------------------------------
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('app', 'ramp_25', 'm-old', 'm-new');
SELECT put('app', '$at', 'control', 3000, 0, 30, 0, 1000, 750);
SELECT put('app', '$at', 'canary', 1000, 0, 10, 0, 1000, 250);
});
my $app = $node->background_psql('postgres');
$app->query_safe(q{SELECT pg_advisory_lock(1819043683, hashtext('app')), pg_advisory_lock(hashtext('app'))});
is(sq("SELECT coalesce(canary_check('app', '$at'), 'no trip')"), 'no trip',
	'an application holding advisory locks on the rollout\'s old keys: the check');
is(last_decision('app'), 'true|-', 'collects the evidence');
is(sq(q{SELECT sum(samples) FILTER (WHERE cohort = 'canary') || ' ' || sum(samples) FILTER (WHERE cohort = 'control')
          FROM canary_evidence WHERE canary = 'app'}),
	'1000 3000', 'all of it');
$app->query_safe('SELECT pg_advisory_unlock_all()');

$holder = $node->background_psql('postgres');
$holder->query_safe('BEGIN');
is($holder->query_safe(q{SELECT canary_try_check_lock('app')}), 't', 'a check lock is taken');
is(sq(q{SELECT locktype || ' ' || objsubid || ' ' || mode || ' ' || granted FROM pg_locks
         WHERE locktype = 'advisory' AND pid <> pg_backend_pid()}),
	'advisory 19525 ExclusiveLock true', 'pg_locks shows it as an advisory lock with objsubid 19525');
is(sq(q{SELECT canary_try_check_lock('app') || ' ' || canary_try_check_lock('open')}), 'false true',
	'another transaction does not get it (another rollout\'s, it does)');
is($app->query_safe(q{SELECT pg_try_advisory_lock(1819043683, hashtext('app'))}), 't',
	'the application\'s advisory lock on the old key is free meanwhile');
$app->quit;
$holder->query_safe('COMMIT');
is(sq(q{SELECT canary_try_check_lock('app')}), 't', 'released at the end of the transaction');
$holder->quit;

# internal: not for PUBLIC
sq('CREATE ROLE nobody_special LOGIN');
($ret, $out, $err) = $node->psql('postgres', "SET ROLE nobody_special; SELECT canary_try_check_lock('app')");
like($err, qr/permission denied for function canary_try_check_lock/, 'canary_try_check_lock is not for PUBLIC');

$node->stop;
done_testing();
