-- Varti message store, schema version 3: the MessageIds of the PullRequests accepted within
-- the freshness window, so that a replayed PullRequest is refused by either instance of a
-- pair. Rows older than the window are deleted as new ones come.
CREATE TABLE seen_signals (
    message_id TEXT PRIMARY KEY,
    seen_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX seen_signals_seen_at ON seen_signals (seen_at);
