#!/usr/bin/env bash
# floe dev stack: captures real Debezium change events as Avro (Confluent's AvroConverter and
# the registry stand-in) and as JSON, for the same changes, into test fixtures.
#
#   dev/avro-fixtures.sh [OUT_DIR]     (default: tests/fixtures/avro)
#
# Needs the stack's tansu, registry and postgres (dev/stack.sh start; its own Debezium is not
# used). Recreates public.all_types, public.all_types_trunc (the tables of
# tests/all/live_types.rs) and public.composite_pk, then runs three more forwarders
# (dev/stack.sh debezium-exec) over the same changes, each with its own slot and topic prefix:
#   fxjson    the stack's JSON settings (JsonConverter, schemas.enable=true, precise decimals)
#   fxavro    floe.format=avro: io.confluent.connect.avro.AvroConverter, registry $FLOE_REGISTRY_URL
#   fxunwrap  floe.format=avro and ExtractNewRecordState (add.fields=op,lsn, rewrite deletes)
# applies the SQL of live_types.rs (plus a composite-key table), waits for the last change on
# all three, stops them, reads every record they wrote (dev/debezium/FloeCapture.java) and
# writes OUT_DIR/messages.jsonl, schemas.json, subjects.json, setup.sql, changes.sql and
# README.md (dev/avro_fixtures.py pairs each Avro record with its JSON twin and checks that
# the Avro one decodes to the same data).
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=dev/env.sh
. "$DEV_DIR/env.sh"

OUT="${1:-$FLOE_REPO_DIR/tests/fixtures/avro}"
WORK="$FLOE_RUN_DIR/avro-fixtures"
FORWARDERS=(fxjson fxavro fxunwrap)
TABLES="public.all_types,public.all_types_trunc,public.composite_pk"
START_TIMEOUT="${FLOE_DEBEZIUM_START_TIMEOUT:-180}"

say() { echo "avro-fixtures: $*"; }
die() { echo "avro-fixtures: error: $*" >&2; exit 1; }

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$FLOE_PG_PORT" -U postgres -d floe)
export PGCONNECT_TIMEOUT=5
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"

"$DEV_DIR/stack.sh" status tansu registry postgres >/dev/null \
  || die "needs the stack's tansu, registry and postgres: dev/stack.sh start (see dev/stack.sh status)"
FLOE_INSTALL_QUIET=1 "$DEV_DIR/install.sh" debezium

# The tables, empty but for one composite_pk row that the forwarders' initial snapshot reads
# (op "r"). The SQL of tests/all/live_types.rs, with {run} = "floe".
SETUP_SQL="DROP TABLE IF EXISTS public.all_types, public.all_types_trunc, public.composite_pk;
CREATE TABLE public.all_types (id int PRIMARY KEY, num12_2 numeric(12,2), num_var numeric, ts_tz timestamptz,
    ts timestamp, d date, tm time, js jsonb, u uuid, b bytea, flag boolean, tags text[], i2 smallint,
    i8 bigint, f8 double precision, vc varchar(20), iv interval, big_text text);
CREATE TABLE public.all_types_trunc (id int PRIMARY KEY, v text);
CREATE TABLE public.composite_pk (tenant text, id int, v text, PRIMARY KEY (tenant, id));
INSERT INTO public.composite_pk VALUES ('acme', 1, 'before the snapshot');"

# Phase 1 and phase 2 of live_types.rs, then changes of the composite key; the last statement
# is the end marker the script waits for.
CHANGES_SQL="INSERT INTO public.all_types VALUES
   (1, 12345.67, 3.14159265358979, '2024-03-15 10:20:30.123456+02', '2024-03-15 10:20:30.123456', '2024-03-15',
    '13:45:00.5', '{\"a\": 1, \"b\": [true, null, \"x\"], \"n\": {\"k\": \"v\"}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '\\xdeadbeef00ff', true, ARRAY['red', 'with,comma', 'with \"quote\"'], 32767, 9007199254740993, 3.141592653589793,
    'hello', '1 day 02:03:04', (SELECT string_agg(md5(i::text || 'floe'), '') FROM generate_series(1, 320) i)),
   (2, -0.50, 1.50, '1969-12-31 23:59:59.999999+00', '1969-12-31 23:59:59', '1969-12-31', '00:00:00', '[]', NULL,
    '\\x', false, ARRAY[]::text[], -32768, -9223372036854775807, -1.5e-300, 'ünïcødé ✓', '-3 hours', 'short'),
   (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO public.all_types_trunc VALUES (1, 'a'), (2, 'b');
UPDATE public.all_types SET flag = NOT flag, num12_2 = num12_2 + 1 WHERE id IN (1, 2);
BEGIN; UPDATE public.all_types SET vc = 'second' WHERE id = 1; UPDATE public.all_types SET i2 = 7 WHERE id = 1; COMMIT;
UPDATE public.all_types SET id = 20 WHERE id = 2;
TRUNCATE public.all_types_trunc;
INSERT INTO public.all_types_trunc VALUES (3, 'after truncate');
ALTER TABLE public.all_types ADD COLUMN extra text;
INSERT INTO public.all_types (id, vc, extra, big_text) VALUES (4, 'new col', 'x', 'short');
UPDATE public.all_types SET extra = 'y', f8 = 0.1 WHERE id = 1;
DELETE FROM public.all_types WHERE id = 3;
INSERT INTO public.composite_pk VALUES ('acme', 2, 'two'), ('globex', 1, 'three');
UPDATE public.composite_pk SET v = 'updated' WHERE tenant = 'acme' AND id = 2;
UPDATE public.composite_pk SET tenant = 'initech' WHERE tenant = 'globex' AND id = 1;
DELETE FROM public.composite_pk WHERE tenant = 'acme' AND id = 1;
INSERT INTO public.composite_pk VALUES ('zz-end', 0, 'end of the fixture');"

slot_active() {
  "${PSQL[@]}" -tAc "SELECT active FROM pg_replication_slots WHERE slot_name = 'floe_$1'" 2>/dev/null || true
}

java_bin() {
  local javac
  javac="$(command -v javac 2>/dev/null)" || { echo java; return 0; }
  echo "$(dirname "$(readlink -f "$javac")")/java"
}

# capture OUT REGEX [FloeCapture options...]: every record of the matching topics written
# since the forwarders started.
capture() {
  local out="$1" regex="$2"; shift 2
  "$(java_bin)" -Xmx512m "-Dlog4j2.configurationFile=$DEV_DIR/debezium/log4j2.properties" \
    -cp "$FLOE_DBZ_CLASSES:$FLOE_DBZ_LIBS/*" FloeCapture --brokers "$FLOE_KAFKA_BROKERS" \
    --registry "$FLOE_REGISTRY_URL" --topics "$regex" --since-ms "$since_ms" --out "$out" "$@" \
    >>"$WORK/capture.log" 2>&1
}

declare -A PIDS=()
stop_forwarders() {
  local n pid i
  for n in "${!PIDS[@]}"; do kill -TERM "${PIDS[$n]}" 2>/dev/null || true; done
  for n in "${!PIDS[@]}"; do
    pid="${PIDS[$n]}"
    for ((i = 0; i < 600; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$n (pid $pid) still running after 60 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$n]"
  done
}
trap stop_forwarders EXIT

rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
for n in "${FORWARDERS[@]}"; do
  [[ "$(slot_active "$n")" != t ]] || die "slot floe_$n is active: another capture is running"
  "${PSQL[@]}" -tAc "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'floe_$n'" >/dev/null
done
"${PSQL[@]}" -f - <<<"$SETUP_SQL"
printf '%s\n' "$SETUP_SQL" >"$OUT/setup.sql"
printf '%s\n' "$CHANGES_SQL" >"$OUT/changes.sql"

since_ms="$(($(date +%s%3N) - 1000))"
common=("table.include.list=$TABLES")
avro=(floe.format=avro)
unwrap=(transforms=unwrap transforms.unwrap.type=io.debezium.transforms.ExtractNewRecordState
  "transforms.unwrap.add.fields=op,lsn" transforms.unwrap.delete.tombstone.handling.mode=rewrite)
FLOE_STACK_SKIP_INSTALL=1 "$DEV_DIR/stack.sh" debezium-exec fxjson "${common[@]}" >"$WORK/fxjson.log" 2>&1 &
PIDS[fxjson]=$!
FLOE_STACK_SKIP_INSTALL=1 "$DEV_DIR/stack.sh" debezium-exec fxavro "${common[@]}" "${avro[@]}" >"$WORK/fxavro.log" 2>&1 &
PIDS[fxavro]=$!
FLOE_STACK_SKIP_INSTALL=1 "$DEV_DIR/stack.sh" debezium-exec fxunwrap "${common[@]}" "${avro[@]}" "${unwrap[@]}" \
  >"$WORK/fxunwrap.log" 2>&1 &
PIDS[fxunwrap]=$!
t0=$SECONDS
for n in "${FORWARDERS[@]}"; do
  until [[ "$(slot_active "$n")" == t ]]; do
    kill -0 "${PIDS[$n]}" 2>/dev/null || { tail -n 40 "$WORK/$n.log" >&2; die "$n exited during start"; }
    ((SECONDS - t0 < START_TIMEOUT)) || { tail -n 40 "$WORK/$n.log" >&2; die "$n: slot not active after ${START_TIMEOUT}s"; }
    sleep 0.25
  done
done
say "forwarders streaming after $((SECONDS - t0))s: ${FORWARDERS[*]}"

# Like tests/all/live_types.rs (psql -f -): one transaction per statement outside BEGIN/COMMIT.
"${PSQL[@]}" -f - <<<"$CHANGES_SQL"
say "changes applied; waiting for the end marker on every forwarder"
t0=$SECONDS
until
  capture "$WORK/marker.jsonl" '(fxjson|fxavro|fxunwrap)\.public\.composite_pk' --idle-ms 1500 --max-ms 10000 &&
    [[ "$(grep -c 'zz-end' "$WORK/marker.jsonl" || true)" -ge 3 ]]
do
  for n in "${FORWARDERS[@]}"; do
    kill -0 "${PIDS[$n]}" 2>/dev/null || { tail -n 40 "$WORK/$n.log" >&2; die "$n exited"; }
  done
  ((SECONDS - t0 < 120)) || die "the end marker did not arrive within 120 s (logs in $WORK)"
  sleep 1
done
# Transaction END records and a few heartbeats (every ${FLOE_DEBEZIUM_HEARTBEAT_MS} ms) follow.
sleep 5
stop_forwarders
say "forwarders stopped; capturing"
capture "$WORK/capture.jsonl" \
  '(fxjson|fxavro|fxunwrap)\..*|__debezium-heartbeat\.(fxjson|fxavro|fxunwrap)' --idle-ms 3000
settings=()
for n in "${FORWARDERS[@]}"; do settings+=("$n=$FLOE_RUN_DIR/debezium-$n/debezium.properties"); done
"${FLOE_PYTHON:-python3}" "$DEV_DIR/avro_fixtures.py" --capture "$WORK/capture.jsonl" \
  --registry "$FLOE_REGISTRY_URL" --out "$OUT" --dbz-libs "$FLOE_DBZ_LIBS" \
  --pg-version "$("${PSQL[@]}" -tAc 'SHOW server_version')" --settings "${settings[@]}"
