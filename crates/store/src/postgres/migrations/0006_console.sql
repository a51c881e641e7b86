-- Varti message store, schema version 6: the operations console's local accounts and login
-- sessions, shared by every instance on the database (a load balancer may send a user's
-- requests to either). A session is kept under the SHA-256 of its cookie, never the cookie.
CREATE TABLE console_users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE console_sessions (
    id_sha256  TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES console_users (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_name);
