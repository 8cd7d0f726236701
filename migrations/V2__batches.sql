-- Checkpoints: one row per finished batch. A resumed job reads these and generates only the
-- batches that are missing.
CREATE TABLE batches (
    job_id         uuid        NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    batch_index    integer     NOT NULL,
    first_week     integer     NOT NULL,
    last_week      integer     NOT NULL,
    weeks          jsonb       NOT NULL,
    outcome        text        NOT NULL,
    fallback_weeks integer     NOT NULL,
    llm_calls      integer     NOT NULL,
    input_tokens   bigint      NOT NULL,
    output_tokens  bigint      NOT NULL,
    fencing_token  bigint      NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, batch_index)
);
