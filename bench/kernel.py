#!/usr/bin/env python3
"""Where a proxy's CPU goes per request: user space, the kernel, and which syscalls.

compare.py gives requests per proxy-CPU-second; this splits that CPU time. For each
proxy (the compare.py configs, one thread on CPU 0) and row it reports, per request:
user-space µs and kernel µs (utime and stime from /proc over a wrk run) and, when
`perf` can read the syscall tracepoints, the syscalls made (all of them, and the kinds
that count). Rounds interleave the proxies as compare.py does; figures are medians.

It tells which direction can pay: a syscall's entry and exit cost ~0.1 µs here, so
an io_uring data plane can save at most that per syscall, while the TCP work behind a
send or a receive on loopback stays whoever issues it. `--symbols N` samples each
proxy in a load window of its own and lists the kernel functions whose cost per
request differs most between the proxies.

    python3 bench/kernel.py --tandem target/dist/tandem --rows h1,l4 --rounds 3
"""
import argparse
import importlib.util
import os
import re
import shutil
import signal
import statistics
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


compare = load("compare")
l7, tls_l4 = compare.l7, compare.tls_l4

ROWS = {"h1": "HTTP/1.1 keep-alive, 64 conns", "tls_h1": "TLS 1.3 keep-alive, 64 conns",
        "handshakes": "TLS handshake per connection, resumed (wrk), 32 conns",
        "full_handshakes": "full TLS handshake per connection (openssl s_time), 4 clients",
        "h2_tls": "h2 over TLS, 16 conns x 8 streams", "l4": "L4 TCP request/response, 64 conns"}
SYSCALLS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg", "epoll_wait",
            "epoll_pwait", "epoll_ctl", "futex", "io_uring_enter", "splice", "accept4", "close", "getsockopt",
            "setsockopt", "clock_gettime", "connect"]

# Loopback packets the proxy's context puts on the wire (its sends, and the ACKs its
# receives cause), and the times a socket's data-ready callback runs in its context.
PACKETS = {"net:net_dev_xmit": "packets", "sock:sk_data_ready": "data_ready"}


def perf_works():
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"], capture_output=True, text=True)
    return r.returncode == 0 and "not supported" not in r.stderr and "<not" not in r.stderr


def tree(pid):
    """The process and its children (nginx's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid] + [int(c) for c in f.read().split()]
    except OSError:
        return [pid]


def ticks(pids):
    """(user ticks, system ticks, minor page faults) of the processes, all threads."""
    user = system = faults = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user, system, faults = user + int(fields[11]), system + int(fields[12]), faults + int(fields[7])
    return user, system, faults


def kernel_symbols(pids, run_load, seconds):
    """{kernel symbol: µs per request} of the proxy's threads over a load of its own
    (`perf record -e cpu-clock`, 10 kHz: each sample is 100 µs of the proxy's CPU),
    with the sampled user and kernel totals under "(user)" and "(kernel)"."""
    fd, data = tempfile.mkstemp(prefix="tandem-kernel-perf-")
    os.close(fd)
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-o", data,
                            "-p", ",".join(map(str, pids))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    n = run_load(seconds) * seconds
    rec.send_signal(signal.SIGINT)
    rec.wait()
    report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym",
                             "-F", "sample,sym"], capture_output=True, text=True).stdout
    os.unlink(data)
    out = {"(user)": 0.0, "(kernel)": 0.0}
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s+\[(.)\]\s+(\S+)", line)
        if not m:
            continue
        us = int(m.group(1)) * 100.0 / n
        if m.group(2) == "k":
            out["(kernel)"] += us
            out[m.group(3)] = out.get(m.group(3), 0.0) + us
        else:
            out["(user)"] += us
    return out


def measure(name, binary, tmp, row, seconds, perf, symbols=False):
    """{figure: per-request value} for one proxy and row (and its kernel symbols, when
    asked, under "symbols")."""
    p, (http, https, tcp) = compare.start_proxy(name, binary, tmp)
    url = {"h1": f"http://127.0.0.1:{http}/", "tls_h1": f"https://127.0.0.1:{https}/",
           "handshakes": f"https://127.0.0.1:{https}/", "full_handshakes": f"https://127.0.0.1:{https}/",
           "h2_tls": f"https://127.0.0.1:{https}/",
           "l4": f"http://127.0.0.1:{tcp}/"}[row]

    def run_load(secs):
        """Requests per second of the row's load over `secs` seconds."""
        if row == "h2_tls":
            return compare.h2load(https, secs)
        if row == "full_handshakes":
            return tls_l4.full_handshakes(https, secs)
        extra = ["-H", "Connection: close"] if row == "handshakes" else []
        return tls_l4.wrk_raw(["-t1", "-c32" if row == "handshakes" else "-c64", f"-d{secs}s"] + extra + [url])[0]

    try:
        for port in (http, https, tcp):
            tls_l4.wait_port(port)
        run_load(2)
        pids = tree(p.pid)
        counter = None
        if perf:
            events = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
                              + list(PACKETS))
            counter = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids)),
                                        "--", "sleep", str(seconds + 1)], stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
        u0, s0, f0 = ticks(pids)
        rps = run_load(seconds)
        u1, s1, f1 = ticks(pids)
        n = rps * seconds
        out = {"user_us": (u1 - u0) / l7.CLK * 1e6 / n, "sys_us": (s1 - s0) / l7.CLK * 1e6 / n,
               "page_faults": (f1 - f0) / n}
        if counter:
            # perf counts over seconds+1 s: scale by the requests wrk made in its window
            # (the extra half-second on each side is idle).
            for line in counter.communicate()[1].splitlines():
                parts = line.split(",")
                if len(parts) > 2 and parts[0].isdigit():
                    key = PACKETS.get(parts[2]) or \
                        parts[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "syscalls")
                    out[key] = int(parts[0]) / n
        if symbols:
            out["symbols"] = kernel_symbols(pids, run_load, seconds)
        return out
    finally:
        l7.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", required=True)
    ap.add_argument("--baseline", help="a second Tandem binary measured beside --tandem")
    ap.add_argument("--rows", default="h1,l4", help="comma-separated: " + ", ".join(ROWS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--defer-accept", action="store_true",
                    help="every proxy's HTTP and TLS listeners defer the accept until the first bytes "
                         "(see compare.py)")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--no-perf", action="store_true",
                    help="CPU split only: perf's tracepoints add kernel time of their own")
    ap.add_argument("--symbols", type=int, default=0, metavar="N",
                    help="also sample each proxy in a load of its own and list the N kernel functions "
                         "that differ most between the proxies, in µs per request")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if any(r not in ROWS for r in rows):
        sys.exit(f"--rows: choose from {', '.join(ROWS)}")
    for tool in ("wrk", "haproxy", "nginx", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing; run bench/run.sh, which installs it")
    if not os.path.exists(compare.NGINX_STREAM):
        sys.exit(f"{compare.NGINX_STREAM} is missing: apt-get install libnginx-mod-stream")
    if args.symbols and not shutil.which("perf"):
        sys.exit("--symbols needs perf: apt-get install linux-perf")
    perf = not args.no_perf and perf_works()
    if not perf and not args.no_perf:
        print("perf cannot read the syscall tracepoints here: CPU split only", file=sys.stderr)
    names = ["tandem"] + (["baseline"] if args.baseline else []) + ["haproxy", "nginx"]
    tmp = tempfile.mkdtemp(prefix="tandem-kernel-")
    os.chmod(tmp, 0o755)
    tls_l4.certs(tmp)
    compare.configs(tmp, "plain", args.defer_accept)
    backend = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf",
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {row: {n: [] for n in names} for row in rows}
    try:
        l7.wait_http(compare.BACKENDS[0])
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for row in rows:
                for name in order:
                    binary = args.baseline if name == "baseline" else args.tandem
                    results[row][name].append(measure(name, binary, tmp, row, args.seconds, perf,
                                                      symbols=args.symbols > 0))
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        l7.stop(backend, signal.SIGQUIT)
        shutil.rmtree(tmp, ignore_errors=True)
    for row in rows:
        print(f"\n{ROWS[row]}: per request, medians of {args.rounds} rounds (plain mode)")
        keys = ["user_us", "sys_us", "page_faults"]
        if perf:
            seen = {k for runs in results[row].values() for r in runs
                    for k, v in r.items() if k != "symbols" and v >= 0.01}
            keys += ["syscalls"] + [s for s in SYSCALLS if s in seen] + [k for k in PACKETS.values() if k in seen]
        print(f"  {'':<14}" + "".join(f"{n:>10}" for n in names))
        for k in keys:
            label = {"user_us": "user µs", "sys_us": "kernel µs", "page_faults": "page faults"}.get(k, k)
            print(f"  {label:<14}" + "".join(
                f"{statistics.median(r.get(k, 0) for r in results[row][n]):>10.2f}" for n in names))
        total = {n: statistics.median(r["user_us"] + r["sys_us"] for r in results[row][n]) for n in names}
        print(f"  {'total µs':<14}" + "".join(f"{total[n]:>10.2f}" for n in names))
        if args.symbols:
            print_symbols(results[row], names, args.symbols)


def print_symbols(runs, names, top):
    """The sampled split and the `top` kernel functions whose µs per request differ most
    between the proxies (median of the rounds; a function missing from a round counts 0)."""
    med = {}
    for n in names:
        syms = {k for r in runs[n] for k in r["symbols"]}
        med[n] = {k: statistics.median(r["symbols"].get(k, 0.0) for r in runs[n]) for k in syms}
    every = set().union(*(med[n] for n in names)) - {"(user)", "(kernel)"}
    spread = lambda k: max(med[n].get(k, 0.0) for n in names) - min(med[n].get(k, 0.0) for n in names)
    print(f"  sampled (perf record -e cpu-clock), µs per request; the {top} kernel functions that differ most:")
    for k in ["(user)", "(kernel)"] + sorted(every, key=spread, reverse=True)[:top]:
        print(f"  {k[:30]:<32}" + "".join(f"{med[n].get(k, 0.0):>10.3f}" for n in names))


if __name__ == "__main__":
    main()
