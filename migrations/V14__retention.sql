-- Retention. Nothing used to leave jobs, batches, roadmaps or outbox: every roadmap was stored
-- twice (its batches and its roadmap row) and every completion event was kept for good. Now a
-- completed job's batches are folded into its row when it completes, and a finished job goes,
-- with everything kept for it, RETAIN_DAYS after it ended (store::retention, hourly).

-- What `status` shows of a job's batches (calls, tokens, cost, fallbacks, the last batch that
-- was not `ok`), as one JSON object. The completion statement stores it in jobs.batch_totals and
-- deletes the batches in the same statement; `status` reads this for a job whose batches are
-- still the source (running, failed, or completed before V14). One definition, so the two
-- cannot count differently.
CREATE FUNCTION job_batch_totals(job uuid) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'fallback_batches', count(*) FILTER (WHERE fallback_weeks > 0),
        'llm_calls', coalesce(sum(llm_calls), 0),
        'input_tokens', coalesce(sum(input_tokens), 0),
        'output_tokens', coalesce(sum(output_tokens), 0),
        'cached_input_tokens', coalesce(sum(cached_input_tokens), 0),
        'cost_nanos', coalesce(sum(cost_nanos), 0),
        'last_problem', (array_agg('batch ' || batch_index || ': ' || outcome ORDER BY batch_index DESC)
                             FILTER (WHERE outcome <> 'ok'))[1])
    FROM batches WHERE job_id = job
$$;

-- The folded batches of a completed job (job_batch_totals at completion); NULL while its
-- batches are the source.
ALTER TABLE jobs ADD COLUMN batch_totals jsonb;

-- Finished jobs by the moment they ended, so that the retention pass finds those past
-- RETAIN_DAYS by an index range instead of reading every job. Running jobs, the ones the claim
-- and the sweeper look at, are left out. completed_at alone: it is written once, when the job
-- ends, where an index on updated_at (which every checkpoint and renewal writes) would cost every
-- one of those updates its HOT path and new index entries.
CREATE INDEX jobs_finished_at ON jobs (completed_at) WHERE status <> 'running';

-- Every end sets completed_at; a finished row that lacks it (from a version before that) is
-- dated by its last write, so that it too is found by the index above.
UPDATE jobs SET completed_at = updated_at WHERE status <> 'running' AND completed_at IS NULL;

-- Outcome events (completed, failed) stay as long as their job: a job published again
-- re-announces its outcome from its stored event. This finds a job's outcome rows, for that
-- and for the retention pass, which deletes them with their job. It replaces V9's index on
-- completion rows alone. (A job's progress rows are trimmed by the relay 7 days after they
-- were sent, like any other event, so they need no index by job.)
DROP INDEX IF EXISTS outbox_completion_by_job;
CREATE INDEX outbox_retained_by_job ON outbox (job_id)
    WHERE routing_key IN ('roadmap.completed', 'roadmap.failed');

-- The relay's minutely trim (store::outbox::prune_sent) never deletes outcome rows: with them in
-- its index it would step over every one of them, a month of jobs, at every pass. V6's index
-- on every sent row is replaced by one without them.
DROP INDEX outbox_sent_at;
CREATE INDEX outbox_sent_at ON outbox (sent_at)
    WHERE sent_at IS NOT NULL AND routing_key NOT IN ('roadmap.completed', 'roadmap.failed');

-- A refused message's `roadmap.failed` event names a job_id that no job row has (that is why
-- it was announced), so no job takes it along: the retention pass deletes such rows by their
-- age. Failures are few, and so are this index's entries.
CREATE INDEX outbox_failed_created_at ON outbox (created_at) WHERE routing_key = 'roadmap.failed';
