#!/usr/bin/env bash
# Builds the Lambda deployment zip (`make lambda`, `make lambda ARCH=arm64`):
#
#   dev/lambda.sh [x86_64] [arm64]        (default: x86_64)
#   dev/lambda.sh smoke [x86_64|arm64]    (`make lambda-smoke`; default: x86_64)
#
# target/lambda/<arch>/floe-lambda.zip holds
#   bootstrap                   floe-lambda, release profile (provided.al2023 runs it)
#   components/<sha256>.cwasm   the built-in components (and any configured with
#                               FLOE__COMPONENTS__* in this environment) compiled ahead of
#                               time for the architecture's baseline CPU by
#                               `bootstrap precompile`, so a cold start loads them as is
# and prints the zip's size. The components must be built first (`make components`).
#
# arm64 on an x86_64 machine is cross-built (`dev/install.sh lambda-arm64`, run from here,
# installs the toolchain): Debian's rustc-web (/usr/bin/rustc, /usr/bin/cargo) against its
# aarch64 std, zig as the C compiler and linker (glibc 2.28), in its own target directory
# target/lambda-arm64/. `bootstrap precompile` compiles for the architecture it runs on, so the
# arm64 bootstrap itself precompiles the components, under qemu-aarch64-static. On an aarch64
# machine arm64 is a native build, as x86_64 is on x86_64 (that route is not tested here).
#
# smoke runs the Runtime API tests (tests/all/runtime_api.rs) with the dev stack against the
# packaged bootstrap (under qemu for arm64 on x86_64) and its precompiled components, through
# FLOE_TEST_BOOTSTRAP; the workspace's tests must be built (`make build`). The output is kept
# in target/lambda/<arch>/smoke.log.
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEV_DIR/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
ARM64_TARGET=aarch64-unknown-linux-gnu
ARM64_TARGET_DIR="$ROOT/target/lambda-arm64"

die() { echo "lambda: $*" >&2; exit 1; }
usage() { echo "usage: $0 [x86_64] [arm64] | $0 smoke [x86_64|arm64]" >&2; exit 2; }

# normalise ARCH: the architecture's name as Lambda spells it (x86_64, arm64).
normalise() {
  case "$1" in
    x86_64|amd64) echo x86_64 ;;
    arm64|aarch64) echo arm64 ;;
    *) usage ;;
  esac
}

# elf_machine FILE: the ELF e_machine of FILE (62: x86_64, 183: aarch64). Bootstrap and
# .cwasm files (wasmtime writes ELF objects) are checked with it.
elf_machine() { od -An -tu2 -j18 -N2 "$1" | tr -d ' '; }
declare -A MACHINE=([x86_64]=62 [arm64]=183)

# runner ARCH: the command prefix that runs ARCH's binaries on this machine (empty: natively).
RUNNER=()
runner() {
  RUNNER=()
  case "$1/$(uname -m)" in
    x86_64/x86_64|arm64/aarch64) ;;
    arm64/x86_64)
      # shellcheck source=dev/env.sh
      . "$DEV_DIR/env.sh"
      RUNNER=(qemu-aarch64-static -L "$FLOE_ARM64_ROOT")
      ;;
    *) die "$1 is not built on a $(uname -m) machine" ;;
  esac
}

package() {
  local arch="$1" bin="$2" out="$ROOT/target/lambda/$1" f t0
  rm -rf "$out/pkg" "$out/floe-lambda.zip"
  mkdir -p "$out/pkg/components"
  cp "$bin" "$out/pkg/bootstrap"
  chmod 755 "$out/pkg/bootstrap"
  [[ "$(elf_machine "$out/pkg/bootstrap")" == "${MACHINE[$arch]}" ]] \
    || die "$bin is not an $arch binary (ELF machine $(elf_machine "$out/pkg/bootstrap"))"
  runner "$arch"
  t0=$EPOCHREALTIME
  "${RUNNER[@]}" "$out/pkg/bootstrap" precompile "$out/pkg/components"
  echo "lambda: $arch components precompiled in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s${RUNNER[*]:+ (under ${RUNNER[0]})}"
  for f in "$out/pkg/components"/*.cwasm; do
    [[ "$(elf_machine "$f")" == "${MACHINE[$arch]}" ]] \
      || die "$f is not compiled for $arch (ELF machine $(elf_machine "$f"))"
  done
  # Python's zipfile keeps the executable bit of bootstrap (no zip package needed).
  (cd "$out/pkg" && python3 - <<'PY'
import os, zipfile
with zipfile.ZipFile("../floe-lambda.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for root, _, files in os.walk("."):
        for f in sorted(files):
            p = os.path.join(root, f)
            z.write(p, os.path.relpath(p, "."))
PY
  )
  local size
  size=$(stat -c %s "$out/floe-lambda.zip")
  echo "lambda: $out/floe-lambda.zip ($((size / 1024)) KiB; bootstrap $(($(stat -c %s "$out/pkg/bootstrap") / 1024)) KiB, $(find "$out/pkg/components" -name '*.cwasm' | wc -l) precompiled components)"
}

# The arm64 bootstrap cross-built on x86_64 (see the header). The C parts (librdkafka's own
# make, and cc-rs for zlib, zstd and ring) are compiled by zig for aarch64; build scripts and
# proc macros stay on the host's compiler (HOST_CC...). RUSTFLAGS would replace the target's
# rustflags (the --sysroot), so it is unset. LDFLAGS is read only by rdkafka-sys: librdkafka's
# shared library, built beside the static one, has a version script naming symbols that the
# build leaves out, which GNU ld accepts and zig's lld only with --undefined-version.
build_arm64_cross() {
  FLOE_INSTALL_QUIET=1 "$DEV_DIR/install.sh" lambda-arm64
  # shellcheck source=dev/env.sh
  . "$DEV_DIR/env.sh"
  local tools="$FLOE_ARM64_TOOLS"
  env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
    RUSTC=/usr/bin/rustc \
    CARGO_TARGET_DIR="$ARM64_TARGET_DIR" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$tools/zig-aarch64-cc" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="--sysroot=$FLOE_ARM64_SYSROOT" \
    CC_aarch64_unknown_linux_gnu="$tools/zig-aarch64-cc" \
    CXX_aarch64_unknown_linux_gnu="$tools/zig-aarch64-c++" \
    AR_aarch64_unknown_linux_gnu="$tools/zig-aarch64-ar" \
    CC="$tools/zig-aarch64-cc" CXX="$tools/zig-aarch64-c++" AR="$tools/zig-aarch64-ar" \
    HOST_CC=cc HOST_CXX=c++ HOST_AR=ar LDFLAGS=-Wl,--undefined-version \
    nice -n 10 /usr/bin/cargo build --release -p floe-lambda --bin bootstrap --target "$ARM64_TARGET"
}

build() {
  local arch="$1" t0
  t0=$(date +%s)
  case "$arch/$(uname -m)" in
    x86_64/x86_64|arm64/aarch64)
      "$CARGO" build --release -p floe-lambda --bin bootstrap
      echo "lambda: $arch build took $(($(date +%s) - t0)) s"
      package "$arch" "$ROOT/target/release/bootstrap"
      ;;
    arm64/x86_64)
      build_arm64_cross
      echo "lambda: arm64 build took $(($(date +%s) - t0)) s (cross, $ARM64_TARGET_DIR)"
      package arm64 "$ARM64_TARGET_DIR/$ARM64_TARGET/release/bootstrap"
      ;;
    *) die "$arch is not built on a $(uname -m) machine" ;;
  esac
}

# smoke ARCH: the Runtime API tests against the packaged bootstrap and its precompiled
# components (RUST_LOG shows each component loaded precompiled), with the dev stack. cargo
# runs as `make test` runs it (`--workspace`, every test binary, here filtered by name), so it
# reuses `make build`'s artifacts: `--test all` alone resolves other features and rebuilds
# wasmtime and its dependencies.
smoke() {
  local arch="$1" out="$ROOT/target/lambda/$1" rc=0
  local pkg="$out/pkg"
  [[ -x "$pkg/bootstrap" ]] || die "$pkg/bootstrap is missing: run dev/lambda.sh $arch (make lambda ARCH=$arch) first"
  runner "$arch"
  local cmd=(env "RUST_LOG=info,floe_host=debug" "FLOE__COMPONENTS__PRECOMPILED_DIR=$pkg/components"
    "${RUNNER[@]}" "$pkg/bootstrap")
  local word
  for word in "${cmd[@]}"; do
    [[ "$word" != *[[:space:]]* ]] || die "FLOE_TEST_BOOTSTRAP is split on whitespace: '$word' holds some"
  done
  echo "lambda: smoke test of $pkg/bootstrap: FLOE_TEST_BOOTSTRAP='${cmd[*]}'"
  FLOE_TEST_BOOTSTRAP="${cmd[*]}" "$DEV_DIR/with-stack.sh" \
    "$CARGO" test --workspace -- --ignored --test-threads=1 --nocapture runtime_api \
    2>&1 | tee "$out/smoke.log" || rc=$?
  ((rc == 0)) || die "smoke test of $arch failed ($out/smoke.log)"
  local loaded unusable
  loaded=$(grep -c 'component loaded precompiled' "$out/smoke.log" || true)
  unusable=$(grep -c 'unusable precompiled component' "$out/smoke.log" || true)
  ((unusable == 0)) || die "the $arch bootstrap could not use its precompiled components ($out/smoke.log)"
  ((loaded > 0)) || die "the $arch bootstrap loaded no precompiled component ($out/smoke.log)"
  echo "lambda: $arch smoke test passed: $loaded components loaded precompiled;" \
    "$(grep -o 'first answer [0-9]* ms after start' "$out/smoke.log" | paste -sd ',' | sed 's/,/, /g')"
}

if [[ "${1:-}" == smoke ]]; then
  (($# <= 2)) || usage
  arch="$(normalise "${2:-x86_64}")"
  smoke "$arch"
  exit 0
fi
arches=("$@")
((${#arches[@]})) || arches=(x86_64)
for a in "${arches[@]}"; do
  arch="$(normalise "$a")"
  build "$arch"
done
