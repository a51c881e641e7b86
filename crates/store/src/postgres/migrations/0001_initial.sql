-- Varti message store, schema version 1.
-- Applied by varti_store::postgres::migrate inside one transaction, recorded in
-- schema_migrations. Never edit a released migration: add the next numbered file.

-- One row per message (both directions). message_id is the primary key, so duplicate
-- detection across every instance sharing the database is the unique constraint itself.
-- Identifiers use the "C" collation: byte order, the same listing order as the sled store,
-- independent of the database's locale.
CREATE TABLE messages (
    message_id          text COLLATE "C" PRIMARY KEY,
    direction           text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    state               text NOT NULL,
    owner               text COLLATE "C" NOT NULL,
    from_party          text NOT NULL,
    to_party            text NOT NULL,
    service             text NOT NULL,
    action              text NOT NULL,
    conversation_id     text NOT NULL,
    ref_to_message_id   text,
    pmode_id            text NOT NULL,
    -- [PayloadEntry] as JSON: fixed at insertion, read with the record.
    payloads            jsonb NOT NULL,
    has_payloads        boolean NOT NULL,
    attempts            bigint NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz,
    lease_holder        text,
    lease_expires_at    timestamptz,
    receipt             bytea,
    last_error          text,
    duplicates          bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    settled_at          timestamptz,
    payloads_purged_at  timestamptz,
    -- Always equal to MessageRecord::due_at(): when claim_due may take the message.
    due_at              timestamptz,
    -- The operation id of the insert, so that a retried insert whose first COMMIT's answer
    -- was lost recognises its own row.
    created_op          uuid NOT NULL
);

CREATE INDEX messages_due ON messages (due_at, message_id) WHERE due_at IS NOT NULL;
CREATE INDEX messages_created ON messages (created_at DESC, message_id DESC);
CREATE INDEX messages_owner ON messages (owner, created_at DESC, message_id DESC);
CREATE INDEX messages_settled ON messages (settled_at) WHERE settled_at IS NOT NULL;
CREATE INDEX messages_unpurged ON messages (settled_at)
    WHERE settled_at IS NOT NULL AND payloads_purged_at IS NULL AND has_payloads;

-- A message's transitions, appended in the transaction that makes them.
CREATE TABLE message_history (
    message_id  text COLLATE "C" NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    at          timestamptz NOT NULL,
    event       text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    note        text,
    -- The store operation that wrote it: a retried operation finds out whether its first
    -- attempt committed.
    op          uuid NOT NULL,
    PRIMARY KEY (message_id, seq)
);

-- Payload bytes, in chunks. A payload row and all its chunks are written in one
-- transaction, so a payload is either complete or absent.
CREATE TABLE payloads (
    payload_id  text COLLATE "C" PRIMARY KEY,
    size        bigint NOT NULL,
    chunks      integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payload_chunks (
    payload_id  text COLLATE "C" NOT NULL REFERENCES payloads (payload_id) ON DELETE CASCADE,
    seq         integer NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (payload_id, seq)
);
-- Payloads are usually compressed or encrypted already: store chunks out of line without
-- spending CPU on a compression attempt that gains nothing.
ALTER TABLE payload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
