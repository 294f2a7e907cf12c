#!/usr/bin/env python3
"""Every row of the comparison users make, Tandem beside HAProxy and nginx, in one run.

One process per proxy and round serves every row: plain HTTP/1.1, TLS 1.3 (HTTP/1.1
and h2, ALPN) and TCP (L4) listeners in front of the same two nginx backends. Each
proxy runs one thread pinned to CPU 0; the backends and the load tools share CPU 1.
The proxy's CPU time comes from /proc, so every rate is also given per proxy-CPU-second
(the figure the targets are written in).

Rows:
  h1          HTTP/1.1 keep-alive, wrk 64 connections
  h1_1conn    HTTP/1.1, wrk 1 connection: p99 latency (lower is better)
  tls_h1      TLS 1.3 keep-alive HTTP/1.1, wrk 64 connections
  handshakes  a TLS 1.3 handshake per request (wrk 32 connections, Connection: close): wrk
              resumes its session from a ticket on each new connection (X25519, no
              signature)
  full_handshakes  a full TLS 1.3 handshake per request (X25519 and an ECDSA P-256
              signature): 4 `openssl s_time -new` clients, each one connection and one
              HTTP/1.0 GET after another
  h2_tls      h2 over TLS 1.3, h2load 16 connections x 8 streams
  l4          TCP request/response, wrk 64 connections through the L4 listener
  l4_bulk     TCP bulk: 1 MiB responses, wrk 8 connections (MB/s and MB per CPU-second)
  filter      Tandem only: HTTP/1.1 keep-alive through a route with the header-rules
              proxy-wasm filter (filters/headers) beside the same route without it, in
              the same process: the CPU µs and the share of requests/s it costs
  idle_mem    memory per idle keep-alive connection (RSS growth over 2,000 connections
              that each made one request, measured once they have been idle for
              IDLE_SECONDS), KiB
  idle_mem_tls  the same over TLS 1.3 (the TLS listener), on a process of its own

Modes (`--modes`):
  plain   each proxy as users configure it by default: HAProxy and nginx add
          X-Forwarded-For only; Tandem runs with its defaults.
  equal   every proxy does the same per-request work: HAProxy and nginx also add
          X-Forwarded-Proto/-Host and X-Request-Id both ways (see l7.py); Tandem its
          defaults. The L4 and memory rows do not depend on headers and run in plain
          mode only.

Proxies run in turn within a round, the order rotating from round to round; each row
reports every proxy's median, Tandem's ratio to the best peer in each round (rounds
run back to back, so a round's ratio shares that round's machine state) and the median
of those ratios, against the target. `--instructions` then runs instructions.py
(callgrind counts per request) on the same binary. `--baseline OTHER` runs a second
Tandem binary in every round too and adds Tandem's per-round ratio to it: the way to
judge a change (a profile-guided build against the plain one, say). `--proxies tandem`
runs Tandem alone (deploy/build-pgo.sh trains with it).

    python3 bench/compare.py --tandem target/dist/tandem --rounds 5 --seconds 8
"""
import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
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
tls_l4 = load("tls_l4")

BACKENDS = [19001, 19002]
PROXIES = ("tandem", "haproxy", "nginx")
# (http, https, tcp) per proxy; Tandem's filtered HTTP listener on FILTERED.
PORTS = {"tandem": (18080, 18443, 18090), "haproxy": (18081, 18444, 18091), "nginx": (18082, 18445, 18092)}
FILTERED = 18083
ADMIN = 19903
MODULE = os.path.join(ROOT, "filters/target/wasm32-wasip1/release/headers.wasm")
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"
IDLE_CONNECTIONS = 2000
# How long the connections sit idle before RSS is read. Tandem gives an idle HTTP/1.1
# connection's buffers back after 0.5 to 1 s and its workers return free memory to the
# system once a second; HAProxy and nginx hold no buffers for idle connections at all.
IDLE_SECONDS = 3

# row -> (title, unit, higher is better, target ratio to the best peer or None)
ROWS = {
    "h1": ("HTTP/1.1 keep-alive, 64 conns", "req/CPU-s", True, 1.25),
    "h1_1conn": ("HTTP/1.1, 1 conn: p99", "ms", False, 1.0),
    "tls_h1": ("TLS 1.3 keep-alive", "req/CPU-s", True, 1.2),
    "handshakes": ("TLS handshake per conn, resumed", "req/CPU-s", True, 2.0),
    "full_handshakes": ("full TLS handshake per conn", "req/CPU-s", True, 2.0),
    "h2_tls": ("h2 over TLS (16 x 8 streams)", "req/CPU-s", True, 1.1),
    "l4": ("L4 TCP request/response", "req/CPU-s", True, 1.1),
    "l4_bulk": ("L4 bulk 1 MiB", "MB/CPU-s", True, 1.0),
    "idle_mem": ("memory per idle connection", "KiB", False, 1.0),
    "idle_mem_tls": ("memory per idle TLS connection", "KiB", False, 1.0),
}
HEADER_ROWS = ("h1", "h1_1conn", "tls_h1", "handshakes", "full_handshakes", "h2_tls")


def configs(tmp, mode, defer=False):
    """Writes the backends' and the three proxies' configs for header mode `mode`
    (`plain` = l7's `minimal` for the peers, `equal` = l7's `same`). With `defer`, the
    HTTP and TLS listeners of all three accept a connection once its first bytes arrive
    (`TCP_DEFER_ACCEPT`: Tandem's `defer_accept`, HAProxy's `defer-accept`, nginx's
    `deferred`)."""
    peers = "minimal" if mode == "plain" else "same"
    t_defer = "defer_accept = true\n" if defer else ""
    h_defer = " defer-accept" if defer else ""
    n_defer = " deferred" if defer else ""
    with open(f"{tmp}/big.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    servers = "".join(
        f'  server {{ listen 127.0.0.1:{p} reuseport; location / {{ return 200 "ok\\n"; }} '
        f"location /big {{ alias {tmp}/big.bin; }} }}\n"
        for p in BACKENDS
    )
    with open(f"{tmp}/backend.conf", "w") as f:
        f.write(f"""worker_processes 1;
pid {tmp}/backend.pid;
error_log {tmp}/backend.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
{servers}}}
""")
    http, https, tcp = PORTS["tandem"]
    eps = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in BACKENDS)
    filtered = ""
    if os.path.exists(MODULE):
        filtered = f"""[[listener]]
name = "filtered"
listen = "127.0.0.1:{FILTERED}"
[[filter]]
name = "hdr"
path = "{MODULE}"
config = {{ request = {{ set = {{ x-env = "bench" }}, remove = ["x-debug"] }}, response = {{ set = {{ x-frame-options = "DENY" }} }} }}
[[route]]
name = "filtered"
listeners = ["filtered"]
cluster = "be"
filters = ["hdr"]
"""
    with open(f"{tmp}/tandem.toml", "w") as f:
        f.write(f"""[server]
workers = 1
[admin]
listen = "127.0.0.1:{ADMIN}"
[log]
level = "warn"
access_log = "off"
[[listener]]
name = "http"
listen = "127.0.0.1:{http}"
{t_defer}[[listener]]
name = "https"
listen = "127.0.0.1:{https}"
{t_defer}tls = {{ certificates = [{{ cert = "{tmp}/cert.pem", key = "{tmp}/key.pem" }}], min_version = "1.3" }}
[[listener]]
name = "tcp"
listen = "127.0.0.1:{tcp}"
protocol = "tcp"
cluster = "be"
[[cluster]]
name = "be"
balancer = "round_robin"
endpoints = [{eps}]
[[route]]
name = "all"
listeners = ["http", "https"]
cluster = "be"
{filtered}""")
    servers = "\n".join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(BACKENDS))
    http, https, tcp = PORTS["haproxy"]
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend http
  mode http
  bind 127.0.0.1:{http}{h_defer}
  option http-keep-alive
{l7.haproxy_headers("http", peers)}  default_backend be
frontend https
  mode http
  bind 127.0.0.1:{https} ssl crt {tmp}/combined.pem alpn h2,http/1.1{h_defer}
  option http-keep-alive
{l7.haproxy_headers("https", peers)}  default_backend be
backend be
  mode http
  balance roundrobin
  http-reuse always
{servers}
frontend tcp
  mode tcp
  bind 127.0.0.1:{tcp}
  default_backend betcp
backend betcp
  mode tcp
  balance roundrobin
{servers}
""")
    nginx_http, nginx_location = l7.nginx_headers(peers)
    be = "\n".join(f"    server 127.0.0.1:{p};" for p in BACKENDS)
    http, https, tcp = PORTS["nginx"]
    location = f"""    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{nginx_location}    }}
"""
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(f"""load_module {NGINX_STREAM};
worker_processes 1;
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
    listen 127.0.0.1:{http}{n_defer};
{location}  }}
  server {{
    listen 127.0.0.1:{https} ssl http2{n_defer};
    ssl_certificate {tmp}/cert.pem;
    ssl_certificate_key {tmp}/key.pem;
    ssl_protocols TLSv1.3;
{location}  }}
}}
stream {{
  upstream betcp {{
{be}
  }}
  server {{
    listen 127.0.0.1:{tcp};
    proxy_pass betcp;
  }}
}}
""")


def rss_kib(root_pid):
    """Resident memory of a process and its descendants, KiB."""
    total, frontier = 0, {root_pid}
    while frontier:
        nxt = set()
        for pid in frontier:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    nxt |= {int(c) for c in f.read().split()}
            except (OSError, AttributeError):
                pass
        frontier = nxt
    return total


async def open_idle(port, n, tls=False):
    """Opens `n` keep-alive connections (over TLS with `tls`) that each made one
    request; returns them."""
    conns = []
    request = f"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    ctx = tls_l4.client_tls() if tls else None
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(request)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        await r.readexactly(length)
        conns.append(w)
    return conns


def idle_memory(pid, port, tls=False):
    """RSS growth per idle keep-alive connection (over TLS with `tls`), KiB."""
    async def run():
        before = rss_kib(pid)
        conns = await open_idle(port, IDLE_CONNECTIONS, tls)
        await asyncio.sleep(IDLE_SECONDS)
        after = rss_kib(pid)
        for w in conns:
            w.close()
        return (after - before) / IDLE_CONNECTIONS
    return asyncio.run(run())


def per_cpu(pid, fn, seconds):
    """(value, value per proxy-CPU-second) of a load run `fn` returning a rate."""
    before = l7.cpu_ticks(pid)
    value = fn()
    cpu = (l7.cpu_ticks(pid) - before) / l7.CLK
    return value, (value * seconds / cpu if cpu else float("nan"))


def h2load(port, seconds):
    out = subprocess.run(
        ["taskset", "-c", "1", "h2load", "-c", "16", "-m", "8", "-D", str(seconds), f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True,
    ).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed", out)
    if not m or (failed and int(failed.group(1)) > 0):
        raise SystemExit(f"h2load against {port} failed:\n{out}")
    return float(m.group(1))


def start_proxy(name, tandem, tmp):
    """Starts proxy `name` on its compare.py config: (process, (http, https, tcp) ports).
    "baseline" is a second Tandem binary (`--baseline`) on Tandem's ports and config."""
    kind = "tandem" if name in ("tandem", "baseline") else name
    p = l7.start(kind, os.path.abspath(tandem) if kind == "tandem" else None, tmp)
    return p, PORTS[kind]


def run_proxy(name, tandem, tmp, s, rows):
    """Starts one proxy, runs `rows` against it, stops it: {row: (value, per CPU-s)}."""
    r = {}
    if "idle_mem_tls" in rows:
        # A process of its own: the plain connections' memory, freed and kept by the
        # allocator, would serve the TLS ones and hide their growth.
        p, (http, https, tcp) = start_proxy(name, tandem, tmp)
        try:
            tls_l4.wait_port(https)
            l7.wait_http(http)
            v = idle_memory(p.pid, https, tls=True)
            r["idle_mem_tls"] = (v, v)
        finally:
            l7.stop(p)
    p, (http, https, tcp) = start_proxy(name, tandem, tmp)
    url, surl, turl = f"http://127.0.0.1:{http}/", f"https://127.0.0.1:{https}/", f"http://127.0.0.1:{tcp}/"
    try:
        for port in (http, https, tcp):
            tls_l4.wait_port(port)
        l7.wait_http(http)
        # Memory first, on a fresh process: after the load rows an allocator serves new
        # connections from memory it already holds, and the growth no longer shows.
        if "idle_mem" in rows:
            v = idle_memory(p.pid, http)
            r["idle_mem"] = (v, v)
        l7.wrk(http, 64, 2)  # warm-up: pools, caches
        if "h1" in rows:
            r["h1"] = per_cpu(p.pid, lambda: l7.wrk(http, 64, s)["rps"], s)
        if "h1_1conn" in rows:
            one = l7.wrk(http, 1, max(3, s // 2))
            r["h1_1conn"] = (one["p99"], one["p99"])
        if "tls_h1" in rows:
            tls_l4.wrk_raw(["-t1", "-c64", "-d2s", surl])
            r["tls_h1"] = per_cpu(p.pid, lambda: tls_l4.wrk_raw(["-t1", "-c64", f"-d{s}s", surl])[0], s)
        if "handshakes" in rows:
            r["handshakes"] = per_cpu(
                p.pid, lambda: tls_l4.wrk_raw(["-t1", "-c32", f"-d{s}s", "-H", "Connection: close", surl])[0], s
            )
        if "full_handshakes" in rows:
            r["full_handshakes"] = per_cpu(p.pid, lambda: tls_l4.full_handshakes(https, s), s)
        if "h2_tls" in rows:
            r["h2_tls"] = per_cpu(p.pid, lambda: h2load(https, s), s)
        if "l4" in rows:
            r["l4"] = per_cpu(p.pid, lambda: tls_l4.wrk_raw(["-t1", "-c64", f"-d{s}s", turl])[0], s)
        if "l4_bulk" in rows:
            def bulk():
                rps, bps = tls_l4.wrk_raw(["-t1", "-c8", f"-d{s}s", turl + "big"])
                if bps < rps * 1e6:
                    raise SystemExit(f"{name}: /big answered {bps / max(rps, 1):.0f} bytes per response, not 1 MiB")
                return bps / 1e6
            r["l4_bulk"] = per_cpu(p.pid, bulk, s)
        if "filter" in rows and name in ("tandem", "baseline") and os.path.exists(MODULE):
            plain = per_cpu(p.pid, lambda: l7.wrk(http, 64, s)["rps"], s)
            l7.wrk(FILTERED, 64, 2)
            filt = per_cpu(p.pid, lambda: l7.wrk(FILTERED, 64, s)["rps"], s)
            # CPU µs per request with and without the filter.
            r["filter"] = (1e6 / filt[1] - 1e6 / plain[1], filt[0] / plain[0])
    finally:
        l7.stop(p)
    return r


def report(mode, runs, rows, rounds):
    """Prints one mode's table: medians, per-round ratios to the best peer, targets;
    with `--baseline`, also its medians and Tandem's per-round ratio to it."""
    print(f"\n== {mode} mode: " + (
        "peers add X-Forwarded-For only, Tandem its defaults" if mode == "plain"
        else "peers also add X-Forwarded-Proto/-Host and X-Request-Id, as Tandem does") + f"; {rounds} rounds")
    base = bool(runs.get("baseline"))
    cols = PROXIES + (("baseline",) if base else ())
    print(f"{'row':<32} {'unit':<10} " + " ".join(f"{c:>9}" for c in cols)
          + f" {'t/best':>7} {'target':>7}  per round" + ("   t/baseline per round" if base else ""))
    summary = {}

    def ratio_of(t, other, higher):
        # Higher-is-better rows: tandem / other; lower-is-better: other / tandem, so
        # above 1 always means Tandem is ahead.
        return t / other if higher else (other / t if t else float("inf"))

    for row in rows:
        if row == "filter":
            continue
        title, unit, higher, target = ROWS[row]
        have = [p for p in cols if runs.get(p) and all(row in r for r in runs[p])]
        if "tandem" not in have:
            continue
        idx = 0 if unit == "ms" or unit == "KiB" else 1
        med = {p: statistics.median(r[row][idx] for r in runs[p]) for p in have}
        peers = [p for p in have if p in ("haproxy", "nginx")]
        ratios = []
        for i in range(rounds if peers else 0):
            vals = [runs[p][i][row][idx] for p in peers]
            ratios.append(ratio_of(runs["tandem"][i][row][idx], max(vals) if higher else min(vals), higher))
        ratio = statistics.median(ratios) if ratios else float("nan")
        ok = "met" if ratio >= target else "not met" if ratios else "no peer ran"
        digits = {"ms": 3, "KiB": 1}.get(unit, 0)
        cells = " ".join(f"{med.get(p, float('nan')):>9.{digits}f}" for p in cols)
        line = (f"{title:<32} {unit:<10} {cells} {ratio:>6.2f}x {target:>6.2f}x  "
                + " ".join(f"{x:.2f}" for x in ratios) + f"  ({ok})")
        if "baseline" in have:
            vs = [ratio_of(runs["tandem"][i][row][idx], runs["baseline"][i][row][idx], higher) for i in range(rounds)]
            line += f"   {statistics.median(vs):.3f}x: " + " ".join(f"{x:.2f}" for x in vs)
        print(line)
        summary[row] = ratio
    for who in ("tandem", "baseline"):
        if "filter" in rows and runs.get(who) and all("filter" in r for r in runs[who]):
            us = [r["filter"][0] for r in runs[who]]
            share = [r["filter"][1] for r in runs[who]]
            print(f"{'header filter (' + who + ')':<32} {'µs, rps':<10} adds {statistics.median(us):.2f} µs CPU per "
                  f"request (target ≤ 1), {100 * (1 - statistics.median(share)):.1f} % of requests/s (target ≤ 5 %); "
                  "per round: " + " ".join(f"{u:.2f}µs/{100 * (1 - x):.1f}%" for u, x in zip(us, share)))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default="plain,equal", help="comma-separated: plain, equal")
    ap.add_argument("--only", default=",".join(list(ROWS) + ["filter"]),
                    help="comma-separated rows: " + ", ".join(list(ROWS) + ["filter"]))
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help="comma-separated subset of: " + ", ".join(PROXIES) + " (ratios need tandem and a peer)")
    ap.add_argument("--baseline", help="a second Tandem binary run in every round beside --tandem (to judge a change)")
    ap.add_argument("--instructions", action="store_true", help="then run instructions.py (callgrind) too")
    ap.add_argument("--defer-accept", action="store_true",
                    help="every proxy's HTTP and TLS listeners accept a connection once its first bytes arrive "
                         "(TCP_DEFER_ACCEPT: Tandem defer_accept, HAProxy defer-accept, nginx deferred)")
    args = ap.parse_args()
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS and r != "filter"]
    if unknown:
        sys.exit(f"--only: unknown row(s) {', '.join(unknown)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    proxies = tuple(p for p in PROXIES if p in {x.strip() for x in args.proxies.split(",")})
    if "tandem" not in proxies:
        sys.exit("--proxies must include tandem")
    if args.baseline:
        proxies += ("baseline",)
    for tool in ("wrk", "nginx", "taskset", "h2load", "openssl") + (("haproxy",) if "haproxy" in proxies else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing; run bench/run.sh, which installs it")
    if not os.path.exists(NGINX_STREAM):
        sys.exit(f"{NGINX_STREAM} is missing: apt-get install libnginx-mod-stream (bench/run.sh does)")
    if "filter" in rows:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1",
                        "--manifest-path", os.path.join(ROOT, "filters/Cargo.toml")], check=True)
    tmp = tempfile.mkdtemp(prefix="tandem-compare-")
    os.chmod(tmp, 0o755)  # nginx's unprivileged workers read big.bin
    tls_l4.certs(tmp)
    for i, mode in enumerate(modes):
        mode_rows = rows if mode == "plain" else [r for r in rows if r in HEADER_ROWS]
        configs(tmp, mode, args.defer_accept)
        backend = subprocess.Popen(
            ["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        runs = {p: [] for p in proxies}
        try:
            l7.wait_http(BACKENDS[0])
            for rnd in range(args.rounds):
                k = rnd % len(proxies)
                order = proxies[k:] + proxies[:k]
                for name in order:
                    binary = args.baseline if name == "baseline" else args.tandem
                    runs[name].append(run_proxy(name, binary, tmp, args.seconds, mode_rows))
                print(f"[{mode}] round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            l7.stop(backend, signal.SIGQUIT)
        report(mode, runs, mode_rows, args.rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.instructions:
        subprocess.run([sys.executable, os.path.join(HERE, "instructions.py"), "--tandem", args.tandem], check=False)


if __name__ == "__main__":
    main()
