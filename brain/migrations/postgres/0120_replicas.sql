-- Brain replicas sharing this database (issue 12). Each process registers a row and renews its
-- lease on the DATABASE clock; a replica whose lease lapsed is dead. Sandboxes carry the
-- replica that looks after them: a replica reconciles, reaps and adopts only its own rows and
-- those of dead replicas (taken over by compare-and-set), never a live replica's.
-- Times are unix milliseconds. Versions 120+ keep clear of other branches' migrations.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    lease_expires_at BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);
CREATE INDEX replicas_lease ON replicas (lease_expires_at);

-- NULL: written before replicas existed; treated as a dead replica's (adopted by the next).
ALTER TABLE sandboxes ADD COLUMN replica TEXT;
CREATE INDEX sandboxes_replica ON sandboxes (replica, status);
