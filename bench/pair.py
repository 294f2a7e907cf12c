#!/usr/bin/env python3
"""The pair's shared state, measured: two tandem nodes and a witness on loopback.

- Verdict replication: a backend's /healthz turns 503; node A's probe (50 ms, fall 1)
  condemns it; the time until node B (no checks of its own) has adopted the verdict is
  measured by polling both admin APIs every 2 ms, over N trials (p50 / p99 / max).
- Sticky bindings per second: wrk sends requests with a new session id each through A
  (learned stickiness on a header) for S seconds; the bindings that reached B's
  replicated table per second are counted.
- Cost of cluster mode: requests per second through A with a never-reached rate limit
  in `scope = "cluster"` versus `scope = "local"` (wrk, 64 connections).
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request

def get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read().decode()

def certs(tmp):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=bench-ca", "-keyout", f"{tmp}/ca.key", "-out", f"{tmp}/ca.pem")
    for n in ("n1", "n2", "n3"):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={n}",
            "-keyout", f"{tmp}/{n}.key", "-out", f"{tmp}/{n}.csr")
        with open(f"{tmp}/ext", "w") as f:
            f.write("subjectAltName=DNS:tandem-peer\n")
        run("openssl", "x509", "-req", "-in", f"{tmp}/{n}.csr", "-CA", f"{tmp}/ca.pem", "-CAkey", f"{tmp}/ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{tmp}/ext", "-out", f"{tmp}/{n}.pem")

def ha(tmp, i, scope="w"):
    return f"""
[ha]
node_id = {i}
data_dir = "{tmp}/data{i}-{scope}"
sync_interval = "20ms"
tls = {{ ca = "{tmp}/ca.pem", cert = "{tmp}/n{i}.pem", key = "{tmp}/n{i}.key" }}
peers = [{{ id = 1, address = "127.0.0.1:17941" }}, {{ id = 2, address = "127.0.0.1:17942" }}, {{ id = 3, address = "127.0.0.1:17943", witness = true }}]
"""

def node_cfg(tmp, i, scope, checks):
    hc = 'health_check = { interval = "50ms", timeout = "50ms", rise = 1, fall = 1 }' if checks else ""
    return f"""[server]
workers = 1
[admin]
listen = "127.0.0.1:1990{i}"
[log]
level = "error"
access_log = "off"
[[listener]]
name = "web"
listen = "127.0.0.1:1808{i}"
[[cluster]]
name = "c"
balancer = "round_robin"
endpoints = [{{ address = "127.0.0.1:19301" }}, {{ address = "127.0.0.1:19302" }}]
sticky = {{ mode = "learned", on = "header:x-session", idle_timeout = "10m" }}
{hc}
[[route]]
name = "r"
cluster = "c"
rate_limit = {{ requests = 100000000, per = "1s", key = "route", scope = "{scope}" }}
""" + ha(tmp, i, scope)

def state(i, ep):
    s = json.loads(get(f"http://127.0.0.1:1990{i}/status"))
    for e in s["clusters"][0]["endpoints"]:
        if e["address"] == ep:
            return e["state"]

def start(tandem, tmp, scope):
    procs = []
    for i, checks in ((1, True), (2, False)):
        path = f"{tmp}/n{i}.toml"
        with open(path, "w") as f:
            f.write(node_cfg(tmp, i, scope, checks))
        # Node A alone on CPU 0 (the one measured); B and the witness stand in for other
        # machines and share CPU 1 with the load.
        cpu = "0" if i == 1 else "1"
        procs.append(subprocess.Popen(["taskset", "-c", cpu, tandem, "run", "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with open(f"{tmp}/w.toml", "w") as f:
        f.write('[log]\nlevel = "error"\n' + ha(tmp, 3, scope))
    procs.append(subprocess.Popen(["taskset", "-c", "1", tandem, "witness", "-c", f"{tmp}/w.toml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            c = json.loads(get("http://127.0.0.1:19902/cluster"))
            if c.get("leader") and (c.get("last_applied") or 0) >= 1:
                return procs
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("the group did not form")

def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()

def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def wrk_per_cpu(pid, args):
    """(requests/s, requests per CPU-second of process `pid`) for one wrk run."""
    before = cpu_seconds(pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk"] + args, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = float(re.search(r"(\d+) requests in", out).group(1))
    return rps, total / used if used > 0 else 0.0

def wrk(args):
    out = subprocess.run(["taskset", "-c", "1", "wrk"] + args, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tandem = os.path.abspath(args.tandem)
    tmp = tempfile.mkdtemp(prefix="tandem-pair-")
    certs(tmp)
    backends = subprocess.Popen(["taskset", "-c", "1", tandem, "backend", "b1=127.0.0.1:19301", "b2=127.0.0.1:19302"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    results = {}
    try:
        procs = start(tandem, tmp, "local")
        ep = "127.0.0.1:19302"
        lags = []
        for _ in range(args.trials):
            get(f"http://{ep}/_control?healthz=503")
            ta = tb = None
            t0 = time.monotonic()
            while tb is None and time.monotonic() - t0 < 5:
                if ta is None and state(1, ep) == "unhealthy":
                    ta = time.monotonic()
                if state(2, ep) == "unhealthy":
                    tb = time.monotonic()
                time.sleep(0.002)
            if ta and tb:
                lags.append(max(0.0, tb - ta) * 1000)
            get(f"http://{ep}/_control?healthz=0")
            t0 = time.monotonic()
            while state(2, ep) != "healthy" and time.monotonic() - t0 < 5:
                time.sleep(0.01)
        lags.sort()
        results["verdict_ms"] = (statistics.median(lags), lags[min(len(lags) - 1, int(0.99 * len(lags)))], lags[-1], len(lags))

        with open(f"{tmp}/sessions.lua", "w") as f:
            f.write('counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format("GET", "/", {["x-session"] = "s" .. counter})\nend\n')
        before = json.loads(get("http://127.0.0.1:19902/cluster"))["tables"]["sticky"]
        rps = wrk(["-t1", "-c16", f"-d{args.seconds}s", "-s", f"{tmp}/sessions.lua", "http://127.0.0.1:18081/"])
        time.sleep(1)
        after = json.loads(get("http://127.0.0.1:19902/cluster"))["tables"]["sticky"]
        results["sticky"] = ((after - before) / args.seconds, rps)
        stop(procs)
        # Fresh processes for both modes, each warmed up first; node A's own CPU time
        # says what the mode costs it (B, the witness and wrk share CPU 1, so requests
        # per second alone also measures how much CPU 1 was left for wrk).
        # Interleaved rounds: the VM's drift is larger than the cost being measured.
        for r in range(args.rounds):
            for scope in ("local", "cluster"):
                procs = start(tandem, f"{tmp}", scope)
                wrk(["-t1", "-c64", "-d2s", "http://127.0.0.1:18081/"])
                got = wrk_per_cpu(procs[0].pid, ["-t1", "-c64", f"-d{args.seconds}s", "http://127.0.0.1:18081/"])
                results.setdefault(f"{scope}_rounds", []).append(got)
                stop(procs)
        for scope in ("local", "cluster"):
            rounds = results[f"{scope}_rounds"]
            results[f"{scope}_rps"] = (statistics.median(x[0] for x in rounds), statistics.median(x[1] for x in rounds))
    finally:
        backends.kill()

    p50, p99, mx, n = results["verdict_ms"]
    print(f"\nPair (two nodes + witness on loopback, one worker each; node A on CPU 0; B, witness, load and backends on CPU 1)")
    print(f"verdict A→B adoption after A's verdict: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {mx:.1f} ms over {n} trials")
    per_s, offered = results["sticky"]
    print(f"sticky bindings replicated to B: {per_s:.0f}/s (offered {offered:.0f} new sessions/s through A)")
    (lr, lc), (cr, cc) = results["local_rps"], results["cluster_rps"]
    print(f"rate limit scope: local {lr:.0f} req/s, cluster {cr:.0f} req/s, cost {100 * (1 - cr / lr):.1f} %")
    print(f"  per CPU-second of node A: local {lc:.0f}, cluster {cc:.0f}, cost {100 * (1 - cc / lc):.1f} % (medians of {args.rounds} interleaved rounds)")
    pairs = zip(results["local_rounds"], results["cluster_rounds"])
    print("  per-round cost per CPU-second: " + " ".join(f"{100 * (1 - c[1] / l[1]):.1f}%" for l, c in pairs))

if __name__ == "__main__":
    main()
