-- Webhook events accepted but not yet turned into a session (issue 12): a Slack or GitHub event
-- is written here, in the same transaction as its delivery id, BEFORE the hook answers 200,
-- and deleted in the transaction that records the reply owed for it (`trigger_waits`). The
-- brain handling it holds a lease (database clock) renewed while its task lives; a brain that
-- dies leaves it to be taken over once the lease lapses. `session_id` is set once the event
-- started or continued a session, so a takeover never starts it twice. Times: unix ms.
CREATE TABLE trigger_events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    -- JSON: what handling needs (the Slack event and intent, or the GitHub request).
    payload TEXT NOT NULL,
    session_id TEXT,
    owner TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX trigger_events_lease ON trigger_events (lease_expires_at);

-- One reply per settled state of a session (issue 12): two waits on one session that see the
-- same settle race for this key; the winner (its wait id) builds, publishes and queues the
-- reply, the other finishes silently. Kept after delivery, pruned with webhook_deliveries.
CREATE TABLE trigger_reply_keys (
    reply_key TEXT PRIMARY KEY,
    wait_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX trigger_reply_keys_created ON trigger_reply_keys (created_at);
