-- Varti message store, schema version 5: search (issue 14). Every field a backend or an
-- operator searches by gets an index that serves the listing order (created_at DESC,
-- message_id DESC), so a filtered page reads an index range, never the whole table.
-- (Version 4 is the audit trail.)

-- The other party of a message, and whether it is test traffic (the ebMS test service and
-- action, or the EC connectivity test): derived from the header, so every row, old or new,
-- is classified the same way. Adding stored generated columns rewrites the table once.
ALTER TABLE messages
    ADD COLUMN partner text COLLATE "C" GENERATED ALWAYS AS (
        CASE WHEN direction = 'inbound' THEN from_party ELSE to_party END) STORED,
    ADD COLUMN is_test boolean GENERATED ALWAYS AS (
        (service = 'http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service'
         AND action = 'http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test')
        OR service = 'http://ec.europa.eu/e-delivery/services/connectivity-service') STORED;

-- Partners, services and actions come from the PModes (a message whose header names others
-- is refused), so their values are short; a ConversationId is whatever the sender chose, so
-- its index holds a digest (a B-tree entry must stay under ~2.7 kB).
CREATE INDEX messages_partner ON messages (partner, created_at DESC, message_id DESC);
CREATE INDEX messages_service ON messages (service, created_at DESC, message_id DESC);
CREATE INDEX messages_action ON messages (action, created_at DESC, message_id DESC);
CREATE INDEX messages_conversation
    ON messages (md5(conversation_id), created_at DESC, message_id DESC);
-- The default listing leaves test traffic out; test traffic has its own retention.
CREATE INDEX messages_regular ON messages (created_at DESC, message_id DESC) WHERE NOT is_test;
CREATE INDEX messages_test ON messages (created_at) WHERE is_test;
-- An id prefix is a range of the primary key (message_id is COLLATE "C", so LIKE 'p%'
-- becomes an index range by itself).

-- Message properties, one row per distinct (name, value) of a message, written with the
-- message and removed with it. The search key is a digest of both, for the same reason as
-- the conversation's.
CREATE TABLE message_properties (
    message_id  text COLLATE "C" NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    name        text NOT NULL,
    value       text NOT NULL,
    created_at  timestamptz NOT NULL,
    search_key  text NOT NULL GENERATED ALWAYS AS (
        md5(length(name)::text || ':' || name || value)) STORED
);
CREATE INDEX message_properties_search
    ON message_properties (search_key, created_at DESC, message_id DESC);
CREATE INDEX message_properties_message ON message_properties (message_id);

INSERT INTO message_properties (message_id, name, value, created_at)
SELECT DISTINCT m.message_id, p ->> 'name', p ->> 'value', m.created_at
FROM messages m, jsonb_array_elements(m.properties) AS p;
