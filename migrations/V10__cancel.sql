-- A cancel request from the job's user (the cancel message): the replica working the job sees
-- it at its next checkpoint, which reads the job row anyway, and stops there.
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
