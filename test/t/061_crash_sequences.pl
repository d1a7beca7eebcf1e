# Crash recovery of the extension's sequences, with wal_level = minimal
# (the TAP default, and a valid setting for a server without replicas or
# archiving).
#
# With wal_level = minimal PostgreSQL writes no WAL for a relation created in
# the current transaction and logs an image of it at commit.  CREATE
# EXTENSION creates canary_stage_history_id_seq and, through the history
# trigger on the 'default' rollout, takes a value from it in the same
# transaction: the image then says "32 values are logged ahead" although
# none were, the next 32 values are handed out without WAL, and a crash
# rewinds the sequence.  The next history row after the restart then fails
# with a duplicate key on canary_stage_history_pkey (it broke
# 032_rollups.pl, and every rollout change after a crash).  The install
# script therefore ends by setting every sequence it advanced (setval resets
# the count of values logged ahead).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;

my $node = canary_node('crash_sequences', conf => qq{
llm_canary.check_interval = 0
restart_after_crash = on
});
is($node->safe_psql('postgres', 'SHOW wal_level'), 'minimal',
	'the node runs with wal_level = minimal (where the install must care)');

# every sequence of the extension, with the column it numbers: its value
# must be at least the column's largest value
my $behind = q{
SELECT count(*) FROM pg_depend e
  JOIN pg_depend o ON o.classid = 'pg_class'::regclass AND o.objid = e.objid AND o.deptype = 'a'
                   AND o.refclassid = 'pg_class'::regclass
  JOIN pg_attribute a ON a.attrelid = o.refobjid AND a.attnum = o.refobjsubid
 WHERE e.classid = 'pg_class'::regclass AND e.deptype = 'e'
   AND e.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
   AND (SELECT relkind FROM pg_class WHERE oid = e.objid) = 'S'
   AND (xpath('//m/text()', query_to_xml(format('SELECT max(%I) AS m FROM %s', a.attname, o.refobjid::regclass),
                                            false, false, '')))[1]::text::bigint
       > coalesce(pg_sequence_last_value(e.objid::regclass), 0)};
is($node->safe_psql('postgres', q{
SELECT bool_or(e.objid = 'canary_stage_history_id_seq'::regclass) FROM pg_depend e
 WHERE e.classid = 'pg_class'::regclass AND e.deptype = 'e'
   AND e.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
   AND (SELECT relkind FROM pg_class WHERE oid = e.objid) = 'S'}), 't',
	'the sequences of the extension, as that query finds them, include canary_stage_history_id_seq');

$node->safe_psql('postgres', q{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
  ('model-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
  ('model-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES ('roll', 'ramp_25', 'model-old', 'model-new');
});
is($node->safe_psql('postgres', 'SELECT string_agg(id || canary || action, \' \' ORDER BY id) FROM canary_stage_history'),
	'1defaultcreate 2rollcreate', 'two history rows before the crash');

# a crash: every backend is gone without a shutdown checkpoint, and recovery
# replays the WAL from the last checkpoint (the install's)
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', $behind), '0',
	'after a crash every sequence is at least the largest value of its column');
my ($rc, $out, $err) = $node->psql('postgres',
	"UPDATE canary_config SET stage = 'full' WHERE name = 'roll'");
is($err, '', 'a rollout change after the crash writes its history row');
is($node->safe_psql('postgres',
	"SELECT id > 2 AND action = 'update' AND new_stage = 'full' FROM canary_stage_history WHERE canary = 'roll' ORDER BY id DESC LIMIT 1"),
	't', 'the new history row has a fresh id');

$node->stop;
done_testing();
