#!/usr/bin/env bash
# Builds the profile-guided dist binary, target/pgo/dist/tandem: the dist profile (one
# codegen unit, fat LTO) compiled a second time with the branch and call counts of a
# training run, so that LLVM lays out the hot request path together and inlines where
# requests go. A proxy's user-space time is dominated by instruction-cache misses over
# a large code path (hyper, rustls, tokio), which layout is what fixes.
#
# 1. builds an instrumented binary (target/pgo/gen/dist/tandem),
# 2. trains it with bench/compare.py against nginx backends on loopback: HTTP/1.1,
#    TLS 1.3 keep-alive and handshakes, h2, L4 and the header-rules proxy-wasm filter
#    (Tandem only, one round),
# 3. merges the counts (llvm-profdata from rustup's llvm-tools component),
# 4. builds target/pgo/dist/tandem with them.
#
# Two dist builds: ~20 minutes on two cores. The training installs what the benchmarks
# use (bench/tools.sh). Usage: deploy/build-pgo.sh [seconds-per-training-row] (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/tools.sh
rustup component add llvm-tools >/dev/null 2>&1 || true
profdata=$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1 || true)
if [ -z "$profdata" ]; then
  echo "llvm-profdata not found: rustup component add llvm-tools" >&2
  exit 1
fi

out=target/pgo
profiles="$PWD/$out/profiles"
rm -rf "$profiles"
mkdir -p "$profiles"

echo "[pgo] 1/4 instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" \
  cargo build --profile dist --quiet -p tandem-proxy --bin tandem --target-dir "$out/gen"

echo "[pgo] 2/4 training run" >&2
ulimit -n 65536 2>/dev/null || true
python3 bench/compare.py --tandem "$out/gen/dist/tandem" --proxies tandem --modes plain \
  --rounds 1 --seconds "${1:-3}" >/dev/null
if ! ls "$profiles"/*.profraw >/dev/null 2>&1; then
  echo "the training run left no profile in $profiles" >&2
  exit 1
fi

echo "[pgo] 3/4 merging $(ls "$profiles"/*.profraw | wc -l) profile(s)" >&2
"$profdata" merge -o "$profiles/merged.profdata" "$profiles"/*.profraw

echo "[pgo] 4/4 optimised build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profiles/merged.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
  cargo build --profile dist --quiet -p tandem-proxy --bin tandem --target-dir "$out"
echo "$out/dist/tandem"
