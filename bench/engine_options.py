#!/usr/bin/env python3
"""What each container option of the docker backend costs the engine (create + start).

Creates and starts containers straight through the engine API (the unix socket, as the brain
does; no CLI start-up in the figures) with the options `brain/src/sandbox/docker/spec.rs` uses,
then the same minus one option at a time, and a plain container, one of each per round
(interleaved, so all see the same load). The entrypoint is `sleep`, so the agent's own start
is not in the figures. Prints medians per variant and the load average.

  python3 bench/engine_options.py [--rounds 15] [--image airlock-sandbox:latest]
      [--variants plain,sandbox,internal,...]

Variants: plain (image + entrypoint only, default bridge), sandbox (the backend's options,
`--network none`), internal (the same on an internal network like a sandbox's own with
`network: internal`: no masquerade, no host address), bridge (the same on the default bridge),
and no-<option> (sandbox without it): no-tmpfs, no-mounts, no-init, no-security, no-limits,
no-log, no-readonly, no-user.
"""

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import tempfile
import time


class EngineConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--image", default=os.environ.get("AIRLOCK_SANDBOX_IMAGE", "airlock-sandbox:latest"))
    ap.add_argument("--variants", help="comma-separated subset (default: all)")
    ap.add_argument("--socket", default="/var/run/docker.sock")
    a = ap.parse_args()
    conn = EngineConnection(a.socket)

    def api(method, path, body=None, ok=(200, 201, 204, 304)):
        data = json.dumps(body) if body is not None else None
        conn.request(method, "/v1.41" + path, body=data, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        payload = r.read()
        if r.status not in ok:
            raise SystemExit(f"{method} {path} -> {r.status} {payload[:300]!r}")
        return json.loads(payload) if payload else None

    tag = secrets.token_hex(3)
    net_name = f"airlock-bench-net-{tag}"
    net = api("POST", "/networks/create", {
        "Name": net_name, "Driver": "bridge", "Internal": True, "Attachable": False,
        "Options": {"com.docker.network.bridge.enable_ip_masquerade": "false",
                    "com.docker.network.bridge.inhibit_ipv4": "true",
                    "com.docker.network.bridge.name": f"alk-b{tag}"},
        "Labels": {"airlock.bench.engine": tag}})
    runtime = tempfile.mkdtemp(prefix="airlock-bench-rt-")
    os.chmod(runtime, 0o777)
    ca = os.path.join(runtime, "ca.pem")
    with open(ca, "w") as f:
        f.write("placeholder\n")

    def sandbox():
        # As spec.rs builds it (default config, a vault configured: two staged CA files).
        return {
            "Image": a.image, "Hostname": "sb-bench", "User": "1000:1000", "WorkingDir": "/workspace",
            "Entrypoint": ["sleep"], "Cmd": ["60"],
            "Env": ["AIRLOCK_AGENT_TOKEN=bench", "HTTPS_PROXY=http://sb:tok@127.0.0.1:3128"],
            "Labels": {"airlock.sandbox": "sb-bench", "airlock.owner": "bench", "airlock.bench.engine": tag},
            "StopTimeout": 2,
            "HostConfig": {
                "NetworkMode": "none", "Memory": 512 << 20, "MemorySwap": 512 << 20,
                "NanoCpus": 1_000_000_000, "PidsLimit": 256, "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": "rw,exec,nosuid,nodev,size=256m,mode=1777",
                          "/workspace": "rw,exec,nosuid,nodev,size=1024m,uid=1000,gid=1000,mode=0755",
                          "/home/sandbox": "rw,exec,nosuid,nodev,size=256m,uid=1000,gid=1000,mode=0700"},
                "Mounts": [
                    {"Target": "/run/airlock", "Source": runtime, "Type": "bind", "ReadOnly": False},
                    {"Target": "/etc/airlock/ca.pem", "Source": ca, "Type": "bind", "ReadOnly": True},
                    {"Target": "/etc/ssl/certs/ca-certificates.crt", "Source": ca, "Type": "bind",
                     "ReadOnly": True}],
                "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges:true"], "Init": True,
                "OomScoreAdj": 500, "RestartPolicy": {"Name": "no"},
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "5m", "max-file": "1"}},
            },
        }

    def without(change):
        def build():
            body = sandbox()
            change(body, body["HostConfig"])
            return body
        return build

    variants = {
        "plain": lambda: {"Image": a.image, "Entrypoint": ["sleep"], "Cmd": ["60"],
                          "Labels": {"airlock.bench.engine": tag}},
        "sandbox": sandbox,
        "internal": without(lambda b, h: h.update(NetworkMode=net_name)),
        "bridge": without(lambda b, h: h.update(NetworkMode="bridge")),
        "no-tmpfs": without(lambda b, h: h.pop("Tmpfs")),
        "no-mounts": without(lambda b, h: h.pop("Mounts")),
        "no-init": without(lambda b, h: h.pop("Init")),
        "no-security": without(lambda b, h: [h.pop("CapDrop"), h.pop("SecurityOpt")]),
        "no-limits": without(lambda b, h: [h.pop(k) for k in
                                           ("Memory", "MemorySwap", "NanoCpus", "PidsLimit", "OomScoreAdj")]),
        "no-log": without(lambda b, h: h.pop("LogConfig")),
        "no-readonly": without(lambda b, h: h.pop("ReadonlyRootfs")),
        "no-user": without(lambda b, h: b.pop("User")),
    }
    if a.variants:
        wanted = a.variants.split(",")
        unknown = set(wanted) - set(variants)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; known: {','.join(variants)}")
        variants = {k: variants[k] for k in wanted}
    times = {k: {"create": [], "start": [], "total": []} for k in variants}
    try:
        for r in range(a.rounds):
            for k, build in variants.items():
                t0 = time.perf_counter()
                c = api("POST", f"/containers/create?name=airlock-bench-{tag}-{k}-{r}", build())
                t1 = time.perf_counter()
                api("POST", f"/containers/{c['Id']}/start")
                t2 = time.perf_counter()
                api("DELETE", f"/containers/{c['Id']}?force=true")
                times[k]["create"].append((t1 - t0) * 1e3)
                times[k]["start"].append((t2 - t1) * 1e3)
                times[k]["total"].append((t2 - t0) * 1e3)
    finally:
        filters = json.dumps({"label": [f"airlock.bench.engine={tag}"]}, separators=(",", ":"))
        for c in api("GET", f"/containers/json?all=true&filters={filters}") or []:
            api("DELETE", f"/containers/{c['Id']}?force=true", ok=(204, 404))
        api("DELETE", f"/networks/{net['Id']}", ok=(204, 404))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"engine create+start, {a.rounds} rounds interleaved, {a.image}, load {load}")
    print(f"{'variant':12} {'create':>8} {'start':>8} {'total':>8}   (median ms)")
    for k, t in times.items():
        print(f"{k:12} {statistics.median(t['create']):8.1f} {statistics.median(t['start']):8.1f} "
              f"{statistics.median(t['total']):8.1f}")


if __name__ == "__main__":
    main()
