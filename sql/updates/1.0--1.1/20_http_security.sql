
-- The key policy of the outbound HTTP layer (sql/parts/11_http_policy.sql).
CREATE FUNCTION canary_models_check_policy()
RETURNS trigger
AS 'MODULE_PATHNAME', 'canary_models_check_policy'
LANGUAGE C;
COMMENT ON FUNCTION canary_models_check_policy() IS
    'Trigger: refuse a model whose api_key_env or base_url the superuser-only key policy does not allow';
REVOKE ALL ON FUNCTION canary_models_check_policy() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION canary_models_check_policy() TO llm_canary_admin;

CREATE TRIGGER canary_models_validate_policy
    BEFORE INSERT OR UPDATE ON canary_models
    FOR EACH ROW EXECUTE FUNCTION canary_models_check_policy();
