-- Sessions: one agent loop each, driven from its event log (brain/src/sessions/).
-- Booleans and counters are BIGINT and times unix milliseconds so the same queries run on
-- SQLite and PostgreSQL.

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    agent TEXT,
    backend TEXT,
    -- JSON list of credential names the session's sandboxes may be granted.
    credentials TEXT NOT NULL,
    max_steps BIGINT NOT NULL,
    max_cost_usd DOUBLE PRECISION,
    -- JSON: where the task came from ({"kind":"api"|"slack"|"github"|"mcp", ...}).
    origin TEXT NOT NULL,
    result TEXT,
    error TEXT,
    steps BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_sandbox_id TEXT,
    -- Follow-up messages posted and not yet turned into events (a row-level count, so
    -- "finish only if nothing is pending" is one conditional UPDATE on both engines).
    pending_messages BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    -- The brain process running the loop, and until when its claim holds without a heartbeat.
    claim_owner TEXT,
    lease_expires_at BIGINT,
    deadline_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX sessions_claimable ON sessions (status, lease_expires_at);
CREATE INDEX sessions_created ON sessions (created_at);

-- The durable log: every model request/response, tool start/result and state change, in order.
CREATE TABLE session_events (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- Follow-ups queued into a session; `consumed_seq` is the user_message event that took it.
CREATE TABLE session_messages (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    consumed_seq BIGINT
);

CREATE INDEX session_messages_pending ON session_messages (session_id, consumed_seq);
