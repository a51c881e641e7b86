-- Varti message store, schema version 7: two data centres (issue 18).
-- (Versions 6 and 7 belong to other features.)

-- The webhook outbox: one row per event about a message (received, sent, failed), inserted
-- in the same transaction as the state change it reports and deleted once the backend
-- answered. A row is leased to the instance delivering it (holder, lease_until); a row
-- whose lease ran out, or that nobody claimed, is taken by another instance.
CREATE TABLE webhook_outbox (
    seq         bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    message_id  text COLLATE "C" NOT NULL,
    owner       text NOT NULL,
    kind        text NOT NULL,
    error       text,
    at          timestamptz NOT NULL,
    holder      text,
    lease_until timestamptz
);
-- A message's events in order (per-message ordering, the announcing instance's claim).
CREATE INDEX webhook_outbox_message ON webhook_outbox (message_id, seq);

-- The readiness probe's write: one row per instance, rewritten at each probe (a commit
-- proves the store takes writes; a read-only standby or a cut-off primary fails it).
CREATE TABLE instance_probes (
    instance text PRIMARY KEY,
    at       timestamptz NOT NULL
);
