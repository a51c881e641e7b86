-- Varti message store, schema version 8: previews in the shared store (issue 18).

-- Opaque records keyed by id, so that any instance of a pair can serve a preview: the OOTS
-- gateway keeps its preview sessions, logins in progress and (encrypted by it) held evidence
-- here. The store gives them no meaning; a record is purged after keep_until.
CREATE TABLE preview_records (
    id         text COLLATE "C" PRIMARY KEY,
    data       bytea NOT NULL,
    keep_until timestamptz NOT NULL
);
CREATE INDEX preview_records_keep_until ON preview_records (keep_until);
