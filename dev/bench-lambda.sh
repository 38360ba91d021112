#!/usr/bin/env bash
# The Lambda benchmark (`make bench-lambda`); results in docs/benchmarks.md ("Lambda").
#
#   dev/bench-lambda.sh [x86_64|arm64] [--runs N] [--warm N] [--records N]
#
# Times the packaged bootstrap (target/lambda/<arch>/pkg, built by `make lambda`) as the
# Lambda service runs it, against the Runtime API emulator of tests/src/runtime_api.rs
# (`lambda_bench`): N fresh processes (default 3), each answering one cold invocation and
# then --warm (default 20) warm ones, every invocation an MSK event of --records (default
# 1,000) Debezium inserts built from real Debezium output (a new key and LSN per record).
# Once with `sink.kind = none` (everything but the warehouse), once into the Snowflake
# emulator of the dev stack (started and stopped here). Reports the zip's size, the cold
# start (process start to the first invocation answered, that invocation included), its
# init part (to the first `next`), and the warm invocations' p50/p90.
#
# arm64 runs the package's bootstrap under qemu-user (FLOE_BENCH_BOOTSTRAP, a command
# line, overrides the command for either arch): emulated figures, not Graviton's.
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEV_DIR/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"

arch=x86_64 runs=3 warm=20 records=1000
while (($#)); do
  case "$1" in
    x86_64 | arm64) arch="$1" ;;
    --runs) runs="$2"; shift ;;
    --warm) warm="$2"; shift ;;
    --records) records="$2"; shift ;;
    *) echo "usage: $0 [x86_64|arm64] [--runs N] [--warm N] [--records N]" >&2; exit 2 ;;
  esac
  shift
done

pkg="$ROOT/target/lambda/$arch/pkg"
zip="$ROOT/target/lambda/$arch/floe-lambda.zip"
[[ -x "$pkg/bootstrap" && -f "$zip" ]] || { echo "bench-lambda: $zip is missing: run dev/lambda.sh $arch first" >&2; exit 1; }
bootstrap="${FLOE_BENCH_BOOTSTRAP:-}"
if [[ -z "$bootstrap" ]]; then
  case "$arch" in
    x86_64) bootstrap="$pkg/bootstrap" ;;
    arm64) echo "bench-lambda: set FLOE_BENCH_BOOTSTRAP to the qemu command line for arm64" >&2; exit 2 ;;
  esac
fi

out="$ROOT/target/bench/lambda-$arch"
mkdir -p "$out"
"$CARGO" build --workspace --bins
bench_bin="$ROOT/target/debug/lambda_bench"
fixture="$ROOT/../shared/debezium-fixtures/schemas_precise/snapshot_read.jsonl"

run_all() { # SINK, then extra lambda_bench arguments
  local sink="$1"; shift
  : > "$out/$sink.jsonl"
  for ((i = 1; i <= runs; i++)); do
    "$bench_bin" --bootstrap "$bootstrap" --components "$pkg/components" --fixture "$fixture" \
      --records "$records" --warm "$warm" --sink "$sink" "$@" | tee -a "$out/$sink.jsonl"
  done
}

load_before=$(cut -d' ' -f1 /proc/loadavg)
echo "bench-lambda: $arch, load average before: $load_before" >&2
run_all none
export -f run_all
export out runs records warm bootstrap pkg fixture bench_bin
# The stack's URL is known only inside with-stack.sh: expanded there (SC2016 is meant).
# shellcheck disable=SC2016
"$DEV_DIR/with-stack.sh" bash -c 'run_all snowflake --snowflake-url "$FLOE_SNOWFLAKE_URL" --database "LAMBDA_BENCH_$(date +%s)"'
load_after=$(cut -d' ' -f1 /proc/loadavg)

python3 - "$out" "$arch" "$zip" "$pkg/bootstrap" "$load_before" "$load_after" <<'PY' | tee "$out/summary.md"
import json, os, statistics, sys
out, arch, zip_path, boot, before, after = sys.argv[1:]
print(f"Lambda, {arch}: zip {os.path.getsize(zip_path) / 1048576:.1f} MiB "
      f"(bootstrap {os.path.getsize(boot) / 1048576:.1f} MiB unpacked); "
      f"load average {before} before, {after} after\n")
print("| sink | runs | init ms (median) | cold start ms (median; min-max) | warm p50 ms | warm p90 ms | warm events/s |")
print("|---|---|---|---|---|---|---|")
for sink in ("none", "snowflake"):
    rows = [json.loads(l) for l in open(os.path.join(out, f"{sink}.jsonl")) if l.strip()]
    cold = [r["cold_start_ms"] for r in rows]
    init = [r["init_ms"] for r in rows]
    p50 = statistics.median(r["warm_p50_ms"] for r in rows)
    p90 = statistics.median(r["warm_p90_ms"] for r in rows)
    eps = statistics.median(r["warm_events_per_s"] for r in rows)
    n = rows[0]["records_per_invocation"]
    print(f"| {sink} ({n} records, {rows[0]['event_bytes'] / 1048576:.1f} MiB event) | {len(rows)} "
          f"| {statistics.median(init):.0f} | {statistics.median(cold):.0f}; {min(cold):.0f}-{max(cold):.0f} "
          f"| {p50:.0f} | {p90:.0f} | {eps:.0f} |")
PY
