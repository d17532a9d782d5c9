#!/usr/bin/env python3
"""sandbox_provision / sandbox_execute latency against the Docker CLI, in one run.

Starts a real brain (docker backend, SQLite in a temp dir) and measures, over kept-alive
HTTP connections:
  - provision:      POST /v1/sandboxes until the sandbox answers (201)
  - provision+del:  provision then DELETE (comparable to `docker run --rm`)
  - exec true:      POST /v1/sandboxes/{id}/exec {"command":"true"}
and, on the same image, interleaved with the cold provisions (one of each per round):
  - docker run -d --entrypoint sleep IMAGE 60   (create + start, no teardown)
  - docker run --rm --entrypoint true IMAGE     (create + start + wait + remove)
  - docker exec CONTAINER true

and, with a warm pool (`pools: [{backend: docker, size: --pool-size}]`, a second brain):
  - warm provision: POST /v1/sandboxes claimed from a ready pool (the pool refilled between
    claims, untimed)
  - burst: --burst concurrent provisions against the full pool: per-request latency, pool
    hits/misses, and the refill rate (sandboxes/s until the pool is full again)
  - pause / resume: POST /v1/sandboxes/{id}/pause and /resume (docker pause/unpause)
  - snapshot / restore: POST /v1/sandboxes/{id}/snapshot of a workspace holding a
    --snapshot-mb checkout (files of 100 KB), then POST /v1/sandboxes {"from_snapshot"}
    until the restored sandbox answers (memory raised so workspace + tar fit)

The cold provisions and the two `docker run` baselines are measured interleaved (one of each
per round), so both see the same load. Prints p50/p99 for each, the ratios, and the issue-16
targets (cold <= 1.0x `docker run -d`, warm p50 <= 50 ms, warm p99 <= 150 ms) with the load
average. Usage:
  python3 bench/sandbox_bench.py [--provisions 20] [--execs 200] [--profile release]
      [--pool-size 8] [--burst 50] [--image airlock-sandbox:latest]
      [--sections cold,exec,warm,burst,pause,snapshot]
Env: AIRLOCK_BENCH_BRAIN (a brain binary built elsewhere, e.g. CARGO_TARGET_DIR=/work/rel-x).
"""

import argparse
import concurrent.futures
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
IMAGE = os.environ.get("AIRLOCK_SANDBOX_IMAGE", "airlock-sandbox:latest")


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
    def __init__(self, profile, pool_size=0):
        self.dir = tempfile.mkdtemp(prefix="airlock-bench-")
        self.key = "bench-" + secrets.token_hex(12)
        env = dict(os.environ, AIRLOCK_MASTER_KEY=self.key, RUST_LOG="warn")
        # AIRLOCK_BENCH_BRAIN: a brain binary built elsewhere (e.g. a shared CARGO_TARGET_DIR).
        binary = os.environ.get("AIRLOCK_BENCH_BRAIN") or os.path.join(ROOT, "target", profile, "brain")
        config = os.path.join(self.dir, "airlock.yaml")
        with open(config, "w") as f:
            # JSON is YAML.
            # Own address range: the engine's default pools hold only ~30 bridge networks,
            # fewer than a burst needs (one network per sandbox).
            doc = {"sandbox": {"docker": {"image": IMAGE, "subnet_pool": "10.213.0.0/16"}}}
            if pool_size:
                doc["pools"] = [{"backend": "docker", "size": pool_size}]
            json.dump(doc, f)
        self.pool_size = pool_size
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config, "--listen", "127.0.0.1:0", "--backend", "docker",
             "--database-url", f"sqlite://{self.dir}/airlock.db"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "brain.log"), "w"),
            env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise SystemExit(f"brain did not start: {line!r}; see {self.dir}/brain.log")
        host, port = line.split()[-1].rsplit(":", 1)
        self.addr = (host, int(port))
        self.conn = http.client.HTTPConnection(host, int(port))

    def metric(self, prefix):
        conn = http.client.HTTPConnection(*self.addr)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def ready(self):
        return self.metric('airlock_brain_pool_ready_sandboxes{backend="docker"}')

    def wait_full(self, timeout=300):
        t0 = time.perf_counter()
        while self.ready() < self.pool_size:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"pool did not refill in {timeout}s; see {self.dir}/brain.log")
            time.sleep(0.02)
        return time.perf_counter() - t0

    def call_new_conn(self, method, path, body=None):
        """For concurrent callers: one connection per call."""
        conn = http.client.HTTPConnection(*self.addr, timeout=300)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        if resp.status >= 300:
            raise SystemExit(f"{method} {path} -> {resp.status} {payload[:300]!r}")
        return json.loads(payload) if payload else None

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


SECTIONS = ["cold", "exec", "warm", "burst", "pause", "snapshot"]


def bench_cold(brain, a, results):
    """Cold provisions interleaved with the `docker run` baselines, one of each per round, so
    both see the same load (this machine's load drifts over a run)."""
    # Warm-up: first provision and first `docker run` pay one-off costs (page cache).
    sb = brain.call("POST", "/v1/sandboxes", {"task_description": "warm-up"})
    brain.call("DELETE", f"/v1/sandboxes/{sb['id']}")
    name = "airlock-bench-" + secrets.token_hex(4)
    docker("run", "-d", "--name", name, "--entrypoint", "sleep", IMAGE, "60")
    docker("rm", "-f", name)
    prov, prov_del, run_d, run_rm = [], [], [], []
    for _ in range(a.provisions):
        t0 = time.perf_counter()
        sb = brain.call("POST", "/v1/sandboxes", {"task_description": "bench"})
        t1 = time.perf_counter()
        brain.call("DELETE", f"/v1/sandboxes/{sb['id']}")
        t2 = time.perf_counter()
        prov.append(t1 - t0)
        prov_del.append(t2 - t0)
        name = "airlock-bench-" + secrets.token_hex(4)
        dt, _ = timed(lambda: docker("run", "-d", "--name", name, "--entrypoint", "sleep", IMAGE, "60"))
        run_d.append(dt)
        docker("rm", "-f", name)
        dt, _ = timed(lambda: docker("run", "--rm", "--entrypoint", "true", IMAGE))
        run_rm.append(dt)
    results += [summary("brain provision", prov), summary("brain provision+delete", prov_del),
                summary("docker run -d", run_d), summary("docker run --rm true", run_rm)]


def bench_exec(brain, a, results):
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

    name = "airlock-bench-exec-" + secrets.token_hex(4)
    docker("run", "-d", "--name", name, "--entrypoint", "sleep", IMAGE, "600")
    try:
        for _ in range(5):
            docker("exec", name, "true")
        dex = [timed(lambda: docker("exec", name, "true"))[0] for _ in range(min(a.execs, 100))]
    finally:
        docker("rm", "-f", name)
    results.append(summary("docker exec true", dex))


def bench_warm(pool, a, results):
    """Claims from a full pool, one at a time (the pool refilled between claims, untimed)."""
    warm = []
    for _ in range(a.provisions):
        t0 = time.perf_counter()
        sb = pool.call("POST", "/v1/sandboxes", {"task_description": "bench warm"})
        warm.append(time.perf_counter() - t0)
        pool.call("DELETE", f"/v1/sandboxes/{sb['id']}")
        pool.wait_full()
    results.append(summary("warm pool provision", warm))


def bench_burst(pool, a, results, extra):
    """All at once against a full pool; then how fast it is full again."""
    claims0 = pool.metric('airlock_brain_pool_claims_total{backend="docker"}')
    misses0 = pool.metric('airlock_brain_pool_misses_total{backend="docker"}')

    def one(_):
        t = time.perf_counter()
        sb = pool.call_new_conn("POST", "/v1/sandboxes", {"task_description": "burst"})
        return time.perf_counter() - t, sb["id"]

    t_burst = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.burst) as ex:
        out = list(ex.map(one, range(a.burst)))
    burst_wall = time.perf_counter() - t_burst
    results.append(summary(f"burst of {a.burst} provisions", [d for d, _ in out]))
    hits = pool.metric('airlock_brain_pool_claims_total{backend="docker"}') - claims0
    misses = pool.metric('airlock_brain_pool_misses_total{backend="docker"}') - misses0
    refill = pool.wait_full()
    extra["burst"] = {
        "provisions": a.burst, "pool_hits": hits, "pool_misses": misses,
        "wall_s": round(burst_wall, 3),
        "refill_after_burst_s": round(refill, 3),
        "refill_rate_per_s": round(a.pool_size / max(refill + burst_wall, 1e-9), 2),
    }
    for _, sid in out:
        pool.call("DELETE", f"/v1/sandboxes/{sid}")


def bench_pause(pool, a, results):
    sb = pool.call("POST", "/v1/sandboxes", {"task_description": "pause bench"})
    pauses, resumes = [], []
    for _ in range(a.provisions):
        pauses.append(timed(lambda: pool.call("POST", f"/v1/sandboxes/{sb['id']}/pause"))[0])
        resumes.append(timed(lambda: pool.call("POST", f"/v1/sandboxes/{sb['id']}/resume"))[0])
    r = pool.call("POST", f"/v1/sandboxes/{sb['id']}/exec", {"command": "echo back"})
    assert r["stdout"] == "back\n", r
    results += [summary("pause", pauses), summary("resume", resumes)]
    pool.call("DELETE", f"/v1/sandboxes/{sb['id']}")


def bench_snapshot(pool, a, results, extra):
    """Snapshot and restore of a checkout-sized workspace."""
    big = {"resources": {"memory_mb": 1024 + 3 * a.snapshot_mb}}
    sb = pool.call("POST", "/v1/sandboxes", {"task_description": "snapshot bench", **big})
    files = a.snapshot_mb * 10
    fill = ("python3 -c \"import os\n"
            f"for i in range({files}):\n"
            " d='repo/d%03d' % (i // 100)\n"
            " os.makedirs(d, exist_ok=True)\n"
            " open(d + '/f%05d' % i, 'wb').write(os.urandom(100 * 1024))\"")
    r = pool.call("POST", f"/v1/sandboxes/{sb['id']}/exec", {"command": fill, "timeout_s": 600})
    assert r["exit_code"] == 0, r
    snaps, restores = [], []
    for _ in range(a.snapshots):
        dt, snap = timed(lambda: pool.call("POST", f"/v1/sandboxes/{sb['id']}/snapshot"))
        snaps.append(dt)
        dt, rb = timed(lambda: pool.call("POST", "/v1/sandboxes", {
            "task_description": "restore bench", "from_snapshot": snap["snapshot"], **big}))
        restores.append(dt)
        r = pool.call("POST", f"/v1/sandboxes/{rb['id']}/exec",
                      {"command": "find repo -type f | wc -l"})
        assert r["stdout"].strip() == str(files), r
        pool.call("DELETE", f"/v1/sandboxes/{rb['id']}")
        pool.call("DELETE", f"/v1/snapshots/{snap['snapshot']}")
    extra["snapshot_bytes"] = snap["size_bytes"]
    results += [summary(f"snapshot {a.snapshot_mb} MB", snaps),
                summary(f"provision from {a.snapshot_mb} MB snapshot", restores)]
    pool.call("DELETE", f"/v1/sandboxes/{sb['id']}")


def report(results, extra, a):
    by = {r["name"]: r for r in results}
    print(f"{'measure':28} {'n':>4} {'p50 ms':>9} {'p99 ms':>9}")
    for r in results:
        print(f"{r['name']:28} {r['n']:>4} {r['p50_ms']:>9} {r['p99_ms']:>9}")
    pairs = {
        "provision / docker run -d (p50)": ("brain provision", "docker run -d", "p50_ms"),
        "provision / docker run --rm true (p50)": ("brain provision", "docker run --rm true", "p50_ms"),
        "provision+delete / docker run --rm (p50)":
            ("brain provision+delete", "docker run --rm true", "p50_ms"),
        "exec / docker exec (p50)": ("brain exec `true`", "docker exec true", "p50_ms"),
        "exec / docker exec (p99)": ("brain exec `true`", "docker exec true", "p99_ms"),
        "warm provision / docker run -d (p50)": ("warm pool provision", "docker run -d", "p50_ms"),
        "warm provision / cold provision (p50)": ("warm pool provision", "brain provision", "p50_ms"),
    }
    ratios = {k: by[x][q] / by[y][q] for k, (x, y, q) in pairs.items() if x in by and y in by}
    print()
    for k, v in ratios.items():
        print(f"{k:44} {v:.3f}")
    # The issue-16 targets, in one place.
    print()
    if "provision / docker run -d (p50)" in ratios:
        cold = ratios["provision / docker run -d (p50)"]
        print(f"target cold provision <= 1.0x docker run -d (p50): {cold:.3f}x "
              f"({by['brain provision']['p50_ms']} ms vs {by['docker run -d']['p50_ms']} ms, "
              f"interleaved) {'MET' if cold <= 1.0 else 'MISSED'}")
    if "warm pool provision" in by:
        warm = by["warm pool provision"]
        print(f"target warm provision p50 <= 50 ms: {warm['p50_ms']} ms "
              f"{'MET' if warm['p50_ms'] <= 50 else 'MISSED'}")
        print(f"target warm provision p99 <= 150 ms: {warm['p99_ms']} ms "
              f"{'MET' if warm['p99_ms'] <= 150 else 'MISSED'}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    for k, v in extra.get("burst", {}).items():
        print(f"burst {k:38} {v}")
    if "snapshot_bytes" in extra:
        print(f"snapshot size (tar) {extra['snapshot_bytes']} bytes")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": results, "ratios": ratios, **extra}, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--provisions", type=int, default=20)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--profile", default="release", choices=["release", "debug"])
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--pool-size", type=int, default=8)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--snapshot-mb", type=int, default=200)
    ap.add_argument("--snapshots", type=int, default=3)
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--image", help="sandbox image (default $AIRLOCK_SANDBOX_IMAGE or "
                    "airlock-sandbox:latest); needs an agent with POST /configure")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    if not sections <= set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(sections - set(SECTIONS))}")
    global IMAGE
    if a.image:
        IMAGE = a.image

    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        raise SystemExit(f"{IMAGE} missing: run bash images/build-offline.sh")

    results, extra = [], {}
    if sections & {"cold", "exec"}:
        brain = Brain(a.profile)
        try:
            if "cold" in sections:
                bench_cold(brain, a, results)
            if "exec" in sections:
                bench_exec(brain, a, results)
        finally:
            brain.close()

    if sections & {"warm", "burst", "pause", "snapshot"}:
        pool = Brain(a.profile, pool_size=a.pool_size)
        try:
            pool.wait_full()
            if "warm" in sections:
                bench_warm(pool, a, results)
            if "burst" in sections:
                bench_burst(pool, a, results, extra)
            if "pause" in sections:
                bench_pause(pool, a, results)
            if "snapshot" in sections:
                bench_snapshot(pool, a, results, extra)
        finally:
            pool.close()

    report(results, extra, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
