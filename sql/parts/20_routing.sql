/*
 * Routing: which model serves a user.  Sticky per user through a hash of the
 * user id, optionally pinned per session.  Implemented in src/routing.c.
 */

CREATE FUNCTION canary_bucket(user_id text, salt text DEFAULT '')
RETURNS numeric
AS 'MODULE_PATHNAME', 'canary_bucket'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION canary_bucket(text, text) IS
    'Routing bucket 0.00 to 99.99: int(first 8 hex digits of sha256(salt || user_id), 16) % 10000 / 100';

CREATE FUNCTION canary_route(user_id text, canary text DEFAULT 'default', session_id text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'canary_route'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_route(text, text, text) IS
    'Name of the model that serves this user in this rollout';

CREATE FUNCTION canary_cohort(user_id text, canary text DEFAULT 'default', session_id text DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'canary_cohort'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_cohort(text, text, text) IS
    'canary when the user is served by the new model, control otherwise';

/*
 * Session pins: the first decision for a session holds for the rollout's
 * session_ttl, so a user does not switch voices mid-conversation.  A tripped
 * kill switch always wins over a pin.
 */
CREATE TABLE canary_sessions (
    canary      text NOT NULL REFERENCES canary_config (name) ON UPDATE CASCADE ON DELETE CASCADE,
    session_id  text NOT NULL,
    user_id     text NOT NULL,
    model       text NOT NULL,
    cohort      text NOT NULL CHECK (cohort IN ('canary', 'control')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (canary, session_id)
);
CREATE INDEX canary_sessions_expires_idx ON canary_sessions (expires_at);
COMMENT ON TABLE canary_sessions IS 'Routing decisions pinned per session until expires_at';
