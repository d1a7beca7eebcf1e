/*
 * canary_schema_name: the extension's schema, unquoted.  CREATE EXTENSION
 * writes @extschema@ into the scripts already quoted when the name needs
 * it ("Odd Canary"), so inside a string it must not be quoted again, and
 * inside a format() template a % of the name would be read as a
 * conversion.  SQL a function builds therefore names the schema through
 * this function, as an argument of format() with %I; SQL written in the
 * script itself names it with @extschema@.  Part 01, so that everything
 * after can use it, the install's DO blocks included.
 *
 * parse_ident undoes quote_identifier (which CREATE EXTENSION applied; it
 * leaves only lowercase names unquoted, which parse_ident returns as they
 * are).  An expression of a constant, with no SET clause: the planner
 * inlines the call and folds it to the name (no catalog lookup per call).
 */
CREATE FUNCTION canary_schema_name() RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (pg_catalog.parse_ident('@extschema@'))[1];
COMMENT ON FUNCTION canary_schema_name() IS
    'The schema of the extension, unquoted (for format()''s %I)';
REVOKE ALL ON FUNCTION canary_schema_name() FROM PUBLIC;
