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
package CanaryNode;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(canary_node);

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

1;
