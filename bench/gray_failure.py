#!/usr/bin/env python3
"""Gray-failure benchmark: Tandem beside HAProxy and nginx in one run.

Twelve loopback backends; 5 s into each run one of them turns slow (900 ms on real
requests) while its /healthz stays fast and 200. Clients send a fixed rate with a 1 s
timeout and up to two retries. Each proxy runs its natural production config:
HAProxy leastconn + health checks + `observe layer7`; nginx least_conn + max_fails;
Tandem p2c_ewma + outlier detection + retry budget.

Reports per proxy: success rate, p50/p99 latency before / during (first 2 s) / after
the fault, when p99 got back under 100 ms for good, and upstream attempts per client
request (all tries the backends saw, divided by client requests).
"""
import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

N = 12
BASE = 19201
PORTS = {"tandem": 18180, "haproxy": 18181, "nginx": 18182}
FAULT_AT = 5.0


def backend_addrs():
    return [f"127.0.0.1:{BASE + i}" for i in range(N)]


def stop(p):
    """Stops a proxy gracefully, killing it after 10 s."""
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def hits():
    return sum(int(get(f"http://{a}/_stats")) for a in backend_addrs())


def control(i, delay_ms):
    get(f"http://{backend_addrs()[i]}/_control?delay_ms={delay_ms}")


def configs(tmp):
    addrs = backend_addrs()
    eps = ", ".join(f'{{ address = "{a}" }}' for a in addrs)
    with open(f"{tmp}/tandem.toml", "w") as f:
        f.write(f"""[server]
workers = 1
[admin]
listen = "127.0.0.1:19901"
[log]
level = "warn"
access_log = "off"
[[listener]]
name = "web"
listen = "127.0.0.1:{PORTS["tandem"]}"
[[cluster]]
name = "be"
balancer = "p2c_ewma"
connect_timeout = "250ms"
endpoints = [{eps}]
health_check = {{ path = "/healthz", interval = "1s", timeout = "500ms", rise = 2, fall = 3 }}
outlier_detection = {{ consecutive_5xx = 5, consecutive_gateway_errors = 3, base_ejection_time = "30s", max_ejection_percent = 20 }}
retry_budget = {{ budget_percent = 20, min_retry_concurrency = 3 }}
[[route]]
name = "all"
cluster = "be"
timeout = "1s"
per_try_timeout = "300ms"
retry_on = ["connect-failure", "reset", "timeout", "gateway-error"]
max_retries = 2
""")
    servers = "\n".join(f"  server s{i} {a} check" for i, a in enumerate(addrs))
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 10s
  retries 2
  option redispatch
  option http-keep-alive
  http-reuse safe
frontend fe
  bind 127.0.0.1:{PORTS["haproxy"]}
  default_backend be
backend be
  balance leastconn
  option httpchk GET /healthz
  default-server inter 1s fall 3 rise 2 observe layer7 error-limit 10 on-error mark-down
{servers}
""")
    ngx = "\n".join(f"    server {a} max_fails=3 fail_timeout=10s;" for a in addrs)
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream be {{
    least_conn;
{ngx}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{PORTS["nginx"]};
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 1s;
      proxy_read_timeout 10s;
      proxy_next_upstream error timeout http_502 http_503 http_504;
    }}
  }}
}}
""")


class Pool:
    def __init__(self, port):
        self.port = port
        self.idle = []

    async def get(self):
        t0 = time.monotonic()
        if self.idle:
            r, w = self.idle.pop()
        else:
            r, w = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length, close = 0, False
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "connection" and "close" in v.lower():
                    close = True
            await r.readexactly(length)
        except BaseException:
            w.close()
            raise
        if close:
            w.close()
        else:
            self.idle.append((r, w))
        return status, time.monotonic() - t0


async def one_request(pool, results, started_at):
    t0 = time.monotonic()
    tries, ok = 0, False
    for _ in range(3):
        tries += 1
        try:
            status, _ = await asyncio.wait_for(pool.get(), 1.0)
            if status < 500:
                ok = True
                break
        except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
    results.append((t0 - started_at, time.monotonic() - t0, ok, tries))


async def drive(port, rate, seconds, fault):
    pool = Pool(port)
    results, tasks = [], []
    start = time.monotonic()
    faulted = False
    for n in range(int(rate * seconds)):
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        if not faulted and time.monotonic() - start >= FAULT_AT:
            faulted = True
            await asyncio.get_running_loop().run_in_executor(None, fault)
        tasks.append(asyncio.ensure_future(one_request(pool, results, start)))
    await asyncio.gather(*tasks)
    for _, w in pool.idle:
        w.close()
    return results


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] * 1000


def summarize(results, seconds):
    before = [d for t, d, ok, _ in results if t < FAULT_AT]
    during = [d for t, d, ok, _ in results if FAULT_AT <= t < FAULT_AT + 2]
    after = [d for t, d, ok, _ in results if t >= FAULT_AT + 2]
    ok = sum(1 for r in results if r[2])
    # Recovery: first 250 ms bucket after the fault from which every bucket's p99 < 100 ms.
    buckets = {}
    for t, d, _, _ in results:
        if t >= FAULT_AT:
            buckets.setdefault(int((t - FAULT_AT) / 0.25), []).append(d)
    keys = sorted(buckets)
    recovered = None
    for i, k in enumerate(keys):
        if all(pct(buckets[j], 99) < 100 for j in keys[i:]):
            recovered = k * 0.25
            break
    return {
        "success": 100.0 * ok / len(results),
        "before": (pct(before, 50), pct(before, 99)),
        "during": (pct(during, 50), pct(during, 99)),
        "after": (pct(after, 50), pct(after, 99)),
        "recovered_s": recovered,
        "client_tries": statistics.mean(r[3] for r in results),
    }


def start_proxy(name, tandem, tmp):
    if name == "tandem":
        cmd = [tandem, "run", "-c", f"{tmp}/tandem.toml"]
    elif name == "haproxy":
        cmd = ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"]
    else:
        cmd = ["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf", "-g", "daemon off;"]
    return subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"port {port} did not answer")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--only", choices=list(PORTS))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tandem-gray-")
    configs(tmp)
    specs = [f"b{i}={a}" for i, a in enumerate(backend_addrs())]
    backends = subprocess.Popen(["taskset", "-c", "1", os.path.abspath(args.tandem), "backend", "--threads", "1"] + specs)
    out = {}
    try:
        time.sleep(0.5)
        for name in [args.only] if args.only else ("tandem", "haproxy", "nginx"):
            control(0, 0)
            p = start_proxy(name, os.path.abspath(args.tandem), tmp)
            try:
                wait_up(PORTS[name])
                time.sleep(2.5)  # let health checks settle
                h0 = hits()
                results = asyncio.run(drive(PORTS[name], args.rate, args.seconds, lambda: control(0, 900)))
                attempts = hits() - h0
                s = summarize(results, args.seconds)
                s["attempts_per_request"] = attempts / len(results)
                out[name] = s
            finally:
                stop(p)
                control(0, 0)
                time.sleep(1)
    finally:
        backends.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nGray failure: {N} backends, one slow (900 ms, /healthz green) from t={FAULT_AT:.0f}s; "
          f"{args.rate} req/s for {args.seconds}s, client timeout 1 s, 2 client retries")
    print(f"{'proxy':<8} {'success %':>9} {'p50/p99 before':>16} {'p50/p99 during':>16} {'p50/p99 after':>16} "
          f"{'p99<100ms after':>16} {'attempts/req':>12} {'client tries':>12}")
    for name, s in out.items():
        rec = "never" if s["recovered_s"] is None else f"{s['recovered_s']:.2f}s"
        print(f"{name:<8} {s['success']:>9.2f} {s['before'][0]:>7.1f}/{s['before'][1]:<8.1f} "
              f"{s['during'][0]:>7.1f}/{s['during'][1]:<8.1f} {s['after'][0]:>7.1f}/{s['after'][1]:<8.1f} "
              f"{rec:>16} {s['attempts_per_request']:>12.3f} {s['client_tries']:>12.3f}")


if __name__ == "__main__":
    main()
