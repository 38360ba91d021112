#!/usr/bin/env bash
# Builds the C example validator into a core module: build.sh OUT.wasm
# (functions/build.sh then turns it into a component). Needs clang-22 and wasi-libc
# (Debian: apt-get install clang-22 wasi-libc; dev/install.sh wasm installs them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"
CLANG="${CLANG:-clang-22}"
SYSROOT="${WASI_SYSROOT:-/usr}"
# Debian's wasi-libc: headers in /usr/include/wasm32-wasi, libc.a in /usr/lib/wasm32-wasi.
"$CLANG" --target=wasm32-wasip1 -O2 -mexec-model=reactor \
  -isystem "$SYSROOT/include/wasm32-wasi" -L "$SYSROOT/lib/wasm32-wasi" \
  -nostdlib -fuse-ld=lld \
  -Wall -Wextra -Werror \
  -Wl,--no-entry -Wl,--export-dynamic \
  "$here/rules.c" "$here/bindings/validator.c" "$here/bindings/validator_component_type.o" \
  "$SYSROOT/lib/wasm32-wasi/crt1-reactor.o" -lc \
  -o "$out"
