-- Replies a trigger still owes (brain/src/triggers/waits.rs). A row is written once a Slack or
-- GitHub event has started or continued a session, and deleted in the same transaction that
-- queues the reply for the settled session. The brain waiting holds a lease and renews it; a
-- brain killed while waiting stops renewing, and any brain (the restarted one, a replica) takes
-- the row over once the lease expires and finishes the wait. Times are unix milliseconds.
CREATE TABLE trigger_waits (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    session_id TEXT NOT NULL,
    -- JSON: what finishing needs (Slack channel + thread, or the GitHub request).
    context TEXT NOT NULL,
    owner TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX trigger_waits_lease ON trigger_waits (lease_expires_at);
