# The upgrade fragments (sql/updates/FROM--TO/*.sql) against the install
# parts (sql/parts/*.sql), read as text, no server needed.  Several
# fragments may replace the same function, and only the last one's body
# counts: an earlier copy with another body is dead code that the next
# change edits by mistake.  So every function a fragment creates or
# replaces must have one text in all fragments, and that text must be the
# one in sql/parts (the body byte for byte, as 001_upgrade compares its
# md5; the rest of the statement up to white space).  A failure names the
# function and the files.
use strict;
use warnings;
use Test::More;
use FindBin;

my $top = "$FindBin::Bin/../..";

# The top-level statements of a file: split at semicolons outside quotes,
# dollar quotes and comments.  Comments are dropped from the statements
# (not from what is inside quotes).
sub statements
{
	my ($file) = @_;
	open my $fh, '<', $file or die "$file: $!";
	my $s = do { local $/; <$fh> };
	close $fh;
	my @out;
	my $cur = '';
	my $i = 0;
	my $n = length $s;
	while ($i < $n)
	{
		my $rest = substr($s, $i);
		if ($rest =~ /^(--[^\n]*)/ || $rest =~ /^(\/\*.*?\*\/)/s)
		{
			$i += length $1;
			$cur .= ' ';
		}
		elsif ($rest =~ /^('(?:[^']|'')*')/s
			|| $rest =~ /^((\$(?:[A-Za-z_]\w*)?\$).*?\2)/s)
		{
			$cur .= $1;
			$i += length $1;
		}
		elsif (substr($s, $i, 1) eq ';')
		{
			push @out, $cur;
			$cur = '';
			$i++;
		}
		else
		{
			$cur .= substr($s, $i, 1);
			$i++;
		}
	}
	push @out, $cur if $cur =~ /\S/;
	return @out;
}

# The functions a statement list creates: name(arguments) => [header, body],
# the arguments and the header with their white space folded, CREATE OR
# REPLACE read as CREATE; the body is the dollar-quoted text as it stands.
sub functions
{
	my %f;
	for my $st (@_)
	{
		next
		  unless $st =~ /^\s*CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([\w.@"]+)\s*\(/i;
		my $name = lc $1;
		$name =~ s/^\@extschema\@\.//;
		# the argument list: up to the matching parenthesis
		my $start = $+[0];
		my ($depth, $j) = (1, $start);
		while ($depth > 0 && $j < length $st)
		{
			my $c = substr($st, $j, 1);
			if ($c eq "'")
			{
				substr($st, $j) =~ /^('(?:[^']|'')*')/s;
				$j += length($1) - 1;
			}
			$depth++ if $c eq '(';
			$depth-- if $c eq ')';
			$j++;
		}
		(my $args = substr($st, $start, $j - 1 - $start)) =~ s/\s+/ /g;
		my ($body, $header) = ('', $st);
		if ($st =~ /(\$(?:[A-Za-z_]\w*)?\$)(.*?)\1/s)
		{
			$body = $2;
			$header = substr($st, 0, $-[0]) . '$$ $$' . substr($st, $+[0]);
		}
		$header =~ s/CREATE\s+OR\s+REPLACE\s+FUNCTION/CREATE FUNCTION/i;
		$header =~ s/\s+/ /g;
		$header =~ s/^ | $//g;
		$f{"$name($args)"} = [ $header, $body ];
	}
	return \%f;
}

# how many CREATE FUNCTION lines a file has: what the parser must find
sub create_lines
{
	my $n = 0;
	for my $file (@_)
	{
		open my $fh, '<', $file or die "$file: $!";
		$n += grep { /^CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\b/i } <$fh>;
		close $fh;
	}
	return $n;
}

my %parts;
my @part_files = sort glob("$top/sql/parts/*.sql");
for my $file (@part_files)
{
	my $f = functions(statements($file));
	(my $short = $file) =~ s{.*/sql/}{sql/};
	$parts{$_} = [ @{ $f->{$_} }, $short ] for keys %$f;
}
is(scalar(keys %parts), create_lines(@part_files),
	'sql/parts: the parser finds every function the parts create');

for my $dir (sort grep { -d } glob("$top/sql/updates/*"))
{
	(my $release = $dir) =~ s{.*/}{};
	my %seen;    # function => [[fragment, header, body], ...]
	my @files = sort glob("$dir/*.sql");
	for my $file (@files)
	{
		(my $short = $file) =~ s{.*/sql/}{sql/};
		my $f = functions(statements($file));
		push @{ $seen{$_} }, [ $short, @{ $f->{$_} } ] for keys %$f;
	}
	my (@several, @drift);
	for my $fn (sort keys %seen)
	{
		my @copies = @{ $seen{$fn} };
		my %texts = map { ("$_->[1]\0$_->[2]" => 1) } @copies;
		push @several,
		  "$fn: " . join(', ', map { $_->[0] } @copies) . ' carry different texts'
		  if keys %texts > 1;
		my $part = $parts{$fn} or next;    # not in 1.1: dropped by the upgrade
		for my $c (@copies)
		{
			my $what = $c->[2] ne $part->[1] ? 'body' : $c->[1] ne $part->[0] ? 'header' : next;
			push @drift, "$fn: the $what in $c->[0] differs from $part->[2]";
		}
	}
	is(scalar(map { @$_ } values %seen), create_lines(@files),
		"$release: the parser finds every function the fragments create or replace");
	is(join("\n", @several), '',
		"$release: a function replaced by several fragments has the same text in each");
	is(join("\n", @drift), '',
		"$release: every function a fragment creates is the text of sql/parts");
}

done_testing();
