"""Fills a brain's SQLite store with sessions and writes a vault-proxy audit log with a valid
hash chain (the format of vault-proxy/src/audit/record.rs, whose module docs give the
independent checker this follows). Standard library only.

    python3 gen.py sessions DB N [OWNER N_OWNED]   # N finished sessions (+ N_OWNED of OWNER)
    python3 gen.py audit FILE N                     # N records, valid chain, 1/50 denials
"""
import hashlib
import json
import sqlite3
import sys
import time
import uuid


def sessions(db, n, owner=None, owned=0):
    con = sqlite3.connect(db)
    now = int(time.time() * 1000)
    rows = []
    statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
    for i in range(n + owned):
        mine = i >= n
        origin = {"kind": ["api", "slack", "github", "mcp"][i % 4]}
        if mine:
            origin = {"kind": "api", "owner": owner}
        created = now - (n + owned - i) * 1000
        rows.append((
            "sess-" + uuid.uuid4().hex[:24], statuses[i % 10], f"bench task {i}: fix issue #{i}",
            "scripted", "[]", 20, json.dumps(origin, separators=(",", ":")),
            "done", i % 7, 1000 + i, 50, 0.0123, created + 10 ** 9, created, created,
            owner if mine else None,
        ))
    con.executemany(
        "INSERT INTO sessions (id, status, task, model, credentials, max_steps, origin, result, "
        "steps, input_tokens, output_tokens, cost_usd, deadline_at, created_at, updated_at, owner) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


def audit(path, n):
    prev = "0" * 64
    t0 = time.time() - n / 100.0
    with open(path, "w", encoding="utf-8") as f:
        for seq in range(1, n + 1):
            t = t0 + seq / 100.0
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t)))
            ts += ".%03dZ" % int((t - int(t)) * 1000)
            deny = seq % 50 == 0
            rec = {
                "seq": seq, "ts": ts, "sandbox": "sb-%d" % (seq // 40),
                "session": "sess-%d" % (seq // 400), "event": "block" if deny else "swap",
                "host": "api.github.com" if seq % 3 else "registry.npmjs.org", "port": 443,
                "method": "GET", "path": "/repos/acme/widgets/pulls/%d" % seq,
                "credential": "GITHUB_TOKEN", "decision": "deny" if deny else "allow",
                "reason": "credential_not_allowed_for_host" if deny else "bound_host",
                "status": 403 if deny else 200, "prev": prev,
            }
            body = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
            h = hashlib.sha256((prev + body).encode()).hexdigest()
            f.write(body[:-1] + ',"hash":"' + h + '"}\n')
            prev = h


if __name__ == "__main__":
    if sys.argv[1] == "sessions":
        sessions(sys.argv[2], int(sys.argv[3]),
                 sys.argv[4] if len(sys.argv) > 4 else None,
                 int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    else:
        audit(sys.argv[2], int(sys.argv[3]))
