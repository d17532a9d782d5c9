-- Brain tables use migration versions 1..999; the gateway adds its own from 2000 up.
-- Times are unix milliseconds (BIGINT) so the same queries run on SQLite and PostgreSQL.

-- One row: the stable identity of this store, used as the `airlock.owner` label.
CREATE TABLE instance (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    backend TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('provisioning', 'running', 'destroying', 'destroyed', 'failed')),
    image TEXT,
    -- SandboxHandle as JSON, set once the backend has created the sandbox.
    handle TEXT,
    -- The provision request as JSON (task description, credentials names, resources, ttl).
    request TEXT NOT NULL,
    session_id TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    destroyed_at BIGINT
);

CREATE INDEX sandboxes_status_expires ON sandboxes (status, expires_at);
CREATE INDEX sandboxes_session ON sandboxes (session_id);
