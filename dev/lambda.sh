#!/usr/bin/env bash
# Builds the Lambda deployment zip (`make lambda`):
#
#   dev/lambda.sh [x86_64] [arm64]        (default: x86_64)
#
# target/lambda/<arch>/floe-lambda.zip holds
#   bootstrap                   floe-lambda, release profile (provided.al2023 runs it)
#   components/<sha256>.cwasm   the built-in components (and any configured with
#                               FLOE__COMPONENTS__* in this environment) compiled ahead of
#                               time for the architecture's baseline CPU by
#                               `bootstrap precompile`, so a cold start loads them as is
# and prints the zip's size. The components must be built first (`make components`).
#
# arm64 (Lambda's default in terraform/) is not packaged by this script yet: see
# docs/lambda.md ("Build") for its state.
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEV_DIR/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"

arches=("$@")
((${#arches[@]})) || arches=(x86_64)

package() {
  local arch="$1" bin="$2" out="$ROOT/target/lambda/$1"
  rm -rf "$out/pkg" "$out/floe-lambda.zip"
  mkdir -p "$out/pkg/components"
  cp "$bin" "$out/pkg/bootstrap"
  chmod 755 "$out/pkg/bootstrap"
  "$out/pkg/bootstrap" precompile "$out/pkg/components"
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
  echo "lambda: $out/floe-lambda.zip ($((size / 1024)) KiB; bootstrap $(($(stat -c %s "$out/pkg/bootstrap") / 1024)) KiB, $(ls "$out/pkg/components" | wc -l) precompiled components)"
}

for arch in "${arches[@]}"; do
  case "$arch" in
    x86_64)
      [[ "$(uname -m)" == x86_64 ]] || { echo "lambda: x86_64 is built on an x86_64 machine" >&2; exit 1; }
      t0=$(date +%s)
      "$CARGO" build --release -p floe-lambda --bin bootstrap
      echo "lambda: x86_64 build took $(( $(date +%s) - t0 )) s"
      package x86_64 "$ROOT/target/release/bootstrap"
      ;;
    arm64)
      echo "lambda: the arm64 package is not built by this script yet (docs/lambda.md, \"Build\")" >&2
      exit 2
      ;;
    *) echo "usage: $0 [x86_64] [arm64]" >&2; exit 2 ;;
  esac
done
