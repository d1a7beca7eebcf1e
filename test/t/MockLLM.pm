# Shared by the TAP tests that program the mock LLM server (test/mock_llm.py)
# through its control API.  test/run_suite.sh starts the server and exports
# its URL as LLM_CANARY_MOCK_URL.
package MockLLM;

use strict;
use warnings;
use Exporter 'import';
use HTTP::Tiny;

our @EXPORT = qw(mock_profile);

my $http = HTTP::Tiny->new(timeout => 5);

# Replace the behaviour profile of one model id (a JSON object); dies on failure.
sub mock_profile
{
	my ($model, $json) = @_;
	my $mock = $ENV{LLM_CANARY_MOCK_URL} or die 'LLM_CANARY_MOCK_URL is not set';
	my $r = $http->request('PUT', "$mock/_mock/models/$model",
		{ content => $json, headers => { 'content-type' => 'application/json' } });
	die "mock PUT $model failed: $r->{status} $r->{content}" unless $r->{success};
}

1;
