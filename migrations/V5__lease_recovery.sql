-- Recovery bookkeeping for crash safety.
ALTER TABLE jobs
    -- Claims that took the job from an owner that neither finished nor released it (a crash or
    -- a lost lease). A job that keeps killing its workers is failed as poison.
    ADD COLUMN abandoned       integer     NOT NULL DEFAULT 0,
    -- The current delivery was acked before the job ended (long jobs outlive the broker's ack
    -- timeout); from then on only the sweeper can bring the job back if its owner dies.
    ADD COLUMN delivery_acked  boolean     NOT NULL DEFAULT false,
    -- When the sweeper last re-published the job, so it does not do so on every pass.
    ADD COLUMN redispatched_at timestamptz;
