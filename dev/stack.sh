#!/usr/bin/env bash
# floe dev stack: dev/stack.sh start|stop|restart|status|env|logs|clean [component...]
#
# Components (all on 127.0.0.1 only):
#   tansu     Kafka-protocol broker, memory storage          $FLOE_KAFKA_BROKERS
#   fakesnow  Snowflake emulator (driver protocol)           $FLOE_SNOWFLAKE_URL
#   registry  Confluent-compatible Schema Registry stand-in (dev/registry/registry.py, a test
#             stand-in), schemas kept in its run dir across restarts   $FLOE_REGISTRY_URL
#   postgres  private PostgreSQL 15 cluster, wal_level=logical, database "floe"   $FLOE_PG_URL
#   debezium  real Debezium 3.6.3 embedded engine forwarding CDC events of database
#             floe (schema public) to the broker, topics <prefix>.public.<table>, as JSON
#             or, with FLOE_DEBEZIUM_FORMAT=avro, as Avro through the registry
#
# start    starts the given components (default: all), in dependency order, each only if
#          it is not already running, and waits until each one is ready (bounded).
# stop     stops them (default: all), in reverse order, and checks nothing is left.
# status   one line per component; exit status 3 when one of them is not running.
# env      prints `export ...` lines: eval "$(dev/stack.sh env)".
# logs     prints the tail of each component's log.
# clean    stop, then delete $FLOE_RUN_DIR (the PostgreSQL data dir included).
# debezium-exec NAME [key=value ...]
#          one more Debezium forwarder in the foreground, with its own slot and topic
#          prefix and the given connector settings (tests that need other settings);
#          floe.format=avro: Avro with the registry at $FLOE_REGISTRY_URL.
#
# Settings: see dev/env.sh (ports, FLOE_DEBEZIUM_* converter options) and dev/README.md.
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=dev/env.sh
. "$DEV_DIR/env.sh"

ALL_COMPONENTS=(tansu fakesnow registry postgres debezium)
START_TIMEOUT="${FLOE_STACK_START_TIMEOUT:-60}"
DEBEZIUM_START_TIMEOUT="${FLOE_DEBEZIUM_START_TIMEOUT:-180}"
STOP_TIMEOUT="${FLOE_STACK_STOP_TIMEOUT:-60}"
DEBEZIUM_JAVA_OPTS="${FLOE_DEBEZIUM_JAVA_OPTS:--Xms64m -Xmx1g}"
export PGCONNECT_TIMEOUT=5

# ---------------------------------------------------------------- helpers

say() { echo "stack: $*"; }
die() { echo "stack: error: $*" >&2; exit 1; }

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# listener_pids PORT: pids of the processes listening on TCP PORT (needs ss; empty if unknown).
listener_pids() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -Htlnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# port_owned_by PORT PID: PID listens on PORT (true when ss cannot tell).
port_owned_by() {
  command -v ss >/dev/null 2>&1 || return 0
  listener_pids "$1" | grep -qx "$2"
}

svc_dir() { echo "$FLOE_RUN_DIR/$1"; }
pid_file() { echo "$FLOE_RUN_DIR/$1/$1.pid"; }
log_file() { echo "$FLOE_RUN_DIR/$1/$1.log"; }

# alive PID MATCH: PID is running and its command line contains MATCH (guards against reused pids).
alive() {
  [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# svc_pid NAME MATCH: prints the pid of the running service, fails if it is not running.
svc_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  alive "$pid" "$2" || return 1
  echo "$pid"
}

show_log() {
  local f="$1" n="${2:-40}"
  if [[ -f "$f" ]]; then
    echo "---- last $n lines of $f" >&2
    tail -n "$n" "$f" >&2
    echo "----" >&2
  fi
}

# spawn NAME CMD...: runs CMD detached (own session, so it outlives the caller and can be
# stopped as a process group), stdout+stderr to the log file, pid to the pid file.
spawn() {
  local name="$1"; shift
  local dir log pidf
  dir="$(svc_dir "$name")"; log="$(log_file "$name")"; pidf="$(pid_file "$name")"
  mkdir -p "$dir"
  [[ -f "$log" ]] && mv -f "$log" "$log.prev"
  rm -f "$pidf"
  # shellcheck disable=SC2016 # $$ and $@ expand in the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" >"$log" 2>&1 </dev/null &
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -s "$pidf" ]] && return 0
    sleep 0.05
  done
  die "$name: no pid file after spawning"
}

# terminate NAME PID MATCH: SIGTERM to the process group, SIGKILL after $STOP_TIMEOUT s.
terminate() {
  local name="$1" pid="$2" match="$3" i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive "$pid" "$match" || return 0
    sleep 0.1
  done
  say "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" "$match" || return 0
    sleep 0.1
  done
  die "$name: pid $pid survived SIGKILL"
}

# wait_port_free PORT NAME: after a stop, the port must be closed.
wait_port_free() {
  local i
  for ((i = 0; i < 50; i++)); do
    port_open "$1" || return 0
    sleep 0.1
  done
  say "warning: $2 stopped but 127.0.0.1:$1 still accepts connections (pids: $(listener_pids "$1" | tr '\n' ' '))"
  return 1
}

# http_answers PORT PATH: an HTTP server on 127.0.0.1:PORT answers a GET of PATH (any status).
http_answers() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&3
    IFS= read -r -t 2 line <&3 || exit 1
    while IFS= read -r -t 2 _ <&3; do :; done # the rest, until the server closes
    [[ "$line" == HTTP/1.?\ [1-5][0-9][0-9]* ]]
  ) 2>/dev/null
}

# refuse_taken_port PORT NAME: fail early when another process already listens on PORT.
refuse_taken_port() {
  if port_open "$1"; then
    die "$2: 127.0.0.1:$1 is already in use by another process (pids: $(listener_pids "$1" | tr '\n' ' ')); stop it or set another port (see dev/env.sh)"
  fi
}

# ---------------------------------------------------------------- tansu

TANSU_MATCH="tansu broker"

start_tansu() {
  local pid t0="$EPOCHREALTIME" log i
  if pid="$(svc_pid tansu "$TANSU_MATCH")"; then
    if port_owned_by "$FLOE_KAFKA_PORT" "$pid"; then
      say "tansu: already running (pid $pid) on $FLOE_KAFKA_BROKERS"; return 0
    fi
    die "tansu: pid $pid is running but does not listen on $FLOE_KAFKA_PORT; run '$0 stop tansu'"
  fi
  refuse_taken_port "$FLOE_KAFKA_PORT" tansu
  spawn tansu env NO_COLOR=1 "$FLOE_TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$FLOE_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$FLOE_KAFKA_PORT" \
    --storage-engine memory://tansu/
  pid="$(cat "$(pid_file tansu)")"; log="$(log_file tansu)"
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    # tansu panics but stays alive when the port is taken: check the log and the port owner.
    if grep -qE 'AddrInUse|Address already in use|panicked' "$log" 2>/dev/null; then
      show_log "$log"; terminate tansu "$pid" "$TANSU_MATCH"
      die "tansu: failed to start (port $FLOE_KAFKA_PORT in use?)"
    fi
    if ! alive "$pid" "$TANSU_MATCH"; then show_log "$log"; die "tansu: exited during start"; fi
    if port_open "$FLOE_KAFKA_PORT" && port_owned_by "$FLOE_KAFKA_PORT" "$pid"; then
      say "tansu: started (pid $pid) on $FLOE_KAFKA_BROKERS in $(elapsed "$t0")s"; return 0
    fi
    sleep 0.1
  done
  show_log "$log"; terminate tansu "$pid" "$TANSU_MATCH"
  die "tansu: not listening on $FLOE_KAFKA_PORT after ${START_TIMEOUT}s"
}

stop_tansu() {
  local pid
  if pid="$(svc_pid tansu "$TANSU_MATCH")"; then
    terminate tansu "$pid" "$TANSU_MATCH"
    wait_port_free "$FLOE_KAFKA_PORT" tansu || true
    say "tansu: stopped (pid $pid)"
  else
    say "tansu: not running"
  fi
  rm -f "$(pid_file tansu)"
}

status_tansu() {
  local pid
  if pid="$(svc_pid tansu "$TANSU_MATCH")" && port_owned_by "$FLOE_KAFKA_PORT" "$pid"; then
    echo "tansu     running   pid $pid  $FLOE_KAFKA_BROKERS"
  elif [[ -n "${pid:-}" ]]; then
    echo "tansu     BROKEN    pid $pid alive but not listening on $FLOE_KAFKA_PORT (see $(log_file tansu))"; return 1
  else
    echo "tansu     stopped"; return 1
  fi
}

# ---------------------------------------------------------------- fakesnow

FAKESNOW_MATCH="fakesnow -s -p"

start_fakesnow() {
  local pid t0="$EPOCHREALTIME" log i
  if pid="$(svc_pid fakesnow "$FAKESNOW_MATCH")"; then
    say "fakesnow: already running (pid $pid) at $FLOE_SNOWFLAKE_URL"; return 0
  fi
  refuse_taken_port "$FLOE_SNOWFLAKE_PORT" fakesnow
  spawn fakesnow "$FLOE_FAKESNOW_VENV/bin/fakesnow" -s -p "$FLOE_SNOWFLAKE_PORT" --host 127.0.0.1
  pid="$(cat "$(pid_file fakesnow)")"; log="$(log_file fakesnow)"
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if ! alive "$pid" "$FAKESNOW_MATCH"; then show_log "$log"; die "fakesnow: exited during start"; fi
    if port_open "$FLOE_SNOWFLAKE_PORT" && port_owned_by "$FLOE_SNOWFLAKE_PORT" "$pid"; then
      say "fakesnow: started (pid $pid) at $FLOE_SNOWFLAKE_URL in $(elapsed "$t0")s"; return 0
    fi
    sleep 0.1
  done
  show_log "$log"; terminate fakesnow "$pid" "$FAKESNOW_MATCH"
  die "fakesnow: not listening on $FLOE_SNOWFLAKE_PORT after ${START_TIMEOUT}s"
}

stop_fakesnow() {
  local pid
  if pid="$(svc_pid fakesnow "$FAKESNOW_MATCH")"; then
    terminate fakesnow "$pid" "$FAKESNOW_MATCH"
    wait_port_free "$FLOE_SNOWFLAKE_PORT" fakesnow || true
    say "fakesnow: stopped (pid $pid)"
  else
    say "fakesnow: not running"
  fi
  rm -f "$(pid_file fakesnow)"
}

status_fakesnow() {
  local pid
  if pid="$(svc_pid fakesnow "$FAKESNOW_MATCH")" && port_open "$FLOE_SNOWFLAKE_PORT"; then
    echo "fakesnow  running   pid $pid  $FLOE_SNOWFLAKE_URL"
  else
    echo "fakesnow  stopped"; return 1
  fi
}

# ---------------------------------------------------------------- registry

REGISTRY_MATCH="registry/registry.py --host"

start_registry() {
  local pid t0="$EPOCHREALTIME" log i dir
  if pid="$(svc_pid registry "$REGISTRY_MATCH")"; then
    say "registry: already running (pid $pid) at $FLOE_REGISTRY_URL"; return 0
  fi
  refuse_taken_port "$FLOE_REGISTRY_PORT" registry
  dir="$(svc_dir registry)"
  spawn registry "${FLOE_PYTHON:-python3}" "$DEV_DIR/registry/registry.py" --host 127.0.0.1 \
    --port "$FLOE_REGISTRY_PORT" --state "$dir/schemas.json"
  pid="$(cat "$(pid_file registry)")"; log="$(log_file registry)"
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if ! alive "$pid" "$REGISTRY_MATCH"; then show_log "$log"; die "registry: exited during start"; fi
    if port_owned_by "$FLOE_REGISTRY_PORT" "$pid" && http_answers "$FLOE_REGISTRY_PORT" /; then
      say "registry: started (pid $pid) at $FLOE_REGISTRY_URL in $(elapsed "$t0")s (state: $dir/schemas.json)"
      return 0
    fi
    sleep 0.1
  done
  show_log "$log"; terminate registry "$pid" "$REGISTRY_MATCH"
  die "registry: GET $FLOE_REGISTRY_URL/ not answered after ${START_TIMEOUT}s"
}

stop_registry() {
  local pid
  if pid="$(svc_pid registry "$REGISTRY_MATCH")"; then
    terminate registry "$pid" "$REGISTRY_MATCH"
    wait_port_free "$FLOE_REGISTRY_PORT" registry || true
    say "registry: stopped (pid $pid)"
  else
    say "registry: not running"
  fi
  rm -f "$(pid_file registry)"
}

status_registry() {
  local pid
  if pid="$(svc_pid registry "$REGISTRY_MATCH")" && http_answers "$FLOE_REGISTRY_PORT" /; then
    echo "registry  running   pid $pid  $FLOE_REGISTRY_URL"
  else
    echo "registry  stopped"; return 1
  fi
}

# ---------------------------------------------------------------- postgres

is_root() { [[ "$(id -u)" == 0 ]]; }

# as_pg CMD...: run as the postgres OS user when we are root (PostgreSQL refuses root).
as_pg() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The cluster directory: $FLOE_RUN_DIR/postgres, unless the postgres OS user cannot reach it
# (checkout under /root, mode 700) or the socket path would be too long (108 bytes max).
pg_dir() {
  if [[ -n "${FLOE_PG_DIR:-}" ]]; then echo "$FLOE_PG_DIR"; return 0; fi
  local d="$FLOE_RUN_DIR/postgres" a="$FLOE_RUN_DIR"
  if is_root; then
    while [[ ! -d "$a" ]]; do a="$(dirname "$a")"; done
    if ! runuser -u postgres -- test -x "$a" -a -r "$a"; then d=""; fi
  fi
  if [[ -z "$d" || $((${#d} + 20)) -gt 100 ]]; then
    d="${TMPDIR:-/tmp}/floe-dev-pg-$(id -u)-$FLOE_PG_PORT"
  fi
  echo "$d"
}

psql_admin() {
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$FLOE_PG_PORT" -U postgres "$@"
}

pg_running() {
  local data="$1"
  [[ -f "$data/postmaster.pid" ]] || return 1
  as_pg "$FLOE_PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

pg_postmaster_pid() { head -n 1 "$1/postmaster.pid" 2>/dev/null; }

start_postgres() {
  local t0="$EPOCHREALTIME" dir data log
  dir="$(pg_dir)"; data="$dir/data"; log="$dir/postgres.log"
  if pg_running "$data"; then
    say "postgres: already running (pid $(pg_postmaster_pid "$data")) at $FLOE_PG_URL"
    ensure_floe_db
    return 0
  fi
  refuse_taken_port "$FLOE_PG_PORT" postgres
  mkdir -p "$dir"
  if is_root; then chown postgres: "$dir"; fi
  chmod 700 "$dir"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    rm -rf "$data"
    if ! as_pg "$FLOE_PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
      show_log "$dir/initdb.log"; die "postgres: initdb failed"
    fi
    echo "include 'floe-dev.conf'" | as_pg tee -a "$data/postgresql.conf" >/dev/null
  fi
  # Rewritten at every start, so a changed port takes effect.
  as_pg tee "$data/floe-dev.conf" >/dev/null <<EOF
# written by dev/stack.sh at every start
listen_addresses = '127.0.0.1'
port = $FLOE_PG_PORT
unix_socket_directories = '$dir'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
# a throwaway dev/test cluster: trade crash safety for speed
fsync = off
full_page_writes = off
EOF
  [[ -f "$log" ]] && as_pg mv -f "$log" "$log.prev"
  if ! as_pg "$FLOE_PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t "$START_TIMEOUT" start >/dev/null; then
    show_log "$log"; die "postgres: pg_ctl start failed"
  fi
  ensure_floe_db
  say "postgres: started (pid $(pg_postmaster_pid "$data")) at $FLOE_PG_URL in $(elapsed "$t0")s (data: $data)"
}

ensure_floe_db() {
  if [[ "$(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'floe'")" != 1 ]]; then
    psql_admin -d postgres -c "CREATE DATABASE floe" >/dev/null
  fi
}

stop_postgres() {
  local dir data pid
  dir="$(pg_dir)"; data="$dir/data"
  if pg_running "$data"; then
    pid="$(pg_postmaster_pid "$data")"
    if ! as_pg "$FLOE_PG_BIN/pg_ctl" -D "$data" -m fast -w -t "$STOP_TIMEOUT" stop >/dev/null; then
      say "postgres: fast stop failed, trying immediate"
      as_pg "$FLOE_PG_BIN/pg_ctl" -D "$data" -m immediate -w -t "$STOP_TIMEOUT" stop >/dev/null \
        || die "postgres: could not stop pid $pid"
    fi
    wait_port_free "$FLOE_PG_PORT" postgres || true
    say "postgres: stopped (pid $pid)"
  else
    say "postgres: not running"
  fi
}

status_postgres() {
  local dir data
  dir="$(pg_dir)"; data="$dir/data"
  if pg_running "$data"; then
    echo "postgres  running   pid $(pg_postmaster_pid "$data")  $FLOE_PG_URL  (data: $data)"
  else
    echo "postgres  stopped"; return 1
  fi
}

# ---------------------------------------------------------------- debezium

DEBEZIUM_MATCH="FloeDebezium"

# slot_state: t / f (active or not) for the Debezium slot, empty when it does not exist.
slot_state() {
  psql_admin -d floe -tAc \
    "SELECT active FROM pg_replication_slots WHERE slot_name = '$FLOE_DEBEZIUM_SLOT'" 2>/dev/null || true
}

# java_bin: the java of the JDK whose javac compiled the forwarder (FLOE_JAVA overrides).
java_bin() {
  if [[ -n "${FLOE_JAVA:-}" ]]; then echo "$FLOE_JAVA"; return 0; fi
  local javac
  javac="$(command -v javac 2>/dev/null)" || { echo java; return 0; }
  echo "$(dirname "$(readlink -f "$javac")")/java"
}

# debezium_format: json or avro, from FLOE_DEBEZIUM_FORMAT or a floe.format= in FLOE_DEBEZIUM_OPTS.
debezium_format() {
  local format="$FLOE_DEBEZIUM_FORMAT" opt
  for opt in $FLOE_DEBEZIUM_OPTS; do
    if [[ "$opt" == floe.format=* ]]; then format="${opt#floe.format=}"; fi
  done
  case "$format" in
    json|avro) echo "$format" ;;
    *) die "the Debezium format (FLOE_DEBEZIUM_FORMAT or floe.format=) must be json or avro, not '$format'" ;;
  esac
}

write_debezium_settings() {
  local f="$1" opt format
  format="$(debezium_format)"
  {
    echo "# written by dev/stack.sh at every start; FLOE_DEBEZIUM_* variables change it"
    echo "name=floe-debezium"
    echo "connector.class=io.debezium.connector.postgresql.PostgresConnector"
    echo "offset.storage=org.apache.kafka.connect.storage.MemoryOffsetBackingStore"
    echo "offset.flush.interval.ms=1000"
    echo "database.hostname=127.0.0.1"
    echo "database.port=$FLOE_PG_PORT"
    echo "database.user=postgres"
    echo "database.dbname=floe"
    echo "topic.prefix=$FLOE_DEBEZIUM_TOPIC_PREFIX"
    echo "schema.include.list=public"
    echo "plugin.name=pgoutput"
    echo "slot.name=$FLOE_DEBEZIUM_SLOT"
    echo "slot.drop.on.stop=true"
    echo "publication.name=$FLOE_DEBEZIUM_PUBLICATION"
    echo "publication.autocreate.mode=all_tables"
    echo "snapshot.mode=initial"
    echo "skipped.operations=none"
    echo "heartbeat.interval.ms=$FLOE_DEBEZIUM_HEARTBEAT_MS"
    echo "provide.transaction.metadata=$FLOE_DEBEZIUM_TX_METADATA"
    echo "decimal.handling.mode=$FLOE_DEBEZIUM_DECIMAL_MODE"
    echo "floe.format=$format"
    if [[ "$format" == avro ]]; then
      # io.confluent.connect.avro.AvroConverter for key and value (the engine's default for
      # Avro); converter.* goes to both, prefix stripped. Schemas are registered on first use.
      echo "converter.schema.registry.url=$FLOE_REGISTRY_URL"
    else
      echo "converter.schemas.enable=$FLOE_DEBEZIUM_SCHEMAS"
      echo "key.converter.schemas.enable=$FLOE_DEBEZIUM_SCHEMAS"
      echo "value.converter.schemas.enable=$FLOE_DEBEZIUM_SCHEMAS"
    fi
    case "$FLOE_DEBEZIUM_HEADERS" in
      simple) echo "header.converter.class=org.apache.kafka.connect.storage.SimpleHeaderConverter" ;;
      json) echo "header.converter.class=org.apache.kafka.connect.json.JsonConverter" ;;
      *) die "FLOE_DEBEZIUM_HEADERS must be simple or json, not '$FLOE_DEBEZIUM_HEADERS'" ;;
    esac
    echo "floe.producer.bootstrap.servers=$FLOE_KAFKA_BROKERS"
    echo "floe.producer.acks=all"
    echo "floe.producer.enable.idempotence=true"
    if [[ -n "$FLOE_DEBEZIUM_OPTS" ]]; then
      echo "# FLOE_DEBEZIUM_OPTS"
      for opt in $FLOE_DEBEZIUM_OPTS; do
        [[ "$opt" == *=* ]] || die "FLOE_DEBEZIUM_OPTS: '$opt' is not key=value"
        echo "$opt"
      done
    fi
  } >"$f"
}

start_debezium() {
  local t0="$EPOCHREALTIME" pid dir log props i state
  if pid="$(svc_pid debezium "$DEBEZIUM_MATCH")"; then
    say "debezium: already running (pid $pid), slot $FLOE_DEBEZIUM_SLOT active=$(slot_state)"; return 0
  fi
  port_open "$FLOE_KAFKA_PORT" || die "debezium: the broker is not running on $FLOE_KAFKA_BROKERS (start tansu first)"
  pg_running "$(pg_dir)/data" || die "debezium: postgres is not running (start postgres first)"
  if [[ "$(debezium_format)" == avro ]] && ! http_answers "$FLOE_REGISTRY_PORT" /; then
    die "debezium: format avro but the registry does not answer at $FLOE_REGISTRY_URL (start registry first)"
  fi
  ensure_floe_db
  if [[ "$(slot_state)" == t ]]; then
    die "debezium: slot $FLOE_DEBEZIUM_SLOT is already active (another Debezium?); set FLOE_DEBEZIUM_SLOT"
  fi
  dir="$(svc_dir debezium)"; log="$(log_file debezium)"; props="$dir/debezium.properties"
  mkdir -p "$dir"
  write_debezium_settings "$props"
  # shellcheck disable=SC2086 # DEBEZIUM_JAVA_OPTS is a list of JVM options
  spawn debezium "$(java_bin)" $DEBEZIUM_JAVA_OPTS \
    "-Dlog4j2.configurationFile=$DEV_DIR/debezium/log4j2.properties" \
    -cp "$FLOE_DBZ_CLASSES:$FLOE_DBZ_LIBS/*" FloeDebezium "$props"
  pid="$(cat "$(pid_file debezium)")"
  # Ready = the connector has taken its snapshot and is streaming: its slot is active.
  for ((i = 0; i < DEBEZIUM_START_TIMEOUT * 4; i++)); do
    if ! alive "$pid" "$DEBEZIUM_MATCH"; then show_log "$log" 60; die "debezium: exited during start"; fi
    state="$(slot_state)"
    if [[ "$state" == t ]]; then
      say "debezium: started (pid $pid), streaming from slot $FLOE_DEBEZIUM_SLOT to topics $FLOE_DEBEZIUM_TOPIC_PREFIX.public.* ($(debezium_format)) in $(elapsed "$t0")s"
      return 0
    fi
    sleep 0.25
  done
  show_log "$log" 60; terminate debezium "$pid" "$DEBEZIUM_MATCH"
  die "debezium: slot $FLOE_DEBEZIUM_SLOT not active after ${DEBEZIUM_START_TIMEOUT}s"
}

stop_debezium() {
  local pid state
  if pid="$(svc_pid debezium "$DEBEZIUM_MATCH")"; then
    terminate debezium "$pid" "$DEBEZIUM_MATCH"
    say "debezium: stopped (pid $pid)"
  else
    say "debezium: not running"
  fi
  rm -f "$(pid_file debezium)"
  # slot.drop.on.stop=true drops the slot on a clean stop; after a crash or SIGKILL it would
  # stay and pin WAL, so drop a leftover inactive slot here.
  if pg_running "$(pg_dir)/data"; then
    state="$(slot_state)"
    if [[ "$state" == f ]]; then
      psql_admin -d floe -tAc "SELECT pg_drop_replication_slot('$FLOE_DEBEZIUM_SLOT')" >/dev/null 2>&1 \
        && say "debezium: dropped leftover replication slot $FLOE_DEBEZIUM_SLOT"
    fi
  fi
  return 0
}

status_debezium() {
  local pid state
  if pid="$(svc_pid debezium "$DEBEZIUM_MATCH")"; then
    state="$(slot_state)"
    if [[ "$state" == t ]]; then
      echo "debezium  running   pid $pid  streaming (slot $FLOE_DEBEZIUM_SLOT active) -> $FLOE_DEBEZIUM_TOPIC_PREFIX.public.* ($(debezium_format))"
    else
      echo "debezium  starting  pid $pid  slot $FLOE_DEBEZIUM_SLOT not active yet"; return 1
    fi
  else
    echo "debezium  stopped"; return 1
  fi
}

# ---------------------------------------------------------------- commands

print_env() {
  local v
  for v in FLOE_DEV_HOME FLOE_RUN_DIR FLOE_KAFKA_PORT FLOE_SNOWFLAKE_PORT FLOE_PG_PORT \
      FLOE_REGISTRY_PORT FLOE_KAFKA_BROKERS FLOE_SNOWFLAKE_URL FLOE_PG_DSN FLOE_PG_URL \
      FLOE_REGISTRY_URL FLOE_DEBEZIUM_TOPIC_PREFIX FLOE_DEBEZIUM_SLOT FLOE_DEBEZIUM_PUBLICATION \
      FLOE_DEBEZIUM_FORMAT FLOE_DEBEZIUM_SCHEMAS FLOE_DEBEZIUM_DECIMAL_MODE FLOE_DEBEZIUM_HEADERS \
      FLOE_TANSU_BIN FLOE_MOTO_BIN; do
    printf "export %s='%s'\n" "$v" "${!v//\'/\'\\\'\'}"
  done
}

usage() {
  echo "usage: $0 start|stop|restart|status|env|logs|clean [tansu|fakesnow|registry|postgres|debezium ...]" >&2
  echo "       $0 debezium-exec NAME [key=value ...]   (floe.format=avro: Avro through \$FLOE_REGISTRY_URL)" >&2
  exit 2
}

# debezium-exec NAME [key=value ...]: runs one more Debezium forwarder in the foreground
# (tests start their own, with other connector settings): slot floe_NAME, topics
# NAME.<schema>.<table>, the stack's settings overridden by the key=value pairs (floe.format=avro:
# Avro, converter.schema.registry.url=$FLOE_REGISTRY_URL unless given). SIGTERM stops it and
# drops its slot. The broker and PostgreSQL (and for Avro the registry) must be running.
if [[ "${1:-}" == debezium-exec ]]; then
  [[ -n "${2:-}" ]] || usage
  name="$2"; shift 2
  # Recompiles the forwarder when dev/debezium/*.java changed (a fast no-op otherwise).
  if [[ "${FLOE_STACK_SKIP_INSTALL:-0}" != 1 ]]; then FLOE_INSTALL_QUIET=1 "$DEV_DIR/install.sh" debezium; fi
  export FLOE_DEBEZIUM_SLOT="floe_$name" FLOE_DEBEZIUM_TOPIC_PREFIX="$name" FLOE_DEBEZIUM_OPTS="$*"
  dir="$FLOE_RUN_DIR/debezium-$name"
  mkdir -p "$dir"
  write_debezium_settings "$dir/debezium.properties"
  # shellcheck disable=SC2086 # DEBEZIUM_JAVA_OPTS is a list of JVM options
  exec "$(java_bin)" $DEBEZIUM_JAVA_OPTS "-Dlog4j2.configurationFile=$DEV_DIR/debezium/log4j2.properties" \
    -cp "$FLOE_DBZ_CLASSES:$FLOE_DBZ_LIBS/*" FloeDebezium "$dir/debezium.properties"
fi

cmd="${1:-}"; [[ -n "$cmd" ]] || usage
shift
requested=("$@")
((${#requested[@]})) || requested=("${ALL_COMPONENTS[@]}")
for c in "${requested[@]}"; do
  case "$c" in tansu|fakesnow|registry|postgres|debezium) ;; *) echo "stack: unknown component '$c'" >&2; usage ;; esac
done
# Requested components in dependency order, and reversed.
ordered=(); reversed=()
for c in "${ALL_COMPONENTS[@]}"; do
  for r in "${requested[@]}"; do
    if [[ "$r" == "$c" ]]; then ordered+=("$c"); reversed=("$c" "${reversed[@]}"); break; fi
  done
done

do_start() {
  local t0="$EPOCHREALTIME" c
  mkdir -p "$FLOE_RUN_DIR"
  if [[ "${FLOE_STACK_SKIP_INSTALL:-0}" != 1 ]]; then
    # moto is not a stack component: the broker restart test starts its own durable
    # tansu on it. It is installed with tansu.
    local extra=()
    [[ " ${ordered[*]} " == *" tansu "* ]] && extra=(moto)
    FLOE_INSTALL_QUIET=1 "$DEV_DIR/install.sh" "${ordered[@]}" "${extra[@]}"
  fi
  for c in "${ordered[@]}"; do "start_$c"; done
  say "ready in $(elapsed "$t0")s"
}

do_stop() {
  local t0="$EPOCHREALTIME" c
  for c in "${reversed[@]}"; do "stop_$c"; done
  say "stopped in $(elapsed "$t0")s"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status)
    rc=0
    for c in "${ordered[@]}"; do "status_$c" || rc=3; done
    exit "$rc" ;;
  env) print_env ;;
  logs)
    for c in "${ordered[@]}"; do
      if [[ "$c" == postgres ]]; then show_log "$(pg_dir)/postgres.log" 20 2>&1
      else show_log "$(log_file "$c")" 20 2>&1; fi
    done ;;
  clean)
    (( $# == 0 )) || die "clean takes no component"
    do_stop
    d="$(pg_dir)"
    rm -rf "$FLOE_RUN_DIR"
    [[ "$d" == "$FLOE_RUN_DIR"/* ]] || rm -rf "$d"
    say "removed $FLOE_RUN_DIR" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
