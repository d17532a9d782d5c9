-- Crash-safe snapshots (brain/src/snapshots.rs): a snapshot's row is written `pending` (by
-- replica `replica`) before the backend is asked for anything, and turns `ready` once what
-- the backend stored is recorded. A `pending` row of a replica that is gone marks what a
-- crash may have left at the backend (found by the snapshot id: E2B names the template
-- after it, docker the image); it becomes `discarded` once that was removed, and the row is
-- forgotten later (a template E2B finished after the crash is swept by its name meanwhile).
-- Only `ready` rows are snapshots the API shows or restores.
ALTER TABLE snapshots ADD COLUMN state TEXT NOT NULL DEFAULT 'ready';
ALTER TABLE snapshots ADD COLUMN replica TEXT;
