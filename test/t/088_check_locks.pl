# The kill switch's check never waits for another check of the same
# rollout (src/private_locks.c, canary_collect_evidence and canary_srm_check
# in sql/parts/52_decisions.sql, the plan's gates in 55_plan.sql):
#  - a check left open in a transaction (here its rollout's first check,
#    which inserted the sample-ratio state) does not stall the next one:
#    that one, under lock_timeout 5 s as the monitor runs it, returns at
#    once, judges on the committed evidence and says in its decision that
#    it did not collect and skipped the sample-ratio update, with a WARNING
#    naming the holder's process (a prepared transaction's, it has none);
#    after the first commits, the next check does both;
#  - an operator's open UPDATE of canary_config that starts a new evidence
#    period holds the check lock (its trigger waits for it before deleting
#    the evidence): a check meanwhile takes the same path rather than fail
#    on lock_timeout; a check holding the lock that would trip while the
#    operator's UPDATE waits for it does not wait for the row (no deadlock):
#    the next check trips;
#  - the trip takes the rollout's row FOR NO KEY UPDATE: an application's
#    open transaction that pinned a new session (FOR KEY SHARE through
#    canary_sessions' foreign key) does not defer it (rules and sample
#    ratio); a trip deferred by an operator's lock on the row says so in
#    the decision ("trip": "deferred") and raises one check_blocked alert
#    (reason trip_deferred) per spell, at once (the spell carried across a
#    check without the check lock: "trip_deferred_alerted"); a trip that finds the
#    switch tripped meanwhile reports nothing ("trip": "already tripped",
#    the rules' trip or the sample ratio's: canary_srm_check reports its
#    outcome), nor one that finds the rollout deleted ("trip": "rollout
#    deleted");
#  - every decision says whether its check held the lock ("check_lock", in
#    every mode), and the plan's 'no breach' gate reads it from the latest
#    decision (ties on 'at' broken by id);
#  - a check without the lock warns (naming the holder's process); when
#    no check has collected for 5 minutes (10 x llm_canary.check_interval
#    if longer), one alert of kind check_blocked per such episode;
#  - the lock is transaction-level: a savepoint's is released by ROLLBACK
#    TO, the parent's survives; two checks in one transaction both collect;
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
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('check_locks', conf => qq{
llm_canary.check_interval = 0
max_prepared_transactions = 2
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

# whether the last check of a rollout held its check lock
sub check_lock
{
	my ($name) = @_;
	return sq(qq{
SELECT coalesce(decision->>'check_lock', '-')
  FROM canary_window_summaries WHERE canary = '$name' AND cohort = 'canary' ORDER BY id DESC LIMIT 1});
}

# the NOTICE of a check that found the lock taken by process $pid (a short
# spell: a WARNING once no check has collected for 5 minutes)
sub blocked_warning
{
	my ($name, $pid, $level) = @_;
	$level //= 'NOTICE';
	return qr/$level:  rollout "$name" was judged on older evidence\nDETAIL:  Another transaction \(process $pid\) holds the rollout's check lock: until it ends, the checks of the rollout collect no evidence, skip the sample-ratio update and do not advance the plan\./;
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

my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
my ($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '5s'; SELECT coalesce(canary_check('open', '" . at(30) . "'), 'no trip')");
is("$ret|$out", '0|no trip', 'a second check, under lock_timeout 5 s, runs without an error');
like($err, blocked_warning('open', $holder_pid), 'and warns, naming the process that holds the lock');
is(last_decision('open'), 'false|skipped: another check holds it',
	'its decision says it did not collect the evidence and skipped the sample-ratio update');
is(sq(q{SELECT count(*) FROM canary_srm_state WHERE canary = 'open'}) . '|'
	  . sq(q{SELECT count(*) FROM canary_evidence WHERE canary = 'open'}),
	'0|0', 'it wrote neither (the open check\'s rows are not committed)');
is(check_lock('open'), 'false', 'its decision: check_lock false');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT coalesce(reason, 'NULL') || ' ' || outcome FROM canary_srm_check('open', '" . at(30) . "')");
is("$ret|$out", '0|NULL skipped', 'canary_srm_check called directly meanwhile returns no reason, outcome skipped');
like($err, qr/WARNING:  sample-ratio check of rollout "open" skipped\nDETAIL:  Another transaction holds the rollout's check lock\./,
	'and says it skipped the check');
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

# two checks in one transaction: the second holds the lock already
sq("BEGIN; SELECT canary_check('open', '" . at(630) . "'); SELECT canary_check('open', '" . at(660) . "'); COMMIT;");
is(sq(q{SELECT string_agg(decision->>'check_lock' || ' ' || (decision->>'evidence_collected'), ', ' ORDER BY id)
          FROM (SELECT id, decision FROM canary_window_summaries WHERE canary = 'open' AND cohort = 'canary'
                 ORDER BY id DESC LIMIT 2) d}),
	'true true, true true', 'two checks in one transaction: both hold the lock and collect');

# a prepared transaction holding the lock: the WARNING says so (it has no process)
$holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('open'); PREPARE TRANSACTION 'held_open'");
($ret, $out, $err) = $node->psql('postgres', "SELECT coalesce(canary_check('open', '" . at(690) . "'), 'no trip')");
is("$ret|$out", '0|no trip', 'a prepared transaction holds the lock: the check');
like($err, qr/NOTICE:  rollout "open" was judged on older evidence\nDETAIL:  A prepared transaction holds the rollout's check lock/,
	'warns that a prepared transaction holds it');
$holder->query_safe("COMMIT PREPARED 'held_open'");
$holder->quit;

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
$holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe('BEGIN');
$holder->query_safe("SELECT canary_check('adv', '" . at(30) . "'), canary_check('dec', '" . at(30) . "')");
sq(q{UPDATE canary_config SET auto_advance = true WHERE name IN ('adv', 'dec')});
# (one statement per rollout: at full there is no sample-ratio check, so
# dec's check shows the plan's part alone)
for my $name ('adv', 'dec')
{
	($ret, $out, $err) = $node->psql('postgres',
		"SET lock_timeout = '5s'; SELECT coalesce(canary_check('$name', '" . at(60) . "'), 'no trip')");
	is("$ret|$out", '0|no trip', "plan: $name: the check while another holds the lock runs without an error");
	like($err, blocked_warning($name, $holder_pid), "plan: $name: and warns");
}
is(last_decision('adv') . ' ' . last_decision('dec'), 'false|skipped: another check holds it false|-',
	'plan: their decisions say they did not collect');
is(sq(q{SELECT stage || ' ' || (SELECT count(*) FROM canary_alerts a WHERE a.canary IN ('adv', 'dec'))
          FROM canary_config WHERE name = 'adv'}),
	'ramp_5 0', 'plan: no advance and no decommission alert from them');
is(sq("SELECT ok || ' ' || detail FROM canary_plan('adv', '" . at(60) . "') WHERE gate = 'no breach'"),
	'false the last check judged on older evidence: another transaction held its check lock (another check, or an operator changing the evidence period)',
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

# --- an operator's open UPDATE that starts a new evidence period ---------------
# 'op' has committed evidence and running totals of settled minutes (the
# first check, ten minutes after the traffic); the operator's UPDATE of
# percent_new deletes them, under the check lock, until it commits
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('op', 'ramp_25', 'm-old', 'm-new');
SELECT put('op', '$at', 'control', 3000, 0, 30, 0, 1000, 750);
SELECT put('op', '$at', 'canary', 1000, 0, 10, 0, 1000, 250);
});
is(sq("SELECT coalesce(canary_check('op', '" . at(600) . "'), 'no trip')") . ' '
	  . sq("SELECT count(*) > 0 FROM canary_evidence_settled WHERE canary = 'op'"),
	'no trip t', 'operator: the first check collects (running totals written)');
my $op = $node->background_psql('postgres');
my $op_pid = $op->query_safe('SELECT pg_backend_pid()');
$op->query_safe(q{BEGIN; UPDATE canary_config SET percent_new = 30 WHERE name = 'op'});
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT coalesce(canary_check('op', '" . at(630) . "'), 'no trip')");
is("$ret|$out", '0|no trip', 'operator: a check while the UPDATE is open runs without an error (no lock timeout)');
like($err, blocked_warning('op', $op_pid), 'operator: and warns, naming the operator\'s process');
is(check_lock('op'), 'false', 'operator: its decision: check_lock false');
$op->query_safe('COMMIT');
is(sq("SELECT coalesce(canary_check('op', '" . at(660) . "'), 'no trip')") . ' ' . check_lock('op'), 'no trip true',
	'operator: after the commit, the next check collects');

# a check holding the lock would trip while an operator's UPDATE of the
# rollout waits for the lock: the check does not wait for the row the
# UPDATE holds (that would deadlock); the next check trips
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('dl', 'ramp_25', 'm-old', 'm-new');
SELECT put('dl', '$at', 'control', 6000, 60, 60, 0, 1000, 1500);
SELECT put('dl', '$at', 'canary', 2000, 600, 20, 0, 1000, 500);
});
$holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('dl')");
$op->query_until(qr/waiting/, "\\echo waiting\nBEGIN; UPDATE canary_config SET percent_new = 30 WHERE name = 'dl';\n");
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 19525 AND NOT granted})
  or die 'the operator\'s UPDATE did not wait for the check lock';
$out = $holder->query("SELECT coalesce(canary_check('dl', '$at'), 'no trip')");
$err = $holder->{stderr};
$holder->{stderr} = '';
is($out, 'no trip', 'deadlock: the check holding the lock does not trip while the waiting UPDATE holds the row');
like($err, qr/WARNING:  could not trip the kill switch of rollout "dl" now\nDETAIL:  Another transaction holds the rollout's row in canary_config\./,
	'deadlock: and says so');
$holder->query_safe('COMMIT');
$holder->quit;
$op->query_safe('COMMIT');
$op->quit;
like(sq("SELECT coalesce(canary_check('dl', '" . at(30) . "'), 'no trip')") . ' '
	  . sq("SELECT kill_switch_armed FROM canary_config WHERE name = 'dl'"),
	qr/^new-model error_rate=0\.300 > 0\.02 f$/, 'deadlock: the next check trips (on the new evidence period)');

# --- the trip and an application's session pin --------------------------------
# canary_cohort (and canary_call) pins a new session: its row in
# canary_sessions references the rollout's row in canary_config, and the
# foreign key's check holds FOR KEY SHARE on it until the application's
# transaction ends (for canary_call, the whole request).  The trip's probe
# and canary_trip_internal take FOR NO KEY UPDATE, which does not conflict
# with it: steady traffic never defers a trip.  Both trips: the rules'
# ('pin') and the sample ratio's ('pinsr', srm_trips on, 50 % instead of 25 %).
# two rollouts at ramp_25 that would trip: $rules on the error rate (30 %
# against 1 %), $srm (srm_trips on) on the sample ratio (50 % of the users
# in the canary cohort instead of 25 %)
sub trip_pair
{
	my ($rules, $srm) = @_;
	sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('$rules', 'ramp_25', 'm-old', 'm-new'),
    ('$srm', 'ramp_25', 'm-old', 'm-new');
UPDATE canary_config SET srm_trips = true WHERE name = '$srm';
SELECT put('$rules', '$at', 'control', 6000, 60, 60, 0, 1000, 1500);
SELECT put('$rules', '$at', 'canary', 2000, 600, 20, 0, 1000, 500);
SELECT put('$srm', '$at', 'control', 3000, 0, 0, 0, 1000, 1000);
SELECT put('$srm', '$at', 'canary', 3000, 0, 0, 0, 1000, 1000);
});
	return;
}
trip_pair('pin', 'pinsr');
my $appx = $node->background_psql('postgres');
$appx->query_safe("BEGIN; SELECT canary_cohort('u1', 'pin', 's1'), canary_cohort('u1', 'pinsr', 's1')");
is(sq(q{SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
         WHERE c.relname = 'canary_config' AND l.pid <> pg_backend_pid() AND l.mode = 'RowShareLock'}), '1',
	'pin: the application\'s open transaction pinned new sessions (its foreign key checks lock the rows)');
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT coalesce(canary_check('pin', '$at'), 'no trip')");
like("$ret|$out", qr/^0\|new-model error_rate=0\.300 > 0\.02/, 'pin: the check trips meanwhile');
unlike($err, qr/could not trip/, 'pin: without a deferral');
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT coalesce(canary_check('pinsr', '$at'), 'no trip')");
like("$ret|$out", qr/^0\|sample ratio mismatch: 1000 of 2000 users/, 'pin: the sample-ratio trip too');
is(sq(q{SELECT string_agg(name || ' ' || kill_switch_armed, ', ' ORDER BY name) FROM canary_config WHERE name LIKE 'pin%'}),
	'pin false, pinsr false', 'pin: both switches are off');
$appx->query_safe('COMMIT');
$appx->quit;

# --- a deferred trip says so -----------------------------------------------------
# an operator holds the rollout's row (SELECT ... FOR UPDATE, left open):
# the check's decision says the trip was deferred, an alert of kind
# check_blocked (reason trip_deferred) at once, once per spell; after the
# commit the next check trips.  The rules' trip ('df') and the sample
# ratio's ('dfsr', srm_trips on)
trip_pair('df', 'dfsr');
sub df_state
{
	my ($name) = @_;
	return sq(qq{
SELECT coalesce(w.decision->>'trip', '-') || ' ' || coalesce(w.decision->>'trip_kind', '-') || ' '
       || (SELECT kill_switch_armed::text FROM canary_config WHERE name = '$name') || ' '
       || (SELECT coalesce(string_agg(a.kind || ':' || coalesce(a.payload->>'reason', ''), ',' ORDER BY a.id), '')
             FROM canary_alerts a WHERE a.canary = '$name')
  FROM canary_window_summaries w WHERE w.canary = '$name' AND w.cohort = 'canary' ORDER BY w.id DESC LIMIT 1});
}
$op = $node->background_psql('postgres');
$op->query_safe(q{BEGIN; SELECT 1 FROM canary_config WHERE name IN ('df', 'dfsr') FOR UPDATE});
for my $s (0, 30)
{
	($ret, $out, $err) = $node->psql('postgres',
		"SET lock_timeout = '2s'; SELECT coalesce(canary_check('df', '" . at($s) . "'), 'no trip')"
		  . " || ' ' || coalesce(canary_check('dfsr', '" . at($s) . "'), 'no trip')");
	is("$ret|$out", '0|no trip no trip', "deferred: the check at ${s} s does not trip while the operator holds the rows");
	like($err, qr/WARNING:  could not trip the kill switch of rollout "df" now.*WARNING:  could not trip the kill switch of rollout "dfsr" now/s,
		"deferred: the check at ${s} s says so");
	is(df_state('df') . ' | ' . df_state('dfsr'),
		'deferred kill_switch true check_blocked:trip_deferred | deferred sample_ratio true check_blocked:trip_deferred',
		"deferred: after the check at ${s} s, the decisions say deferred, one alert each");
}
is(sq(q{SELECT string_agg(payload->>'trip_kind' || ' ' || coalesce(payload->>'trip_reason', 'NULL') || ' | ' || (payload->>'alert'), ', ' ORDER BY id)
          FROM canary_alerts WHERE canary IN ('df', 'dfsr')}),
	'kill_switch new-model error_rate=0.300 > 0.02 | canary kill-switch trip deferred, '
	  . 'sample_ratio sample ratio mismatch: 1000 of 2000 users in the canary cohort (50.00 %), percent_new 25.00 % | canary kill-switch trip deferred',
	'deferred: the alerts say which trip waits and why (the sample ratio\'s reason too)');
# the spell is carried across a decision without a "trip" member: a check
# without the check lock (another transaction holds it) skips the
# sample-ratio check, so its decision of 'dfsr' has none; the next deferred
# check raises no second alert
$holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('df'), canary_try_check_lock('dfsr')");
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT coalesce(canary_check('df', '" . at(40) . "'), 'no trip')"
	  . " || ' ' || coalesce(canary_check('dfsr', '" . at(40) . "'), 'no trip')");
is("$ret|$out", '0|no trip no trip', 'deferred: a check without the check lock meanwhile');
is(sq(q{SELECT string_agg(coalesce(decision->>'trip', '-') || ' ' || coalesce(decision->>'trip_deferred_alerted', '-'), ', ' ORDER BY canary)
          FROM (SELECT DISTINCT ON (canary) canary, decision FROM canary_window_summaries
                 WHERE canary IN ('df', 'dfsr') AND cohort = 'canary' ORDER BY canary, id DESC) d}),
	'deferred true, - true', 'deferred: its decisions carry the spell (dfsr\'s has no trip member)');
$holder->query_safe('COMMIT');
$holder->quit;
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT coalesce(canary_check('df', '" . at(50) . "'), 'no trip')"
	  . " || ' ' || coalesce(canary_check('dfsr', '" . at(50) . "'), 'no trip')");
is("$ret|$out", '0|no trip no trip', 'deferred: the next check with the lock, still deferred');
is(df_state('df') . ' | ' . df_state('dfsr'),
	'deferred kill_switch true check_blocked:trip_deferred | deferred sample_ratio true check_blocked:trip_deferred',
	'deferred: still one alert each (the spell went on through the check without the lock)');
$op->query_safe('COMMIT');
like(sq("SELECT canary_check('df', '" . at(60) . "') || ' | ' || canary_check('dfsr', '" . at(60) . "')"),
	qr/^new-model error_rate=0\.300 > 0\.02.* \| sample ratio mismatch: 1000 of 2000 users/,
	'deferred: after the commit, the next checks trip');
is(df_state('df') . ' | ' . df_state('dfsr'),
	'- - false check_blocked:trip_deferred,kill_switch:new-model error_rate=0.300 > 0.02 | - - false check_blocked:trip_deferred,sample_ratio:'
	  . sq(q{SELECT trip_reason FROM canary_config WHERE name = 'dfsr'}),
	'deferred: their decisions have no trip member, and one trip alert each');

# --- a trip that finds the switch tripped meanwhile -----------------------------
# the check of 'at1' is held up (a test trigger on canary_evidence waits
# for an advisory lock) after it read the rollout as armed; meanwhile an
# operator trips the switch and commits; the check's Trip then finds it
# tripped: no second alert, no reason, and its decision says so
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('at1', 'ramp_25', 'm-old', 'm-new');
SELECT put('at1', '$at', 'control', 6000, 60, 60, 0, 1000, 1500);
SELECT put('at1', '$at', 'canary', 2000, 600, 20, 0, 1000, 500);
CREATE FUNCTION test_pause() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF NEW.canary = 'at1' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
    RETURN NEW;
END \$\$;
CREATE TRIGGER test_pause BEFORE INSERT ON canary_evidence FOR EACH ROW EXECUTE FUNCTION test_pause();
});
my $gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(4242)');
my $checker = $node->background_psql('postgres');
$checker->query_until(qr/started/, "\\echo started\nSELECT coalesce(canary_check('at1', '$at'), 'no trip') AS at1_result;\n");
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted})
  or die 'the check did not wait at the test trigger';
sq(q{SELECT canary_trip('at1', 'manual, meanwhile')});
$gate->query_safe('SELECT pg_advisory_unlock(4242)');
$gate->quit;
$out = $checker->query_safe('SELECT 1');
like($out, qr/no trip/, 'tripped meanwhile: the check returns no reason');
$checker->quit;
is(df_state('at1'), 'already tripped kill_switch false manual_trip:manual, meanwhile',
	'tripped meanwhile: its decision says so, and the manual trip\'s is the only alert');

# --- a trip that finds the rollout deleted meanwhile ------------------------------
# the same pause for 'gone'; meanwhile an operator deletes the rollout and
# commits.  (A deletion waits for the check lock of a check that holds it
# (canary_config_d_evidence_gone): it commits in the middle of a check
# without the lock, or on a 1.0 catalog; that wait is switched off here to
# pause a check at a known point.)  The check's Trip finds no row: no
# reason, no alert, and its decision says "rollout deleted", not "already
# tripped"
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('gone', 'ramp_25', 'm-old', 'm-new');
SELECT put('gone', '$at', 'control', 6000, 60, 60, 0, 1000, 1500);
SELECT put('gone', '$at', 'canary', 2000, 600, 20, 0, 1000, 500);
CREATE OR REPLACE FUNCTION test_pause() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF NEW.canary = 'gone' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
    RETURN NEW;
END \$\$;
ALTER TABLE canary_config DISABLE TRIGGER canary_config_d_evidence_gone;
});
$gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(4242)');
$checker = $node->background_psql('postgres');
$checker->query_until(qr/started/, "\\echo started\nSELECT coalesce(canary_check('gone', '$at'), 'no trip') AS gone_result;\n");
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted})
  or die 'the check did not wait at the test trigger';
sq(q{DELETE FROM canary_config WHERE name = 'gone'});
$gate->query_safe('SELECT pg_advisory_unlock(4242)');
$gate->quit;
$out = $checker->query_safe('SELECT 1');
like($out, qr/no trip/, 'deleted meanwhile: the check returns no reason');
$checker->quit;
sq('ALTER TABLE canary_config ENABLE TRIGGER canary_config_d_evidence_gone');
is(sq(q{SELECT coalesce(w.decision->>'trip', '-') || ' ' || coalesce(w.decision->>'trip_kind', '-') || ' '
               || (SELECT count(*) FROM canary_alerts a WHERE a.canary = 'gone')
          FROM canary_window_summaries w WHERE w.canary = 'gone' AND w.cohort = 'canary' ORDER BY w.id DESC LIMIT 1}),
	'rollout deleted kill_switch 0', 'deleted meanwhile: its decision says so (not "already tripped"), no alert');

# the sample ratio's trip that finds the switch tripped meanwhile: 'atsr'
# (srm_trips on, 50 % of the users in the canary cohort instead of 25 %),
# paused the same way while an operator trips it; canary_srm_check reports
# the outcome 'already tripped' and the decision records it
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('atsr', 'ramp_25', 'm-old', 'm-new');
UPDATE canary_config SET srm_trips = true WHERE name = 'atsr';
SELECT put('atsr', '$at', 'control', 3000, 0, 0, 0, 1000, 1000);
SELECT put('atsr', '$at', 'canary', 3000, 0, 0, 0, 1000, 1000);
CREATE OR REPLACE FUNCTION test_pause() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF NEW.canary = 'atsr' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
    RETURN NEW;
END \$\$;
});
$gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(4242)');
$checker = $node->background_psql('postgres');
$checker->query_until(qr/started/, "\\echo started\nSELECT coalesce(canary_check('atsr', '$at'), 'no trip') AS atsr_result;\n");
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted})
  or die 'the check did not wait at the test trigger';
sq(q{SELECT canary_trip('atsr', 'manual, meanwhile')});
$gate->query_safe('SELECT pg_advisory_unlock(4242)');
$gate->quit;
$out = $checker->query_safe('SELECT 1');
like($out, qr/no trip/, 'sample ratio, tripped meanwhile: the check returns no reason');
$checker->quit;
is(df_state('atsr'), 'already tripped sample_ratio false manual_trip:manual, meanwhile',
	'sample ratio, tripped meanwhile: its decision says so, and the manual trip\'s is the only alert');
sq('DROP TRIGGER test_pause ON canary_evidence; DROP FUNCTION test_pause()');

# --- a long blind spell: one alert per episode ----------------------------------
# the checks of 'bl' go without the lock from at(0) (the last that collected);
# at 5 minutes (llm_canary.check_interval 0 here: the 5-minute floor) one
# alert of kind check_blocked, not another while the holder stays; after a
# check that collects, a new episode alerts again
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('bl', 'ramp_25', 'm-old', 'm-new');
SELECT put('bl', '$at', 'control', 3000, 0, 30, 0, 1000, 750);
SELECT put('bl', '$at', 'canary', 1000, 0, 10, 0, 1000, 250);
});
sub bl_check { my ($s) = @_; sq("SELECT canary_check('bl', '" . at($s) . "')"); return; }
sub bl_alerts
{
	return sq(q{SELECT count(*) || ' ' || coalesce(string_agg(payload->>'holder' || ' since '
	                 || extract(epoch FROM (payload->>'blind_since')::timestamptz - timestamptz '} . $at . q{'), ', ' ORDER BY id), '')
	              FROM canary_alerts WHERE canary = 'bl' AND kind = 'check_blocked'});
}
bl_check(0);
$holder = $node->background_psql('postgres');
$holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('bl')");
($ret, $out, $err) = $node->psql('postgres', "SELECT canary_check('bl', '" . at(60) . "')");
like($err, blocked_warning('bl', $holder_pid, 'NOTICE'), 'blind: a short spell (another check that will end) is a NOTICE');
unlike($err, qr/WARNING/, 'blind: not a WARNING');
bl_check(270);
is(bl_alerts(), '0 ', 'blind: no alert before 5 minutes without a check that collected');
is(sq(q{SELECT (decision->>'blind_since' = to_char(timestamptz '} . $at . q{' AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                   || ' ' || (decision->>'blind_alerted')
          FROM canary_window_summaries WHERE canary = 'bl' AND cohort = 'canary' ORDER BY id DESC LIMIT 1}),
	'true false', 'blind: the decision carries blind_since (the last check that collected) and blind_alerted');
bl_check(300);
is(bl_alerts(), "1 process $holder_pid since 0.000000", 'blind: at 5 minutes, one alert naming the holder and the last check that collected');
($ret, $out, $err) = $node->psql('postgres', "SELECT canary_check('bl', '" . at(330) . "')");
like($err, blocked_warning('bl', $holder_pid, 'WARNING'), 'blind: past 5 minutes, a WARNING');
bl_check(600);
is(bl_alerts(), "1 process $holder_pid since 0.000000", 'blind: not another while the same holder stays');
$holder->query_safe('COMMIT');
bl_check(630);
is(check_lock('bl'), 'true', 'blind: the holder gone, the next check collects');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('bl')");
bl_check(660);
is(bl_alerts(), "1 process $holder_pid since 0.000000", 'blind: a new episode, not yet 5 minutes');
bl_check(930);
is(bl_alerts(), "2 process $holder_pid since 0.000000, process $holder_pid since 630.000000",
	'blind: a new episode alerts again at 5 minutes');
$holder->query_safe('COMMIT');
$holder->quit;

# --- the gate reads check_lock, in every mode ---------------------------------
# confirm_windows at full (no sample-ratio check: its decision has neither
# evidence_collected nor sample_ratio)
sq(qq{
INSERT INTO canary_config (name, stage, old_model, new_model, decision_mode) VALUES ('cwf', 'full', 'm-old', 'm-new', 'confirm_windows');
INSERT INTO canary_plan_stages (canary, stage, min_dwell) VALUES ('cwf', 'full', '0');
SELECT put('cwf', '$at', 'canary', 2000, 0, 20, 40, 1000);
});
is(sq("SELECT coalesce(canary_check('cwf', '$at'), 'no trip') || ' ' || (SELECT ok FROM canary_plan('cwf', '$at') WHERE gate = 'no breach')"),
	'no trip true', 'confirm_windows: a check that collects opens the no-breach gate');
$holder = $node->background_psql('postgres');
$holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe("BEGIN; SELECT canary_try_check_lock('cwf')");
($ret, $out, $err) = $node->psql('postgres', "SELECT coalesce(canary_check('cwf', '" . at(30) . "'), 'no trip')");
is("$ret|$out", '0|no trip', 'confirm_windows: a check while another holds the lock');
like($err, blocked_warning('cwf', $holder_pid), 'confirm_windows: warns');
is(check_lock('cwf') . ' ' . last_decision('cwf'), 'false -|-', 'confirm_windows: its decision: check_lock false (and nothing else says so)');
is(sq("SELECT ok || ' ' || detail FROM canary_plan('cwf', '" . at(30) . "') WHERE gate = 'no breach'"),
	'false the last check judged on older evidence: another transaction held its check lock (another check, or an operator changing the evidence period)',
	'confirm_windows: the gate is closed after it');
$holder->query_safe('COMMIT');
$holder->quit;

# two decisions at the same 'at': the later one (by id) counts, whatever
# order the rows are read in (here the later id is written first: it
# collected, the other did not)
my $id = sq("SELECT nextval('canary_window_summaries_id_seq')");
for my $row ([$id + 2, 'true'], [$id + 1, 'false'])
{
	sq(qq{
INSERT INTO canary_window_summaries (id, canary, at, window_seconds, stage, cohort, samples, errors, refusals, thumbs_down,
                                     decision_mode, decision)
VALUES ($row->[0], 'cwf', '} . at(120) . qq{', 300, 'full', 'canary', 0, 0, 0, 0, 'confirm_windows',
        '{"mode": "confirm_windows", "tripped": null, "check_lock": $row->[1], "evidence_collected": $row->[1], "rules": {}}')});
}
sq("SELECT setval('canary_window_summaries_id_seq', $id + 2)");
is(sq("SELECT ok || ' ' || detail FROM canary_plan('cwf', '" . at(120) . "') WHERE gate = 'no breach'"),
	'true no rule breached in the last check', 'ties on at: the gate reads the decision with the higher id');

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

# --- transaction-level: savepoints, and the waiting variant ---------------------
$holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SAVEPOINT s; SELECT canary_try_check_lock('sp'); ROLLBACK TO s");
is(sq(q{SELECT canary_try_check_lock('sp')}), 't', 'a lock taken in a savepoint is released by ROLLBACK TO');
$holder->query_safe("SELECT canary_try_check_lock('sp'); SAVEPOINT s2; SELECT canary_try_check_lock('sp'); ROLLBACK TO s2");
is(sq(q{SELECT canary_try_check_lock('sp')}), 'f', 'the parent\'s hold survives a savepoint that took it again and rolled back');
($ret, $out, $err) = $node->psql('postgres', "SET lock_timeout = '100ms'; SELECT canary_try_check_lock('sp', true)");
like($err, qr/ERROR:  canceling statement due to lock timeout/, 'with wait, it waits for the lock (here until lock_timeout)');
$holder->query_safe('COMMIT');
$holder->quit;
is(sq(q{SELECT canary_try_check_lock('sp', true)}), 't', 'and takes it once free');

# internal: not for PUBLIC
sq('CREATE ROLE nobody_special LOGIN');
($ret, $out, $err) = $node->psql('postgres', "SET ROLE nobody_special; SELECT canary_try_check_lock('app')");
like($err, qr/permission denied for function canary_try_check_lock/, 'canary_try_check_lock is not for PUBLIC');

$node->stop;
done_testing();
