-- Varti message store, schema version 4: the audit trail of administrative acts, shared by
-- every instance on the database. Append-only: the trigger below refuses any UPDATE,
-- DELETE or TRUNCATE, so no code path (and no slip in a manual session) can rewrite it
-- short of dropping the trigger as the table's owner. Entries are kept for good.
CREATE TABLE audit_log (
    seq      BIGSERIAL PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL,
    instance TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    details  JSONB NOT NULL,
    -- The appending operation's id: a retry after a lost COMMIT answer finds its own row.
    op       UUID NOT NULL UNIQUE
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Varti audit trail is append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
