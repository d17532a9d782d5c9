#!/usr/bin/env python3
"""sandbox_provision / sandbox_execute latency against the Docker CLI, in one run.

Starts a real brain (docker backend, SQLite in a temp dir) and measures, over kept-alive
HTTP connections:
  - provision:      POST /v1/sandboxes until the sandbox answers (201)
  - provision+del:  provision then DELETE (comparable to `docker run --rm`)
  - exec true:      POST /v1/sandboxes/{id}/exec {"command":"true"}
and, on the same image in the same run:
  - docker run -d --entrypoint sleep IMAGE 60   (create + start, no teardown)
  - docker run --rm --entrypoint true IMAGE     (create + start + wait + remove)
  - docker exec CONTAINER true

Prints p50/p99 for each and the ratios. Usage:
  python3 bench/sandbox_bench.py [--provisions 20] [--execs 200] [--profile release]
"""

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "airlock-sandbox:latest"


def pct(samples, p):
    s = sorted(samples)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def summary(name, samples_s):
    ms = [x * 1000.0 for x in samples_s]
    return {
        "name": name,
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "mean_ms": round(statistics.mean(ms), 2),
    }


class Brain:
    def __init__(self, profile):
        self.dir = tempfile.mkdtemp(prefix="airlock-bench-")
        self.key = "bench-" + secrets.token_hex(12)
        env = dict(os.environ, AIRLOCK_MASTER_KEY=self.key, RUST_LOG="warn")
        binary = os.path.join(ROOT, "target", profile, "brain")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--backend", "docker",
             "--database-url", f"sqlite://{self.dir}/airlock.db"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "brain.log"), "w"),
            env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"brain did not start: {line!r}; see {self.dir}/brain.log")
        host, port = line.split()[-1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port))

    def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status >= 300:
            raise SystemExit(f"{method} {path} -> {resp.status} {payload[:300]!r}")
        return json.loads(payload) if payload else None

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def docker(*args):
    subprocess.run(["docker", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--provisions", type=int, default=20)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--profile", default="release", choices=["release", "debug"])
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        raise SystemExit(f"{IMAGE} missing: run bash images/build-offline.sh")

    results = []
    brain = Brain(a.profile)
    try:
        # Warm-up: first provision pays one-off costs (image layers in page cache).
        sb = brain.call("POST", "/v1/sandboxes", {"task_description": "warm-up"})
        brain.call("DELETE", f"/v1/sandboxes/{sb['id']}")

        prov, prov_del = [], []
        for _ in range(a.provisions):
            t0 = time.perf_counter()
            sb = brain.call("POST", "/v1/sandboxes", {"task_description": "bench"})
            t1 = time.perf_counter()
            brain.call("DELETE", f"/v1/sandboxes/{sb['id']}")
            t2 = time.perf_counter()
            prov.append(t1 - t0)
            prov_del.append(t2 - t0)
        results += [summary("brain provision", prov), summary("brain provision+delete", prov_del)]

        sb = brain.call("POST", "/v1/sandboxes", {"task_description": "exec bench"})
        path = f"/v1/sandboxes/{sb['id']}/exec"
        for _ in range(10):
            brain.call("POST", path, {"command": "true"})
        ex = []
        for _ in range(a.execs):
            dt, r = timed(lambda: brain.call("POST", path, {"command": "true"}))
            assert r["exit_code"] == 0, r
            ex.append(dt)
        results.append(summary("brain exec `true`", ex))
        brain.call("DELETE", f"/v1/sandboxes/{sb['id']}")
    finally:
        brain.close()

    run_d, run_rm = [], []
    for _ in range(a.provisions):
        name = "airlock-bench-" + secrets.token_hex(4)
        dt, _ = timed(lambda: docker("run", "-d", "--name", name, "--entrypoint", "sleep", IMAGE, "60"))
        run_d.append(dt)
        docker("rm", "-f", name)
        dt, _ = timed(lambda: docker("run", "--rm", "--entrypoint", "true", IMAGE))
        run_rm.append(dt)
    results += [summary("docker run -d", run_d), summary("docker run --rm true", run_rm)]

    name = "airlock-bench-exec-" + secrets.token_hex(4)
    docker("run", "-d", "--name", name, "--entrypoint", "sleep", IMAGE, "600")
    try:
        for _ in range(5):
            docker("exec", name, "true")
        dex = [timed(lambda: docker("exec", name, "true"))[0] for _ in range(min(a.execs, 100))]
    finally:
        docker("rm", "-f", name)
    results.append(summary("docker exec true", dex))

    by = {r["name"]: r for r in results}
    print(f"{'measure':28} {'n':>4} {'p50 ms':>9} {'p99 ms':>9}")
    for r in results:
        print(f"{r['name']:28} {r['n']:>4} {r['p50_ms']:>9} {r['p99_ms']:>9}")
    ratios = {
        "provision / docker run -d (p50)": by["brain provision"]["p50_ms"] / by["docker run -d"]["p50_ms"],
        "provision / docker run --rm true (p50)":
            by["brain provision"]["p50_ms"] / by["docker run --rm true"]["p50_ms"],
        "provision+delete / docker run --rm (p50)":
            by["brain provision+delete"]["p50_ms"] / by["docker run --rm true"]["p50_ms"],
        "exec / docker exec (p50)": by["brain exec `true`"]["p50_ms"] / by["docker exec true"]["p50_ms"],
        "exec / docker exec (p99)": by["brain exec `true`"]["p99_ms"] / by["docker exec true"]["p99_ms"],
    }
    print()
    for k, v in ratios.items():
        print(f"{k:44} {v:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
