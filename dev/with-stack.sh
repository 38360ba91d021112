#!/usr/bin/env bash
# Runs a command with the dev stack up (tansu, fakesnow, PostgreSQL, Debezium) and its
# environment exported; stops the stack afterwards whatever the command's outcome.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
trap '"$here/stack.sh" stop' EXIT
"$here/stack.sh" start
eval "$("$here/stack.sh" env)"
"$@"
