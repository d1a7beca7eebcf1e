# The sample-ratio users of the metrics worker's batches, recorded by the
# worker with a cache of the users it knows are recorded (src/srm_writer.c,
# sql/parts/53_srm_writer.sql).  The cache may only skip a user whose row
# for the rollout's current period is known to be committed; every case
# where a wrong cache would skip one is checked with exact counts:
#  - known users are not counted twice, across batches;
#  - a new evidence period (stage change) counts the same users again, in
#    the first batch after the change (the cache assumed the old state);
#  - a rollout whose users were not recorded (disarmed) is recorded again
#    as soon as it is armed;
#  - a state that changes while the worker writes a batch (after it read
#    the state it skipped users on) makes it send the skipped users;
#  - a batch whose transaction fails after the users were recorded leaves
#    no user in the cache: the retry records them;
#  - after a worker restart (empty cache) and after rows written by a
#    backfill (the trigger's path), no user is counted twice;
#  - with the trigger canary_requests_srm disabled, the worker records
#    nothing either.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('srm_writer', conf => qq{
llm_canary.check_interval = 0
llm_canary.flush_interval_ms = 50
});
$node->safe_psql('postgres', q{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model, evidence_since)
  VALUES ('w', 'ramp_25', 'm-old', 'm-new', now() - interval '1 hour');
-- n records through the worker, users p0 .. p<users - 1>, half of them per cohort
CREATE FUNCTION send(p_prefix text, n integer, users integer) RETURNS bigint
LANGUAGE sql AS $$
    SELECT count(canary_record('w', p_prefix || (g % users),
                               CASE WHEN g % users % 2 = 0 THEN 'm-new' ELSE 'm-old' END,
                               CASE WHEN g % users % 2 = 0 THEN 'canary' ELSE 'control' END,
                               'ok', 100, stage => 'ramp_25'))
      FROM generate_series(0, n - 1) g;
$$;
-- per cohort: the users of the current period (rows of canary_srm_users),
-- and the new_users of every rollup of the rollout (all periods)
CREATE FUNCTION counted() RETURNS text LANGUAGE sql AS $$
    SELECT (SELECT count(*) FILTER (WHERE u.cohort = 'canary') || '/' || count(*) FILTER (WHERE u.cohort = 'control')
              FROM canary_srm_users u JOIN canary_config c ON c.name = u.canary
             WHERE u.canary = 'w' AND u.period = c.evidence_since)
           || ' ' ||
           (SELECT coalesce(sum(r.new_users) FILTER (WHERE r.cohort = 'canary'), 0) || '/'
                   || coalesce(sum(r.new_users) FILTER (WHERE r.cohort = 'control'), 0)
              FROM canary_rollups r WHERE r.canary = 'w');
$$;
});
$node->poll_query_until('postgres', "SELECT worker_state = 'running' FROM canary_stats()")
  or die 'the worker did not start';

sub flush_and_count
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "$sql; SELECT canary_flush('20 seconds') > 0; SELECT counted()")
	  =~ s/^.*\n//sr;
}

# --- known users are counted once ------------------------------------------
is(flush_and_count("SELECT send('p', 400, 40)"), '20/20 20/20', '40 users of 400 records, each once');
is(flush_and_count("SELECT send('p', 400, 40)"), '20/20 20/20',
	'the same users again: the worker counts none twice');
is(flush_and_count("SELECT send('p', 100, 50)"), '25/25 25/25', 'ten new users among known ones: counted');

# --- a new evidence period: the same users count again ----------------------
# (the worker's cache knows them all in the old period: the first batch
# after the change skips them, learns the new state and sends them)
$node->safe_psql('postgres',
	"UPDATE canary_config SET stage = 'ramp_5', evidence_since = clock_timestamp() WHERE name = 'w'");
is(flush_and_count("SELECT send('p', 100, 50)"), '25/25 50/50',
	'after a stage change, the first batch counts the known users in the new period');
is(flush_and_count("SELECT send('p', 100, 50)"), '25/25 50/50', 'and only once');

# --- a rollout not recorded, then armed ---------------------------------------
$node->safe_psql('postgres', "UPDATE canary_config SET kill_switch_armed = false WHERE name = 'w'");
is($node->safe_psql('postgres', q{
SELECT send('q', 20, 20); SELECT canary_flush('20 seconds') > 0;
SELECT count(*) FROM canary_srm_users WHERE canary = 'w' AND user_id LIKE 'q%'}) =~ s/^.*\n//sr,
	'0', 'disarmed: no user recorded');
$node->safe_psql('postgres',
	"UPDATE canary_config SET kill_switch_armed = true, evidence_since = clock_timestamp() WHERE name = 'w'");
is(flush_and_count("SELECT send('q', 20, 20)"), '10/10 60/60', 're-armed: the next batch records its users');

# --- the rollout's state changes while the worker writes the batch ------------
# (a trigger of the test moves evidence_since in the batch's own transaction,
# after the worker read the state it skips the known users on, and before
# it records the new user q20: the worker learns the new state from that
# call and sends the skipped users too; q20 is queued first, so whatever
# the batches, every user after it is written after the change)
$node->safe_psql('postgres', q{
CREATE TABLE bump (x int);
INSERT INTO bump VALUES (1);
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM bump) AND EXISTS (SELECT 1 FROM new_rows WHERE user_id = 'q20') THEN
        UPDATE canary_config SET evidence_since = evidence_since + interval '1 microsecond' WHERE name = 'w';
        DELETE FROM bump;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER bump AFTER INSERT ON canary_requests REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bump();
});
is(flush_and_count(q{SELECT canary_record('w', 'q20', 'm-new', 'canary', 'ok', 100, stage => 'ramp_25');
SELECT send('q', 20, 20)}), '11/10 71/70',
	'a state changed during the batch: the users skipped on the old state are counted in the new one');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bump'), '0', 'the state did change during a batch');
$node->safe_psql('postgres', 'DROP TRIGGER bump ON canary_requests');

# --- a batch that fails after recording its users -----------------------------
# (a deferred check makes the batch's commit fail while fail_srm has a row;
# the records stay queued and are retried; a cache filled before the commit
# would skip them on the retry)
$node->safe_psql('postgres', q{
CREATE TABLE fail_srm (x int);
INSERT INTO fail_srm VALUES (1);
CREATE FUNCTION fail_srm() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM fail_srm) THEN
        RAISE EXCEPTION 'fail_srm: batch refused';
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER fail_srm AFTER INSERT ON canary_srm_users
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_srm();
});
my $errors0 = $node->safe_psql('postgres', 'SELECT write_errors FROM canary_stats()');
$node->safe_psql('postgres', "SELECT send('f', 10, 10)");
ok($node->poll_query_until('postgres', "SELECT write_errors > $errors0 FROM canary_stats()"),
	'the batch with new users fails at commit');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM canary_srm_users WHERE user_id LIKE 'f%';
SELECT count(*) FROM canary_requests WHERE user_id LIKE 'f%'}) =~ s/\n/ /r, '0 0', 'and wrote nothing');
$node->safe_psql('postgres', 'DELETE FROM fail_srm');
is(flush_and_count('SELECT 1'), '16/15 76/75', 'once it commits, the retried batch counts its 10 users');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE user_id LIKE 'f%'}), '10',
	'each record written once');
$node->safe_psql('postgres', 'DROP TRIGGER fail_srm ON canary_srm_users');

# --- a worker restart, and a backfill --------------------------------------------
my $old_pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM canary_stats()');
$node->safe_psql('postgres', 'SELECT pg_terminate_backend(worker_pid) FROM canary_stats()');
$node->poll_query_until('postgres',
	"SELECT worker_state = 'running' AND worker_pid <> $old_pid FROM canary_stats()")
  or die 'the worker did not restart';
is(flush_and_count("SELECT send('q', 20, 20); SELECT send('f', 10, 10)"), '16/15 76/75',
	'after a worker restart (empty cache): the known users are not counted again');
# rows a backfill writes (the trigger records their users), then the worker
$node->safe_psql('postgres', q{
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome, latency_ms)
SELECT gen_random_uuid(), clock_timestamp(), 'w', 'ramp_5', 'b' || g, CASE WHEN g % 2 = 0 THEN 'canary' ELSE 'control' END,
       'm-new', 'ok', 10
  FROM generate_series(0, 3) g});
is(flush_and_count("SELECT send('b', 8, 8)"), '20/19 80/79',
	'users of a backfill are counted by the trigger, and the worker does not count them again (4 + 4 new)');

# --- the trigger disabled: the worker records nothing either -----------------------
$node->safe_psql('postgres', 'ALTER TABLE canary_requests DISABLE TRIGGER canary_requests_srm');
is(flush_and_count("SELECT send('d', 10, 10)"), '20/19 80/79',
	'with canary_requests_srm disabled, no user is recorded');
$node->safe_psql('postgres', 'ALTER TABLE canary_requests ENABLE TRIGGER canary_requests_srm');
is(flush_and_count("SELECT send('d', 10, 10)"), '25/24 85/84', 'enabled again: recorded');

$node->stop;
done_testing();
