#!/usr/bin/env python3
"""Live heap per idle keep-alive connection, and what it is made of.

compare.py's idle-memory row reads RSS growth, which also counts what the allocator keeps
of freed memory: one binary reads differently from run to run. This counts the live heap
instead, exactly: Tandem runs under valgrind's massif (built with the system allocator,
`--features system-alloc`: massif sees nothing of the statically linked mimalloc), a
snapshot is taken through vgdb after a warm-up and another once N keep-alive connections
that each made one request have sat idle (given their buffers back), and the difference
per connection is printed, whole and by allocation site.

    cargo build --profile dist -p tandem-proxy --bin tandem --features system-alloc
    python3 bench/idle_heap.py --tandem target/dist/tandem --connections 500
"""
import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("compare", os.path.join(HERE, "compare.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")
# Frames that say what was allocated, past the allocator's own.
TELLING = ("new<", "tandem_proxy", "hyper", "tokio::", "rustls", "with_capacity", "slab")


def sites(path):
    """{allocation site: bytes} for the top-level entries of a massif snapshot."""
    lines = open(path).read().splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = NODE.match(line)
        if not m or len(m.group(1)) != 1:
            continue
        frames = []
        for deeper in lines[i:i + 60]:
            d = NODE.match(deeper)
            if not d:
                continue
            text = re.sub(r"^0x[0-9A-F]+: ", "", d.group(4))
            if any(k in text for k in TELLING) and "alloc/src" not in text and "sys/alloc" not in text:
                frames.append(text[:110])
            if len(frames) == 2:
                break
        key = " | ".join(frames) or m.group(4)[:110]
        out[key] = out.get(key, 0) + int(m.group(3))
    return out


def total(path):
    return int(re.search(r"mem_heap_B=(\d+)", open(path).read()).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tandem", required=True, help="a build with --features system-alloc")
    ap.add_argument("--connections", type=int, default=500)
    ap.add_argument("--idle", type=float, default=12, help="seconds the connections sit idle (under valgrind)")
    args = ap.parse_args()
    for tool in ("valgrind", "vgdb", "nginx", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install valgrind; bench/tools.sh installs the rest)")
    tmp = tempfile.mkdtemp(prefix="tandem-heap-")
    os.chmod(tmp, 0o755)
    compare.tls_l4.certs(tmp)
    compare.configs(tmp, "plain")
    backend = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", tmp, "-c", f"{tmp}/backend.conf",
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen(["valgrind", "--tool=massif", "--vgdb=yes", "--massif-out-file=/dev/null",
                              "--depth=40", "--threshold=0.2", os.path.abspath(args.tandem), "run", "-c", f"{tmp}/tandem.toml"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http = compare.PORTS["tandem"][0]

    def snapshot(name):
        path = f"{tmp}/{name}.massif"
        subprocess.run(["vgdb", f"--pid={proxy.pid}", "detailed_snapshot", path],
                       capture_output=True, timeout=120, check=True)
        return path

    try:
        compare.l7.wait_http(compare.BACKENDS[0])
        deadline = time.time() + 150
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("Tandem did not answer under valgrind within 150 s")
                time.sleep(0.5)
        for _ in range(50):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/", timeout=5).read()
        time.sleep(3)
        before = snapshot("before")

        async def idle():
            conns = await compare.open_idle(http, args.connections)
            await asyncio.sleep(args.idle)
            after = snapshot("after")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{compare.ADMIN}/metrics", timeout=30).read()
            releases = re.search(rb'tandem_listener_idle_releases_total\{listener="http"\} (\d+)', metrics)
            for w in conns:
                w.close()
            return after, int(releases.group(1)) if releases else 0

        after, released = asyncio.run(idle())
        n = args.connections
        print(f"live heap per idle connection: {(total(after) - total(before)) / n:.0f} bytes "
              f"({n} connections, {released} gave their buffers back)")
        a, b = sites(after), sites(before)
        rows = sorted(((a.get(k, 0) - b.get(k, 0)) / n, k) for k in set(a) | set(b))
        for per, site in reversed(rows):
            if per >= 16:
                print(f"  {per:8.0f}  {site}")
        print("(sites below 0.2 % of the heap are merged, so the sites add up to about the total)")
    finally:
        proxy.kill()
        compare.l7.stop(backend)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
