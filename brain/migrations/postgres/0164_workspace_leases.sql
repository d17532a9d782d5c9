-- Persistent workspaces (brain/src/store/workspaces.rs): the sandbox that mounts workspace
-- `workspace` records it here. At most one live sandbox (provisioning, running, destroying) per
-- backend holds a workspace: the partial unique index makes the claim atomic (a second claim
-- fails with a unique violation), and a row that ends (destroyed, failed) drops out of the
-- index, which frees the workspace with no separate release step.
ALTER TABLE sandboxes ADD COLUMN workspace TEXT;
CREATE UNIQUE INDEX sandboxes_live_workspace ON sandboxes (backend, workspace)
    WHERE workspace IS NOT NULL AND status IN ('provisioning', 'running', 'destroying');
