-- Slack and GitHub triggers. Times are unix milliseconds.

-- Every webhook delivery accepted, keyed by its source's id (Slack `event_id`, GitHub
-- `X-GitHub-Delivery`): inserting an id that is already here means a retry or a replay,
-- which is ignored. The primary key makes that true across brain replicas.
CREATE TABLE webhook_deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- A conversation outside Airlock (Slack channel + thread ts, GitHub owner/repo#issue) and the
-- session it drives, so follow-ups continue the same session.
CREATE TABLE trigger_threads (
    source TEXT NOT NULL,
    thread_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (source, thread_key)
);

-- Outbox of replies (Slack messages, GitHub comments). A reply is written here before any
-- attempt to send it, so an API outage or a restart delays it but never loses it. A worker
-- claims due rows by moving `next_attempt_at` forward (a lease), sends, then deletes them.
CREATE TABLE trigger_replies (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    -- JSON: where to post and what (`{"channel","thread_ts","text"}` or `{"repo","issue","body"}`).
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    -- Set when the API refused the reply for good (unknown channel, no access): kept for
    -- the operator, never retried.
    failed_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX trigger_replies_due ON trigger_replies (failed_at, next_attempt_at);
