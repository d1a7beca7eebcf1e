/*
 * canary_probe: an administrator's smoke test of one model's configuration.
 * It calls the model directly (no routing, no fallback, no metrics) and
 * returns what happened.  It spends tokens, so only superusers and roles
 * granted EXECUTE may call it.  Implemented in src/probe.c.
 */
CREATE FUNCTION canary_probe(model text, prompt text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'canary_probe'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_probe(text, text) IS
    'Call one model directly with a prompt: outcome, HTTP status, text, tokens, refusal, error, tries and latency as jsonb';
REVOKE EXECUTE ON FUNCTION canary_probe(text, text) FROM PUBLIC;
