#!/usr/bin/env bash
# floe benchmarks (`make bench`); what is measured and the last results: docs/benchmarks.md.
#
#   dev/bench.sh [--changes N] [--skip-build] [--no-stages] [--no-sink] [--no-freshness]
#                [--no-telemetry] [--no-avro] [--baseline FILE] [--keep-stack]
#
# 1. Builds the components, floe and raw_consume (release profile).
# 2. Starts a private dev stack from clean: its own run dir ($FLOE_RUN_DIR, default
#    target/bench-run) and the ports FLOE_KAFKA_PORT / FLOE_SNOWFLAKE_PORT / FLOE_PG_PORT
#    (default: the standard 29092 / 28080 / 25433, so set other ones while a dev stack runs).
# 3. Applies N (default 90000) changes with dev/workload.sh on a fresh database: ~103k
#    Debezium messages on dbz.public.customers and dbz.public.orders; waits until all of
#    them are in tansu.
#     With Avro (not --no-avro): a second forwarder (`dev/stack.sh debezium-exec avro
#     floe.format=avro`, the real AvroConverter and the stack's registry) writes the same
#     changes to avro.public.customers and avro.public.orders.
# 3b. Freshness: floe (default settings) loads a table of its own into fakesnow while
#    PostgreSQL takes a steady FLOE_BENCH_FRESH_RATE (default 2000) inserts/s for
#    FLOE_BENCH_FRESH_SECS (default 60) through real Debezium; the `freshness` binary
#    polls the target and reports p50/p99 from PostgreSQL commit to row visible, split at
#    each message's Kafka timestamp into Debezium's part and floe's. Then
#    Debezium and PostgreSQL are stopped so they leave the CPU alone. floe serves
#    /metrics there and dev/dashboard/render.py scrapes it every 2 s into
#    freshness.scrapes.jsonl (render it into the dashboard's picture with that script).
# 4. Consumes those topics three times, each with a fresh consumer group, each under
#    /usr/bin/time -v (peak RSS): raw librdkafka (raw_consume), floe --sink none,
#    floe -> fakesnow. floe loads a batch while it consumes and prepares the next: the
#    summary shows its processing and loading time per event beside the wall time.
#    With telemetry (not --no-telemetry): floe --sink none again, exporting OTLP traces
#    and metrics (every span, metrics every 5 s) to `otlp_receiver`, a collector
#    stand-in on 127.0.0.1:FLOE_BENCH_OTLP_PORT (default 24318) that decodes them.
#    With Avro: raw librdkafka and floe --sink none over the Avro topics (floe with
#    source.schema_registry), and the bytes on the wire of both encodings.
# 5. Runs the criterion bench of the stages, WASM vs native (runner/host/benches/stages.rs).
# 6. Prints the results as markdown tables (also in $FLOE_BENCH_OUT/summary.md, default
#    target/bench/, with every raw output beside it) and the headline figures the issue's
#    targets are stated in as figures.json; with --baseline FILE (an earlier run's
#    figures.json), a table of each figure before and now.
# The stack is stopped on exit, whatever happens; no process is left running. With
# --keep-stack it is left up after a successful run, topics filled, for runs of one's own
# (`FLOE_RUN_DIR=... dev/stack.sh env` gives its settings, `... stack.sh stop` stops it;
# the config files floe ran with are in $FLOE_BENCH_OUT).
#
# events/s is events / window, window = from the partition assignment the first message
# came under (the consumer-group join, 15 s against tansu here, is excluded) to the last
# event done: received and copied (raw_consume), batch committed (floe; from its JSON log).
# "steady" is the same from the 10,000th to the 100,000th event.
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEV_DIR/.." && pwd)"
export FLOE_RUN_DIR="${FLOE_RUN_DIR:-$ROOT/target/bench-run}"
# shellcheck source=dev/env.sh
. "$DEV_DIR/env.sh"

changes=90000
build=1
stages=1
sink=1
freshness=1
telemetry=1
avro=1
baseline=
keep_stack=0
usage() {
  sed -n '2,47p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while (($#)); do
  case "$1" in
    --changes) changes="${2:?}"; shift 2 ;;
    --changes=*) changes="${1#*=}"; shift ;;
    --skip-build) build=0; shift ;;
    --no-stages) stages=0; shift ;;
    --no-sink) sink=0; shift ;;
    --no-freshness) freshness=0; shift ;;
    --no-telemetry) telemetry=0; shift ;;
    --no-avro) avro=0; shift ;;
    --baseline) baseline="$(realpath -m "${2:?}")"; shift 2 ;;
    --keep-stack) keep_stack=1; shift ;;
    -h|--help) usage ;;
    *) echo "bench: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ "$changes" =~ ^[1-9][0-9]*$ ]] || usage
[[ -z "$baseline" || -r "$baseline" ]] || { echo "bench: --baseline $baseline: cannot read it" >&2; exit 2; }

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="${FLOE_BENCH_OUT:-$TARGET_DIR/bench}"
FLOE_BIN="$TARGET_DIR/release/floe"
RAW_BIN="$TARGET_DIR/release/raw_consume"
FRESH_BIN="$TARGET_DIR/release/freshness"
OTLP_BIN="$TARGET_DIR/release/otlp_receiver"
OTLP_PORT="${FLOE_BENCH_OTLP_PORT:-24318}"
METRICS_PORT="${FLOE_BENCH_METRICS_PORT:-29464}"
FRESH_RATE="${FLOE_BENCH_FRESH_RATE:-2000}"
FRESH_SECS="${FLOE_BENCH_FRESH_SECS:-60}"
TOPICS=(dbz.public.customers dbz.public.orders)
AVRO_TOPICS=(avro.public.customers avro.public.orders)
# floe --exit-when-idle: counted while floe owns partitions, so the group join (15 s on
# tansu here) is not in it; longer than batch.max_wait_ms (5 s), so the last batch is in.
IDLE_SECS="${FLOE_BENCH_IDLE_SECS:-15}"
RUN_TIMEOUT="${FLOE_BENCH_RUN_TIMEOUT:-1800}"
CARGO="${CARGO:-cargo}"

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
step() { printf '\n== bench: %s\n' "$*" >&2; }

# The bench deletes its run dir (PostgreSQL data included) before starting: never the
# dev stack's.
[[ "$(realpath -m "$FLOE_RUN_DIR")" != "$(realpath -m "$ROOT/target/dev-run")" ]] ||
  die "FLOE_RUN_DIR is the dev stack's run dir; the bench needs its own (default target/bench-run)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install -y time)"
command -v python3 >/dev/null || die "python3 is missing"

cd "$ROOT"
rm -rf "$OUT"
mkdir -p "$OUT"

stack_started=0
avro_dbz=
cleanup() {
  local rc=$?
  if [[ -n "$avro_dbz" ]]; then
    kill -TERM "$avro_dbz" 2>/dev/null || true
    wait "$avro_dbz" 2>/dev/null || true
  fi
  if ((stack_started && keep_stack && rc == 0)); then
    say "the bench stack is left running: FLOE_RUN_DIR=$FLOE_RUN_DIR $DEV_DIR/stack.sh stop stops it"
  elif ((stack_started)); then
    say "stopping the bench stack ($FLOE_RUN_DIR)"
    "$DEV_DIR/stack.sh" stop >"$OUT/stack-stop.log" 2>&1 || {
      say "stack stop failed:"; cat "$OUT/stack-stop.log" >&2
    }
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((build)); then
  step "build: components, floe and raw_consume (release)"
  "$ROOT/functions/build.sh"
  "$CARGO" build --release -p floe --bin floe -p floe-integration-tests --bin raw_consume --bin freshness \
    --bin otlp_receiver
  if ((stages)); then
    "$CARGO" bench -p floe-host --bench stages --no-run
  fi
fi
[[ -x "$FLOE_BIN" && -x "$RAW_BIN" && -x "$FRESH_BIN" && -x "$OTLP_BIN" ]] ||
  die "$FLOE_BIN, $RAW_BIN, $FRESH_BIN or $OTLP_BIN is missing (run without --skip-build)"
[[ "$FRESH_RATE" =~ ^[1-9][0-9]*$ && "$FRESH_SECS" =~ ^[1-9][0-9]*$ ]] ||
  die "FLOE_BENCH_FRESH_RATE and FLOE_BENCH_FRESH_SECS must be positive integers"

step "private stack: kafka $FLOE_KAFKA_PORT, snowflake $FLOE_SNOWFLAKE_PORT, postgres $FLOE_PG_PORT, run dir $FLOE_RUN_DIR"
stack_started=1
"$DEV_DIR/stack.sh" clean >"$OUT/stack-clean.log" 2>&1 || {
  cat "$OUT/stack-clean.log" >&2; die "cannot clean $FLOE_RUN_DIR"
}
"$DEV_DIR/stack.sh" start

if ((avro)); then
  step "Avro: a second Debezium forwarder with the AvroConverter (topics avro.public.*)"
  FLOE_STACK_SKIP_INSTALL=1 "$DEV_DIR/stack.sh" debezium-exec avro floe.format=avro \
    snapshot.mode=no_data >"$OUT/debezium-avro.log" 2>&1 &
  avro_dbz=$!
  for ((i = 0; ; i++)); do
    active=$(psql -X -qtA -h 127.0.0.1 -p "$FLOE_PG_PORT" -U postgres -d floe \
      -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'floe_avro'" 2>/dev/null || true)
    [[ "$active" == t ]] && break
    kill -0 "$avro_dbz" 2>/dev/null || { tail -n 40 "$OUT/debezium-avro.log" >&2; die "the Avro forwarder exited"; }
    ((i < 1800)) || die "the Avro forwarder's slot is not active after 180 s (see $OUT/debezium-avro.log)"
    sleep 0.1
  done
  say "the Avro forwarder streams (slot floe_avro)"
fi

step "load: $changes changes through Debezium into tansu"
"$DEV_DIR/workload.sh" "$changes" | tee "$OUT/workload.log" >&2
expected=$(awk '/messages=/ { sub(/.*messages=/, ""); n += $1 } END { print n + 0 }' "$OUT/workload.log")
((expected > 0)) || die "workload printed no message count"
say "waiting until tansu holds all $expected messages (a draining consumer, not measured)"
"$RAW_BIN" --brokers "$FLOE_KAFKA_BROKERS" --topics "$(IFS=,; echo "${TOPICS[*]}")" \
  --count "$expected" --idle-secs 120 --start-timeout-secs 300 >"$OUT/drain.json" ||
  die "Debezium forwarded only $(sed 's/.*"events":\([0-9]*\).*/\1/' "$OUT/drain.json") of $expected messages"
say "all $expected messages are in tansu"
if ((avro)); then
  "$RAW_BIN" --brokers "$FLOE_KAFKA_BROKERS" --topics "$(IFS=,; echo "${AVRO_TOPICS[*]}")" \
    --count "$expected" --idle-secs 120 --start-timeout-secs 300 >"$OUT/drain-avro.json" ||
    die "the Avro forwarder wrote only $(sed 's/.*"events":\([0-9]*\).*/\1/' "$OUT/drain-avro.json") of $expected messages"
  kill -TERM "$avro_dbz" 2>/dev/null || true
  wait "$avro_dbz" 2>/dev/null || true
  avro_dbz=
  say "all $expected messages are in tansu as Avro too"
fi

if ((freshness)); then
  step "freshness: $FRESH_RATE inserts/s for $FRESH_SECS s, PostgreSQL commit -> row visible in fakesnow"
  PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$FLOE_PG_PORT" -U postgres -d floe)
  fresh_table='"BENCH"."CDC"."DBZ_PUBLIC_FRESH"'
  "${PSQL[@]}" -c "CREATE TABLE public.fresh (id bigserial PRIMARY KEY, v integer, note text)"
  cat >"$OUT/freshness.toml" <<EOF
[source.kafka]
brokers = "$FLOE_KAFKA_BROKERS"
group_id = "bench-freshness-$(date +%s%N)"
topics = ["dbz.public.fresh"]

[sink.snowflake]
account_url = "$FLOE_SNOWFLAKE_URL"
database = "BENCH"
schema = "CDC"
EOF
  # floe joins its group and loads one warm-up row (id 1) before the measured inserts.
  "${PSQL[@]}" -c "INSERT INTO public.fresh (v, note) VALUES (0, 'warm-up')"
  FLOE_LOG=info FLOE__METRICS__LISTEN="127.0.0.1:$METRICS_PORT" \
    "$FLOE_BIN" --config "$OUT/freshness.toml" --log-format json \
    run --sink snowflake --metrics-json "$OUT/freshness.metrics.json" \
    >"$OUT/freshness.floe.out" 2>"$OUT/freshness.floe.err" &
  fresh_floe=$!
  python3 "$DEV_DIR/dashboard/render.py" scrape --url "http://127.0.0.1:$METRICS_PORT/metrics" \
    --interval 2 --out "$OUT/freshness.scrapes.jsonl" 2>"$OUT/freshness.scrape.err" &
  scraper=$!
  "$FRESH_BIN" --table "$fresh_table" --rows 1 --poll-ms 200 >"$OUT/freshness.warmup.json" || {
    kill -TERM "$fresh_floe" 2>/dev/null || true
    die "floe did not load the warm-up row (see $OUT/freshness.floe.err)"
  }
  # Ticks of 50 ms, each one transaction of rate/20 inserts, paced by the clock.
  per_tick=$(( (FRESH_RATE + 19) / 20 ))
  ticks=$(( (FRESH_RATE * FRESH_SECS + per_tick - 1) / per_tick ))
  total=$((per_tick * ticks))
  cut -d' ' -f1 /proc/loadavg >"$OUT/freshness.load"
  "${PSQL[@]}" >"$OUT/freshness.gen.out" 2>&1 <<EOF &
DO \$\$
DECLARE
  started timestamptz := clock_timestamp();
BEGIN
  FOR i IN 1..$ticks LOOP
    INSERT INTO public.fresh (v, note) SELECT i, md5(g::text) FROM generate_series(1, $per_tick) g;
    COMMIT;
    PERFORM pg_sleep(GREATEST(0, extract(epoch FROM started + i * interval '50 milliseconds' - clock_timestamp())));
  END LOOP;
  RAISE NOTICE 'generated % rows in % s', $total, round(extract(epoch FROM clock_timestamp() - started)::numeric, 2);
END
\$\$;
EOF
  gen=$!
  rc=0
  "$FRESH_BIN" --table "$fresh_table" --rows "$total" --above-id 1 --poll-ms 100 \
    --brokers "$FLOE_KAFKA_BROKERS" --topic dbz.public.fresh \
    >"$OUT/freshness.out" 2>"$OUT/freshness.err" || rc=$?
  wait "$gen" || say "the insert generator failed (see $OUT/freshness.gen.out)"
  kill -TERM "$fresh_floe" 2>/dev/null || true
  wait "$fresh_floe" || true
  kill -TERM "$scraper" 2>/dev/null || true
  wait "$scraper" || true
  echo "$rc" >"$OUT/freshness.rc"
  ((rc == 0)) || say "freshness exited $rc (see $OUT/freshness.err)"
  say "freshness: $(cat "$OUT/freshness.out")"
fi

say "stopping Debezium and PostgreSQL for the measurements"
"$DEV_DIR/stack.sh" stop debezium postgres >"$OUT/stack-stop-load.log" 2>&1

machine() {
  local model
  model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  printf '%s, %s cores, %s GiB RAM' "${model:-unknown CPU}" "$(nproc)" \
    "$(awk '/MemTotal/ { printf "%d", $2 / 1048576 + 0.5 }' /proc/meminfo)"
}
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
  echo "machine=$(machine)"
  echo "events=$expected"
  echo "changes=$changes"
} >"$OUT/meta"

# One measured run: NAME, then the command. Records the 1-minute load average before it,
# /usr/bin/time -v's report, stdout, stderr and the exit code; never stops the bench.
measure() {
  local name="$1"; shift
  cut -d' ' -f1 /proc/loadavg >"$OUT/$name.load"
  say "$name: $*"
  local rc=0
  /usr/bin/time -v -o "$OUT/$name.time" timeout -k 30 "$RUN_TIMEOUT" "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.err" || rc=$?
  echo "$rc" >"$OUT/$name.rc"
  ((rc == 0)) || say "$name exited $rc (see $OUT/$name.err)"
}

# A floe config: a fresh consumer group, the two topics (the Avro ones, and the
# registry, with a second argument `avro`), the emulator.
floe_config() {
  local name="$1" topics=("${TOPICS[@]}")
  [[ "${2:-}" == avro ]] && topics=("${AVRO_TOPICS[@]}")
  cat >"$OUT/$name.toml" <<EOF
[source.kafka]
brokers = "$FLOE_KAFKA_BROKERS"
group_id = "bench-$name-$(date +%s%N)"
topics = [$(printf '"%s", ' "${topics[@]}" | sed 's/, $//')]

[sink.snowflake]
account_url = "$FLOE_SNOWFLAKE_URL"
database = "BENCH"
schema = "CDC"
EOF
  if [[ "${2:-}" == avro ]]; then
    printf '\n[source.schema_registry]\nurl = "%s"\n' "$FLOE_REGISTRY_URL" >>"$OUT/$name.toml"
  fi
  echo "$OUT/$name.toml"
}

step "measured runs over $expected events (fresh consumer group each)"
measure raw "$RAW_BIN" --brokers "$FLOE_KAFKA_BROKERS" --topics "$(IFS=,; echo "${TOPICS[*]}")" \
  --count "$expected" --idle-secs 30
cfg=$(floe_config floe-none)
measure floe-none env FLOE_LOG=info "$FLOE_BIN" --config "$cfg" --log-format json \
  run --sink none --exit-when-idle "$IDLE_SECS" --metrics-json "$OUT/floe-none.metrics.json"
if ((telemetry)); then
  "$OTLP_BIN" --listen "127.0.0.1:$OTLP_PORT" >"$OUT/otlp-receiver.out" 2>"$OUT/otlp-receiver.err" &
  receiver=$!
  cfg=$(floe_config floe-none-otlp)
  measure floe-none-otlp env FLOE_LOG=info OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT" \
    OTEL_METRIC_EXPORT_INTERVAL=5000 "$FLOE_BIN" --config "$cfg" --log-format json \
    run --sink none --exit-when-idle "$IDLE_SECS" --metrics-json "$OUT/floe-none-otlp.metrics.json"
  kill -TERM "$receiver" 2>/dev/null || true
  wait "$receiver" || say "otlp_receiver failed (see $OUT/otlp-receiver.err)"
fi
if ((avro)); then
  measure raw-avro "$RAW_BIN" --brokers "$FLOE_KAFKA_BROKERS" \
    --topics "$(IFS=,; echo "${AVRO_TOPICS[*]}")" --count "$expected" --idle-secs 30
  cfg=$(floe_config floe-none-avro avro)
  measure floe-none-avro env FLOE_LOG=info "$FLOE_BIN" --config "$cfg" --log-format json \
    run --sink none --exit-when-idle "$IDLE_SECS" --metrics-json "$OUT/floe-none-avro.metrics.json"
fi
if ((sink)); then
  cfg=$(floe_config floe-fakesnow)
  measure floe-fakesnow env FLOE_LOG=info "$FLOE_BIN" --config "$cfg" --log-format json \
    run --sink snowflake --exit-when-idle "$IDLE_SECS" --metrics-json "$OUT/floe-fakesnow.metrics.json"
  # The load must be right, not just fast: target rows = source rows, per table.
  for t in customers orders; do
    want=$(sed -n "s/.*public\.$t .*rows=\([0-9]*\).*/\1/p" "$OUT/workload.log")
    got=$("$FLOE_BIN" --config "$cfg" query "SELECT COUNT(*) FROM BENCH.CDC.DBZ_PUBLIC_${t^^}" \
      2>>"$OUT/floe-fakesnow.check.err" | tail -n 1) || got="query failed"
    echo "$t|$want|$got" >>"$OUT/floe-fakesnow.check"
    say "floe-fakesnow: $t source rows $want, target rows $got"
  done
fi

if ((stages)); then
  step "per-stage cost, WASM vs native (criterion)"
  rm -rf "$TARGET_DIR/criterion/validate" "$TARGET_DIR/criterion/transform" "$TARGET_DIR/criterion/validate_and_transform" "$TARGET_DIR/criterion/build_merge" "$TARGET_DIR/criterion/row_transform"
  cut -d' ' -f1 /proc/loadavg >"$OUT/stages.load"
  "$CARGO" bench -p floe-host --bench stages 2>&1 | tee "$OUT/stages.log" >&2
fi

step "summary"
python3 - "$OUT" "$TARGET_DIR/criterion" "$stages" "$baseline" <<'PY' | tee "$OUT/summary.md"
import datetime, json, os, re, sys

out, crit, stages, baseline = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
# The headline figures, as the issue's targets state them (figures.json; --baseline).
figures = {}
meta = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "meta")))
expected = int(meta["events"])

def read(name, ext):
    p = os.path.join(out, f"{name}.{ext}")
    return open(p).read() if os.path.exists(p) else None

def peak_rss_mib(name):
    t = read(name, "time") or ""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", t)
    return int(m.group(1)) / 1024 if m else None

def wall_secs(name):
    t = read(name, "time") or ""
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t)
    if not m:
        return None
    secs = 0.0
    for part in m.group(1).split(":"):
        secs = secs * 60 + float(part)
    return secs

def ts(s):
    # tracing-subscriber JSON: RFC 3339 with up to 9 fractional digits.
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)

def steady(points, events, every):
    """Rate between the first mark and the last one at or below the last multiple of
    `every` (10,000th to 100,000th event for 103,493 events): points are (events done,
    secs), in order."""
    top = events // every * every
    inside = [p for p in points if p[0] <= top]
    if len(inside) < 2 or inside[-1][1] <= inside[0][1]:
        return None
    (c0, t0), (c1, t1) = inside[0], inside[-1]
    return (c1 - c0) / (t1 - t0)

def raw_run(name="raw"):
    o = read(name, "out")
    try:
        r = json.loads(o)
    except Exception:
        return None, None, None, None, "no result"
    every = r.get("mark_every") or 10000
    points = [((i + 1) * every, t) for i, t in enumerate(r.get("marks", []))]
    return r["events"], r["join_secs"], r["secs"], steady(points, r["events"], every), None

def floe_run(name):
    """From floe's JSON log: events committed, subscribe -> assignment, the window from
    the assignment the first batch came under to the last batch committed, and the
    steady rate between batch commits."""
    err = read(name, "err") or ""
    subscribed, assigned, points, events = None, None, [], 0
    for line in err.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("fields", {}).get("message", "")
        if msg == "kafka source subscribed":
            subscribed = ts(rec["timestamp"])
        elif msg == "kafka partitions assigned" and not points:
            assigned = ts(rec["timestamp"])
        elif msg == "batch committed":
            events += int(rec["fields"]["events"])
            points.append((events, ts(rec["timestamp"])))
    if not points or assigned is None:
        return None, None, None, None, "no batch committed"
    join = assigned - subscribed if subscribed else None
    return events, join, points[-1][1] - assigned, steady(points, events, 10000), None

def check(name):
    c = read(name, "check")
    if c is None:
        return None
    bad = [l for l in c.splitlines() if len(set(l.split("|")[1:])) != 1]
    return "target rows ≠ source rows" if bad else None

rows = [("raw librdkafka (`raw_consume`)", "raw", raw_run)]
rows.append(("floe `--sink none`", "floe-none", lambda: floe_run("floe-none")))
if read("floe-none-otlp", "rc") is not None:
    rows.append(("floe `--sink none`, OTLP traces + metrics on", "floe-none-otlp",
                 lambda: floe_run("floe-none-otlp")))
if read("floe-fakesnow", "rc") is not None:
    rows.append(("floe → fakesnow", "floe-fakesnow", lambda: floe_run("floe-fakesnow")))
if read("floe-none-avro", "rc") is not None:
    rows.append(("raw librdkafka, Avro topics", "raw-avro", lambda: raw_run("raw-avro")))
    rows.append(("floe `--sink none`, Avro topics (schema registry)", "floe-none-avro",
                 lambda: floe_run("floe-none-avro")))

print(f"Run of {meta['date']}, commit {meta['commit']}, on {meta['machine']}.")
print(f"Topics dbz.public.customers and dbz.public.orders (4 partitions each): {expected:,} Debezium "
      f"messages from `dev/workload.sh {meta['changes']}`.")
print()
print("| run | events | group join (s) | window (s) | events/s over the window | events/s steady (10k→100k) "
      "| process wall (s) | peak RSS (MiB) | load avg before | status |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
fmt = lambda v, f: "–" if v is None else format(v, f)
for label, name, f in rows:
    rc = (read(name, "rc") or "?").strip()
    events, join, window, rate_steady, problem = f()
    status = "ok"
    if rc != "0":
        status = f"exit {rc}"
    elif problem:
        status = problem
    elif events != expected:
        status = f"{events} of {expected} events"
    elif check(name):
        status = check(name)
    elif read(name, "check") is not None:
        status = "ok; target rows = source rows"
    rate = events / window if events and window else None
    cells = [label, fmt(events, ","), fmt(join, ".1f"), fmt(window, ".2f"), fmt(rate, ",.0f"),
             fmt(rate_steady, ",.0f"), fmt(wall_secs(name), ".1f"), fmt(peak_rss_mib(name), ".0f"),
             (read(name, "load") or "?").strip(), status]
    print("| " + " | ".join(cells) + " |")
    figures[f"{name} events/s steady"] = rate_steady
    figures[f"{name} peak RSS MiB"] = peak_rss_mib(name)
raw_steady = figures.get("raw events/s steady")
for name in ("floe-none", "floe-none-otlp", "floe-fakesnow"):
    if raw_steady and figures.get(f"{name} events/s steady"):
        figures[f"{name} % of raw"] = 100 * figures[f"{name} events/s steady"] / raw_steady
if figures.get("raw-avro events/s steady") and figures.get("floe-none-avro events/s steady"):
    figures["floe-none-avro % of raw-avro"] = (100 * figures["floe-none-avro events/s steady"]
                                              / figures["raw-avro events/s steady"])

drains = {}
for enc, f in (("JSON with schemas", "drain"), ("Avro (schema registry)", "drain-avro")):
    try:
        drains[enc] = json.loads(read(f, "json") or "")
    except ValueError:
        pass
if len(drains) == 2:
    print()
    print("The same changes in two encodings (Debezium with Kafka Connect's JsonConverter, schemas "
          "on; with Confluent's AvroConverter): bytes on the wire (keys + values, as consumed) and "
          "floe `--sink none`:")
    print()
    print("| encoding | messages | bytes | bytes/message | floe `--sink none` events/s steady "
          "| floe peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for enc, name in (("JSON with schemas", "floe-none"), ("Avro (schema registry)", "floe-none-avro")):
        d = drains[enc]
        rate = figures.get(f"{name} events/s steady")
        print(f"| {enc} | {d['events']:,} | {d['bytes']:,} | {d['bytes'] / max(d['events'], 1):,.0f} "
              f"| {fmt(rate, ',.0f')} | {fmt(peak_rss_mib(name), '.0f')} |")
        figures[f"{enc} bytes/message"] = d["bytes"] / max(d["events"], 1)

print()
print("floe's own statistics (the JSON it prints at exit), per event consumed:")
print()
print("| run | batches | WASM stages (µs/event) | warehouse load (µs/event) | whole batch (µs/event) "
      "| wall (µs/event, steady) | overlap |")
print("|---|---:|---:|---:|---:|---:|---:|")
# overlap: the share of the smaller of processing and loading that ran beside the other,
# (processing + loading - wall) / min(processing, loading); 0% when they follow one another.
for label, name, f in [r for r in rows if not r[1].startswith("raw")]:
    try:
        st = json.loads(read(name, "out"))
        n, b = st["events_consumed"], st["batches"]
        per = lambda k: st[k] * b * 1000 / n
        wasm, load = per("avg_wasm_ms"), per("avg_load_ms")
        _, _, _, rate_steady, _ = f()
        wall = 1e6 / rate_steady if rate_steady else None
        overlap = None
        if wall is not None and min(wasm, load) > 0:
            overlap = max(0.0, min(1.0, (wasm + load - wall) / min(wasm, load)))
        figures[f"{name} WASM µs/event"] = wasm
        if "fakesnow" in name:
            figures[f"{name} load µs/event"] = load
            figures[f"{name} overlap %"] = None if overlap is None else 100 * overlap
        print(f"| {label} | {b} | {wasm:,.1f} | {load:,.1f} | {per('avg_batch_ms'):,.1f} "
              f"| {fmt(wall, ',.1f')} | {'–' if overlap is None else format(overlap, '.0%')} |")
    except Exception:
        print(f"| {label} | – | – | – | – | – | – |")

received = read("otlp-receiver", "out")
if received is not None:
    print()
    try:
        r = json.loads(received)
        print(f"The OTLP receiver got {r['spans']:,} spans in {r['trace_requests']} trace exports and "
              f"{r['metric_requests']} metric exports ({r['bytes']:,} bytes of protobuf); the last "
              f"floe.events.consumed it saw: {r['events_consumed']}.")
    except Exception:
        print("OTLP receiver: no summary (see otlp-receiver.err)")

fresh = read("freshness", "out")
if fresh is not None:
    print()
    try:
        fr = json.loads(fresh)
        print(f"Freshness, PostgreSQL commit to row visible in fakesnow (floe at default settings, "
              f"`batch.max_wait_ms` 5,000; {fr['rows']:,} inserts at a steady rate; polled every "
              f"{fr['poll_ms']} ms, query mean {fr['query_ms_mean']} ms; load avg before: "
              f"{(read('freshness', 'load') or '?').strip()}):")
        print()
        print("| rows | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | status |")
        print("|---:|---:|---:|---:|---:|---|")
        status = "ok" if fr.get("complete") else "incomplete"
        figures["freshness p50 ms"], figures["freshness p99 ms"] = fr["p50_ms"], fr["p99_ms"]
        if "floe" in fr:
            figures["freshness p99 ms, floe's part"] = fr["floe"]["p99_ms"]
            figures["freshness p99 ms, Debezium's part"] = fr["debezium"]["p99_ms"]
        print(f"| {fr['rows']:,} | {fr['p50_ms']:,} | {fr['p90_ms']:,} | {fr['p99_ms']:,} | "
              f"{fr['max_ms']:,} | {status} |")
        if "debezium" in fr:
            print()
            print(f"Split at each message's Kafka timestamp ({fr['kafka_matched']:,} rows matched): "
                  "commit → in Kafka is Debezium's (its poll interval, the producer's acks); "
                  "in Kafka → visible is floe's batching, processing and load, and the emulator's.")
            print()
            print("| part | p50 (ms) | p99 (ms) | max (ms) |")
            print("|---|---:|---:|---:|")
            for part, key in (("PostgreSQL commit → in Kafka (Debezium)", "debezium"),
                              ("in Kafka → visible in fakesnow (floe)", "floe")):
                d = fr[key]
                print(f"| {part} | {d['p50_ms']:,} | {d['p99_ms']:,} | {d['max_ms']:,} |")
    except Exception:
        print("Freshness: no result (see freshness.err)")

if stages:
    def est(stage, impl, n):
        base = os.path.join(crit, stage, impl, str(n), "new")
        try:
            e = json.load(open(os.path.join(base, "estimates.json")))
            b = json.load(open(os.path.join(base, "benchmark.json")))
        except OSError:
            return None
        per = b["throughput"]["Elements"]
        m = e["mean"]
        return (m["point_estimate"] / per, m["confidence_interval"]["lower_bound"] / per,
                m["confidence_interval"]["upper_bound"] / per, per)
    print()
    load = (read("stages", "load") or "?").strip()
    print(f"Per-stage cost (criterion mean, 95% CI; load avg before: {load}):")
    print()
    print("| stage | batch (events) | records | WASM ns/record | native ns/record | WASM / native |")
    print("|---|---:|---:|---:|---:|---:|")
    for stage in ["validate", "transform", "validate_and_transform", "build_merge"]:
        for n in [1000, 10000]:
            w, nat = est(stage, "wasm", n), est(stage, "native", n)
            if not w or not nat:
                print(f"| {stage} | {n} | – | missing | missing | – |")
                continue
            print(f"| {stage} | {n:,} | {w[3]:,} | {w[0]:,.0f} ({w[1]:,.0f}–{w[2]:,.0f}) | "
                  f"{nat[0]:,.0f} ({nat[1]:,.0f}–{nat[2]:,.0f}) | {w[0] / nat[0]:.2f}× |")
            figures[f"{stage}/{n} WASM / native"] = w[0] / nat[0]

figures["_run"] = {k: meta[k] for k in ("date", "commit", "machine")}
with open(os.path.join(out, "figures.json"), "w") as f:
    json.dump(figures, f, indent=1, ensure_ascii=False)
if baseline:
    try:
        before = json.load(open(baseline))
    except (OSError, ValueError) as e:
        print(f"\nbaseline {baseline}: cannot read it ({e})")
    else:
        b, n = before.get("_run", {}), figures["_run"]
        print()
        print(f"Before: {b.get('commit', '?')} ({b.get('date', '?')}, {b.get('machine', '?')}); "
              f"now: {n['commit']} ({n['date']}).")
        print()
        print("| figure | before | now |")
        print("|---|---:|---:|")
        show = lambda v: "–" if v is None else (f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}")
        for key in [k for k in figures if not k.startswith("_")] + \
                   [k for k in before if not k.startswith("_") and k not in figures]:
            print(f"| {key} | {show(before.get(key))} | {show(figures.get(key))} |")
PY
say "raw outputs in $OUT"
