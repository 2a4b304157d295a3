-- Dashboard sessions (`reconciler serve`): one row per logged-in browser session, so
-- that logging out ends the session on every replica at once, not when its cookie
-- expires. The cookie itself is signed (see reconciler/server/sessions.py); the row
-- holds the SHA-256 of the session's id, never the id, and no token.
CREATE TABLE IF NOT EXISTS reconciler_sessions (
  sid_hash   bytea PRIMARY KEY,
  user_name  text NOT NULL,                -- the API token's name
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS reconciler_sessions_expires_idx ON reconciler_sessions (expires_at);
