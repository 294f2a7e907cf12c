#!/usr/bin/env python3
"""HTTP/1.1 keep-alive benchmark: Tandem beside HAProxy and nginx in one run.

Each proxy gets one thread pinned to CPU 0; the two backends (an nginx instance that
answers a small 200) and wrk share CPU 1. For each proxy: wrk at 64 connections
(throughput, p50/p99) and at 1 connection (latency), and the proxy's CPU time from
/proc, giving requests per proxy-CPU-second. Prints a table and the ratios. HAProxy
and nginx add the request headers Tandem adds unless `--competitor-headers minimal`.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BACKENDS = [19001, 19002]


# What HAProxy and nginx add to requests (`--competitor-headers`):
#   same     the headers Tandem always adds, so every proxy does the same work:
#            X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host (HAProxy:
#            unless present; nginx: always), X-Request-Id kept or generated, sent
#            upstream and returned to the client;
#   minimal  X-Forwarded-For only, and Tandem too (`[server] request_id = "off"`,
#            `forwarded_headers = ["for"]`): every proxy as a plain configuration leaves it.
HEADER_MODES = ("same", "minimal")


def tandem_server_keys(mode="same"):
    """Tandem `[server]` lines for `mode` (see HEADER_MODES)."""
    if mode == "minimal":
        return 'request_id = "off"\nforwarded_headers = ["for"]\n'
    return ""



def add_competitor_headers_arg(ap):
    """The `--competitor-headers` option every HAProxy/nginx benchmark takes."""
    ap.add_argument("--competitor-headers", choices=HEADER_MODES, default="same",
                    help="same: HAProxy and nginx add the headers Tandem adds (X-Forwarded-For/-Proto/-Host, "
                         "X-Request-Id both ways); minimal: X-Forwarded-For only")


def haproxy_headers(proto, mode="same"):
    """HAProxy frontend rules for `mode` (see HEADER_MODES)."""
    if mode == "minimal":
        return "  option forwardfor\n"
    return f"""  option forwardfor
  http-request set-header X-Forwarded-Proto {proto}
  http-request set-header X-Forwarded-Host %[req.hdr(host)] if {{ req.hdr(host) -m found }} !{{ req.hdr(x-forwarded-host) -m found }}
  http-request set-var(txn.rid) req.hdr(x-request-id)
  http-request set-var(txn.rid) uuid() unless {{ var(txn.rid) -m found }}
  http-request set-header X-Request-Id %[var(txn.rid)]
  http-response set-header X-Request-Id %[var(txn.rid)]
"""


def nginx_headers(mode="same"):
    """nginx `http {}` lines and `location {}` lines for `mode` (see HEADER_MODES)."""
    xff = "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
    if mode == "minimal":
        return "", xff
    http = '  map $http_x_request_id $req_id { default $http_x_request_id; "" $request_id; }\n'
    return http, xff + """      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $req_id;
      add_header X-Request-Id $req_id always;
"""
PORTS = {"tandem": 18080, "haproxy": 18081, "nginx": 18082}
CLK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(root_pid):
    """utime+stime of a process and all its descendants, in clock ticks."""
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2:].split()
        procs[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    total, frontier = 0, {root_pid}
    while frontier:
        nxt = set()
        for pid in frontier:
            if pid in procs:
                total += procs[pid][1]
            nxt |= {p for p, (pp, _) in procs.items() if pp == pid}
        frontier = nxt
    return total


def stop(p, sig=signal.SIGTERM):
    """Stops a process gracefully, killing it after 10 s."""
    p.send_signal(sig)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


def wait_http(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not answer 200")


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(port, conns, seconds):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50": to_ms(pct["50"]),
        "p99": to_ms(pct["99"]),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "",
    }


def configs(tmp, headers="same"):
    """Writes the backend, nginx, HAProxy and Tandem configs into `tmp`; `headers`: what
    HAProxy and nginx add to requests (see HEADER_MODES)."""
    nginx_http, nginx_location = nginx_headers(headers)
    be = "\n".join(f"  server 127.0.0.1:{p};" for p in BACKENDS)
    servers_block = "".join(
        f'  server {{ listen 127.0.0.1:{p} reuseport; location / {{ return 200 "ok\\n"; }} }}\n' for p in BACKENDS
    )
    with open(f"{tmp}/backend.conf", "w") as f:
        f.write(f"""worker_processes 1;
pid {tmp}/backend.pid;
error_log {tmp}/backend.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{servers_block}
}}
""")
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
{nginx_http}  upstream be {{
{be}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{PORTS["nginx"]};
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{nginx_location}    }}
  }}
}}
""")
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        servers = "\n".join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(BACKENDS))
        f.write(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{PORTS["haproxy"]}
{haproxy_headers("http", headers)}  default_backend be
backend be
  balance roundrobin
{servers}
""")
    eps = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in BACKENDS)
    with open(f"{tmp}/tandem.toml", "w") as f:
        f.write(f"""[server]
workers = 1
{tandem_server_keys(headers)}[admin]
listen = "127.0.0.1:19900"
[log]
level = "warn"
access_log = "off"
[[listener]]
name = "web"
listen = "127.0.0.1:{PORTS["tandem"]}"
[[cluster]]
name = "be"
balancer = "round_robin"
endpoints = [{eps}]
[[route]]
name = "all"
cluster = "be"
""")


def start(name, tandem, tmp):
    if name == "tandem":
        cmd = [tandem, "run", "-c", f"{tmp}/tandem.toml"]
    elif name == "haproxy":
        cmd = ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"]
    else:
        cmd = ["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-g", "daemon off;"]
    return subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median_run(runs):
    """The run (64-connection and 1-connection parts) with the median requests per CPU-second."""
    runs = sorted(runs, key=lambda r: r[0]["per_cpu_s"])
    many, one = runs[len(runs) // 2]
    return many, one


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", choices=list(PORTS), help="run one proxy (for quick iterations)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleave the proxies this many times and report each one's median run "
                         "(single runs on a shared VM can swing by 10%%)")
    ap.add_argument("--compare", help="a second tandem binary (e.g. an older build) measured in the same run")
    add_competitor_headers_arg(ap)
    args = ap.parse_args()
    for tool in ("wrk", "haproxy", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing; run bench/run.sh, which installs it")
    tmp = tempfile.mkdtemp(prefix="tandem-bench-")
    configs(tmp, args.competitor_headers)
    backend = subprocess.Popen(
        ["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf", "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # name -> (kind, binary)
    entrants = {"tandem": ("tandem", args.tandem)}
    if args.compare:
        entrants["compared"] = ("tandem", args.compare)
    entrants["haproxy"] = ("haproxy", None)
    entrants["nginx"] = ("nginx", None)
    if args.only:
        entrants = {args.only: entrants[args.only]}
    runs = {}
    try:
        wait_http(BACKENDS[0])
        for _ in range(args.rounds):
            for name, (kind, binary) in entrants.items():
                p = start(kind, os.path.abspath(binary) if binary else None, tmp)
                try:
                    wait_http(PORTS[kind])
                    wrk(PORTS[kind], 64, 2)  # warm-up: pools, caches
                    before = cpu_ticks(p.pid)
                    many = wrk(PORTS[kind], 64, args.seconds)
                    cpu = (cpu_ticks(p.pid) - before) / CLK
                    one = wrk(PORTS[kind], 1, max(3, args.seconds // 2))
                    many["cpu_s"] = cpu
                    many["per_cpu_s"] = many["rps"] * args.seconds / cpu if cpu else float("nan")
                    runs.setdefault(name, []).append((many, one))
                finally:
                    stop(p)
    finally:
        stop(backend, signal.SIGQUIT)
    results = {name: median_run(r) for name, r in runs.items()}

    rounds = f", median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""
    print(f"\nHTTP/1.1 keep-alive, 1 proxy thread on CPU 0, wrk + backends on CPU 1, {args.seconds}s per run{rounds}, "
          f"competitor headers: {args.competitor_headers}")
    print(f"{'proxy':<9} {'rps@64':>10} {'p50 ms':>8} {'p99 ms':>8} {'cpu %':>6} {'req/cpu-s':>10} {'p50@1':>8} {'p99@1':>8} {'errors':>6}")
    for name, (m, o) in results.items():
        print(
            f"{name:<9} {m['rps']:>10.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} {100 * m['cpu_s'] / args.seconds:>6.0f} "
            f"{m['per_cpu_s']:>10.0f} {o['p50']:>8.3f} {o['p99']:>8.3f} {m['errors'] + o['errors']:>6}"
        )
        if args.rounds > 1:
            per_round = ", ".join(f"{r[0]['per_cpu_s']:.0f}" for r in runs[name])
            print(f"{'':<9} req/cpu-s per round: {per_round}")
    for mine in ("tandem", "compared"):
        if mine not in results:
            continue
        t = results[mine][0]
        for other in ("haproxy", "nginx"):
            if other not in results:
                continue
            m = results[other][0]
            print(
                f"{mine}/{other}: req/cpu-s {t['per_cpu_s'] / m['per_cpu_s']:.2f}x  rps {t['rps'] / m['rps']:.2f}x  "
                f"p99@64 {t['p99'] / m['p99']:.2f}x  p99@1 {results[mine][1]['p99'] / results[other][1]['p99']:.2f}x"
            )
            if args.rounds > 1:
                # Rounds run back to back, so a round's ratio shares that round's machine
                # state; their median is steadier than the ratio of medians on a busy VM.
                pairs = list(zip(runs[mine], runs[other]))
                cpu = statistics.median(a[0]["per_cpu_s"] / b[0]["per_cpu_s"] for a, b in pairs)
                p99 = statistics.median(a[0]["p99"] / b[0]["p99"] for a, b in pairs)
                print(f"{'':<{len(mine) + len(other) + 1}}  median of per-round ratios: req/cpu-s {cpu:.2f}x  p99@64 {p99:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
