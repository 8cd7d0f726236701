-- The relay leases outbox rows instead of holding a transaction (and row locks) while it waits
-- for the broker's confirms, and an event that no queue took waits with a backoff instead of
-- being counted as sent.
ALTER TABLE outbox
    -- Until when a relay holds the row; another relay takes it over once this has passed.
    ADD COLUMN relay_until     timestamptz,
    -- Publish attempts so far, for the backoff of events no queue takes.
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz,
    -- Confirmed by the broker, but no queue was bound for it (progress events are not kept).
    ADD COLUMN unrouted        boolean     NOT NULL DEFAULT false;

-- Retention trims by the time of sending.
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;
