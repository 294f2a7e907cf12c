#!/usr/bin/env bash
# Builds the Debian package from the profile-guided dist binary, the build the
# benchmarks in bench/ measure: deploy/build-pgo.sh (an instrumented build, a training
# run against nginx backends on loopback, the optimised build), then cargo-deb on
# target/pgo/dist/tandem. Prints the package's path (target/pgo/debian/tandem_*.deb;
# its debug symbols go to a separate tandem-dbgsym package beside it).
#
#   deploy/build-deb.sh           # profile-guided: ~25 minutes on two cores
#   deploy/build-deb.sh --plain   # the plain dist build (target/debian/): ~10 minutes
#
# Installs cargo-deb (cargo install --locked) when it is missing; the profile-guided
# build also installs what its training run uses (bench/tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "") plain=0 ;;
  --plain) plain=1 ;;
  *)
    echo "usage: deploy/build-deb.sh [--plain]" >&2
    exit 2
    ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
  echo "[deb] installing cargo-deb" >&2
  cargo install --locked --quiet cargo-deb
fi

if [ "$plain" = 1 ]; then
  cargo deb -p tandem-proxy --profile dist
  exit 0
fi

deploy/build-pgo.sh >/dev/null
# cargo-deb finds the binary through the target directory, so the profile-guided one
# (target/pgo/dist/tandem) is packaged as built, without a rebuild.
echo "[deb] packaging target/pgo/dist/tandem" >&2
CARGO_TARGET_DIR=target/pgo cargo deb -p tandem-proxy --profile dist --no-build
