/*
 * The call path: canary_call and the refusal patterns it matches answers
 * against.  Implemented in src/call.c (with src/http.c and src/provider.c).
 */

CREATE TABLE canary_refusal_patterns (
    pattern     text PRIMARY KEY CHECK (pattern <> ''),
    enabled     boolean NOT NULL DEFAULT true,
    note        text
);
COMMENT ON TABLE canary_refusal_patterns IS
    'An answer containing one of these phrases (case-insensitive) counts as a refusal';

INSERT INTO canary_refusal_patterns (pattern, note) VALUES
    ('I cannot help with that', 'the article''s example'),
    ('I can''t help with that', NULL),
    ('I cannot assist with', NULL),
    ('I can''t assist with', NULL),
    ('I''m sorry, but I can''t', NULL),
    ('I''m sorry, but I cannot', NULL),
    ('I am unable to help with', NULL),
    ('I''m unable to help with', NULL),
    ('I''m not able to help with', NULL),
    ('I won''t be able to help with', NULL);

CREATE TRIGGER canary_refusal_patterns_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON canary_refusal_patterns
    FOR EACH STATEMENT EXECUTE FUNCTION canary_invalidate_cache();

SELECT pg_catalog.pg_extension_config_dump('canary_refusal_patterns', '');

CREATE FUNCTION canary_call(prompt text, user_id text, canary text DEFAULT 'default',
                            prompt_class text DEFAULT NULL, session_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'canary_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_call(text, text, text, text, text) IS
    'Answer a user''s prompt with the model the rollout routes them to; every attempt is recorded in canary_requests';
