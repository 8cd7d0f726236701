-- What the content checks found in a batch (repeated tasks, drift from the outline, hours off
-- plan, unusable resources) and whether they cost a re-ask: {"problems": [...], "reasked": bool}.
-- NULL for a clean batch, and for batches of a version without the checks.
ALTER TABLE batches ADD COLUMN quality jsonb;

-- The totals `status` shows once a completion folds a job's batches away (V14), now with the
-- content problems by kind and the batches re-asked for them.
CREATE OR REPLACE FUNCTION job_batch_totals(job uuid) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'fallback_batches', count(*) FILTER (WHERE fallback_weeks > 0),
        'llm_calls', coalesce(sum(llm_calls), 0),
        'input_tokens', coalesce(sum(input_tokens), 0),
        'output_tokens', coalesce(sum(output_tokens), 0),
        'cached_input_tokens', coalesce(sum(cached_input_tokens), 0),
        'cost_nanos', coalesce(sum(cost_nanos), 0),
        'last_problem', (array_agg('batch ' || batch_index || ': ' || outcome ORDER BY batch_index DESC)
                             FILTER (WHERE outcome <> 'ok'))[1],
        'quality_reasked', count(*) FILTER (WHERE (quality->>'reasked')::boolean),
        'quality_problems', (SELECT coalesce(jsonb_object_agg(kind, n), '{}'::jsonb)
                             FROM (SELECT p->>'kind' AS kind, count(*) AS n
                                   FROM batches b, jsonb_array_elements(b.quality->'problems') p
                                   WHERE b.job_id = job GROUP BY 1) k))
    FROM batches WHERE job_id = job
$$;
