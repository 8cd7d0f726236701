-- Dead letters are kept in Postgres, not read back from a queue. A queue can only be read by
-- taking its messages and handing them back: the order rotates with every look, a number in a
-- listing names another message on the next one, and every look is a delivery that a quorum
-- queue counts towards its delivery limit. A row keeps a stable number (id) and is changed by
-- nothing but an operator's replay or purge.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    -- Stable identity of the letter. A copy that had to go to the broker's dead-letter queue
    -- (Postgres was away) carries it as header `x-dead-letter-id`, so moving the copy into this
    -- table twice (a crash between insert and ack) files it once.
    letter_id   uuid        NOT NULL UNIQUE,
    -- The job the message names, when readable (the rule of a refusal's job_id); NULL otherwise.
    job_id      uuid,
    -- The reason code (`x-reject-reason` on the broker copy) and its text.
    reason      text        NOT NULL,
    message     text        NOT NULL,
    -- The key the message was delivered with; NULL when only the broker copy was left to read.
    routing_key text,
    -- The AMQP properties, with `headers` as readable JSON (strings as text, numbers as numbers),
    -- so that an operator reads them as they are and a replay publishes them again.
    properties  jsonb       NOT NULL,
    -- The original bytes, exactly: a replay sends them again.
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- `dlq list --reason`, `dlq replay --reason`, `dlq purge --reason`.
CREATE INDEX dead_letters_reason ON dead_letters (reason);
-- Age questions (how many arrived in the last hour, how old the oldest is).
CREATE INDEX dead_letters_created_at ON dead_letters (created_at);
