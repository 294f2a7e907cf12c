#!/usr/bin/env bash
# Runs Tandem, HAProxy and nginx side by side against the same loopback backends:
# first every row of the comparison in one run (compare.py: plain and equal-work modes,
# 5 interleaved rounds), then the HTTP/1.1 keep-alive benchmark (throughput, latency, requests per proxy-CPU-second,
# ratios), the gray-failure benchmark (one slow backend with a green /healthz), TLS and
# L4, the pair's shared state, proxy-wasm filter cost, and user-space instructions per
# request (callgrind).
# Usage: bench/run.sh [seconds-per-run]   (default 10); TANDEM_PGO=1 also builds and
# compares the profile-guided build (deploy/build-pgo.sh, ~20 more minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/tools.sh

ulimit -n 65536 2>/dev/null || true
# The deployable build (the dist profile: release with one codegen unit and fat LTO).
cargo build --profile dist --quiet -p tandem-proxy --bin tandem
if [ "${TANDEM_PGO:-0}" = 1 ]; then
  # The profile-guided build (deploy/build-pgo.sh), judged beside the plain one.
  deploy/build-pgo.sh >/dev/null
  python3 bench/compare.py --tandem target/pgo/dist/tandem --baseline target/dist/tandem --seconds "${1:-8}" --rounds 5
else
  python3 bench/compare.py --tandem target/dist/tandem --seconds "${1:-8}" --rounds 5
fi
python3 bench/kernel.py --tandem target/dist/tandem --rounds 3
python3 bench/wakeups.py --tandem target/dist/tandem
python3 bench/l7.py --tandem target/dist/tandem --seconds "${1:-10}"
python3 bench/gray_failure.py --tandem target/dist/tandem
python3 bench/tls_l4.py --tandem target/dist/tandem --seconds "${1:-10}"
python3 bench/pair.py --tandem target/dist/tandem
python3 bench/wasm.py --tandem target/dist/tandem --seconds "${1:-10}"
python3 bench/instructions.py --tandem target/dist/tandem
