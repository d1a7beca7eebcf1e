# Shared by the TAP tests that use the mock LLM server (test/mock_llm.py)
# through its control API.  test/run_suite.sh starts the server and exports
# its URL as LLM_CANARY_MOCK_URL.
#
#   my $mock = mock_url();              # skips the whole test file without a mock
#   mock_profile('m-new', '{"fixed_text": "hi"}');   # or a hash reference
#   my $stats = mock_get('/_mock/stats');            # decoded JSON
package MockLLM;

use strict;
use warnings;
use Exporter 'import';
use HTTP::Tiny;
use JSON::PP;
use Test::More;

our @EXPORT = qw(mock_url mock_profile mock_get);

my $http = HTTP::Tiny->new(timeout => 10);

# The mock server's URL; skips the test file when it is not running (or, with
# need_key, when LLM_CANARY_TEST_KEY is not set either).
sub mock_url
{
	my (%o) = @_;
	my $mock = $ENV{LLM_CANARY_MOCK_URL};
	plan skip_all => 'LLM_CANARY_MOCK_URL is not set (run through test/run_suite.sh)'
	  unless $mock && (!$o{need_key} || $ENV{LLM_CANARY_TEST_KEY});
	return $mock;
}

# Replace the behaviour profile of one model id (JSON text or a hash
# reference); dies on failure.
sub mock_profile
{
	my ($model, $profile) = @_;
	my $mock = $ENV{LLM_CANARY_MOCK_URL} or die 'LLM_CANARY_MOCK_URL is not set';
	my $json = ref $profile ? encode_json($profile) : $profile;
	my $r = $http->request('PUT', "$mock/_mock/models/$model",
		{ content => $json, headers => { 'content-type' => 'application/json' } });
	die "mock PUT $model failed: $r->{status} $r->{content}" unless $r->{success};
}

# GET a path of the control API and decode its JSON; dies on failure.
sub mock_get
{
	my ($path) = @_;
	my $mock = $ENV{LLM_CANARY_MOCK_URL} or die 'LLM_CANARY_MOCK_URL is not set';
	my $r = $http->get("$mock$path");
	die "mock GET $path failed: $r->{status}" unless $r->{success};
	return decode_json($r->{content});
}

1;
