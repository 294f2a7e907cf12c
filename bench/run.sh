#!/usr/bin/env bash
# Runs Tandem, HAProxy and nginx side by side against the same loopback backends:
# first every row of the comparison in one run (compare.py: plain and equal-work modes,
# 5 interleaved rounds), then the HTTP/1.1 keep-alive benchmark (throughput, latency, requests per proxy-CPU-second,
# ratios), the gray-failure benchmark (one slow backend with a green /healthz), TLS and
# L4, the pair's shared state, proxy-wasm filter cost, and user-space instructions per
# request (callgrind).
# Usage: bench/run.sh [seconds-per-run]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v valgrind >/dev/null || need+=(valgrind)
command -v curl >/dev/null || need+=(curl)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian packages start system services; the benchmark runs its own instances.
systemctl stop nginx haproxy >/dev/null 2>&1 || true

ulimit -n 65536 2>/dev/null || true
# The deployable build (the dist profile: release with one codegen unit and fat LTO).
cargo build --profile dist --quiet -p tandem-proxy --bin tandem
python3 bench/compare.py --tandem target/dist/tandem --seconds "${1:-8}" --rounds 5
python3 bench/l7.py --tandem target/dist/tandem --seconds "${1:-10}"
python3 bench/gray_failure.py --tandem target/dist/tandem
python3 bench/tls_l4.py --tandem target/dist/tandem --seconds "${1:-10}"
python3 bench/pair.py --tandem target/dist/tandem
python3 bench/wasm.py --tandem target/dist/tandem --seconds "${1:-10}"
python3 bench/instructions.py --tandem target/dist/tandem
