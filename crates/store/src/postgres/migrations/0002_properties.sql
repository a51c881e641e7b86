-- Varti message store, schema version 2: message properties (eb:MessageProperties, which
-- OOTS needs for originalSender and finalRecipient), as JSON like the payloads.
ALTER TABLE messages ADD COLUMN properties jsonb NOT NULL DEFAULT '[]'::jsonb;
