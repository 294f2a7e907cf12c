#!/usr/bin/env python3
"""proxy-wasm filter cost: Tandem without a filter, with the no-op filter and with the
header-rules filter (2 request rules, 1 response rule), in one run, beside HAProxy as a
reference. Same setup as l7.py (proxy on CPU 0 with one worker; wrk and the nginx
backends on CPU 1). Reports requests/s, CPU µs per request, the CPU µs each filter adds
per request, the RPS ratio to the no-filter run, and the memory of one instance.

`--callouts` adds two variants that pause every request for an authorisation callout
(`filters/grpc-auth`) to a `tandem backend` on CPU 1: `http_call` (HTTP/1.1, `POST
/authz`) and `grpc_call` (a unary gRPC call over h2c); the difference between them is
the cost of a gRPC callout beside an HTTP one.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import l7  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(ROOT, "filters/target/wasm32-wasip1/release")
# The authorisation service of the callout variants (`tandem backend`, h1 and h2c).
AUTHZ_PORT = 19310


def tandem_config(tmp, variant):
    base = open(f"{tmp}/tandem.toml").read()
    if variant == "none":
        return base
    module = {"noop": "noop", "headers": "headers", "http_call": "grpc_auth", "grpc_call": "grpc_auth"}[variant]
    cfg = ""
    extra = ""
    if variant in ("http_call", "grpc_call"):
        via = "http" if variant == "http_call" else "grpc"
        protocol = "http1" if variant == "http_call" else "h2c"
        cfg = (f"config = {{ cluster = \"authz\", service = \"bench.Authz\", method = \"Check\", "
               f"timeout_ms = 1000, via = \"{via}\" }}")
        extra = (f'[[cluster]]\nname = "authz"\nprotocol = "{protocol}"\n'
                 f'endpoints = [{{ address = "127.0.0.1:{AUTHZ_PORT}" }}]\n')
    if variant == "headers":
        cfg = ('config = { request = { set = { x-env = "bench" }, remove = ["x-debug"] }, '
               'response = { set = { x-frame-options = "DENY" } } }')
    text = base.replace('[[route]]\nname = "all"\ncluster = "be"\n',
                        f'[[route]]\nname = "all"\ncluster = "be"\nfilters = ["f"]\n')
    return text + extra + f'[[filter]]\nname = "f"\npath = "{MODULES}/{module}.wasm"\n{cfg}\n'


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(name):
    with urllib.request.urlopen("http://127.0.0.1:19900/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleave the variants this many times and report each one's median run "
                         "(single runs on a shared VM can swing by 10%%, more than a filter costs)")
    ap.add_argument("--callouts", action="store_true",
                    help="also run the http_call and grpc_call variants (an authorisation callout per request)")
    args = ap.parse_args()
    subprocess.run(["rustup", "target", "add", "wasm32-wasip1"], cwd=ROOT, check=False, capture_output=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1",
                    "--manifest-path", os.path.join(ROOT, "filters/Cargo.toml")], check=True)
    tmp = tempfile.mkdtemp(prefix="tandem-wasm-bench-")
    l7.configs(tmp)
    backend = subprocess.Popen(
        ["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf", "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    authz = None
    if args.callouts:
        authz = subprocess.Popen(["taskset", "-c", "1", os.path.abspath(args.tandem), "backend",
                                  f"authz=127.0.0.1:{AUTHZ_PORT}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {}
    try:
        l7.wait_http(l7.BACKENDS[0])
        if authz:
            l7.wait_http(AUTHZ_PORT)
        # With rounds, the no-filter run brackets the filter runs (before and after), so
        # each filter is compared with the machine as it was around its own run.
        filters = ("noop", "headers") + (("http_call", "grpc_call") if args.callouts else ())
        order = ("none",) + filters + (("none", "haproxy") if args.rounds > 1 else ("haproxy",))
        for variant in [v for _ in range(args.rounds) for v in order]:
            if variant == "haproxy":
                p = l7.start("haproxy", None, tmp)
                port = l7.PORTS["haproxy"]
            else:
                with open(f"{tmp}/tandem-{variant}.toml", "w") as f:
                    f.write(tandem_config(tmp, variant))
                p = subprocess.Popen(["taskset", "-c", "0", os.path.abspath(args.tandem), "run", "-c",
                                      f"{tmp}/tandem-{variant}.toml"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                port = l7.PORTS["tandem"]
            try:
                l7.wait_http(port)
                l7.wrk(port, 64, 2)
                before = l7.cpu_ticks(p.pid)
                r = l7.wrk(port, 64, args.seconds)
                r["cpu_s"] = (l7.cpu_ticks(p.pid) - before) / l7.CLK
                r["us_per_req"] = 1e6 * r["cpu_s"] / (r["rps"] * args.seconds)
                r["rss_kb"] = rss_kb(p.pid)
                r["instance_bytes"] = metric('tandem_wasm_instance_memory_bytes{filter="f"}') if variant in filters else 0
                runs.setdefault(variant, []).append(r)
            finally:
                l7.stop(p)
    finally:
        l7.stop(backend, signal.SIGQUIT)
        if authz:
            l7.stop(authz)
    # Each variant's median run by CPU per request.
    results = {k: sorted(v, key=lambda r: r["us_per_req"])[len(v) // 2] for k, v in runs.items()}

    base = results["none"]
    rounds = f", median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""
    print(f"\nproxy-wasm filter cost, HTTP/1.1 keep-alive, 64 connections, 1 worker on CPU 0, {args.seconds}s per run{rounds}")
    print(f"{'variant':<10} {'rps':>9} {'cpu µs/req':>11} {'added µs':>9} {'rps ratio':>9} {'rss MiB':>8} {'instance KiB':>12} {'errors':>6}")
    for name, r in results.items():
        added = r["us_per_req"] - base["us_per_req"] if name != "haproxy" else float("nan")
        print(f"{name:<10} {r['rps']:>9.0f} {r['us_per_req']:>11.2f} {added:>9.2f} {r['rps'] / base['rps']:>9.2f} "
              f"{r['rss_kb'] / 1024:>8.1f} {r['instance_bytes'] / 1024:>12.0f} {r['errors']:>6}")
        if args.rounds > 1:
            print(f"{'':<10} cpu µs/req per run: " + ", ".join(f"{x['us_per_req']:.2f}" for x in runs[name]))
    if args.rounds > 1:
        # Each filter run against the no-filter runs of the same round: the machine's
        # drift between rounds cancels out, which the per-variant medians above keep.
        print("\npaired with the no-filter runs of the same round, before and after (median of rounds):")
        for name in filters:
            # The mean of the two no-filter runs around it: drift across the round cancels.
            brackets = list(zip(runs["none"][0::2], runs["none"][1::2]))
            base_us = [(a["us_per_req"] + b["us_per_req"]) / 2 for a, b in brackets]
            base_rps = [(a["rps"] + b["rps"]) / 2 for a, b in brackets]
            added = [f["us_per_req"] - b for f, b in zip(runs[name], base_us)]
            ratio = [f["rps"] / b for f, b in zip(runs[name], base_rps)]
            print(f"  {name:<8} added µs {statistics.median(added):5.2f}  rps ratio {statistics.median(ratio):.2f}"
                  f"   per round: " + ", ".join(f"{a:+.2f} µs/{r:.2f}" for a, r in zip(added, ratio)))
    if args.callouts:
        g, h = results["grpc_call"], results["http_call"]
        print(f"\ngRPC callout beside an HTTP callout: {g['us_per_req'] - h['us_per_req']:+.2f} µs of proxy CPU per request "
              f"({g['us_per_req']:.2f} vs {h['us_per_req']:.2f}), rps ratio {g['rps'] / h['rps']:.2f}")
    print(json.dumps({k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
