-- Heads (seq, hash of the last record) of the vault proxy's audit log, recorded periodically by
-- the brain (brain/src/audit_heads.rs) outside the proxy's reach, so `brain audit verify` can
-- prove no tail was cut off and no chain was swapped in. `log` names the log (the embedded
-- proxy's file on this host, or the remote proxy's admin URL). The first hash recorded for a
-- seq is kept: a later, different one is the evidence, not the truth.
CREATE TABLE audit_heads (
    log TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (log, seq)
);
