-- The weeks are stored as the worker wrote them: `json` keeps the text as sent, where `jsonb`
-- parsed every week into its binary form on the way in (and again for the roadmap), which was
-- most of Postgres's work per job. Neither column is queried by its content. Large values are
-- compressed with lz4 where the server has it: several times cheaper than the default pglz.
-- Rewrites both tables once.
ALTER TABLE batches ALTER COLUMN weeks TYPE json USING weeks::json;
ALTER TABLE roadmaps ALTER COLUMN roadmap TYPE json USING roadmap::json;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE batches ALTER COLUMN weeks SET COMPRESSION lz4;
        ALTER TABLE roadmaps ALTER COLUMN roadmap SET COMPRESSION lz4;
        ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
    END IF;
END
$$;
