/*
 * canary_schema_name: the extension's schema as the catalog names it,
 * unquoted.  CREATE EXTENSION writes @extschema@ into the scripts already
 * quoted when the name needs it ("Odd Canary"), so inside a string it must
 * not be quoted again, and inside a format() template a % of the name would
 * be read as a conversion.  SQL a function builds therefore names the schema
 * through this function, as an argument of format() with %I; SQL written in
 * the script itself names it with @extschema@.  Part 01, so that everything
 * after can use it, the install's DO blocks included.
 */
CREATE FUNCTION canary_schema_name()
RETURNS name
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname FROM pg_namespace n WHERE n.oid = '@extschema@'::regnamespace
$$;
COMMENT ON FUNCTION canary_schema_name() IS
    'The schema of the extension, unquoted (for format()''s %I)';
REVOKE ALL ON FUNCTION canary_schema_name() FROM PUBLIC;
