-- MCP (streamable HTTP) sessions: each belongs to the principal (key) that initialized it.
-- Sandboxes created through a session carry its id in sandboxes.session_id.
CREATE TABLE mcp_sessions (
    id TEXT PRIMARY KEY,
    -- Principal id: "master" for the master key, later a virtual key's id.
    principal TEXT NOT NULL,
    -- The negotiated protocol revision, e.g. 2025-11-25.
    protocol_version TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    closed_at BIGINT
);

CREATE INDEX mcp_sessions_principal_open ON mcp_sessions (principal, closed_at, last_seen);
