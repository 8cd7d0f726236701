-- Finished roadmaps; at most one per job.
CREATE TABLE roadmaps (
    roadmap_id uuid PRIMARY KEY,
    job_id     uuid        NOT NULL UNIQUE REFERENCES jobs (job_id) ON DELETE CASCADE,
    user_id    text        NOT NULL,
    roadmap    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
