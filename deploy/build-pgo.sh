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
# With TANDEM_BOLT=1, BOLT (LLVM's post-link optimiser) then lays the binary out once
# more from the counts of a second training run:
# 5. step 4 links with its relocations kept (--emit-relocs) so that functions can move;
#    llvm-bolt instruments that binary and the training runs again,
# 6. llvm-bolt rewrites it: hot blocks in training order, cold blocks out of line,
#    functions ordered by calls (target/pgo/dist/tandem; the binary before BOLT stays
#    beside it as tandem.pre-bolt). It installs Debian's bolt-22 (or bolt-19) when no
#    llvm-bolt is on the PATH.
# BOLT is not the default: over the profile-guided build it saves 9 to 16 % of the
# instruction-cache misses callgrind models and a third of the taken branches, with the
# same instruction count, but no timed run here could tell the two builds apart, and
# it adds ~5 minutes, 6 MB of binary and 2.6 MB of resident text (bench/README.md).
#
# Two dist builds: ~20 minutes on two cores (~25 with BOLT). The training installs
# what the benchmarks use (bench/tools.sh).
# Usage: [TANDEM_BOLT=1] deploy/build-pgo.sh [seconds-per-training-row] (default 3)
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

bolt=${TANDEM_BOLT:-0}
steps=6
[ "$bolt" = 0 ] && steps=4
if [ "$bolt" != 0 ]; then
  bolt_bin=$(command -v llvm-bolt || ls /usr/bin/llvm-bolt-[0-9]* 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$bolt_bin" ]; then
    echo "[pgo] installing BOLT" >&2
    apt-get update -qq || true
    apt-get install -y -qq bolt-22 >/dev/null 2>&1 || apt-get install -y -qq bolt-19 >/dev/null 2>&1 || true
    bolt_bin=$(ls /usr/bin/llvm-bolt-[0-9]* 2>/dev/null | sort -V | tail -1 || true)
  fi
  if [ -z "$bolt_bin" ]; then
    echo "llvm-bolt not found and not installable (Debian: apt-get install bolt-22); without TANDEM_BOLT=1 the build does not need it" >&2
    exit 1
  fi
  merge_fdata=$(dirname "$(readlink -f "$bolt_bin")")/merge-fdata
fi

train() {
  python3 bench/compare.py --tandem "$1" --proxies tandem --modes plain \
    --rounds 1 --seconds "${2:-3}" >/dev/null
}

echo "[pgo] 1/$steps instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" \
  cargo build --profile dist --quiet -p tandem-proxy --bin tandem --target-dir "$out/gen"

echo "[pgo] 2/$steps training run" >&2
ulimit -n 65536 2>/dev/null || true
train "$out/gen/dist/tandem" "${1:-3}"
if ! ls "$profiles"/*.profraw >/dev/null 2>&1; then
  echo "the training run left no profile in $profiles" >&2
  exit 1
fi

echo "[pgo] 3/$steps merging $(ls "$profiles"/*.profraw | wc -l) profile(s)" >&2
"$profdata" merge -o "$profiles/merged.profdata" "$profiles"/*.profraw

echo "[pgo] 4/$steps optimised build" >&2
relocs=""
[ "$bolt" != 0 ] && relocs="-Clink-arg=-Wl,--emit-relocs"
# BOLT refuses a binary it has already rewritten: take cargo's own output again
# (relinked, or copied anew from target/pgo/dist/deps/).
rm -f "$out/dist/tandem" "$out/dist/tandem.pre-bolt"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profiles/merged.profdata -Cllvm-args=-pgo-warn-missing-function=false $relocs" \
  cargo build --profile dist --quiet -p tandem-proxy --bin tandem --target-dir "$out"
if [ "$bolt" = 0 ]; then
  echo "$out/dist/tandem"
  exit 0
fi

echo "[pgo] 5/$steps BOLT: instrumented binary and its training run ($bolt_bin)" >&2
fdata="$profiles/bolt"
mkdir -p "$fdata"
"$bolt_bin" "$out/dist/tandem" -instrument --instrumentation-file="$fdata/prof" \
  --instrumentation-file-append-pid -o "$out/dist/tandem.bolt-instr" >"$profiles/bolt-instrument.log" 2>&1
train "$out/dist/tandem.bolt-instr" "${1:-3}"
if ! ls "$fdata"/prof*.fdata >/dev/null 2>&1; then
  echo "the BOLT training run left no profile in $fdata" >&2
  exit 1
fi
"$merge_fdata" "$fdata"/prof*.fdata >"$profiles/bolt.fdata" 2>/dev/null
rm -f "$out/dist/tandem.bolt-instr"

echo "[pgo] 6/$steps BOLT: optimised layout" >&2
# Hot blocks of each function in training order (ext-tsp), functions ordered by calls
# (cdsort), cold blocks split out of line, identical functions folded; the DWARF is
# rewritten so that backtraces and the -dbgsym package still name the right lines.
"$bolt_bin" "$out/dist/tandem" -o "$out/dist/tandem.bolt" -data="$profiles/bolt.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-strategy=cdsplit \
  -split-all-cold -split-eh -icf=1 -use-gnu-stack -update-debug-sections -dyno-stats \
  >"$profiles/bolt-optimise.log" 2>&1 || {
  tail -20 "$profiles/bolt-optimise.log" >&2
  exit 1
}
mv "$out/dist/tandem" "$out/dist/tandem.pre-bolt"
mv "$out/dist/tandem.bolt" "$out/dist/tandem"
echo "$out/dist/tandem"
