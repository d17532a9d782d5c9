-- The virtual key that started a session (`vk:<sha256 of the key>`, as MCP principals), NULL for
-- the master key and triggers (issue 15). The console and `/v1/sessions` show a virtual key only
-- its own sessions: paged in the database on (owner, created_at), never filtered after reading.
ALTER TABLE sessions ADD COLUMN owner TEXT;
CREATE INDEX sessions_owner_created ON sessions (owner, created_at);
