#!/usr/bin/env bash
# The floe demo: a fresh dev stack, a sample workload of inserts, updates and deletes on
# two PostgreSQL tables, floe (embedded defaults) until caught up, then the target tables
# side by side with the source and the pipeline statistics.
#
#   dev/demo.sh [CHANGES]        (default 2000; FLOE_DEMO_KEEP=1 leaves the stack running)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
changes=${1:-2000}
floe="$root/target/debug/floe"
[[ -x "$floe" ]] || { echo "demo: $floe is missing: run 'make build'" >&2; exit 1; }

step() { printf '\n== %s\n' "$*"; }
t0=$(date +%s)
if [[ "${FLOE_DEMO_KEEP:-0}" != 1 ]]; then
  trap '"$here/stack.sh" stop >/dev/null' EXIT
fi

step "fresh dev stack (tansu, fakesnow, PostgreSQL, Debezium)"
"$here/stack.sh" clean >/dev/null 2>&1 || true
"$here/stack.sh" start
eval "$("$here/stack.sh" env)"

step "sample workload: $changes changes on public.customers and public.orders"
"$here/workload.sh" "$changes"

step "floe run (embedded defaults: topics ^dbz\\.[^.]+\\.[^.]+$ -> FLOE.CDC.DBZ_PUBLIC_<TABLE>), until 10 s idle"
stats="$root/target/demo-stats.json"
# tansu holds a consumer-group join for half the session timeout: 10 s keeps it at 5 s.
FLOE__SOURCE__KAFKA__BROKERS="$FLOE_KAFKA_BROKERS" \
FLOE__SOURCE__KAFKA__SESSION_TIMEOUT_MS=10000 \
FLOE__SINK__SNOWFLAKE__ACCOUNT_URL="$FLOE_SNOWFLAKE_URL" \
  "$floe" run --exit-when-idle 10 --metrics-json "$stats" >/dev/null

psql_q() { psql -X -qAt -h 127.0.0.1 -p "$FLOE_PG_PORT" -U postgres -d floe -c "$1"; }
floe_q() { FLOE__SINK__SNOWFLAKE__ACCOUNT_URL="$FLOE_SNOWFLAKE_URL" "$floe" query "$1" 2>/dev/null; }

step "target tables in Snowflake (emulator), first rows"
floe_q 'SELECT "ID", "NAME", "EMAIL", "BALANCE", "ACTIVE", "__OP", "__LSN" FROM FLOE.CDC.DBZ_PUBLIC_CUSTOMERS ORDER BY "ID" LIMIT 5' | column -t -s $'\t'
echo
floe_q 'SELECT "ID", "CUSTOMER_ID", "AMOUNT", "STATUS", "PLACED_AT", "__OP" FROM FLOE.CDC.DBZ_PUBLIC_ORDERS ORDER BY "ID" LIMIT 5' | column -t -s $'\t'

step "source vs target row counts"
for t in customers orders; do
  src=$(psql_q "SELECT count(*) FROM public.$t")
  dst=$(floe_q "SELECT COUNT(*) FROM FLOE.CDC.DBZ_PUBLIC_${t^^}" | tail -n 1)
  printf '  %-10s postgres=%-6s snowflake=%-6s %s\n' "$t" "$src" "$dst" "$([[ "$src" == "$dst" ]] && echo OK || echo MISMATCH)"
done

step "pipeline statistics ($stats)"
cat "$stats"
echo
echo "demo: done in $(( $(date +%s) - t0 )) s"
