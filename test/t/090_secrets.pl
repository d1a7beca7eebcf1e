# The API key never leaves the server's environment: not into the server log
# (every message at debug5, every statement), not into pg_stat_activity, not
# into canary_alerts, canary_requests or canary_shadow, not into errors,
# details or hints sent to the client, not into canary_probe's result, and
# not into a pg_dump taken by the application role.
#
# The key is a distinctive value set in the server's environment only.  The
# mock LLM server is also told to echo it back (in a 401 message and in an
# answer), as a proxy that reflects request headers would: the extension
# must redact it before it goes anywhere.  The test itself never puts the
# key into SQL (log_statement = all would log it).
#
# Needs LLM_CANARY_MOCK_URL, as exported by test/run_suite.sh.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(usleep);

my $mock = mock_url();


my $key = 'sk-llmcanary-SECRET-' . join('', map { ('a' .. 'z', '0' .. '9')[ int(rand(36)) ] } 1 .. 32);

# Where the key must not be: every place below is collected and checked at the end.
my %seen;
sub collect { my ($where, $text) = @_; $seen{$where} .= ($text // '') . "\n"; }


# a secret of the server that is not an API key (a database password, a
# cloud credential): no member of llm_canary_admin may have it sent anywhere
my $pm_secret = 'pm-SECRET-' . join('', map { ('a' .. 'z', '0' .. '9')[ int(rand(36)) ] } 1 .. 32);
# only the server process gets the key
my $node = canary_node('secrets', env => { LLM_CANARY_KEY_SECRET => $key, POSTMASTER_SECRET => $pm_secret },
	conf => qq{
llm_canary.check_interval = 0
log_min_messages = debug5
log_min_error_statement = debug5
log_statement = 'all'
log_error_verbosity = verbose
client_min_messages = notice
});
ok(!defined $ENV{LLM_CANARY_KEY_SECRET}, 'the clients of this test do not have the key');

# --- models: both providers, answering, rejecting the key, echoing it, hanging, malformed
my %profiles = (
	's-oa-ok'      => [ 'openai',    { fixed_text => 'Fine, thanks.' } ],
	's-an-ok'      => [ 'anthropic', { fixed_text => 'Fine, thanks.' } ],
	's-oa-401'     => [ 'openai',    { api_key => 'sk-some-other-key' } ],
	's-an-401'     => [ 'anthropic', { api_key => 'sk-some-other-key' } ],
	's-oa-echo401' => [ 'openai',    { status => 401,
			body => { error => { message => "Incorrect API key provided: $key", type => 'invalid_request_error' } } } ],
	's-an-echo401' => [ 'anthropic', { status => 401,
			body => { type => 'error', error => { type => 'authentication_error', message => "invalid x-api-key $key" } } } ],
	's-oa-echo200' => [ 'openai',    { fixed_text => "Your key is $key, keep it safe." } ],
	's-an-echo200' => [ 'anthropic', { fixed_text => "Your key is $key, keep it safe." } ],
	's-oa-hang'    => [ 'openai',    { hang => JSON::PP::true } ],
	's-an-hang'    => [ 'anthropic', { hang => JSON::PP::true } ],
	's-oa-bad'     => [ 'openai',    { malformed => 'html' } ],
	's-an-bad'     => [ 'anthropic', { malformed => 'truncated_json' } ],
	's-slow'       => [ 'openai',    { fixed_text => 'Slow answer.', latency_ms => 2500 } ],);
my @failing = qw(s-oa-401 s-an-401 s-oa-echo401 s-an-echo401 s-oa-hang s-an-hang s-oa-bad s-an-bad);
for my $m (sort keys %profiles)
{
	mock_profile($m, $profiles{$m}[1]);
	my $timeout = $m =~ /hang/ ? 300 : 5000;
	$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms)
VALUES ('$m', '$profiles{$m}[0]', '$mock/v1', '$m', 'LLM_CANARY_KEY_SECRET', 0, $timeout)});
}
# one rollout per model, at full and without fallback: its failures reach the client
$node->safe_psql('postgres', qq{INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old)
	SELECT 'r-' || name, 'full', 's-oa-ok', name, false FROM canary_models});

# run SQL as the superuser; keep what the client got back (results, errors, details, hints)
sub run_sql
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose', '-v', 'SHOW_CONTEXT=always' ]);
	collect('client', "$out\n$err");
	return ($ret, $out, $err);
}

# --- canary_call: answers, rejected keys, echoed keys, timeouts, malformed bodies
for my $m (qw(s-oa-ok s-an-ok s-oa-echo200 s-an-echo200))
{
	my ($ret, $out) = run_sql("SELECT canary_call('hello', 'u1', 'r-$m') ->> 'response'");
	like($out, $m =~ /echo/ ? qr/^Your key is \*{20,}, keep it safe\.$/ : qr/^\Q$profiles{$m}[1]{fixed_text}\E$/,
		"canary_call answers through $m");
}
my ($ret, $out, $err) = run_sql(q{SELECT canary_call('hello', 'u1', 'r-s-oa-echo200') ->> 'response'});
like($out, qr/^Your key is \*{20,}, keep it safe\.$/m, 'an answer that echoes the key reaches the client redacted');
for my $m (@failing)
{
	($ret, $out, $err) = run_sql("SELECT canary_call('hello', 'u1', 'r-$m')");
	my $code = $m =~ /hang/ ? '38L01' : '38000';
	like($err, qr/ERROR:  $code: could not /, "canary_call through $m fails with $code");
}
($ret, $out, $err) = run_sql(q{SELECT canary_call('hello', 'u1', 'r-s-oa-echo401')});
like($err, qr/DETAIL:  HTTP status 401 \(http_401\): Incorrect API key provided: \*{20,}/,
	'a provider message that echoes the key is redacted in the error detail');
($ret, $out, $err) = run_sql(q{SELECT canary_call('hello', 'u1', 'r-s-an-echo401')});
like($err, qr/invalid x-api-key \*{20,}/, 'the same for the Anthropic dialect');

# --- canary_probe, for every model
for my $m (sort keys %profiles)
{
	next if $m eq 's-slow';
	($ret, $out, $err) = run_sql("SELECT canary_probe('$m', 'hello')");
	my ($outcome) = $out =~ /"outcome": "([a-z_]+)"/;
	is($outcome, $m =~ /hang/ ? 'timeout' : $m =~ /401|bad/ ? 'error' : 'ok', "canary_probe of $m returns its outcome");
}

# --- shadow calls: old and new answers, echoed keys, failures
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model) VALUES
  ('sh-echo', 'shadow', 's-oa-echo200', 's-an-echo200'),
  ('sh-401', 'shadow', 's-oa-ok', 's-an-echo401'),
  ('sh-hang', 'shadow', 's-an-ok', 's-oa-hang'),
  ('sh-bad', 'shadow', 's-an-ok', 's-an-bad');
});
for my $r (qw(sh-echo sh-401 sh-hang sh-bad))
{
	run_sql("SELECT canary_call('shadow me', 'u-$_', '$r') ->> 'model'") for 1 .. 2;
}
$node->safe_psql('postgres', 'SELECT canary_flush()');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 8 FROM canary_shadow WHERE canary LIKE 'sh-%'}),
	'eight shadow rows are written');
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_shadow
	WHERE canary = 'sh-echo' AND old_text ~ '^Your key is \*{20,}, keep it safe\.$'
	  AND new_text ~ '^Your key is \*{20,}, keep it safe\.$'}),
	'2', 'canary_shadow holds the echoed key redacted, in the old and in the new answer');

# --- trips and alerts: by hand and by the kill switch
run_sql(q{SELECT canary_trip('r-s-oa-ok', 'drill')});
$node->safe_psql('postgres', q{
INSERT INTO canary_config (name, stage, old_model, new_model, confirm_windows) VALUES ('r-trip', 'ramp_5', 's-oa-ok', 's-an-echo401', 1);
SELECT count(canary_record(canary => 'r-trip', user_id => 'c' || i, model => 's-oa-ok', cohort => 'control',
                           outcome => 'ok', latency_ms => 50, ts => now() - interval '10 seconds'))
  FROM generate_series(1, 300) i;
SELECT count(canary_record(canary => 'r-trip', user_id => 'n' || i, model => 's-an-echo401', cohort => 'canary',
                           outcome => 'error', http_status => 401, error => 'http_401', latency_ms => 50,
                           ts => now() - interval '10 seconds'))
  FROM generate_series(1, 200) i;
SELECT canary_flush();
});
($ret, $out) = run_sql(q{SELECT canary_check('r-trip')});
like($out, qr/error_rate=1\.000/, 'the kill switch trips');

# --- pg_stat_activity, sampled while a slow call is in flight
$node->safe_psql('postgres', q{UPDATE canary_config SET new_model = 's-slow' WHERE name = 'r-s-oa-ok';
	SELECT canary_rearm('r-s-oa-ok')});
my $bg = $node->background_psql('postgres');
$bg->query_until(qr/started/, q{\echo started
SELECT canary_call('slow one', 'u1', 'r-s-oa-ok');
});
my $saw_call = 0;
for (1 .. 15)
{
	my $q = $node->safe_psql('postgres',
		q{SELECT string_agg(coalesce(query, '') || ' ' || coalesce(backend_type, ''), E'\n')
		    FROM pg_stat_activity WHERE pid <> pg_backend_pid()});
	collect('pg_stat_activity', $q);
	$saw_call = 1 if $q =~ /canary_call\('slow one'/;
	usleep(100_000);
}
ok($saw_call, 'pg_stat_activity was sampled during the slow call');
$bg->quit;

# --- what the extension stored
collect('canary_alerts', $node->safe_psql('postgres', q{SELECT string_agg(payload::text, E'\n') FROM canary_alerts}));
like($seen{canary_alerts}, qr/"reason": "drill"/, 'the manual trip raised an alert');
like($seen{canary_alerts}, qr/error_rate=1\.000/, 'the kill switch raised an alert');
collect('canary_requests', $node->safe_psql('postgres', q{SELECT string_agg(t::text, E'\n') FROM canary_requests t}));
collect('canary_shadow', $node->safe_psql('postgres', q{SELECT string_agg(t::text, E'\n') FROM canary_shadow t}));
collect('canary_models', $node->safe_psql('postgres', q{SELECT string_agg(t::text, E'\n') FROM canary_models t}));
like($seen{canary_models}, qr/LLM_CANARY_KEY_SECRET/, 'canary_models names the variable');

# --- pg_dump as a login of the application role.  pg_dump locks and reads
# every relation it dumps, so as the application it fails at the first one
# the application may not read.  Excluding those one by one (--exclude-table,
# for tables and sequences alike) gives what the application could take
# away; that dump is checked entire.
$node->safe_psql('postgres', 'CREATE ROLE app_login LOGIN IN ROLE llm_canary_app');
my (@excluded, $dump, $dump_err);
for my $try (0 .. 200)
{
	($dump, $dump_err) = run_command([ 'pg_dump', '-d', $node->connstr('postgres'), '-U', 'app_login',
			map { ('--exclude-table', "public.$_") } @excluded ]);
	collect('pg_dump', $dump . $dump_err);
	like($dump_err, qr/permission denied for table canary_/, 'a whole pg_dump as the application fails')
	  if $try == 0;
	last unless $dump_err =~ /permission denied for (?:table|sequence) (\S+)/;
	push @excluded, $1;
}
is($dump_err, '', 'pg_dump as the application succeeds without the relations it may not read');
my %kinds;
for my $rel (@excluded)
{
	(my $kind = $rel) =~ s/_[0-9]{8}$/_YYYYMMDD/;
	$kinds{$kind} = 1;
}
is(join(' ', sort keys %kinds),
	'canary_alerts_id_seq canary_csat_id_seq canary_feedback_YYYYMMDD canary_feedback_default'
	  . ' canary_requests_YYYYMMDD canary_requests_default canary_shadow_YYYYMMDD canary_shadow_default'
	  . ' canary_stage_history_id_seq canary_window_summaries_id_seq',
	'the relations the application may not dump');
my $list = join(',', @excluded);
is($node->safe_psql('postgres', qq{SELECT count(*) FROM unnest('{$list}'::text[]) r(name)
	WHERE has_table_privilege('llm_canary_app', 'public.' || r.name, 'SELECT')}),
	'0', 'none of them is readable by the application');
like($dump, qr/^COPY public\.canary_models .*api_key_env/m, 'the dump holds canary_models');
like($dump, qr/LLM_CANARY_KEY_SECRET/, 'with the name of the variable');
like($dump, qr/^COPY public\.canary_alerts /m, 'and canary_alerts');
unlike($dump, qr/^COPY public\.canary_shadow/m, 'but nothing of canary_shadow');

# --- the key policy: a non-superuser admin cannot have a server secret sent
# anywhere.  Only variables named LLM_CANARY_KEY_* (llm_canary.api_key_env_prefix)
# or listed in llm_canary.api_key_env_names may hold keys; both settings,
# llm_canary.allowed_hosts and llm_canary.allow_http_keys are superuser-only.
$node->safe_psql('postgres', q{CREATE ROLE ops LOGIN IN ROLE llm_canary_admin});
sub run_ops
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-U', 'ops', '-v', 'VERBOSITY=verbose' ]);
	collect('client', "$out\n$err");
	return ($ret, $out, $err);
}
sub mock_requests
{
	my ($model) = @_;
	my $st = mock_get('/_mock/stats');
	return $st->{models}{$model} ? $st->{models}{$model}{requests} : 0;
}
# early: writing such a model fails, whatever the URL
($ret, $out, $err) = run_ops(qq{INSERT INTO canary_models (name, provider, base_url, model, api_key_env)
	VALUES ('p-evil', 'openai', '$mock/v1', 'p-evil', 'POSTMASTER_SECRET')});
like($err, qr/ERROR:  42501: model "p-evil" may not be called with this base_url and api_key_env\n.*DETAIL:  The environment variable "POSTMASTER_SECRET" does not start with llm_canary.api_key_env_prefix \("LLM_CANARY_KEY_"\)/s,
	'a non-superuser admin cannot add a model that names a server variable outside the allowed set (42501)');
($ret, $out, $err) = run_ops(q{UPDATE canary_models SET api_key_env = 'POSTMASTER_SECRET' WHERE name = 's-oa-ok'});
like($err, qr/ERROR:  42501: model "s-oa-ok" may not be called/, 'nor point an existing model at it (42501)');
($ret, $out, $err) = run_ops(q{UPDATE canary_models SET base_url = 'http://192.0.2.7/v1' WHERE name = 's-oa-ok'});
like($err, qr/ERROR:  42501: .*\n.*DETAIL:  An API key is not sent over plain http:\/\/ to "192.0.2.7", which is not a loopback address\./,
	'nor send the key over plain http:// to a host that is not loopback (42501)');
($ret, $out, $err) = run_ops(q{SET llm_canary.api_key_env_names = 'POSTMASTER_SECRET'});
like($err, qr/ERROR:  42501: permission denied to set parameter "llm_canary.api_key_env_names"/,
	'nor widen the allowed set: the policy settings are superuser-only');
($ret, $out, $err) = run_ops(q{SET llm_canary.allow_http_keys = on});
like($err, qr/ERROR:  42501: permission denied to set parameter "llm_canary.allow_http_keys"/,
	'nor allow keys over plain http://');
is(mock_requests('p-evil'), 0, 'nothing reached the mock server');

# at send time, on every path: rows written before a superuser tightened the
# policy (here: written by a superuser whose session allowed them)
$node->safe_psql('postgres', qq{
SET llm_canary.api_key_env_names = 'POSTMASTER_SECRET';
SET llm_canary.allow_http_keys = on;
INSERT INTO canary_models (name, provider, base_url, model, api_key_env, max_retries, timeout_ms) VALUES
  ('p-secret', 'openai', '$mock/v1', 'p-secret', 'POSTMASTER_SECRET', 0, 5000),
  ('p-secret-an', 'anthropic', '$mock/v1', 'p-secret-an', 'POSTMASTER_SECRET', 0, 5000),
  ('p-embed', 'openai', '$mock/v1', 'p-embed', 'POSTMASTER_SECRET', 0, 5000),
  ('p-http', 'openai', 'http://192.0.2.7/v1', 'p-http', 'LLM_CANARY_KEY_SECRET', 0, 20000);
INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old) VALUES
  ('r-p-secret', 'full', 's-oa-ok', 'p-secret', false),
  ('r-p-http', 'full', 's-oa-ok', 'p-http', false);
INSERT INTO canary_config (name, stage, old_model, new_model, shadow_embedding_model) VALUES
  ('sh-p-secret', 'shadow', 's-oa-ok', 'p-secret-an', NULL),
  ('sh-p-embed', 'shadow', 's-oa-ok', 's-an-ok', 'p-embed');
});
mock_profile($_, { fixed_text => 'must never be asked' }) for qw(p-secret p-secret-an p-embed);
($ret, $out, $err) = run_ops(q{SELECT canary_probe('p-secret', 'hello')});
like($err, qr/ERROR:  42501: model "p-secret" may not be called with this base_url and api_key_env\n.*DETAIL:  The environment variable "POSTMASTER_SECRET"/s,
	'canary_probe: refused with 42501');
($ret, $out, $err) = run_ops(q{SELECT canary_call('hello', 'u1', 'r-p-secret')});
like($err, qr/ERROR:  42501: model "p-secret" may not be called/, 'canary_call: refused with 42501');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT error, ',') FROM canary_requests WHERE model = 'p-secret'}),
	'api_key_env_not_allowed', 'canary_call: the refused attempt is recorded as api_key_env_not_allowed');
my $t0 = time;
($ret, $out, $err) = run_ops(q{SELECT canary_probe('p-http', 'hello')});
like($err, qr/ERROR:  42501: model "p-http" may not be called.*\n.*DETAIL:  An API key is not sent over plain http:\/\/ to "192.0.2.7"/s,
	'a key over plain http:// to a host that is not loopback: refused with 42501');
cmp_ok(time - $t0, '<=', 3, 'at once, without trying to connect');
run_ops(qq{SELECT canary_call('shadow me', 'u-$_', '$_') ->> 'model'}) for qw(sh-p-secret sh-p-embed);
$node->safe_psql('postgres', 'SELECT canary_flush()');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 2 FROM canary_shadow WHERE canary IN ('sh-p-secret', 'sh-p-embed')}),
	'the two shadow rows are written');
is($node->safe_psql('postgres', q{SELECT new_error FROM canary_shadow WHERE canary = 'sh-p-secret'}),
	'api_key_env_not_allowed', 'shadow call: refused, recorded as new_error api_key_env_not_allowed');
is($node->safe_psql('postgres', q{SELECT coalesce(new_error, '-') || ' ' || similarity_method FROM canary_shadow WHERE canary = 'sh-p-embed'}),
	'- lexical', 'embeddings call: refused, the similarity falls back to lexical');
is(join(',', map { mock_requests($_) } qw(p-secret p-secret-an p-embed)), '0,0,0',
	'no request of probe, call, shadow or embeddings reached the mock server');
is(mock_requests('s-an-ok') > 0 ? 'reached' : 'not reached', 'reached', 'while allowed models are called');

# llm_canary.allowed_hosts fences every model request
($ret, $out, $err) = $node->psql('postgres', q{SET llm_canary.allowed_hosts = 'api.openai.com, *.anthropic.com';
	SELECT canary_probe('s-oa-ok', 'hello')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  42501: .*\n.*DETAIL:  The host "127.0.0.1" is not listed in llm_canary.allowed_hosts\./s,
	'a host outside llm_canary.allowed_hosts: refused with 42501');
is($node->safe_psql('postgres', q{SET llm_canary.allowed_hosts = 'api.openai.com, 127.0.0.1';
	SELECT canary_probe('s-oa-ok', 'hello') ->> 'outcome'}), 'ok', 'a listed host is called');

# --- the server log: every statement, every message down to debug5.
# PostgreSQL itself logs the postmaster's whole environment at startup when
# log_min_messages is debug3 or lower ("initial environment dump", before
# any library is loaded): a key kept in the environment is in that dump, and
# no extension can prevent it (README, "Roles and API keys", says so).  Apart from those
# lines the key must be nowhere in the log.
$node->stop;
my $log = slurp_file($node->logfile);
like($log, qr/DEBUG:  .*CommitTransaction/, 'the log has debug5 messages');
like($log, qr/statement: SELECT canary_call\('hello', 'u1', 'r-s-oa-echo401'\)/, 'the log has every statement');
like($log, qr/HTTP status 401 \(http_401\): Incorrect API key provided: \*{20,}/, 'the log has the redacted detail');
my ($env_dump) = $log =~ /(^[^\n]*initial environment dump:\n(?:[^\n]*\n)*?[^\n]*-{20,}\n(?:[^\n]*\n)*?[^\n]*-{20,}\n)/m;
ok(defined $env_dump && index($env_dump, "LLM_CANARY_KEY_SECRET=$key") >= 0,
	'PostgreSQL\'s own environment dump at startup holds the key');
ok(index($log, 'initial environment dump') < index($log, 'loaded library "llm_canary"'),
	'that dump is written before the extension is loaded');
$log =~ s/\Q$env_dump\E// if defined $env_dump;
collect('server log (without the environment dump)', $log);

# --- the key is nowhere
my $fragment = substr($key, -16);	# part of the random tail, as a provider might show it
for my $where (sort keys %seen)
{
	ok(index($seen{$where}, $key) < 0 && index($seen{$where}, $fragment) < 0,
		"the key is not in the $where (" . length($seen{$where}) . ' bytes checked)');
	ok(index($seen{$where}, $pm_secret) < 0, "the server's other secret is not in the $where");
}

done_testing();
