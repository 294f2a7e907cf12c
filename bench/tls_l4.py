#!/usr/bin/env python3
"""TLS and L4 benchmark: Tandem beside HAProxy in one run.

One proxy thread pinned to CPU 0; the backends (nginx) and the load tools on CPU 1.
Measures, per proxy, with the proxy's CPU time from /proc:
  - TLS 1.3 handshakes per CPU-second (wrk, a new connection per request, which
    resumes the session from a ticket);
  - TLS keep-alive HTTP/1.1 requests per CPU-second (wrk) and h2 (h2load);
  - L4 (TCP) request/response per CPU-second (wrk over HAProxy `mode tcp` / a tandem
    `protocol = "tcp"` listener) and L4 bulk transfer (1 MiB responses) in MB per CPU-second.
Prints a table and the Tandem/HAProxy ratios.
"""
import argparse
import importlib.util
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("l7", os.path.join(HERE, "l7.py"))
l7 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(l7)

BACKENDS = [19001, 19002]
PORTS = {"tandem": (18443, 18090), "haproxy": (18444, 18091)}  # (tls, tcp)


def certs(tmp):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem", "-days", "2", "-subj", "/CN=bench.test",
         "-addext", "subjectAltName=DNS:bench.test"],
        check=True, capture_output=True,
    )
    with open(f"{tmp}/combined.pem", "w") as f:
        f.write(open(f"{tmp}/cert.pem").read() + open(f"{tmp}/key.pem").read())


def client_tls():
    """A TLS 1.3 client context that trusts the bench's self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def configs(tmp, headers="same"):
    """Writes the backend, Tandem and HAProxy configs; `headers`: what HAProxy adds to
    requests (see l7.HEADER_MODES)."""
    with open(f"{tmp}/big.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    servers = "".join(
        f'  server {{ listen 127.0.0.1:{p} reuseport; location / {{ return 200 "ok\\n"; }} location /big {{ alias {tmp}/big.bin; }} }}\n'
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
    eps = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in BACKENDS)
    tls, tcp = PORTS["tandem"]
    with open(f"{tmp}/tandem.toml", "w") as f:
        f.write(f"""[server]
workers = 1
{l7.tandem_server_keys(headers)}[admin]
listen = "127.0.0.1:19902"
[log]
level = "warn"
access_log = "off"
[[listener]]
name = "https"
listen = "127.0.0.1:{tls}"
tls = {{ certificates = [{{ cert = "{tmp}/cert.pem", key = "{tmp}/key.pem" }}], min_version = "1.3" }}
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
listeners = ["https"]
cluster = "be"
""")
    servers = "\n".join(f"  server s{i} 127.0.0.1:{p}" for i, p in enumerate(BACKENDS))
    tls, tcp = PORTS["haproxy"]
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend https
  mode http
  bind 127.0.0.1:{tls} ssl crt {tmp}/combined.pem alpn h2,http/1.1
  option http-keep-alive
{l7.haproxy_headers("https", headers)}  default_backend be
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


def h2load(port, seconds):
    out = subprocess.run(
        ["taskset", "-c", "1", "h2load", "-c", "16", "-m", "16", "-D", str(seconds), f"https://127.0.0.1:{port}/"],
        capture_output=True, text=True,
    ).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    return float(m.group(1)) if m else 0.0, out if not ok else ""


def wrk_raw(args):
    out = subprocess.run(["taskset", "-c", "1", "wrk"] + args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    # wrk's units are binary (1 KB = 1024 B).
    mult = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[tr.group(2)]
    return rps, float(tr.group(1)) * mult


def full_handshakes(port, seconds, clients=4):
    """Full TLS 1.3 handshakes per second (no resumption): `clients` `openssl s_time -new`
    processes on CPU 1, each making one connection after another with one HTTP/1.0
    `GET /` (no Host). wrk cannot do this row: it resumes its session on every new
    connection. The first answer must be a 200, or the run stops."""
    probe = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-ign_eof"],
                           input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=10).stdout
    if not re.match(r"HTTP/1\.[01] 200", probe):
        raise SystemExit(f"full handshakes: {port} answered {probe[:200]!r}, not a 200")
    procs = [subprocess.Popen(["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
                               "-new", "-time", str(seconds), "-www", "/"], stdout=subprocess.PIPE, text=True)
             for _ in range(clients)]
    total = 0
    for q in procs:
        m = re.search(r"(\d+) connections in [\d.]+s", q.communicate()[0])
        if not m:
            raise SystemExit(f"openssl s_time against {port} reported no connections")
        total += int(m.group(1))
    return total / seconds


def measure(pid, fn, seconds):
    before = l7.cpu_ticks(pid)
    value = fn()
    cpu = (l7.cpu_ticks(pid) - before) / l7.CLK
    return value, cpu


TESTS = {
    "handshakes": "TLS 1.3 handshakes, resumed",
    "tls_h1": "TLS keep-alive HTTP/1.1 req",
    "tls_h2": "TLS h2 req (h2load 16x16)",
    "l4_rr": "L4 request/response",
    "l4_bulk": "L4 bulk (MB)",
}


def wait_port(port, timeout=10):
    """Waits until the proxy accepts on `port` (HAProxy can take over a second to start)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not accept connections")


def run_proxy(name, tandem, tmp, s, tests):
    """Starts one proxy, runs the selected tests against it, stops it: {test: (rate, per CPU-s)}."""
    if name == "tandem":
        cmd = [os.path.abspath(tandem), "run", "-c", f"{tmp}/tandem.toml"]
    else:
        cmd = ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"]
    p = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tls, tcp = PORTS[name]
    url = f"https://127.0.0.1:{tls}/"
    turl = f"http://127.0.0.1:{tcp}/"
    r = {}
    try:
        wait_port(tls)
        wait_port(tcp)
        wrk_raw(["-t1", "-c32", "-d2s", url])
        if "handshakes" in tests:
            (rps, _), cpu = measure(p.pid, lambda: wrk_raw(["-t1", "-c32", f"-d{s}s", "-H", "Connection: close", url]), s)
            r["handshakes"] = (rps, rps * s / cpu)
        if "tls_h1" in tests:
            (rps, _), cpu = measure(p.pid, lambda: wrk_raw(["-t1", "-c64", f"-d{s}s", url]), s)
            r["tls_h1"] = (rps, rps * s / cpu)
        if "tls_h2" in tests:
            (rps, err), cpu = measure(p.pid, lambda: h2load(tls, s), s)
            r["tls_h2"] = (rps, rps * s / cpu if cpu else 0)
        if "l4_rr" in tests:
            (rps, _), cpu = measure(p.pid, lambda: wrk_raw(["-t1", "-c64", f"-d{s}s", turl]), s)
            r["l4_rr"] = (rps, rps * s / cpu)
        if "l4_bulk" in tests:
            (rps, bps), cpu = measure(p.pid, lambda: wrk_raw(["-t1", "-c8", f"-d{s}s", turl + "big"]), s)
            if bps < rps * 1e6:
                raise SystemExit(f"{name}: /big answered {bps / max(rps, 1):.0f} bytes per response, not 1 MiB")
            r["l4_bulk"] = (bps / 1e6, bps * s / 1e6 / cpu)
    finally:
        l7.stop(p)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both proxies this many times (alternating which goes first) and report "
                         "medians; single runs on a shared VM can swing by 10%%")
    l7.add_competitor_headers_arg(ap)
    ap.add_argument("--only", default=",".join(TESTS),
                    help="comma-separated subset of: " + ", ".join(TESTS))
    args = ap.parse_args()
    s = args.seconds
    tests = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        sys.exit(f"--only: unknown test(s) {', '.join(unknown)}; choose from {', '.join(TESTS)}")
    tmp = tempfile.mkdtemp(prefix="tandem-tls-")
    # nginx's workers run as an unprivileged user: they must be able to read big.bin.
    os.chmod(tmp, 0o755)
    certs(tmp)
    configs(tmp, args.competitor_headers)
    backend = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf", "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {"tandem": [], "haproxy": []}
    try:
        l7.wait_http(BACKENDS[0])
        for i in range(args.rounds):
            order = ("tandem", "haproxy") if i % 2 == 0 else ("haproxy", "tandem")
            for name in order:
                runs[name].append(run_proxy(name, args.tandem, tmp, s, tests))
    finally:
        l7.stop(backend, signal.SIGQUIT)

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(f"\nTLS and L4, 1 proxy thread on CPU 0, load + nginx backends on CPU 1, {s}s per run{rounds}, "
          f"competitor headers: {args.competitor_headers}")
    print(f"{'':<30} {'tandem /s':>11} {'per CPU-s':>11} {'haproxy /s':>11} {'per CPU-s':>11} {'ratio':>7}")
    for k in tests:
        t = tuple(median([r[k][j] for r in runs["tandem"]]) for j in (0, 1))
        h = tuple(median([r[k][j] for r in runs["haproxy"]]) for j in (0, 1))
        ratio = t[1] / h[1] if h[1] else float("nan")
        print(f"{TESTS[k]:<30} {t[0]:>11.0f} {t[1]:>11.0f} {h[0]:>11.0f} {h[1]:>11.0f} {ratio:>6.2f}x")
    if args.rounds > 1:
        print("\nper-round ratios (tandem/haproxy per CPU-s):")
        for k in tests:
            rs = [t[k][1] / h[k][1] if h[k][1] else float("nan") for t, h in zip(runs["tandem"], runs["haproxy"])]
            print(f"  {TESTS[k]:<28} " + " ".join(f"{x:.2f}" for x in rs))


if __name__ == "__main__":
    main()
