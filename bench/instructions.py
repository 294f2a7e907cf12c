#!/usr/bin/env python3
"""User-space instructions per request: Tandem beside HAProxy and nginx, counted exactly.

The time-based benchmarks (l7.py, tls_l4.py, wasm.py) measure what the targets are
written in, proxy CPU time, but on a shared VM a single run swings by 10 % or more,
more than most changes are worth. This one counts the instructions each proxy executes
in user space (its own code, its libraries, JIT-compiled filters) per request, under
valgrind's callgrind, which repeats within about 1 % from run to run. Kernel time (the
larger half of a proxy's CPU here) is not counted: syscalls per request are compared
with `perf stat` instead (see README.md).

Each proxy runs under callgrind with counting off; after a warm-up the counting is
switched on for a fixed number of requests from h2load (16 connections; h2 with 16
streams each), then off again. Under valgrind a proxy runs ~30x slower, so it batches
more per wake-up than at full speed: compare proxies within one table, not with the
time-based figures.

HAProxy and nginx add the request headers Tandem adds unless `--competitor-headers
minimal` (see l7.py).

Scenarios:
  h1       plain HTTP/1.1 keep-alive (the l7.py configs): tandem, haproxy, nginx
  tls_h2   TLS 1.3 + h2 downstream, HTTP/1.1 upstream (the tls_l4.py configs): tandem, haproxy
  l4       HTTP/1.1 keep-alive through the L4 (TCP) listeners (the tls_l4.py configs):
           tandem, haproxy
  wasm     plain HTTP/1.1 through Tandem without a filter, with the no-op filter and
           with the header-rules filter (the wasm.py configs)
  resumed  one TLS 1.3 connection per request, resuming the session from a ticket as
           wrk does in compare.py's handshake row (X25519, no signature): tandem, haproxy
  full     one TLS 1.3 connection per request with a full handshake (X25519 and an
           ECDSA P-256 signature): tandem, haproxy
"""
import argparse
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


l7 = load("l7")
tls = load("tls_l4")
wasm = load("wasm")

SCENARIOS = ("h1", "tls_h2", "l4", "wasm", "resumed", "full")
HANDSHAKES = ("resumed", "full")


def h2load(url, n, h1):
    """Runs `n` requests; returns how many succeeded."""
    cmd = ["h2load", "-c", "16", "-n", str(n)]
    cmd += ["--h1"] if h1 else ["-m", "16"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=900).stdout
    m = re.search(r"(\d+) succeeded", out)
    return int(m.group(1)) if m else 0


def handshakes(url, n, resume):
    """Makes `n` TLS 1.3 connections to `url`, one GET each, one after another (the
    proxy under valgrind is the slow side); with `resume`, each resumes the session the
    last one was given. Returns how many got a 200."""
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(url)
    ctx = tls.client_tls()
    ctx.set_alpn_protocols(["http/1.1"])
    ok, session = 0, None
    for _ in range(n):
        with socket.create_connection((u.hostname, u.port), timeout=60) as raw:
            with ctx.wrap_socket(raw, server_hostname="bench.test", session=session if resume else None) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
                answer = b"".join(iter(lambda: t.recv(4096), b""))
                ok += answer.startswith(b"HTTP/1.1 200")
                # TLS 1.3 tickets arrive after the handshake: take the latest.
                session = t.session
    return ok


def wait_ready(url, timeout=120):
    """Waits until the proxy answers (valgrind takes a while to start a proxy)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run(["curl", "-ks", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
                           capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout}s under valgrind")


def count(label, cmd, url, load, n, warmup, out_dir, cache_sim=False):
    """{event: count per request} of `cmd` serving `n` requests at `url` ("Ir":
    instructions; with `cache_sim` also callgrind's cache misses); `load`: "h1" or "h2"
    (h2load, 16 connections) or "resumed" or "full" (one connection per request)."""
    prefix = os.path.join(out_dir, f"cg.{label}")
    for f in glob.glob(prefix + ".*"):
        os.remove(f)
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
          f"--callgrind-out-file={prefix}.%p"] + (["--cache-sim=yes"] if cache_sim else [])
    log = open(os.path.join(out_dir, f"vg.{label}.log"), "w")
    p = subprocess.Popen(vg + cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        wait_ready(url)
        if load in HANDSHAKES:
            run = lambda k: handshakes(url, k, load == "resumed")
        else:
            run = lambda k: h2load(url, k, load == "h1")
        if run(warmup) < warmup:
            raise SystemExit(f"{label}: warm-up requests failed")
        subprocess.run(["callgrind_control", "-i", "on"], capture_output=True, check=True)
        ok = run(n)
        subprocess.run(["callgrind_control", "-i", "off"], capture_output=True, check=True)
        if ok < n:
            raise SystemExit(f"{label}: only {ok} of {n} requests succeeded")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
    # One file per process (nginx's master and worker); "events:" names the columns
    # and "totals:" closes each dump.
    total = {}
    for f in glob.glob(prefix + ".*"):
        events = ["Ir"]
        with open(f) as fh:
            for line in fh:
                if line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith("totals:"):
                    for e, v in zip(events, line.split()[1:]):
                        total[e] = total.get(e, 0) + int(v)
    return {e: v / n for e, v in total.items()}


# Columns of `--cache-sim`: callgrind's events summed into first-level instruction and
# data misses and last-level misses.
CACHE_COLUMNS = {"I1 miss": ("I1mr",), "D1 miss": ("D1mr", "D1mw"), "LL miss": ("ILmr", "DLmr", "DLmw")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated subset of: " + ", ".join(SCENARIOS))
    ap.add_argument("--cache-sim", action="store_true",
                    help="also count callgrind's simulated cache misses per request (slower)")
    l7.add_competitor_headers_arg(ap)
    args = ap.parse_args()
    scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        sys.exit(f"--only: unknown scenario(s) {', '.join(bad)}; choose from {', '.join(SCENARIOS)}")
    for tool in ("valgrind", "callgrind_control", "h2load", "haproxy", "nginx", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (bench/run.sh installs what the benchmarks need)")
    tandem = os.path.abspath(args.tandem)
    n, warmup = args.requests, max(args.requests // 10, 500)
    tmp = tempfile.mkdtemp(prefix="tandem-instr-")
    os.chmod(tmp, 0o755)
    l7.configs(tmp, args.competitor_headers)
    tls_tmp = os.path.join(tmp, "tls")
    os.mkdir(tls_tmp)
    os.chmod(tls_tmp, 0o755)
    tls.certs(tls_tmp)
    tls.configs(tls_tmp, args.competitor_headers)
    if "wasm" in scenarios:
        subprocess.run(["rustup", "target", "add", "wasm32-wasip1"], cwd=ROOT, check=False, capture_output=True)
        subprocess.run(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1",
                        "--manifest-path", os.path.join(ROOT, "filters/Cargo.toml")], check=True)
        for v in ("noop", "headers"):
            with open(f"{tmp}/tandem-{v}.toml", "w") as f:
                f.write(wasm.tandem_config(tmp, v))
    # One backend set serves every scenario (same ports in l7.py and tls_l4.py).
    backend = subprocess.Popen(["nginx", "-p", tls_tmp, "-c", f"{tls_tmp}/backend.conf", "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    h1_url = lambda name: f"http://127.0.0.1:{l7.PORTS[name]}/"
    tls_url = lambda name: f"https://127.0.0.1:{tls.PORTS[name][0]}/"
    tcp_url = lambda name: f"http://127.0.0.1:{tls.PORTS[name][1]}/"
    runs = {
        "h1": [
            ("tandem", [tandem, "run", "-c", f"{tmp}/tandem.toml"], h1_url("tandem")),
            ("haproxy", ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"], h1_url("haproxy")),
            # One process (no master): a worker forked by the master and switched to an
            # unprivileged user does not serve under valgrind.
            ("nginx", ["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-g", "daemon off; master_process off;"],
             h1_url("nginx")),
        ],
        "tls_h2": [
            ("tandem", [tandem, "run", "-c", f"{tls_tmp}/tandem.toml"], tls_url("tandem")),
            ("haproxy", ["haproxy", "-db", "-f", f"{tls_tmp}/haproxy.cfg"], tls_url("haproxy")),
        ],
        "l4": [
            ("tandem", [tandem, "run", "-c", f"{tls_tmp}/tandem.toml"], tcp_url("tandem")),
            ("haproxy", ["haproxy", "-db", "-f", f"{tls_tmp}/haproxy.cfg"], tcp_url("haproxy")),
        ],
        **{hs: [
            ("tandem", [tandem, "run", "-c", f"{tls_tmp}/tandem.toml"], tls_url("tandem")),
            ("haproxy", ["haproxy", "-db", "-f", f"{tls_tmp}/haproxy.cfg"], tls_url("haproxy")),
        ] for hs in HANDSHAKES},
        "wasm": [
            ("no filter", [tandem, "run", "-c", f"{tmp}/tandem.toml"], h1_url("tandem")),
            ("noop", [tandem, "run", "-c", f"{tmp}/tandem-noop.toml"], h1_url("tandem")),
            ("headers", [tandem, "run", "-c", f"{tmp}/tandem-headers.toml"], h1_url("tandem")),
        ],
    }
    results = {}
    try:
        l7.wait_http(l7.BACKENDS[0])
        for s in scenarios:
            for label, cmd, url in runs[s]:
                # Handshakes are slow under valgrind: a tenth of the requests.
                k, w = (max(n // 10, 200), max(n // 100, 50)) if s in HANDSHAKES else (n, warmup)
                load = s if s in HANDSHAKES else "h2" if s == "tls_h2" else "h1"
                ev = count(f"{s}-{label.replace(' ', '-')}", cmd, url, load, k, w, tmp, args.cache_sim)
                results.setdefault(s, []).append((label, ev))
                print(f"  {s:<7} {label:<10} {ev['Ir']:>9.0f} instructions/request", flush=True)
    finally:
        l7.stop(backend, signal.SIGQUIT)

    print(f"\nUser-space instructions per request (callgrind, {n} requests after {warmup} warm-up, 16 connections; "
          f"competitor headers: {args.competitor_headers})")
    titles = {"h1": "HTTP/1.1 keep-alive", "tls_h2": "TLS 1.3 + h2 (16 streams per connection)",
              "l4": "HTTP/1.1 keep-alive through the L4 (TCP) listener",
              "wasm": "HTTP/1.1 through Tandem with proxy-wasm filters",
              "resumed": "TLS 1.3, one connection per request, resumed from a ticket",
              "full": "TLS 1.3, one connection per request, full handshake"}
    for s in scenarios:
        print(f"\n{titles[s]}")
        # Tandem's count over each other proxy's (below 1: Tandem does less work), or
        # for filters the instructions each adds to the no-filter run.
        base = results[s][0][1]["Ir"]
        ref = "tandem/this" if s != "wasm" else "added"
        cache = list(CACHE_COLUMNS) if args.cache_sim else []
        print(f"  {'':<10} {'instr/req':>10} {ref:>12}" + "".join(f"{c:>10}" for c in cache))
        for label, ev in results[s]:
            ipr = ev["Ir"]
            rel = f"{base / ipr:.2f}x" if s != "wasm" else f"{ipr - base:+.0f}"
            misses = "".join(f"{sum(ev.get(e, 0) for e in CACHE_COLUMNS[c]):>10.0f}" for c in cache)
            print(f"  {label:<10} {ipr:>10.0f} {rel:>12}" + misses)
    print(f"\ncallgrind files: {tmp}")


if __name__ == "__main__":
    main()
