"""Times console pages on a running brain (signed in through /ui/login like a browser) and
the same pages' baseline, GET /healthz, in the same run. Standard library only.
Args: base_url db virtual_key label. Prints one table row per page: median and p95 of REPS
sequential requests (kept-alive connection), and the ratio of the median to /healthz's."""
import hashlib
import http.client
import os
import re
import sqlite3
import statistics
import sys
import time
import urllib.parse
from datetime import datetime, timezone

base, db, vkey, label = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
master = os.environ["AIRLOCK_MASTER_KEY"]
reps = int(os.environ.get("REPS", "20"))
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)


def get(path, cookie=""):
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    r = conn.getresponse()
    body = r.read()
    return r.status, r.getheader("Set-Cookie", ""), body


def sign_in(key):
    _, set_cookie, body = get("/ui/login")
    login = set_cookie.split(";")[0]
    csrf = re.search(rb'name="csrf" value="([0-9a-f]+)"', body).group(1).decode()
    form = urllib.parse.urlencode({"csrf": csrf, "key": key})
    conn.request("POST", "/ui/login", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": login})
    r = conn.getresponse()
    r.read()
    assert r.status == 303, r.status
    cookies = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
    return [c.split(";")[0] for c in cookies if c.startswith("airlock_ui=")][0]


def timed(path, cookie, must=None):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        status, _, body = get(path, cookie)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, (path, status, body[:300])
        if must:
            assert must.encode() in body, (path, must)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], len(body)


con = sqlite3.connect(db)
n_sessions = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
mid = con.execute("SELECT created_at FROM sessions ORDER BY created_at LIMIT 1 OFFSET ?",
                  (n_sessions // 2,)).fetchone()[0]
mid_rfc = datetime.fromtimestamp(mid / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")
one = con.execute("SELECT id FROM sessions ORDER BY created_at DESC LIMIT 1").fetchone()[0]
con.close()
cookie = sign_in(master)
vk_cookie = sign_in(vkey)
owner = "vk:" + hashlib.sha256(vkey.encode()).hexdigest()
n_audit = int(os.environ["AUDIT_RECORDS"])

# The audit page starts a background chain verification when it has none: let it finish
# first so it does not share the CPU with the timed requests.
t = time.perf_counter()
while True:
    _, _, body = get("/ui/audit", cookie)
    if b"chain intact" in body and b"verifying" not in body:
        break
    if b"chain BROKEN" in body:
        sys.exit("the generated chain does not verify")
    time.sleep(0.2)
verify_ms = (time.perf_counter() - t) * 1000

pages = [
    ("GET /healthz (baseline)", "/healthz", "", None),
    ("sessions, first page", "/ui/sessions", cookie, "Older"),
    ("sessions, page at the middle (before=)", "/ui/sessions?before=" + urllib.parse.quote(mid_rfc), cookie, "Older"),
    ("sessions, status=failed", "/ui/sessions?status=failed", cookie, "st-failed"),
    ("sessions, virtual key (its 50)", "/ui/sessions", vk_cookie, "bench task"),
    ("one session", "/ui/sessions/" + one, cookie, "Transcript"),
    ("audit, first page (200)", "/ui/audit", cookie, "chain intact"),
    ("audit, page at the middle (before=)", "/ui/audit?before=%d" % (n_audit // 2), cookie, "Older"),
    ("audit, decision=deny", "/ui/audit?decision=deny", cookie, "credential_not_allowed_for_host"),
    ("audit, host=registry.npmjs.org", "/ui/audit?host=registry.npmjs.org", cookie, "registry.npmjs.org"),
    ("credentials", "/ui/credentials", cookie, "Credentials"),
]
base_ms = None
print(f"\n{label}: {n_sessions} sessions, {n_audit} audit records; "
      f"first chain verification (background, before timing) {verify_ms:.0f} ms")
print("| page | median ms | p95 ms | × /healthz | bytes |")
print("| --- | --- | --- | --- | --- |")
for name, path, ck, must in pages:
    med, p95, size = timed(path, ck, must)
    if base_ms is None:
        base_ms = med
    print(f"| {name} | {med:.1f} | {p95:.1f} | {med / base_ms:.1f} | {size} |")
    sys.stdout.flush()
