#!/usr/bin/env bash
# Line coverage of floe's unit and integration tests (`make coverage`), with cargo-llvm-cov
# (source-based coverage, `-C instrument-coverage`):
#   1. an instrumented build in its own target directory (the normal build stays as it is);
#   2. the unit tests (`cargo test --workspace`), then the integration tests against the real
#      dev stack, exactly as `make test` runs them; the `floe` binaries the integration tests
#      start are instrumented too, so what they run counts;
#   3. a report of the workspace's own code (tests, benches and build scripts excluded):
#      a summary on stdout, target/coverage/summary.txt, lcov in target/coverage/lcov.info
#      and HTML in target/coverage/html/.
#
# The WASM guests run inside wasmtime, where nothing is counted: their logic lives in
# functions/cdc-core and the SDK, which the native tests cover and which are counted.
# Needs `dev/install.sh coverage` (cargo-llvm-cov, Debian's llvm-22) and the components
# built by functions/build.sh (`make coverage` does both).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=dev/env.sh
. "$here/env.sh"
cd "$root"

export PATH="$FLOE_DEV_HOME/cargo/bin:$PATH"
# rustup's llvm-tools component when it is there, else Debian's LLVM of rustc's major version.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
  export LLVM_COV="/usr/bin/llvm-cov-$llvm_major" LLVM_PROFDATA="/usr/bin/llvm-profdata-$llvm_major"
  for t in "$LLVM_COV" "$LLVM_PROFDATA"; do
    [[ -x "$t" ]] || { echo "coverage: $t is missing (Debian package llvm-$llvm_major; rustc uses LLVM $llvm_major)" >&2; exit 1; }
  done
fi

out="$root/target/coverage"
ignore='(^|/)(tests|benches)/|(^|/)tests\.rs$|_tests\.rs$|(^|/)build\.rs$|/functions/(validator|transformer|merge-builder|componentize|examples)/'
export CARGO_TARGET_DIR="$root/target/coverage-build"
# shellcheck disable=SC1090
source <(cargo llvm-cov show-env --sh)
cargo llvm-cov clean --workspace
t0=$(date +%s)
cargo build --workspace --bins --tests
# The integration tests start the instrumented floe, not target/debug/floe.
export FLOE_BIN="$CARGO_TARGET_DIR/debug/floe"
cargo test --workspace
"$here/with-stack.sh" cargo test --workspace -- --ignored --test-threads=1
mkdir -p "$out"
cargo llvm-cov report --ignore-filename-regex "$ignore" --summary-only | tee "$out/summary.txt"
cargo llvm-cov report --ignore-filename-regex "$ignore" --lcov --output-path "$out/lcov.info"
cargo llvm-cov report --ignore-filename-regex "$ignore" --html --output-dir "$out"
echo "coverage: done in $(( $(date +%s) - t0 )) s; $out/summary.txt, $out/lcov.info, $out/html/index.html"
