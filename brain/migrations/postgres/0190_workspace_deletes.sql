-- Persistent workspaces' lock rows (brain/src/store/workspaces.rs). A delete and a claim of one
-- workspace must exclude each other across replicas: both first write this row (an upsert, so
-- the second waits on the row lock or the primary key), then check the other side. A claim
-- upserts `ready` and fails on `deleting`; a delete sets `deleting` and backs out while a live
-- sandbox holds the name. The `deleting` row (a tombstone) stays until the backend's volume is
-- gone, then is removed; a missing row means `ready`.
CREATE TABLE workspaces (
    backend TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (backend, name)
);
