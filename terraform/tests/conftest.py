"""Shared helpers: the parsed module, and the embedded Terraform (tests/tfshim.py) run on
provider-free copies of parts of the module."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

from tfparse import TERRAFORM_DIR, parse_dir  # noqa: E402

SHIM = TESTS_DIR / "tfshim.py"

# Values for the module's required inputs that pass every validation.
REQUIRED = {
    "function_name": "floe",
    "package_path": "floe-lambda.zip",
    "subnet_ids": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
    "security_group_ids": ["sg-0a1b2c3d"],
    "topics": ["dbz.public.orders", "dbz.public.customers"],
    "snowflake_account": "myorg-myaccount",
    "snowflake_user": "FLOE",
    "snowflake_database": "ANALYTICS",
    "snowflake_schema": "CDC",
}


@dataclasses.dataclass
class Run:
    returncode: int
    output: str  # stdout + stderr


def terraform(args: list[str], cwd: pathlib.Path, stdin: str | None = None) -> Run:
    proc = subprocess.run(
        [sys.executable, str(SHIM), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_DATA_DIR=str(cwd / ".tfdata")),
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def write_vars(directory: pathlib.Path, values: dict) -> pathlib.Path:
    path = directory / "case.tfvars.json"
    path.write_text(json.dumps(values))
    return path


@pytest.fixture(scope="session")
def module():
    return parse_dir(TERRAFORM_DIR)
