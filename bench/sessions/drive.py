"""Starts N sessions at once on a running brain, waits for all to settle, reports throughput
and the brain's memory. Standard library only. Args: base_url sessions brain_pid idle_rss_kb mode."""
import json
import os
import sys
import threading
import time
import urllib.request

base, n, pid, idle_rss, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
key = os.environ["AIRLOCK_MASTER_KEY"]


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def vm(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


ids = [None] * n
errors = []


def start(i):
    try:
        ids[i] = call("POST", "/v1/sessions", {"task": f"bench task {i}"})["id"]
    except Exception as e:  # noqa: BLE001 — reported below
        errors.append(repr(e))


t0 = time.monotonic()
threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
posted = time.monotonic() - t0
if errors:
    sys.exit(f"{len(errors)} POST /v1/sessions failed, e.g. {errors[0]}")

pending = set(ids)
statuses = {}
peak_rss_sampled = 0
deadline = time.monotonic() + 900
while pending and time.monotonic() < deadline:
    peak_rss_sampled = max(peak_rss_sampled, vm("VmRSS"))
    page = call("GET", f"/v1/sessions?limit=500")
    for s in page["sessions"]:
        if s["id"] in pending and s["status"] in ("succeeded", "failed", "cancelled"):
            pending.discard(s["id"])
            statuses[s["id"]] = s
    if pending:
        time.sleep(0.2)
elapsed = time.monotonic() - t0
if pending:
    sys.exit(f"{len(pending)} sessions did not settle in time")

ok = sum(1 for s in statuses.values() if s["status"] == "succeeded")
failed = [s for s in statuses.values() if s["status"] != "succeeded"]
steps = sum(s["steps"] for s in statuses.values())
print(f"mode={mode} sessions={n} succeeded={ok} failed={len(failed)} model_steps={steps}")
print(f"all {n} POSTs answered in {posted:.2f} s; all settled in {elapsed:.2f} s")
print(f"throughput: {n / elapsed:.1f} sessions/s ({steps / elapsed:.1f} model steps/s)")
print(f"brain RSS: idle {int(idle_rss) / 1024:.1f} MiB, peak (VmHWM) {vm('VmHWM') / 1024:.1f} MiB")
if failed:
    print("first failure:", failed[0].get("error"))
    sys.exit(1)
