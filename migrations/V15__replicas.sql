-- Each replica's heartbeat: its row is stamped every few seconds while it reaches the database.
-- An owner whose database sessions are gone (a proxy restart, pg_terminate_backend,
-- idle_session_timeout, a failover) but that stamped its row within the grace is alive; only
-- an owner silent past the grace, with no session either, has died. Rows of replicas gone for a
-- day are deleted by the replicas still running.
CREATE TABLE replicas (
    owner      text        PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    beat_at    timestamptz NOT NULL DEFAULT now()
);

-- Whether replica `owner` is alive: it stamped its heartbeat within `grace_secs`, or one of its
-- sessions (application_name = `app_prefix` || owner) is connected. The session test keeps a
-- replica of a version without heartbeats alive during a rolling deploy.
CREATE FUNCTION owner_alive(owner text, app_prefix text, grace_secs float8) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM replicas r
                   WHERE r.owner = $1 AND r.beat_at > now() - make_interval(secs => $3))
        OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $2 || $1)
$$;
