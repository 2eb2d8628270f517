-- The console's sign-in sessions: a person (or an operator) signs in with a key once, and the browser holds
-- a random session token in an HttpOnly cookie instead of the key. Only the token's SHA-256 is stored. A
-- session lives no longer than its key (revoked or its person disabled: refused at once), its expiry, or
-- its sign-out. Rows are kept after they end (who was signed in, and when), and pruned by age.
CREATE TABLE console_sessions (
    token_hash  bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    key_id      text        NOT NULL REFERENCES api_keys (id),
    -- Sent by the page with every request that changes something; a cross-site form cannot know it.
    csrf_token  text        NOT NULL CHECK (length(csrf_token) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX console_sessions_key ON console_sessions (key_id);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
