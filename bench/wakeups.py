#!/usr/bin/env python3
"""Wake-ups per second of an idle proxy, thread by thread, beside HAProxy and nginx.

A load balancer spends most of its life waiting. Every time one of its threads wakes
with nothing to do it costs a context switch, and where the proxy shares a core (as
in compare.py, where each proxy is confined to CPU 0) it preempts the thread that
serves requests, which shows in tail latency. This script starts each proxy on its
compare.py configuration (Tandem's includes a route with the header filter, so its
filter machinery is loaded), leaves it idle, and counts the context switches of every
thread of the proxy's processes (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches`
in /proc) over the window.

    python3 bench/wakeups.py --tandem target/dist/tandem --seconds 10
"""
import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


compare, kernel = load("compare"), load("kernel")
l7, tls_l4 = compare.l7, compare.tls_l4


def switches(root):
    """{thread label: context switches so far} over `root` and its child processes."""
    pids = kernel.tree(root)
    out = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            n = sum(int(line.split()[1]) for line in status.splitlines()
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")))
            label = f"{name} ({'worker' if pid != root else 'main'} process)" if len(pids) > 1 else name
            out[f"{label} [{tid}]"] = n
    return out


def measure(name, tandem, tmp, settle, seconds):
    """{thread: wake-ups per second} of proxy `name` left idle for `seconds`."""
    p, (http, https, tcp) = compare.start_proxy(name, tandem, tmp)
    try:
        for port in (http, https, tcp):
            tls_l4.wait_port(port)
        # One request, so lazily started machinery (connections, filter instances) is up.
        l7.wait_http(http)
        time.sleep(settle)
        a = switches(p.pid)
        time.sleep(seconds)
        b = switches(p.pid)
        return {t: (b[t] - a.get(t, 0)) / seconds for t in b}
    finally:
        l7.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--baseline", help="a second Tandem binary measured beside --tandem")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--settle", type=float, default=3,
                    help="idle seconds before the window (Tandem's filter clock sleeps after 1 s)")
    args = ap.parse_args()
    names = ["tandem"] + (["baseline"] if args.baseline else []) + ["haproxy", "nginx"]
    tmp = tempfile.mkdtemp(prefix="tandem-wakeups-")
    os.chmod(tmp, 0o755)
    tls_l4.certs(tmp)
    compare.configs(tmp, "plain")
    backend = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf",
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        l7.wait_http(compare.BACKENDS[0])
        results = {n: measure(n, args.baseline if n == "baseline" else args.tandem, tmp, args.settle, args.seconds)
                   for n in names}
    finally:
        l7.stop(backend, signal.SIGQUIT)
    print(f"\nWake-ups per second of an idle proxy ({args.seconds:g} s window after {args.settle:g} s idle)")
    for n in names:
        total = sum(results[n].values())
        print(f"\n  {n:<10} {total:8.1f} in all")
        for t, v in sorted(results[n].items(), key=lambda kv: -kv[1]):
            if v > 0:
                print(f"    {t:<40} {v:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
