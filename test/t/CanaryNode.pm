# The cluster preamble every TAP test of llm_canary shares: a node with the
# library preloaded, the worker pointed at the test's database, the test's
# own settings, started, with the extension created.
#
#   my $node = canary_node('call', conf => "llm_canary.check_interval = 1\n");
#
# Options: conf (extra postgresql.conf lines), database (default 'postgres';
# created when it is another one, with database_options such as an
# encoding), initdb (extra initdb arguments, e.g. ['--locale=C']), env (a hash of environment variables only
# the server gets, e.g. a secret key), preload (default 1; 0 leaves the
# library out), extension (default 1; 0 creates the database but not the
# extension), start (default 1; 0 returns the node initialised only).
#
#   canary_create_put($node);   # the SQL function put(), below
package CanaryNode;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(canary_node canary_create_models canary_create_put);

sub canary_node
{
	my ($name, %o) = @_;
	my $db = $o{database} // 'postgres';
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(extra => $o{initdb} // []);
	my $conf = '';
	$conf .= "shared_preload_libraries = 'llm_canary'\nllm_canary.database_name = '$db'\n"
	  if $o{preload} // 1;
	$node->append_conf('postgresql.conf', $conf . ($o{conf} // ''));
	return $node unless $o{start} // 1;
	{
		local %ENV = (%ENV, %{ $o{env} // {} });
		$node->start;
	}
	$node->safe_psql('postgres', qq{CREATE DATABASE "$db" } . ($o{database_options} // ''))
	  if $db ne 'postgres';
	$node->safe_psql($db, 'CREATE EXTENSION llm_canary CASCADE') if $o{extension} // 1;
	return $node;
}

# The two models of the decision tests, m-old and m-new (OpenAI dialect, a
# loopback port nothing listens on: the tests write requests, they make no
# calls), in database $db (default postgres) of the node.
sub canary_create_models
{
	my ($node, $db) = @_;
	$node->safe_psql($db // 'postgres', q{
INSERT INTO canary_models (name, provider, base_url, model) VALUES
    ('m-old', 'openai', 'http://127.0.0.1:9/v1', 'old'),
    ('m-new', 'openai', 'http://127.0.0.1:9/v1', 'new');
});
	return;
}

# put(p_canary, p_at, p_cohort, n, k_err, k_ref, k_td, lat, users): n
# requests of one cohort in the 100 s before p_at, 1 ms apart, at stage
# ramp_25, model m-new for the canary cohort and m-old otherwise: the first
# k_err errors, the next k_ref refusals, the others ok, each of latency lat
# ms; the first k_td with a thumbs-down given at p_at - 5 s.  Users u<g>, or
# <cohort><g % users> when users > 0.  Created in database $db (default
# postgres) of the node.
sub canary_create_put
{
	my ($node, $db) = @_;
	$node->safe_psql($db // 'postgres', q{
CREATE FUNCTION put(p_canary text, p_at timestamptz, p_cohort text, n integer,
                    k_err integer DEFAULT 0, k_ref integer DEFAULT 0, k_td integer DEFAULT 0,
                    lat integer DEFAULT 1000, users integer DEFAULT 0)
RETURNS void LANGUAGE sql AS $$
    WITH r AS (
        INSERT INTO canary_requests (request_id, ts, canary, stage, user_id, cohort, model,
                                     outcome, http_status, latency_ms, refusal, fallback)
        SELECT gen_random_uuid(), p_at - interval '100 s' + g * interval '1 ms', p_canary, 'ramp_25',
               CASE WHEN users > 0 THEN p_cohort || (g % users) ELSE 'u' || g END, p_cohort,
               CASE p_cohort WHEN 'canary' THEN 'm-new' ELSE 'm-old' END,
               CASE WHEN g < k_err THEN 'error' WHEN g < k_err + k_ref THEN 'refusal' ELSE 'ok' END,
               200, lat, g >= k_err AND g < k_err + k_ref, false
          FROM generate_series(0, n - 1) g
        RETURNING request_id, ts
    )
    INSERT INTO canary_feedback (request_id, ts, thumbs_down, canary, cohort)
    SELECT request_id, p_at - interval '5 s', true, p_canary, p_cohort FROM r
     ORDER BY ts LIMIT k_td;
$$});
	return;
}

1;
