-- The fleet's shared provider budget: one row per provider and model, a GCRA per limit. Each
-- column is the "theoretical arrival time" of that limit: the moment by which everything
-- reserved so far would have been paid for at the configured rate. A call reserves by pushing
-- it forward in one UPDATE and waits while it lies more than the burst (one minute) ahead.
CREATE TABLE llm_budget (
    budget_key   text        PRIMARY KEY,
    tokens_tat   timestamptz NOT NULL DEFAULT now(),
    requests_tat timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- What a batch cost at the prices configured when it was written, in billionths of the
-- currency unit: whole numbers, so a job's cost is an exact sum of its batches'.
ALTER TABLE batches ADD COLUMN cost_nanos bigint NOT NULL DEFAULT 0;

-- Completion events are kept (the relay trims every other sent event) so that a completed job
-- published again is answered with its stored completion event; this finds it.
CREATE INDEX outbox_completion_by_job ON outbox (job_id) WHERE routing_key = 'roadmap.completed';
