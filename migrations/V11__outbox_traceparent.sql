-- The W3C trace of the job an event belongs to, when traces are exported, so that an event the
-- relay sends (rather than the express path) carries it on too.
ALTER TABLE outbox ADD COLUMN traceparent text;
