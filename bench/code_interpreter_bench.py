#!/usr/bin/env python3
"""Code interpreter interception: what it adds per code call, and warm pool against cold.

Starts a real brain (docker backend, SQLite in a temp dir, scripted models so no model
latency counts) and measures, over kept-alive HTTP, in one run:

  - bare exec:        POST /v1/sandboxes/{id}/exec  python3 -c 'print(sum(range(10)))'
                      (the baseline: the same Python through a bare `sandbox_execute`)
  - code call:        POST /v1/responses, model `ci-sum` (one code call, then the answer),
                      tools [code_interpreter] on a named container (REPL already running):
                      two model turns + the cell through the persistent REPL
  - model only:       POST /v1/responses, a scripted text answer, no tools (two of these
                      are the model share of a code call)
  - auto, cold:       POST /v1/responses with container {"type":"auto"}: provision, REPL start,
                      the cell, the answer (the sandbox is destroyed after the response)
  - auto, warm pool:  the same on a second brain with `pools: [{backend: docker, size: N}]`
                      (the pool refilled between requests, untimed)

Prints p50/p99 and: added per code call = code call - bare exec - 2 x model only, and
warm/cold. Usage:
  cargo build --release -p brain && bash images/build-offline.sh
  python3 bench/code_interpreter_bench.py [--calls 100] [--autos 15] [--pool-size 2]
      [--profile release] [--brain path/to/brain]
"""

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.environ.get("AIRLOCK_SANDBOX_IMAGE", "airlock-sandbox:latest")
CODE = "print(sum(range(10)))"
CI = {"type": "code_interpreter", "container": {"type": "auto"}}


def pct(samples, p):
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1)))))]


def summary(name, samples_s):
    ms = [x * 1000.0 for x in samples_s]
    return {"name": name, "n": len(ms), "p50_ms": round(pct(ms, 50), 2),
            "p99_ms": round(pct(ms, 99), 2), "mean_ms": round(statistics.mean(ms), 2)}


class Brain:
    def __init__(self, binary, pool_size=0):
        self.dir = tempfile.mkdtemp(prefix="airlock-ci-bench-")
        self.key = "bench-" + secrets.token_hex(12)
        self.pool_size = pool_size
        scripts = {
            "ci-sum": [{"tool_calls": [{"id": "call_1", "name": "code_interpreter",
                                        "arguments": {"code": CODE}}]},
                       {"text": "The sum of 0..9 is 45."}],
            "text": [{"text": "The sum of 0..9 is 45."}],
        }
        models = []
        for name, script in scripts.items():
            path = os.path.join(self.dir, f"{name}.json")
            with open(path, "w") as f:
                json.dump(script, f)
            models.append({"model_name": name, "litellm_params": {"model": f"scripted/{path}"}})
        # JSON is YAML.
        doc = {"models": {"model_list": models},
               "sandbox": {"docker": {"image": IMAGE, "subnet_pool": "10.214.0.0/16"}}}
        if pool_size:
            doc["pools"] = [{"backend": "docker", "size": pool_size}]
        config = os.path.join(self.dir, "airlock.yaml")
        with open(config, "w") as f:
            json.dump(doc, f)
        env = dict(os.environ, AIRLOCK_MASTER_KEY=self.key, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config,
             "--listen", "127.0.0.1:0", "--backend", "docker",
             "--database-url", f"sqlite://{self.dir}/airlock.db"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "brain.log"), "w"),
            env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"brain did not start: {line!r}; see {self.dir}/brain.log")
        host, port = line.split()[-1].rsplit(":", 1)
        self.addr = (host, int(port))
        self.conn = http.client.HTTPConnection(host, int(port), timeout=300)

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

    def metric(self, prefix):
        self.conn.request("GET", "/metrics")
        text = self.conn.getresponse().read().decode()
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_pool_full(self, timeout=300):
        t0 = time.perf_counter()
        while self.metric('airlock_brain_pool_ready_sandboxes{backend="docker"}') < self.pool_size:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"pool did not refill; see {self.dir}/brain.log")
            time.sleep(0.02)

    def wait_no_sandboxes(self, timeout=120):
        """Auto containers are destroyed after their response: let that finish, untimed."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            v = self.call("GET", "/v1/sandboxes")
            if all(s["status"] in ("destroyed", "failed") for s in v["sandboxes"]):
                return
            time.sleep(0.05)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def code_logs(r):
    calls = [i for i in r["output"] if i["type"] == "code_interpreter_call"]
    assert len(calls) == 1 and calls[0]["outputs"][0]["logs"].strip() == "45", r
    return calls[0]


def autos(brain, n, pooled):
    out = []
    body = {"model": "ci-sum", "input": "sum 0..9", "tools": [CI]}
    for _ in range(n):
        if pooled:
            brain.wait_pool_full()
        else:
            brain.wait_no_sandboxes()
        dt, r = timed(lambda: brain.call("POST", "/v1/responses", body))
        code_logs(r)
        out.append(dt)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--autos", type=int, default=15)
    ap.add_argument("--pool-size", type=int, default=2)
    ap.add_argument("--profile", default="release", choices=["release", "debug"])
    ap.add_argument("--brain", help="the brain binary (default: target/<profile>/brain; e.g. one "
                    "copied out of a shared CARGO_TARGET_DIR)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        raise SystemExit(f"{IMAGE} missing: run bash images/build-offline.sh")

    binary = a.brain or os.path.join(ROOT, "target", a.profile, "brain")
    results = {}
    brain = Brain(binary)
    try:
        sb = brain.call("POST", "/v1/sandboxes", {"task_description": "bench"})
        path = f"/v1/sandboxes/{sb['id']}/exec"
        cmd = {"command": f"python3 -c '{CODE}'"}
        for _ in range(5):
            brain.call("POST", path, cmd)
        bare = []
        for _ in range(a.calls):
            dt, r = timed(lambda: brain.call("POST", path, cmd))
            assert r["stdout"].strip() == "45", r
            bare.append(dt)
        brain.call("DELETE", f"/v1/sandboxes/{sb['id']}")

        c = brain.call("POST", "/v1/containers", {"name": "bench"})
        body = {"model": "ci-sum", "input": "sum 0..9",
                "tools": [{"type": "code_interpreter", "container": c["id"]}]}
        for _ in range(5):
            code_logs(brain.call("POST", "/v1/responses", body))
        calls = []
        for _ in range(a.calls):
            dt, r = timed(lambda: brain.call("POST", "/v1/responses", body))
            code_logs(r)
            calls.append(dt)
        brain.call("DELETE", f"/v1/containers/{c['id']}")

        text = {"model": "text", "input": "sum 0..9"}
        for _ in range(5):
            brain.call("POST", "/v1/responses", text)
        model = [timed(lambda: brain.call("POST", "/v1/responses", text))[0]
                 for _ in range(a.calls)]

        autos(brain, 2, False)  # warm-up: image layers in page cache
        cold = autos(brain, a.autos, False)
    finally:
        brain.close()

    brain = Brain(binary, a.pool_size)
    try:
        autos(brain, 2, True)
        warm = autos(brain, a.autos, True)
    finally:
        brain.close()

    rows = [summary("bare exec (python3 -c)", bare),
            summary("code call, named container", calls),
            summary("model only (scripted text)", model),
            summary("auto container, cold", cold),
            summary(f"auto container, warm pool (size {a.pool_size})", warm)]
    for r in rows:
        print(f"{r['name']:<44} n={r['n']:<4} p50 {r['p50_ms']:>9.2f} ms   "
              f"p99 {r['p99_ms']:>9.2f} ms   mean {r['mean_ms']:>9.2f} ms")
    p = {r["name"]: r["p50_ms"] for r in rows}
    added = rows[1]["p50_ms"] - rows[0]["p50_ms"]
    loop = added - 2 * rows[2]["p50_ms"]
    ratios = {
        "code call - bare exec (p50 ms)": round(added, 2),
        "of which not the two model turns (p50 ms)": round(loop, 2),
        "code call / bare exec (p50)": round(rows[1]["p50_ms"] / rows[0]["p50_ms"], 2),
        "auto warm / auto cold (p50)": round(rows[4]["p50_ms"] / rows[3]["p50_ms"], 2),
    }
    for k, v in ratios.items():
        print(f"{k:<44} {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": rows, "ratios": ratios, "p50": p}, f, indent=2)


if __name__ == "__main__":
    main()
