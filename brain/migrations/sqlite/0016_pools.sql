-- Warm pools (brain/src/pool.rs): a sandbox started ahead of demand, with no grant, carries the
-- key of its pool here until it is claimed (then NULL, for good). Rows with a pool are hidden
-- from the API; restart reconciliation adopts or drains them.
ALTER TABLE sandboxes ADD COLUMN pool TEXT;
