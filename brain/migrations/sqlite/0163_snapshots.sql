-- Workspace snapshots (brain/src/snapshots.rs): `POST /v1/sandboxes/{id}/snapshot` records one row
-- per snapshot; `backend_ref` is what the backend stored (docker: a local image holding the
-- workspace tar). Never a grant: the env, stubs and proxy token stay with the sandbox.
-- `image` is the source sandbox's image, which a sandbox started from the snapshot reuses.
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    image TEXT,
    source_sandbox TEXT NOT NULL,
    backend_ref TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
