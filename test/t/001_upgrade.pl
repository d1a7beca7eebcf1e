# The upgrade path from the released 1.0: install 1.0, put rows in every
# table it has, ALTER EXTENSION llm_canary UPDATE, then compare the catalog
# with a fresh install of the current version (tables, columns and their
# order, types, defaults, constraints, indexes, triggers, policies, views,
# functions with their signatures, volatility, SECURITY DEFINER and
# search_path, grants, comments, config-dump registration) and check that
# no row was lost.  Every change of a release adds its part to the upgrade
# script (sql/updates/FROM--TO/); this test keeps the two paths identical.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use RollupCheck;

# the worker serves another database: its daily canary_maintenance() would
# expire the response cache rows this test counts (and the TTL keeps them
# anyway)
my $node = canary_node('upgrade', extension => 0, conf => qq{
llm_canary.response_cache_ttl = '1 day'
});
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');

my $default = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'llm_canary'");
isnt($default, '1.0', "the default version ($default) is newer than the released 1.0");

$node->safe_psql('upgraded', q{CREATE EXTENSION llm_canary VERSION '1.0'});
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'llm_canary'}),
	'1.0', 'the released 1.0 installs with the current library');

# --- rows in every table of 1.0 -------------------------------------------
$node->safe_psql('upgraded', q{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env) VALUES
  ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'gpt-old', NULL),
  ('m-new', 'anthropic', 'http://127.0.0.1:9', 'claude-new', NULL);
INSERT INTO canary_config (name, stage, old_model, new_model, salt)
  VALUES ('up', 'ramp_5', 'm-old', 'm-new', 's1');
UPDATE canary_config SET stage = 'ramp_25' WHERE name = 'up';
INSERT INTO canary_sessions (canary, session_id, user_id, model, cohort, expires_at)
  VALUES ('up', 'sess-1', 'u1', 'm-new', 'canary', now() + interval '1 hour');
SELECT canary_maintenance(1, current_date);
INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model, outcome,
                             http_status, latency_ms, prompt_tokens, completion_tokens,
                             response_chars, refusal, prompt_class, prompt_hash, fallback, cost)
  SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,
         now() - (g || ' minutes')::interval, 'up', 'ramp_25', 'u' || g,
         CASE WHEN g % 4 = 0 THEN 'canary' ELSE 'control' END,
         CASE WHEN g % 4 = 0 THEN 'm-new' ELSE 'm-old' END,
         CASE WHEN g % 10 = 0 THEN 'error' ELSE 'ok' END,
         200, 100 + g, 10, 20, 80, g % 7 = 0, 'billing', 'abcd', false, 0.001
    FROM generate_series(1, 200) g;
INSERT INTO canary_requests (request_id, ts, canary, cohort, model, outcome, latency_ms)
  VALUES ('00000000-0000-0000-0001-000000000001', now() + interval '60 days', 'up', 'control',
          'm-old', 'ok', 50);  -- lands in the default partition
INSERT INTO canary_feedback (request_id, ts, thumbs_down, user_id, canary, cohort, model)
  SELECT ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid, now(), g % 3 = 0,
         'u' || g, 'up', 'control', 'm-old'
    FROM generate_series(1, 30) g;
INSERT INTO canary_shadow (request_id, canary, user_id, prompt, prompt_class, old_model, new_model,
                           old_text, new_text, old_latency_ms, new_latency_ms)
  VALUES ('00000000-0000-0000-0002-000000000001', 'up', 'u1', 'hello', 'billing', 'm-old', 'm-new',
          'the old answer', 'the new answer', 100, 120);
INSERT INTO canary_refusal_patterns (pattern, note) VALUES ('upgrade test pattern', 'mine');
INSERT INTO canary_response_cache (model, prompt_sha256, request_sha256, response)
  VALUES ('m-old', repeat('a', 64), repeat('b', 64), 'cached answer');
INSERT INTO canary_window_summaries (canary, at, window_seconds, stage, cohort, samples, errors,
                                     refusals, thumbs_down)
  VALUES ('up', now(), 300, 'ramp_25', 'control', 150, 15, 3, 10);
INSERT INTO canary_alerts (canary, kind, payload, webhook_status)
  VALUES ('up', 'manual_trip', '{"reason": "upgrade test"}', 'none');
INSERT INTO canary_csat (user_id, score, request_id)
  VALUES ('u1', 4.5, '00000000-0000-0000-0000-000000000001');
});

# Every table of the extension, its row count and a digest of its rows
# (over the columns 1.0 had, so that added columns do not change it).
my $tables_q = q{
SELECT c.relname FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.classid = 'pg_class'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
   AND c.relkind IN ('r', 'p') AND NOT c.relispartition
 ORDER BY 1};
my @tables10 = split /\n/, $node->safe_psql('upgraded', $tables_q);
my %cols10;
for my $t (@tables10)
{
	$cols10{$t} = $node->safe_psql('upgraded', qq{
SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
 WHERE attrelid = '$t'::regclass AND attnum > 0 AND NOT attisdropped});
}

sub digest_rows
{
	my %d;
	for my $t (@tables10)
	{
		my $cols = $cols10{$t};
		# the upgrade backfills fallback (NULL read as false, now NOT NULL)
		$cols =~ s/\bfallback\b/coalesce(fallback, false) AS fallback/ if $t eq 'canary_requests';
		$d{$t} = $node->safe_psql('upgraded', qq{
SELECT count(*) || ' ' || coalesce(md5(string_agg(r::text, '|' ORDER BY r::text)), '-')
  FROM (SELECT $cols FROM $t) r});
	}
	return \%d;
}

my $before = digest_rows();
for my $t (@tables10)
{
	unlike($before->{$t}, qr/^0 /, "1.0 table $t has rows before the upgrade");
}

# --- the upgrade ------------------------------------------------------------
$node->safe_psql('upgraded', 'ALTER EXTENSION llm_canary UPDATE');
is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'llm_canary'}),
	$default, "ALTER EXTENSION UPDATE reaches $default");

# the rollups of the rows 1.0 had, and their totals
is($node->safe_psql('upgraded', rollup_recount_query()), '0',
	'the rollups backfilled by the upgrade equal a recount of the 1.0 rows');
is($node->safe_psql('upgraded', q{
SELECT (SELECT sum(requests) FROM canary_rollup_totals) || ' ' || (SELECT sum(thumbs_down) FROM canary_rollup_totals)
       || ' ' || (SELECT sum(requests) FROM canary_rollups) || ' ' || (SELECT sum(verdicts) FROM canary_rollups)}),
	'201 10 201 30', 'the totals count the 201 attempts and 10 thumbs-down of 1.0');

my $after = digest_rows();
for my $t (@tables10)
{
	is($after->{$t}, $before->{$t}, "no row of $t lost or changed by the upgrade");
}

$node->safe_psql('fresh', 'CREATE EXTENSION llm_canary');

# --- the catalog of both paths -------------------------------------------------
# One line per property of every object the extension owns, or that hangs
# off a table it owns (columns, constraints, indexes, triggers, policies).
my $catalog_q = q{
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'llm_canary'),
members AS (
  SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
   WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (
  SELECT c.* FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid),
lines AS (
  SELECT 'member ' || pg_describe_object(classid, objid, objsubid) AS line FROM members
  UNION ALL
  SELECT format('relation %s kind=%s persistence=%s partition=%s partkey=%s options=%s owner_acl=%s comment=%s',
                r.relname, r.relkind, r.relpersistence, r.relispartition,
                pg_get_partkeydef(r.oid), r.reloptions, r.relacl, obj_description(r.oid, 'pg_class'))
    FROM rels r
  UNION ALL
  SELECT format('column %s.%s #%s %s notnull=%s default=%s identity=%s generated=%s acl=%s comment=%s',
                r.relname, a.attname,
                row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum),
                format_type(a.atttypid, a.atttypmod), a.attnotnull,
                pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attacl,
                col_description(r.oid, a.attnum))
    FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
   WHERE r.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION ALL
  SELECT format('constraint %s.%s %s deferrable=%s comment=%s', r.relname, co.conname,
                pg_get_constraintdef(co.oid), co.condeferrable, obj_description(co.oid, 'pg_constraint'))
    FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
  UNION ALL
  SELECT format('index %s', pg_get_indexdef(i.indexrelid))
    FROM rels r JOIN pg_index i ON i.indrelid = r.oid
  UNION ALL
  SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
  UNION ALL
  SELECT format('policy %s.%s cmd=%s roles=%s using=%s check=%s', r.relname, p.polname, p.polcmd,
                p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
    FROM rels r JOIN pg_policy p ON p.polrelid = r.oid
  UNION ALL
  SELECT format('rls %s enabled=%s forced=%s', r.relname, r.relrowsecurity, r.relforcerowsecurity)
    FROM rels r WHERE r.relkind IN ('r', 'p')
  UNION ALL
  SELECT format('view %s %s', r.relname, pg_get_viewdef(r.oid)) FROM rels r WHERE r.relkind IN ('v', 'm')
  UNION ALL
  SELECT format('sequence %s type=%s start=%s inc=%s min=%s max=%s cache=%s cycle=%s', r.relname,
                format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                s.seqcache, s.seqcycle)
    FROM rels r JOIN pg_sequence s ON s.seqrelid = r.oid
  UNION ALL
  SELECT format('function %s(%s) returns %s kind=%s lang=%s volatility=%s strict=%s secdef=%s leakproof=%s parallel=%s cost=%s rows=%s config=%s acl=%s bin=%s comment=%s src=%s',
                p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
                p.prokind, l.lanname, p.provolatile, p.proisstrict, p.prosecdef, p.proleakproof,
                p.proparallel, p.procost, p.prorows, p.proconfig, p.proacl, p.probin,
                obj_description(p.oid, 'pg_proc'), md5(coalesce(pg_get_function_sqlbody(p.oid), p.prosrc)))
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
    JOIN pg_language l ON l.oid = p.prolang
  UNION ALL
  SELECT format('function-args %s(%s) defaults=%s', p.proname,
                pg_get_function_identity_arguments(p.oid), pg_get_expr(p.proargdefaults, 0))
    FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
  UNION ALL
  SELECT format('type %s type=%s comment=%s', t.typname, t.typtype, obj_description(t.oid, 'pg_type'))
    FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
  UNION ALL
  SELECT format('config-dump %s where=%s', c.oid::regclass, cond)
    FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(reloid, cond)
    JOIN pg_class c ON c.oid = u.reloid
)
SELECT line FROM lines ORDER BY line COLLATE "C"};

my $upgraded = $node->safe_psql('upgraded', $catalog_q);
my $fresh = $node->safe_psql('fresh', $catalog_q);
cmp_ok(scalar(split /\n/, $fresh), '>', 450, 'the catalog description covers the extension (over 450 lines)');

# Show the lines that differ, not two walls of text.
my %f = map { $_ => 1 } split /\n/, $fresh;
my %u = map { $_ => 1 } split /\n/, $upgraded;
my @only_fresh = grep { !$u{$_} } sort keys %f;
my @only_upgraded = grep { !$f{$_} } sort keys %u;
is(join("\n", @only_fresh), '', 'nothing of a fresh install is missing after the upgrade');
is(join("\n", @only_upgraded), '', 'the upgrade leaves nothing a fresh install does not have');

# --- standard_conforming_strings = off --------------------------------------
# A database whose default is standard_conforming_strings = off reads a
# backslash in a plain literal of the scripts as an escape.  The install
# generates the fleet combine trigger from text
# (sql/parts/34_fleet_combine_trigger.sql): both paths there must make the
# same catalog as the default install, that function's text included.
my $trigger_src_q = q{SELECT prosrc FROM pg_proc WHERE oid = 'canary_fleet_combine_trigger()'::regprocedure};
my $trigger_src = $node->safe_psql('fresh', $trigger_src_q);
my @keys = qw(canary bucket_end stage cohort model fallback cached);
my $cmp = sprintf("IF TG_OP = 'UPDATE' AND (%s) = (%s) THEN",
	join(', ', map { "OLD.$_" } @keys), join(', ', map { "NEW.$_" } @keys));
ok(index($trigger_src, $cmp) >= 0, "the combine trigger compares the keys prefixed: $cmp");
for my $db (qw(fresh_scs_off upgraded_scs_off))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql('postgres', "ALTER DATABASE $db SET standard_conforming_strings = off");
}
$node->safe_psql('fresh_scs_off', 'CREATE EXTENSION llm_canary');
$node->safe_psql('upgraded_scs_off', q{CREATE EXTENSION llm_canary VERSION '1.0'});
$node->safe_psql('upgraded_scs_off', 'ALTER EXTENSION llm_canary UPDATE');
for my $db (qw(fresh_scs_off upgraded_scs_off))
{
	is($node->safe_psql($db, 'SHOW standard_conforming_strings'), 'off', "$db reads literals with escapes");
	is($node->safe_psql($db, $trigger_src_q), $trigger_src,
		"$db: the combine trigger's text is the default install's");
	my %d = map { $_ => 1 } split /\n/, $node->safe_psql($db, $catalog_q);
	is(join("\n", grep { !$d{$_} } sort keys %f), '', "$db: nothing of a default install is missing");
	is(join("\n", grep { !$f{$_} } sort keys %d), '', "$db: nothing a default install does not have");
}

# Every function of the extension still answers after the upgrade where it
# needs no arguments and reads only (the config cache, the reports).
is($node->safe_psql('upgraded', q{SELECT stage || ' ' || percent_new FROM canary_config WHERE name = 'up'}),
	'ramp_25 25.00', 'the rollout reads back after the upgrade');

done_testing();
