-- One row per job_id: the idempotency key. Postgres is the authority on a job's state; the
-- broker only carries deliveries.
CREATE TABLE jobs (
    job_id         uuid PRIMARY KEY,
    user_id        text        NOT NULL,
    request        jsonb       NOT NULL,
    -- The plan (phases, batch ranges) fixed at the first claim, so replicas with another
    -- BATCH_WEEKS resume on the ranges the checkpoints were written for.
    plan           jsonb       NOT NULL,
    status         text        NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'completed', 'failed')),
    batches_total  integer     NOT NULL,
    batches_done   integer     NOT NULL DEFAULT 0,
    -- Lease: the replica working the job, until when, and a fencing token that every write
    -- must present, so a replica that lost the lease cannot write over the new owner.
    owner          text,
    lease_until    timestamptz,
    fencing_token  bigint      NOT NULL DEFAULT 1,
    claims         integer     NOT NULL DEFAULT 1,
    roadmap_id     uuid,
    failure_reason text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz
);

CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE status = 'running';
