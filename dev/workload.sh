#!/usr/bin/env bash
# floe dev stack: sample workload on database floe.
#
#   dev/workload.sh [N] [--seed S] [--txn-size K] [--truncate] [--dry-run]
#
# Creates public.customers and public.orders if missing, then applies N (default 500)
# deterministic (seeded, default seed 42) mixed changes: inserts, updates and deletes on
# both tables, in transactions of about K (default 50) changes each. The same seed on the
# same starting rows gives the same changes. --truncate first empties both tables (emits one
# Debezium truncate event per table). --dry-run prints the SQL instead of running it.
#
# Prints, per table, the inserts/updates/deletes applied, the rows left, and the number of
# Kafka messages Debezium emits for them while streaming (insert 1, update 1, delete 2:
# the delete event and its tombstone), e.g.
#   workload: public.customers inserts=104 updates=69 deletes=27 rows=77 messages=227
# Needs the postgres component of dev/stack.sh (FLOE_PG_PORT).
set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=dev/env.sh
. "$DEV_DIR/env.sh"

changes=500
seed="${FLOE_WORKLOAD_SEED:-42}"
txn_size=50
truncate=0
dry_run=0
usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while (($#)); do
  case "$1" in
    --seed) seed="${2:?}"; shift 2 ;;
    --seed=*) seed="${1#*=}"; shift ;;
    --txn-size) txn_size="${2:?}"; shift 2 ;;
    --txn-size=*) txn_size="${1#*=}"; shift ;;
    --truncate) truncate=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    [0-9]*) changes="$1"; shift ;;
    *) echo "workload: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ "$changes" =~ ^[0-9]+$ && "$seed" =~ ^-?[0-9]+$ && "$txn_size" =~ ^[1-9][0-9]*$ ]] || usage

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$FLOE_PG_PORT" -U postgres -d floe)
export PGCONNECT_TIMEOUT=5
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

schema_sql="
CREATE TABLE IF NOT EXISTS public.customers (
  id serial PRIMARY KEY,
  name text,
  email text,
  balance numeric(12,2),
  created_at timestamptz,
  active boolean
);
CREATE TABLE IF NOT EXISTS public.orders (
  id bigserial PRIMARY KEY,
  customer_id int,
  amount numeric(12,2),
  status text,
  note text,
  placed_at timestamp
);"

t0="$EPOCHREALTIME"
if ((dry_run)); then
  echo "$schema_sql"
  ((truncate)) && echo "TRUNCATE public.customers RESTART IDENTITY; TRUNCATE public.orders RESTART IDENTITY;"
  : >"$tmp/customers.ids"; : >"$tmp/orders.ids"
  ((truncate)) || {
    "${PSQL[@]}" -tAc "SELECT id FROM public.customers ORDER BY id" >"$tmp/customers.ids" 2>/dev/null || true
    "${PSQL[@]}" -tAc "SELECT id FROM public.orders ORDER BY id" >"$tmp/orders.ids" 2>/dev/null || true
  }
  "${FLOE_PYTHON:-python3}" "$DEV_DIR/workload.py" --changes "$changes" --seed "$seed" --txn-size "$txn_size" \
    --customer-ids "$tmp/customers.ids" --order-ids "$tmp/orders.ids" --summary "$tmp/summary"
  exit 0
fi

"${PSQL[@]}" -c "$schema_sql" >/dev/null || {
  echo "workload: cannot reach database floe on 127.0.0.1:$FLOE_PG_PORT (is 'dev/stack.sh start postgres' running?)" >&2
  exit 1
}
if ((truncate)); then
  # Two statements, so Debezium emits one truncate event per table.
  "${PSQL[@]}" -c "TRUNCATE public.customers RESTART IDENTITY" -c "TRUNCATE public.orders RESTART IDENTITY" >/dev/null
fi
"${PSQL[@]}" -tAc "SELECT id FROM public.customers ORDER BY id" >"$tmp/customers.ids"
"${PSQL[@]}" -tAc "SELECT id FROM public.orders ORDER BY id" >"$tmp/orders.ids"

"${FLOE_PYTHON:-python3}" "$DEV_DIR/workload.py" --changes "$changes" --seed "$seed" --txn-size "$txn_size" \
  --customer-ids "$tmp/customers.ids" --order-ids "$tmp/orders.ids" --summary "$tmp/summary" >"$tmp/workload.sql"
"${PSQL[@]}" -f "$tmp/workload.sql" >/dev/null

declare -A s
while IFS='=' read -r k v; do s[$k]="$v"; done <"$tmp/summary"
secs="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
echo "workload: seed=$seed changes=$changes transactions=${s[transactions]} truncate=$truncate in ${secs}s (database floe on 127.0.0.1:$FLOE_PG_PORT)"
for t in customers orders; do
  msgs=$((s[$t.inserts] + s[$t.updates] + 2 * s[$t.deletes] + truncate))
  printf 'workload: %-16s inserts=%s updates=%s deletes=%s rows=%s messages=%s\n' "public.$t" \
    "${s[$t.inserts]}" "${s[$t.updates]}" "${s[$t.deletes]}" "${s[$t.rows]}" "$msgs"
done
