# The upstream fault matrix, through canary_call (test/sql/25_probe.sql
# covers the parser through canary_probe): every fault the mock LLM server
# can produce, plus an unreachable host, a 10 MB prompt and a prompt that
# needs escaping.  For each fault, a canary user with fallback_to_old gets
# the old model's answer, a canary user without it gets a clear error with
# its SQLSTATE, canary_requests holds the exact outcome, error and HTTP
# status of every attempt, and the same backend keeps working.  Then 2,000
# failing calls of a mix of faults must not grow the backend's memory.
#
# Each row of the table in RELIABILITY.md names the case of this file that
# backs it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use FindBin;
use lib $FindBin::Bin;
use CanaryNode;
use MockLLM;
use Time::HiRes qw(time);

my $mock = mock_url();
my $http = HTTP::Tiny->new(timeout => 5);

# Would resolving "llm-canary-test.invalid" leave the machine?  RFC 6761
# reserves .invalid, but glibc does not special-case it: with "dns" in the
# hosts line of nsswitch.conf and a nameserver that is not on loopback, the
# query goes out.  Returns a reason to skip, or undef.
sub dns_leaves_machine
{
	return undef if $ENV{LLM_CANARY_TEST_DNS};
	my $hosts = '';
	if (open(my $fh, '<', '/etc/nsswitch.conf'))
	{
		($hosts) = grep { /^\s*hosts:/ } <$fh>;
		close $fh;
	}
	return undef if defined $hosts && $hosts !~ /\b(dns|resolve|mdns\S*)\b/;
	my @ns;
	if (open(my $fh, '<', '/etc/resolv.conf'))
	{
		@ns = map { /^\s*nameserver\s+(\S+)/ ? $1 : () } <$fh>;
		close $fh;
	}
	my @remote = grep { !/^(127\.|::1$)/ } @ns;
	return undef unless @remote;
	return "the resolver would send the query to @remote (nsswitch: dns); "
	  . "set LLM_CANARY_TEST_DNS=1 to run this row anyway";
}

my $node = canary_node('faults', conf => qq{
llm_canary.check_interval = 0
llm_canary.max_response_bytes = '64kB'
log_min_messages = warning
});

mock_profile('old', '{"fixed_text": "old answer"}');

# name => [provider, mock profile, canary_models overrides, expected]
# expected: outcome, error, http_status ('-' = NULL), SQLSTATE without
# fallback (undef: the call succeeds), and for successes the answer.
# Upstream failures are never class 08 or 57P0x (pools would drop the
# database connection): 38L01 model timeout, 38L02 model unreachable or the
# connection broke, 38000 the model answered with an error.
my $refused = 'http://127.0.0.1:1/v1';
my @faults = (
	[ 'hang', 'openai', '{"hang": true}', { timeout_ms => 500 },
		[ 'timeout', 'timeout', '-', '38L01' ] ],
	[ 'drip_within', 'openai', '{"slow_drip_ms": 1, "fixed_text": "dripped"}', { timeout_ms => 10000 },
		[ 'ok', '-', '200', undef, 'dripped' ] ],
	[ 'drip_beyond', 'openai', '{"slow_drip_ms": 50, "fixed_text": "too slow"}', { timeout_ms => 600 },
		[ 'timeout', 'timeout', '200', '38L01' ] ],
	[ 'refused', 'openai', '{}', { base_url => $refused },
		[ 'error', 'connect', '-', '38L02' ] ],
	[ 'reset', 'openai', '{"reset": true}', {},
		[ 'error', 'connect', '200', '38L02' ] ],
	[ 'truncate', 'openai', '{"truncate": true}', {},
		[ 'error', 'connect', '200', '38L02' ] ],
	# https: a key never goes over plain http:// to a host that is not loopback
	[ 'unresolvable', 'openai', '{}', { base_url => 'https://llm-canary-test.invalid/v1', connect_timeout_ms => 2000 },
		[ 'error', 'connect', '-', '38L02' ] ],
	[ 'http_500', 'openai', '{"error_rate": 1, "error_status": 500}', {},
		[ 'error', 'http_500', '500', '38000' ] ],
	[ 'http_502', 'openai', '{"error_rate": 1, "error_status": 502}', {},
		[ 'error', 'http_502', '502', '38000' ] ],
	[ 'http_503_retried', 'openai', '{"error_rate": 1, "error_status": 503, "retry_after": null}', { max_retries => 2 },
		[ 'error', 'http_503', '503', '38000' ] ],
	[ 'http_529', 'anthropic', '{"error_rate": 1, "error_status": 529}', {},
		[ 'error', 'http_529', '529', '38000' ] ],
	[ 'rate_limit_retry_after', 'openai', '{"rate_limit_rate": 1, "retry_after": 0.2}', { max_retries => 1 },
		[ 'error', 'http_429', '429', '38000' ] ],
	[ 'rate_limit_no_retry_after', 'openai', '{"rate_limit_rate": 1, "retry_after": null}', { max_retries => 1 },
		[ 'error', 'http_429', '429', '38000' ] ],
	[ 'http_401', 'openai', '{"api_key": "sk-some-other-key"}', {},
		[ 'error', 'http_401', '401', '38000' ] ],
	[ 'http_403', 'anthropic', '{"status": 403, "body": {"type": "error", "error": {"type": "permission_error", "message": "no access"}}}', {},
		[ 'error', 'http_403', '403', '38000' ] ],
	[ 'html_error_page', 'openai', '{"status": 502, "body": "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"}', {},
		[ 'error', 'http_502', '502', '38000' ] ],
	[ 'html_200', 'openai', '{"malformed": "html"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'empty', 'openai', '{"malformed": "empty"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'truncated_json', 'anthropic', '{"malformed": "truncated_json"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'not_json', 'openai', '{"malformed": "not_json"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'no_fields', 'openai', '{"malformed": "no_fields"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'no_fields_anthropic', 'anthropic', '{"malformed": "no_fields"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'content_null', 'openai', '{"malformed": "content_null"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'content_null_anthropic', 'anthropic', '{"malformed": "content_null"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'invalid_utf8', 'openai', '{"malformed": "invalid_utf8"}', {},
		[ 'error', 'malformed_response', '200', '38000' ] ],
	[ 'oversize', 'openai', '{"oversize_bytes": 100000}', {},
		[ 'error', 'response_too_large', '200', '38000' ] ],
);

my $skip_dns = dns_leaves_machine();

my $models = '';
my $rollouts = '';
for my $f (@faults)
{
	my ($name, $provider, $profile, $set) = @$f;
	mock_profile("f-$name", $profile);
	my %m = (base_url => "$mock/v1", timeout_ms => 5000, connect_timeout_ms => 5000,
		max_retries => 0, %$set);
	$models .= ",\n  ('f-$name', '$provider', '$m{base_url}', 'f-$name', $m{timeout_ms}, "
	  . "$m{connect_timeout_ms}, $m{max_retries}, 'LLM_CANARY_TEST_KEY')";
	$rollouts .= ",\n  ('fb-$name', 'full', 'old', 'f-$name', true), ('nf-$name', 'full', 'old', 'f-$name', false)";
}
# a 10 MB prompt (the mock counts its words) and a prompt that needs escaping (echoed)
mock_profile('f-big_prompt', '{"fixed_text": "read it all"}');
mock_profile('f-escape', '{"echo": true}');
$node->safe_psql('postgres', qq{
INSERT INTO canary_models (name, provider, base_url, model, timeout_ms, connect_timeout_ms, max_retries, api_key_env) VALUES
  ('old', 'openai', '$mock/v1', 'old', 5000, 5000, 0, 'LLM_CANARY_TEST_KEY'),
  ('f-big_prompt', 'openai', '$mock/v1', 'f-big_prompt', 30000, 5000, 0, 'LLM_CANARY_TEST_KEY'),
  ('f-escape', 'anthropic', '$mock/v1', 'f-escape', 5000, 5000, 0, 'LLM_CANARY_TEST_KEY')$models;
INSERT INTO canary_config (name, stage, old_model, new_model, fallback_to_old) VALUES
  ('fb-big_prompt', 'full', 'old', 'f-big_prompt', true),
  ('fb-escape', 'full', 'old', 'f-escape', true)$rollouts;
});

my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe('\set VERBOSITY verbose');
my $pid = $s->query_safe('SELECT pg_backend_pid()');

# one row of canary_requests per attempt: model:outcome:error:status:fallback
sub recorded
{
	my ($user) = @_;
	return $node->safe_psql('postgres', qq{
SELECT string_agg(model || ':' || outcome || ':' || coalesce(error, '-') || ':'
                  || coalesce(http_status::text, '-') || ':' || fallback, ',' ORDER BY ts)
  FROM canary_requests WHERE user_id = '$user'});
}

for my $f (@faults)
{
	my ($name, $provider, $profile, $set, $exp) = @$f;
	my ($outcome, $error, $status, $sqlstate, $answer) = @$exp;
  SKIP:
	{
		skip "$name: $skip_dns", 7 if $name eq 'unresolvable' && $skip_dns;

		# with fallback: the canary user gets the old model's answer
		my $t0 = time;
		my $out = $s->query(qq{SELECT r->>'fallback', r->>'model', r->>'response'
  FROM canary_call('Where is my order?', 'fb-$name', 'fb-$name') r});
		my $took = time - $t0;
		is($s->{stderr}, '', "$name: no error with fallback");
		$s->{stderr} = '';
		if (defined $sqlstate)
		{
			is($out, 'true|old|old answer', "$name: the canary user gets the old model's answer (${took}s)");
		}
		else
		{
			is($out, "false|f-$name|$answer", "$name: the new model answers (${took}s)");
		}

		# without fallback: an error with its SQLSTATE, or the answer
		$out = $s->query(qq{SELECT r->>'response'
  FROM canary_call('Where is my order?', 'nf-$name', 'nf-$name') r});
		if (defined $sqlstate)
		{
			like($s->{stderr}, qr/ERROR:  $sqlstate: could not (reach|get an answer from) model "f-$name"/,
				"$name: without fallback, ERROR $sqlstate naming the model");
		}
		else
		{
			is($out, $answer, "$name: without fallback, the answer");
		}
		my $nf_err = $s->{stderr};
		$s->{stderr} = '';
		is($s->query_safe('SELECT 42'), '42', "$name: the backend is still alive");

		$node->safe_psql('postgres', 'SELECT canary_flush()');
		my $rec = "f-$name:$outcome:$error:$status:false";
		is(recorded("fb-$name"), defined $sqlstate ? "$rec,old:ok:-:200:true" : $rec,
			"$name: recorded with fallback as $rec");
		is(recorded("nf-$name"), $rec, "$name: recorded without fallback as $rec");
		if ($name eq 'unresolvable')
		{
			cmp_ok($took, '<', 5, "$name: resolution fails fast (${took}s), no hang");
		}
		elsif ($name eq 'rate_limit_retry_after')
		{
			my $lat = $node->safe_psql('postgres',
				"SELECT min(latency_ms) FROM canary_requests WHERE user_id LIKE '%-$name' AND model = 'f-$name'");
			cmp_ok($lat, '>=', 200, "$name: the retry waited the server's Retry-After ($lat ms)");
		}
		elsif ($name eq 'http_503_retried')
		{
			my $st = $http->get("$mock/_mock/stats");
			my ($n) = $st->{content} =~ /"f-http_503_retried":\{"requests":(\d+)/;
			is($n, 6, "$name: 1 + 2 retries per call (two calls: $n requests)");
		}
		elsif ($name =~ /^(reset|truncate)$/)
		{
			# a connection that breaks after the status line is a transport
			# failure (38L02, above), and the detail says so
			like($nf_err, qr/DETAIL:  The connection failed after HTTP status 200 \(connect\): /,
				"$name: the detail says the connection failed after the status line");
		}
		elsif ($name =~ /^(hang|drip_beyond)$/)
		{
			my $lat = $node->safe_psql('postgres',
				"SELECT max(latency_ms) FROM canary_requests WHERE user_id LIKE '%-$name' AND model = 'f-$name'");
			cmp_ok($lat, '<', 1500, "$name: the attempt ends at timeout_ms ($lat ms)");
		}
		else
		{
			# not retried (max_retries 0, or a status that is not retryable):
			# one request per call reached the mock, none when it is unreachable
			my %per_call = (refused => 0, unresolvable => 0, rate_limit_no_retry_after => 2);
			my $per_call = $per_call{$name} // 1;
			is(mock_get('/_mock/stats')->{models}{"f-$name"}{requests} // 0, 2 * $per_call,
				"$name: $per_call request(s) per call at the mock (two calls)");
		}
	}
}

# a 10 MB prompt: sent whole (the mock counts 2,097,152 words), recorded
my $out = $s->query(q{SELECT r->>'response', r->>'prompt_tokens'
  FROM canary_call(repeat('word ', 2 * 1024 * 1024), 'big-prompt', 'fb-big_prompt') r});
is($s->{stderr}, '', 'a 10 MB prompt: no error');
$s->{stderr} = '';
is($out, 'read it all|2097152', 'a 10 MB prompt reaches the model whole');
$node->safe_psql('postgres', 'SELECT canary_flush()');
is($node->safe_psql('postgres', q{SELECT prompt_tokens || ':' || outcome FROM canary_requests WHERE user_id = 'big-prompt'}),
	'2097152:ok', 'a 10 MB prompt: recorded with its token count');

# a prompt with everything JSON must escape comes back unchanged (echo)
my $escape_sql = <<'SQL';
SELECT r->>'response' = p, r->>'fallback'
  FROM (SELECT E'quote " backslash \\ slash / \\u0041 nl\n cr\r tab\t bell\x07 esc\x1b del\x7f \u00e9\u4e2d\U0001F600 </script> \' end\\' AS p) x,
       canary_call(p, 'escape', 'fb-escape') r
SQL
$out = $s->query($escape_sql);
is($out, 't|false', 'a prompt with characters that need escaping comes back unchanged');
is($s->{stderr}, '', 'escaping: no error');
$s->{stderr} = '';
$s->quit;

# --- no memory growth over 2,000 failing calls -----------------------------
# A fresh backend calls a mix of fast faults, half with fallback (the old
# model answers) and half without (the call raises an error).  Warm up
# first, so that caches, libcurl's connection pool and glibc's arenas are
# at their steady size, then compare VmRSS.
my @mix = qw(refused http_500 http_401 html_error_page empty truncated_json
  not_json no_fields content_null_anthropic invalid_utf8 oversize reset);
my $m = $node->background_psql('postgres', on_error_stop => 0);
my $mpid = $m->query_safe('SELECT pg_backend_pid()');

sub rss_kb
{
	my ($p) = @_;
	open(my $fh, '<', "/proc/$p/status") or die "cannot read /proc/$p/status: $!";
	my %v = map { /^(\w+):\s+(\d+)/ ? ($1 => $2) : () } <$fh>;
	close $fh;
	return ($v{VmRSS}, $v{RssAnon});
}

my $ncalls = 0;
my $nerrors = 0;
sub run_mix
{
	my ($n) = @_;
	for (my $done = 0; $done < $n; $done += 200)
	{
		my $sql = '';
		for my $i (1 .. 200)
		{
			my $k = $ncalls++;
			my $f = $mix[ $k % @mix ];
			my $r = ($k / @mix) % 2 ? "nf-$f" : "fb-$f";
			$sql .= "SELECT (canary_call('Prompt $k', 'rss-$r', '$r')) ->> 'outcome';\n";
		}
		my ($o) = $m->query($sql);
		$nerrors += () = $m->{stderr} =~ /ERROR:/g;
		$m->{stderr} = '';
	}
}

my $t0 = time;
run_mix(400);
my ($rss0, $anon0) = rss_kb($mpid);
run_mix(2000);
my ($rss1, $anon1) = rss_kb($mpid);
my $took = time - $t0;
my $grow = $rss1 - $rss0;
note "RSS of backend $mpid: VmRSS $rss0 kB -> $rss1 kB (+$grow kB), RssAnon $anon0 kB -> $anon1 kB, over 2000 failing calls ($took s for 2400)";
diag "memory: VmRSS +$grow kB, RssAnon +" . ($anon1 - $anon0) . " kB over 2000 failing calls";
cmp_ok($grow, '<', 5 * 1024, "2000 failing calls grow the backend's VmRSS by less than 5 MB (+$grow kB)");
cmp_ok($anon1 - $anon0, '<', 2 * 1024,
	"and its private memory (RssAnon, without shared buffers touched) by less than 2 MB (+" . ($anon1 - $anon0) . " kB)");
is($m->query_safe('SELECT 1'), '1', 'the backend is still alive after 2400 failing calls');
$m->quit;

# every attempt of the 2,400 calls is in canary_requests: one per call
# without fallback (it raised), two per call with fallback
$node->safe_psql('postgres', 'SELECT canary_flush()');
my $nf = $nerrors;
my $fb = $ncalls - $nf;
is($nf, $ncalls / 2, "half the calls (no fallback) raised an error ($nf)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM canary_requests WHERE user_id LIKE 'rss-%'}),
	$nf + 2 * $fb, 'every attempt is recorded (' . ($nf + 2 * $fb) . ' rows), none lost');
is($node->safe_psql('postgres', 'SELECT dropped FROM canary_stats()'), '0', 'the metrics queue dropped nothing');
ok(!$node->log_contains('terminated by signal'), 'no backend crashed');

$node->stop;
done_testing();
