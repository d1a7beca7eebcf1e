/*
 * The key policy of the outbound HTTP layer (src/http_policy.c), checked
 * when a model is written: api_key_env must name a variable a superuser
 * allowed (llm_canary.api_key_env_prefix, llm_canary.api_key_env_names),
 * base_url's host must be in llm_canary.allowed_hosts (when set), and a key
 * never goes over plain http:// to a host that is not loopback unless
 * llm_canary.allow_http_keys is on.  A refusal is SQLSTATE 42501.  The same
 * rules are enforced again at send time, on every path.  The trigger fires
 * after canary_models_validate (triggers fire in name order).
 */
CREATE FUNCTION canary_models_check_policy()
RETURNS trigger
AS 'MODULE_PATHNAME', 'canary_models_check_policy'
LANGUAGE C;
COMMENT ON FUNCTION canary_models_check_policy() IS
    'Trigger: refuse a model whose api_key_env or base_url the superuser-only key policy does not allow';

CREATE TRIGGER canary_models_validate_policy
    BEFORE INSERT OR UPDATE ON canary_models
    FOR EACH ROW EXECUTE FUNCTION canary_models_check_policy();
