/*
 * canary_check_age's privileges, as sql/parts/90_roles.sql gives them on a
 * fresh install (98_check_age.sql is the part itself, linked): nothing for
 * PUBLIC, the administrator and the application (the Prometheus export)
 * may run it.
 */
REVOKE ALL ON FUNCTION canary_check_age(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_check_age(text) TO llm_canary_admin, llm_canary_app;
