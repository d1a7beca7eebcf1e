# The plan (sql/parts/55_plan.sql): rollouts with auto_advance driven
# through their stages by simulated time (canary_check's 'at', which runs
# canary_advance), with requests written straight into canary_requests:
#  - shadow -> ramp_1 -> ramp_5 -> ramp_25 -> full -> decommission alert,
#    each advance a canary_stage_history row with the gates as its reason
#    and an alert of kind advance; nothing advances before the dwell time
#    or the evidence is there; canary_plan says what is missing and when;
#  - a trip stops the plan; an operator's UPDATE wins; a gate that never
#    opens (no shadow traffic) keeps the rollout where it is.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('plan', conf => qq{
llm_canary.check_interval = 0
});
$node->safe_psql('postgres', q{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
-- n healthy requests of one cohort from 'users' users in the 90 s before
-- p_at (errors 1 % unless k_err, refusals 1 %, thumbs-down 2 %, latency
-- 1000 ms)
CREATE FUNCTION put(p_canary text, p_at timestamptz, p_cohort text, n integer, users integer,
                    k_err integer DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO canary_requests (request_id, ts, canary, user_id, cohort, model,
                                 outcome, http_status, latency_ms, refusal, fallback)
    SELECT md5(p_canary || p_cohort || p_at || ':' || g)::uuid,
           p_at - interval '100 s' + g * (interval '90 s' / n), p_canary,
           p_cohort || (g % users), p_cohort,
           CASE p_cohort WHEN 'canary' THEN 'm-new' ELSE 'm-old' END,
           CASE WHEN g < coalesce(k_err, n / 100) THEN 'error'
                WHEN g % 100 = 50 THEN 'refusal' ELSE 'ok' END,
           200, 1000, g % 100 = 50, false
      FROM generate_series(0, n - 1) g;
    INSERT INTO canary_feedback (request_id, ts, thumbs_down, canary, cohort)
    SELECT md5(p_canary || p_cohort || p_at || ':' || g)::uuid, p_at - interval '5 s', true,
           p_canary, p_cohort
      FROM generate_series(0, n - 1) g WHERE g % 50 = 7;
$$;
-- the identical shadow answers canary_shadow_report needs to be ready
CREATE FUNCTION shadow(p_canary text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO canary_shadow (request_id, canary, user_id, prompt, old_model, new_model,
                               old_text, new_text, old_latency_ms, new_latency_ms)
    SELECT gen_random_uuid(), p_canary, 'u' || g, 'hello', 'm-old', 'm-new',
           'the same answer', 'the same answer', 100, 100
      FROM generate_series(1, 20) g;
$$;
});

# simulated time: T0 an hour ahead, then days after it
my $t0 = $node->safe_psql('postgres', "SELECT date_trunc('minute', now()) + interval '1 hour'");
sub at { my ($h) = @_; return $node->safe_psql('postgres', "SELECT timestamptz '$t0' + interval '$h hours'"); }
sub sq { my ($sql) = @_; return $node->safe_psql('postgres', $sql); }
sub check { my ($name, $h) = @_; my $a = at($h); return sq("SELECT coalesce(canary_check('$name', '$a'), 'no trip')"); }
sub stage { my ($name) = @_; return sq("SELECT stage || ' ' || auto_advance FROM canary_config WHERE name = '$name'"); }
sub gate
{
	my ($name, $h, $gate) = @_;
	my $a = at($h);
	return sq("SELECT ok || ' ' || coalesce(samples_needed::text, '-') FROM canary_plan('$name', '$a') WHERE gate = '$gate'");
}

# --- through every stage -------------------------------------------------------
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
  VALUES ('plan', 'shadow', 'm-old', 'm-new', now(), true);
SELECT shadow('plan');
});
is(check('plan', 24), 'no trip', 'shadow: a check one day in');
is(stage('plan'), 'shadow true', 'shadow: not before its 5 days');
is(gate('plan', 24, 'shadow report ready'), 'false -', 'the shadow report is not read before the dwell time is over');
is(gate('plan', 5 * 24, 'shadow report ready'), 'true -', 'after it, the shadow report is ready');
is(gate('plan', 24, 'dwell'), 'false -', 'the dwell time is not');
is(sq("SELECT p.due_at - c.evidence_since FROM canary_plan('plan', '" . at(24) . "') p, canary_config c WHERE c.name = 'plan' AND p.gate = 'next stage'"),
	'5 days', 'canary_plan: the next stage is due 5 days after the stage began');
check('plan', 5 * 24);
is(stage('plan'), 'ramp_1 true', 'shadow -> ramp_1 after 5 days with the shadow gate open');
like(sq(q{SELECT action || ' ' || old_stage || ' ' || new_stage || ' ' || reason FROM canary_stage_history
          WHERE canary = 'plan' ORDER BY id DESC LIMIT 1}),
	qr/^update shadow ramp_1 auto_advance: dwell: .*; armed: kill switch armed; no csat pin: not pinned; shadow report ready: 20 paired answers$/,
	'the history row of the advance has the gates as its reason');
is(sq(q{SELECT kind || ' ' || (payload->>'alert') || ' ' || (payload->>'new_stage') || ' ' || jsonb_array_length(payload->'gates')
         FROM canary_alerts WHERE canary = 'plan' ORDER BY id DESC LIMIT 1}),
	'advance canary advanced ramp_1 4', 'an alert of kind advance');

# ramp_1: the evidence gates need canary requests; a day of dwell
my $since = 5 * 24;
# power 0.8 against errors 0.03 at the error rule's stage threshold, log(1 /
# (3/4 x 1/4 x 0.1)) = 3.977 at the default significance 0.1
is(gate('plan', $since + 1, 'evidence error_rate'), 'false 4159', 'ramp_1: no evidence yet, all of it needed');
# each rule at its own threshold (src/sequential.c): refusal 1/2 of
# significance, errors 1/4, p95 and thumbs-down 1/8 (thumbs-down less its
# control sequence), at 0.1 and 0.05
is(sq(q{
SELECT string_agg(canary_sequential_samples(0.02, 0.03, s, r)::text, ' ' ORDER BY s DESC, o)
  FROM unnest(ARRAY['refusal', 'error_rate', 'p95', 'thumbs_down']) WITH ORDINALITY u(r, o),
       unnest(ARRAY[0.1, 0.05]) s}),
	'3748 4159 4552 4601 4159 4552 4941 4990',
	'canary_sequential_samples: each rule at its share of significance, 0.1 and 0.05');
my (undef, undef, $unknown) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT canary_sequential_samples(0.02, 0.03, 0.1, 'latency')");
like($unknown, qr/ERROR:  22023: unknown rule "latency"/, 'canary_sequential_samples: an unknown rule is refused');
sq("SELECT put('plan', '" . at($since + 1) . "', 'control', 20000, 9900), put('plan', '" . at($since + 1) . "', 'canary', 2000, 100)");
check('plan', $since + 1);
is(gate('plan', $since + 1, 'evidence error_rate'),
	'false ' . (4159 - 2000),
	'ramp_1: 2,000 canary requests are not enough evidence for the error rule');
is(sq("SELECT due_at IS NOT NULL AND due_at < timestamptz '" . at($since + 24) . "' FROM canary_plan('plan', '" . at($since + 1) . "') WHERE gate = 'evidence error_rate'"),
	't', 'canary_plan: at the last hour\'s traffic the error evidence is due within the day');
check('plan', $since + 25);
is(stage('plan'), 'ramp_1 true', 'ramp_1: the dwell time passed, the evidence is missing: no advance');
sq("SELECT put('plan', '" . at($since + 26) . "', 'control', 40000, 9900), put('plan', '" . at($since + 26) . "', 'canary', 8000, 100)");
check('plan', $since + 26);
is(stage('plan'), 'ramp_5 true', 'ramp_1 -> ramp_5 once the evidence is there');
is(sq(q{SELECT count(*) FROM canary_evidence WHERE canary = 'plan'}), '0',
	'the advance starts the evidence afresh');

for my $s (['ramp_5', 'ramp_25', 48, 9500, 500], ['ramp_25', 'full', 48, 7500, 2500])
{
	my ($from, $to, $dwell, $uk, $uc) = @$s;
	$since = $since + 26;
	sq("SELECT put('plan', '" . at($since + 1) . "', 'control', 40000, $uk), put('plan', '" . at($since + 1) . "', 'canary', 10000, $uc)");
	check('plan', $since + 1);
	is(stage('plan'), "$from true", "$from: the evidence is there, the dwell time is not");
	check('plan', $since + $dwell - 1);
	is(stage('plan'), "$from true", "$from: an hour before the dwell time ends");
	check('plan', $since + $dwell);
	is(stage('plan'), "$to true", "$from -> $to after $dwell hours");
	$since = $since + $dwell - 26;
}
$since = $since + 26;
# full: after 7 days, the old model can go (once)
check('plan', $since + 7 * 24 - 1);
is(sq(q{SELECT count(*) FROM canary_alerts WHERE canary = 'plan' AND kind = 'decommission'}), '0',
	'full: no decommission alert before 7 days');
check('plan', $since + 7 * 24);
check('plan', $since + 7 * 24 + 1);
is(sq(q{SELECT count(*) || ' ' || min(payload->>'alert') FROM canary_alerts WHERE canary = 'plan' AND kind = 'decommission'}),
	'1 canary old model can be decommissioned', 'full: after 7 days one decommission alert');
is(sq(q{SELECT string_agg(old_stage || '>' || new_stage, ' ' ORDER BY id) FROM canary_stage_history
        WHERE canary = 'plan' AND reason LIKE 'auto_advance:%'}),
	'shadow>ramp_1 ramp_1>ramp_5 ramp_5>ramp_25 ramp_25>full', 'four automatic advances, each in the history');
is(sq(q{SELECT count(*) FROM canary_alerts WHERE canary = 'plan' AND kind = 'advance'}), '4',
	'four advance alerts');

# --- a trip stops the plan ---------------------------------------------------------
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
  VALUES ('plan_trip', 'ramp_5', 'm-old', 'm-new', now(), true);
});
sq("SELECT put('plan_trip', '" . at(1) . "', 'control', 20000, 9500), put('plan_trip', '" . at(1) . "', 'canary', 1000, 500, 100)");
like(check('plan_trip', 1), qr/^new-model error_rate=0\.100/, 'a broken canary trips');
is(stage('plan_trip'), 'ramp_5 false', 'the trip stopped the plan');
is(sq(q{SELECT payload->>'alert' FROM canary_alerts WHERE canary = 'plan_trip' AND kind = 'advance'}),
	'canary auto-advance stopped', 'with an advance alert that says so');
sq("SELECT canary_rearm('plan_trip')");
check('plan_trip', 24 * 10);
is(stage('plan_trip'), 'ramp_5 false', 're-armed, the plan stays stopped until an operator turns it on');

# --- an operator's UPDATE wins ------------------------------------------------------
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
  VALUES ('plan_op', 'ramp_25', 'm-old', 'm-new', now(), true);
UPDATE canary_config SET stage = 'ramp_5' WHERE name = 'plan_op';
});
is(sq("SELECT p.due_at - c.evidence_since || ' ' || (c.evidence_since > now() - interval '1 minute') FROM canary_plan('plan_op', '" . at(1) . "') p, canary_config c WHERE c.name = 'plan_op' AND p.gate = 'dwell'"),
	'2 days true', 'the operator moved the rollout back: the plan counts the dwell time from the operator\'s change');
sq("UPDATE canary_config SET auto_advance = false WHERE name = 'plan_op'");
sq("SELECT put('plan_op', '" . at(1) . "', 'control', 40000, 9500), put('plan_op', '" . at(1) . "', 'canary', 10000, 500)");
check('plan_op', 1);
check('plan_op', 24 * 3);
is(stage('plan_op'), 'ramp_5 false', 'auto_advance turned off by the operator: no advance');
is(sq(q{SELECT count(*) FROM canary_alerts WHERE canary = 'plan_op'}), '0', 'and no alert');

# --- a gate that never opens ----------------------------------------------------------
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
  VALUES ('plan_stuck', 'shadow', 'm-old', 'm-new', now(), true);
});
check('plan_stuck', 24 * 30);
is(stage('plan_stuck'), 'shadow true', 'no shadow traffic: still in shadow after 30 days');
is(sq("SELECT string_agg(gate || '=' || ok, ' ' ORDER BY gate) FROM canary_plan('plan_stuck', '" . at(24 * 30) . "')"),
	'armed=true dwell=true next stage=false no csat pin=true shadow report ready=false',
	'canary_plan: the shadow gate is the one closed');
is(sq("SELECT coalesce(due_at::text, 'never') || ' ' || detail FROM canary_plan('plan_stuck', '" . at(24 * 30) . "') WHERE gate = 'next stage'"),
	'never a gate does not open by itself at the current traffic', 'and the next stage is not due');

# --- a plan that fails never takes the kill switch with it ------------------------------
sq(q{
CREATE FUNCTION no_advance_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'advance' THEN RAISE EXCEPTION 'no advance alerts today'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER no_advance_alerts BEFORE INSERT ON canary_alerts
    FOR EACH ROW EXECUTE FUNCTION no_advance_alerts();
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
  VALUES ('plan_boom', 'ramp_5', 'm-old', 'm-new', now(), true);
});
sq("SELECT put('plan_boom', '" . at(1) . "', 'control', 20000, 9500), put('plan_boom', '" . at(1) . "', 'canary', 1000, 500, 100)");
my ($ret, $out, $err) = $node->psql('postgres', "SELECT canary_check('plan_boom', '" . at(1) . "')");
like($out, qr/^new-model error_rate=0\.100/, 'the kill switch trips although the plan fails in the same check');
like($err, qr/WARNING:  auto-advance of rollout "plan_boom" failed: no advance alerts today/, 'the plan\'s error is a warning');
is(sq(q{SELECT stage || ' ' || auto_advance || ' ' || kill_switch_armed || ' '
         || (SELECT string_agg(kind, ',') FROM canary_alerts WHERE canary = 'plan_boom')
          FROM canary_config WHERE name = 'plan_boom'}),
	'ramp_5 true false kill_switch', 'the trip and its alert stay; the failed plan step is rolled back alone');
sq('DROP TRIGGER no_advance_alerts ON canary_alerts');

# --- the plan never waits for a row an operator holds ------------------------------------
# gates open (dwell over, evidence there) while an operator's transaction holds
# the row: the check neither waits nor warns, and the plan advances at the next
# check after the operator is done (the plan locks a row only to act on it,
# with SKIP LOCKED)
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance)
  VALUES ('plan_held', 'ramp_5', 'm-old', 'm-new', now(), true);
});
sq("SELECT put('plan_held', '" . at(1) . "', 'control', 40000, 9500), put('plan_held', '" . at(1) . "', 'canary', 10000, 500)");
is(check('plan_held', 1), 'no trip', 'held: a healthy canary');
my $holder = $node->background_psql('postgres');
$holder->query_safe("BEGIN; SELECT 1 FROM canary_config WHERE name = 'plan_held' FOR UPDATE");
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT coalesce(canary_check('plan_held', '" . at(24 * 3) . "'), 'no trip')");
is($out . '|' . $err, 'no trip|', 'held by an operator: the check does not wait for the row and does not warn');
is(stage('plan_held'), 'ramp_5 true', 'held by an operator: no advance yet');
$holder->query_safe('COMMIT');
$holder->quit;
check('plan_held', 24 * 3 + 0.01);
is(stage('plan_held'), 'ramp_25 true', 'released: the next check advances');

# --- canary_plan is a report: the application (monitoring) role reads it ------------------
sq(q{CREATE ROLE plan_reader LOGIN; GRANT llm_canary_app TO plan_reader;});
is($node->safe_psql('postgres', "SET ROLE plan_reader; SELECT stage || ' ' || count(*) FROM canary_plan('plan_held', '"
	. at(24 * 3) . "') GROUP BY stage"),
	'ramp_25 10', 'llm_canary_app reads canary_plan');
($ret, $out, $err) = $node->psql('postgres', "SET ROLE plan_reader; SELECT canary_advance('plan_held')");
like($err, qr/permission denied for function canary_advance/, 'but cannot run canary_advance');

($ret, $out, $err) = $node->psql('postgres', "SELECT * FROM canary_plan('nope')");
like($err, qr/rollout "nope" does not exist/, 'canary_plan of an unknown rollout');

# --- two monitors: no row stays locked while other gates are computed, and one
# decommission alert -------------------------------------------------------------
# a_dup (full, dwell 0) is due for its decommission alert; b_dup (shadow, dwell
# 0) makes the plan read the shadow report, which a transaction holding
# canary_shadow keeps waiting: one monitor's canary_advance waits in its gates
# pass after it judged a_dup.  Meanwhile an operator updates a_dup without
# waiting, and a second monitor raises a_dup's alert and commits; the first,
# released, locks a_dup, sees that alert and raises none.
my $at1 = at(1);
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance) VALUES
    ('a_dup', 'full', 'm-old', 'm-new', now(), true), ('b_dup', 'shadow', 'm-old', 'm-new', now(), true);
INSERT INTO canary_plan_stages (canary, stage, min_dwell) VALUES ('a_dup', 'full', '0'), ('b_dup', 'shadow', '0');
});
my $shadow_lock = $node->background_psql('postgres');
$shadow_lock->query_safe('BEGIN; LOCK TABLE canary_shadow IN ACCESS EXCLUSIVE MODE');
my $monitor = $node->background_psql('postgres');
$monitor->query_until(qr/started/, "\\echo started\nSELECT canary_advance(NULL, '$at1');\n");
ok($node->poll_query_until('postgres', q{
SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%canary_advance(NULL%'}),
	'the first monitor waits in the gates of b_dup');
($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '1s'; UPDATE canary_config SET min_samples = 101 WHERE name = 'a_dup'");
is($ret . '|' . $err, '0|', 'an operator updates a_dup meanwhile: the plan holds no lock on it');
is(sq("SELECT canary_advance('a_dup', '$at1')"), 'a_dup: m-old can be decommissioned',
	'a second monitor raises the decommission alert');
$shadow_lock->query_safe('COMMIT');
ok($node->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity
 WHERE pid <> pg_backend_pid() AND state <> 'idle' AND query LIKE '%canary_advance(NULL%'}),
	'the first monitor finishes');
is(sq(q{SELECT count(*) FROM canary_alerts WHERE canary = 'a_dup' AND kind = 'decommission'}), '1',
	'one decommission alert: the first monitor asks under the lock whether it was raised');
$monitor->quit;
$shadow_lock->quit;

# the alert's 'since' is the stage period's start in UTC, compared as a
# timestamp: a monitor with another TimeZone and DateStyle sees it raised
is(sq(q{SELECT (a.payload->>'since') = to_char(c.evidence_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
          FROM canary_alerts a, canary_config c WHERE a.canary = 'a_dup' AND a.kind = 'decommission' AND c.name = 'a_dup'}),
	't', 'the decommission alert\'s since is UTC ISO text');
is(sq("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'; SELECT coalesce(canary_advance('a_dup', '$at1'), 'nothing')"),
	'nothing', 'another TimeZone and DateStyle: the decommission alert is not raised twice');

# each rollout's action alone: one that raises (here an application's
# trigger on the alerts) is a warning with its SQLSTATE, the other's stands
sq(q{
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since, auto_advance) VALUES
    ('e_a', 'full', 'm-old', 'm-new', now(), true), ('e_b', 'full', 'm-old', 'm-new', now(), true);
INSERT INTO canary_plan_stages (canary, stage, min_dwell) VALUES ('e_a', 'full', '0'), ('e_b', 'full', '0');
CREATE FUNCTION refuse_e_a() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'no alerts for e_a' USING ERRCODE = 'check_violation';
END;
$$;
CREATE TRIGGER refuse_e_a BEFORE INSERT ON canary_alerts FOR EACH ROW
    WHEN (NEW.canary = 'e_a') EXECUTE FUNCTION refuse_e_a();
});
($ret, $out, $err) = $node->psql('postgres', "SELECT canary_advance(NULL, '$at1')");
like($out, qr/e_b: m-old can be decommissioned/, 'one rollout\'s action raising: the other\'s is done');
unlike($out, qr/e_a/, 'and the one that raised reports nothing done');
like($err, qr/WARNING:  auto-advance of rollout "e_a" failed: no alerts for e_a\nDETAIL:  SQLSTATE 23514; the next check tries again\./,
	'the failure is a warning with its SQLSTATE');
is(sq(q{SELECT string_agg(canary, ' ' ORDER BY canary) FROM canary_alerts WHERE canary IN ('e_a', 'e_b')}),
	'e_b', 'the other rollout\'s alert is committed');
sq('DROP TRIGGER refuse_e_a ON canary_alerts');

$node->stop;
done_testing();
