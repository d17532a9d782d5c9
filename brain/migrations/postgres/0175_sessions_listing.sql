-- The console's sessions list (issue 15): filters and search run in the database, keyset-paged
-- on (created_at, id). Each filter that leads a page's index walk has its index ending in
-- (created_at, id), so "newest first" needs no sort; the origin kind is indexed on the same
-- expression the query uses.
CREATE INDEX sessions_created_id ON sessions (created_at, id);
CREATE INDEX sessions_status_created_id ON sessions (status, created_at, id);
CREATE INDEX sessions_owner_created_id ON sessions (owner, created_at, id);
CREATE INDEX sessions_origin_kind_created_id ON sessions ((CAST(origin AS jsonb) ->> 'kind'), created_at, id);
DROP INDEX sessions_created;
DROP INDEX sessions_owner_created;
