-- Input tokens the provider served from its prompt cache, per checkpoint (a job's batches share
-- their prompt's first part, and providers bill cached tokens lower).
ALTER TABLE batches ADD COLUMN cached_input_tokens bigint NOT NULL DEFAULT 0;
