-- Postgres is the ledger of every job the worker has heard of, until its one outcome: a job
-- that waits (for its user's turn, for the provider) waits here, not only as a message in a
-- broker queue, so that a purged queue or a lost copy cannot strand it.
ALTER TABLE jobs
    -- A parked job (no owner) is not dispatched again before this moment.
    ADD COLUMN not_before timestamptz,
    -- Turns this job has waited for its user (USER_MAX_IN_FLIGHT): each wait is longer.
    ADD COLUMN waits      integer NOT NULL DEFAULT 0;

-- A refused message whose job_id is readable is that job's outcome even when it names no user;
-- a cancel that arrives before its job is recorded with the request unknown.
ALTER TABLE jobs ALTER COLUMN user_id DROP NOT NULL;

-- The sweeper wakes parked jobs as they come due, every second; this keeps that read small.
CREATE INDEX jobs_parked ON jobs (not_before) WHERE status = 'running' AND owner IS NULL;
