#!/usr/bin/env bash
# Builds floe's default WASM components and the example user components:
#   target/components/{validator,transformer,merge_builder}.wasm
#   target/components/examples/{example_rules_validator,example_hostile_validator,example_template_validator,example_pii_transform,example_hostile_transform,example_hostile_merge_builder,example_c_validator,example_js_validator}.wasm
#   target/components/examples/wasi/example_js_{freshness,chatty}_validator.wasm (import WASI)
#
# 1. The guest crates are compiled to wasm32-unknown-unknown core modules with the
#    `wasm` profile (panic=abort, opt-level 3), by whichever toolchain this machine has:
#    - rustup with the wasm32-unknown-unknown target installed: plain `cargo build`;
#    - else Debian's rustc-web + rust-web-src (rustc with std sources, no prebuilt wasm
#      std): `-Zbuild-std` with Debian's cargo (cargo-web) and rustc, linked by Debian's
#      rust-lld (rust-web-llvm).
# 2. floe-componentize (native) wraps each module into a component and checks it has
#    zero imports.
# The C example is built by clang-22 (dev/install.sh wasm), the JavaScript example by
# componentize-js (dev/install.sh js) straight into a component, which floe-componentize
# checks the same way. Its WASI variant is not checked: it imports WASI on purpose.
#
# Runs from anywhere; a second run with nothing changed takes about a second.
# Set CARGO_TARGET_DIR to build elsewhere than <repo>/target.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET_DIR"
WASM_TARGET=wasm32-unknown-unknown
GUESTS=(floe-validator floe-transformer floe-merge-builder)
EXAMPLES=(floe-example-rules-validator floe-example-hostile-validator floe-example-template-validator floe-example-pii-transform floe-example-hostile-transform floe-example-hostile-merge-builder)
PACKAGES=()
for g in "${GUESTS[@]}" "${EXAMPLES[@]}"; do PACKAGES+=(-p "$g"); done

cd "$ROOT"

if command -v rustup >/dev/null 2>&1 &&
    rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"; then
    echo "build.sh: guests with rustup's $WASM_TARGET target" >&2
    cargo build --profile wasm --target "$WASM_TARGET" "${PACKAGES[@]}"
elif [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -x /usr/bin/rust-lld && -d /usr/lib/rustlib/src/rust/library ]]; then
    echo "build.sh: guests with Debian's rustc and -Zbuild-std ($(/usr/bin/rustc --version))" >&2
    # RUSTC must be explicit: without it Debian's cargo would pick up rustup's rustc
    # from PATH, which has no wasm std. RUSTC_BOOTSTRAP enables -Zbuild-std on stable.
    RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        /usr/bin/cargo build --profile wasm --target "$WASM_TARGET" \
        -Zbuild-std=std,panic_abort "${PACKAGES[@]}"
else
    cat >&2 <<EOF
build.sh: no Rust toolchain that can build $WASM_TARGET was found. Either
  rustup target add $WASM_TARGET
or, on Debian 12,
  dev/install.sh wasm
  (apt-get install --no-install-recommends rustc-web cargo-web rust-web-llvm rust-web-src lld-22)
EOF
    exit 1
fi

MODULES=()
for g in "${GUESTS[@]}"; do
    MODULES+=("$TARGET_DIR/$WASM_TARGET/wasm/${g//-/_}.wasm")
done

EXAMPLE_MODULES=()
for g in "${EXAMPLES[@]}"; do
    EXAMPLE_MODULES+=("$TARGET_DIR/$WASM_TARGET/wasm/${g//-/_}.wasm")
done

# The C example (a second guest language): clang-22 against wasi-libc.
if ! command -v "${CLANG:-clang-22}" >/dev/null 2>&1 || [[ ! -f /usr/lib/wasm32-wasi/libc.a ]]; then
    echo "build.sh: the C example validator needs clang-22 and wasi-libc:" >&2
    echo "  dev/install.sh wasm     (or: apt-get install clang-22 wasi-libc)" >&2
    exit 1
fi
C_MODULE="$TARGET_DIR/c-example/floe_example_c_validator.wasm"
mkdir -p "$(dirname "$C_MODULE")"
C_SOURCES=("$ROOT"/functions/examples/c-validator/{rules.c,build.sh,bindings/validator.c,bindings/validator.h,bindings/validator_component_type.o})
if [[ ! -f "$C_MODULE" ]] || [[ -n "$(find "${C_SOURCES[@]}" -newer "$C_MODULE" 2>/dev/null)" ]]; then
    echo "build.sh: C example with $("${CLANG:-clang-22}" --version | head -1)" >&2
    "$ROOT/functions/examples/c-validator/build.sh" "$C_MODULE"
fi
EXAMPLE_MODULES+=("$C_MODULE")

# The JavaScript example (a third guest language): componentize-js builds a component,
# about 10 s each, so each is only rebuilt when its inputs changed.
JS_DIR="$ROOT/functions/examples/js-validator"
if ! command -v node >/dev/null 2>&1 ||
    [[ ! -f "$JS_DIR/node_modules/@bytecodealliance/componentize-js/package.json" ]]; then
    echo "build.sh: the JavaScript example validator needs node and componentize-js:" >&2
    echo "  dev/install.sh js     (runs npm ci in functions/examples/js-validator)" >&2
    exit 1
fi
# js_component OUT SOURCE [--wasi]
js_component() {
    local out="$1" source="$2"
    shift 2
    local inputs=("$JS_DIR/$source" "$JS_DIR/build.mjs" "$JS_DIR/package-lock.json" "$ROOT/wit/floe.wit")
    if [[ ! -f "$out" ]] || [[ -n "$(find "${inputs[@]}" -newer "$out" 2>/dev/null)" ]]; then
        echo "build.sh: JavaScript example $source with componentize-js" >&2
        node "$JS_DIR/build.mjs" "$out" "$@"
    fi
}
JS_COMPONENT="$TARGET_DIR/js-example/floe_example_js_validator.wasm"
js_component "$JS_COMPONENT" validator.js
js_component "$TARGET_DIR/components/examples/wasi/example_js_freshness_validator.wasm" freshness.js --wasi
js_component "$TARGET_DIR/components/examples/wasi/example_js_chatty_validator.wasm" chatty.js --wasi chatty.js
EXAMPLE_MODULES+=("$JS_COMPONENT")

# The build step itself is native: the default toolchain on PATH builds it.
cargo run --quiet -p floe-componentize -- "$TARGET_DIR/components" "${MODULES[@]}"
cargo run --quiet -p floe-componentize -- "$TARGET_DIR/components/examples" "${EXAMPLE_MODULES[@]}"
