"""The module's locals, evaluated by the real Terraform: the environment contract, the
topic/group ARNs of the IAM grants, the mappings' source access configuration.

The harness copies variables.tf and the `locals` blocks of main.tf and iam.tf into a
provider-free configuration, with the few attributes of created resources and data
sources they read replaced by fixed values (STUBS), and asks `terraform console` for the
locals as JSON.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import REQUIRED, terraform, write_vars
from tfparse import TERRAFORM_DIR

ACCOUNT = "123456789012"
CLUSTER_UUID = "0a1b2c3d-4e5f-6789-abcd-ef0123456789-2"
MSK = f"arn:aws:kafka:eu-west-1:{ACCOUNT}:cluster/cdc/{CLUSTER_UUID}"
KEY_SECRET = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:floe/key-AbCdEf"
SCRAM_SECRET = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:kafka/floe-GhIjKl"
CREATED_SECRET = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:floe/floe/snowflake-private-key-Created"
CREATED_QUEUE_ARN = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:floe-dlq"
CREATED_QUEUE_URL = f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/floe-dlq"

STUBS = {
    "aws_secretsmanager_secret.snowflake[0].arn": json.dumps(CREATED_SECRET),
    "aws_sqs_queue.dlq[0].arn": json.dumps(CREATED_QUEUE_ARN),
    "aws_sqs_queue.dlq[0].url": json.dumps(CREATED_QUEUE_URL),
    "data.aws_partition.current.dns_suffix": '"amazonaws.com"',
    "data.aws_partition.current.partition": '"aws"',
    "data.aws_region.current.region": '"eu-west-1"',
}

LOCALS = [
    "floe_environment",
    "kafka_auth",
    "consumer_group_ids",
    "dlq_topics",
    "source_access_configurations",
    "msk_source_topic_arns",
    "msk_group_arns",
    "msk_dlq_topic_arns",
    "msk_floe_dlq_topic_arns",
    "sqs_send_arns",
    "secret_arns",
    "on_failure_kind",
    "secretsmanager_service",
    "dlq_s3_object_arns",
]

BASE = {**REQUIRED, "msk_cluster_arn": MSK, "snowflake_private_key_secret_arn": KEY_SECRET}


def _locals_blocks(text: str) -> list[str]:
    return re.findall(r"(?ms)^locals \{\n.*?^\}\n", text)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    directory = tmp_path_factory.mktemp("locals")
    shutil.copy(TERRAFORM_DIR / "variables.tf", directory / "variables.tf")
    blocks = []
    for name in ("main.tf", "iam.tf"):
        blocks += _locals_blocks((TERRAFORM_DIR / name).read_text())
    text = "\n".join(blocks)
    for ref, value in STUBS.items():
        assert ref in text, f"stub for {ref} is no longer needed: drop it"
        text = text.replace(ref, value)
    leftover = re.findall(r"\b(?:data\.aws_[a-z_]+|aws_[a-z0-9_]+\.[a-z0-9_]+(?:\[\d+\])?\.[a-z_]+)", text)
    assert not leftover, f"locals read resources the harness does not stub: {leftover}"
    (directory / "locals.tf").write_text(text)
    return directory


def evaluate(directory, overrides: dict) -> dict:
    write_vars(directory, {**BASE, **overrides})
    expr = "jsonencode({" + ", ".join(f"{n} = local.{n}" for n in LOCALS) + "})\n"
    run = terraform(["console", "-no-color", "-var-file=case.tfvars.json"], directory, stdin=expr)
    assert run.returncode == 0, run.output
    return json.loads(json.loads(run.output.strip().splitlines()[-1]))


def test_msk_with_iam_auth(harness):
    got = evaluate(harness, {"on_failure_destination": "kafka://floe.failed-batches"})
    topic = f"arn:aws:kafka:eu-west-1:{ACCOUNT}:topic/cdc/{CLUSTER_UUID}"
    group = f"arn:aws:kafka:eu-west-1:{ACCOUNT}:group/cdc/{CLUSTER_UUID}"
    assert got["kafka_auth"] == "msk-iam"
    assert got["msk_source_topic_arns"] == [f"{topic}/dbz.public.orders", f"{topic}/dbz.public.customers"]
    assert got["consumer_group_ids"] == {
        "dbz.public.orders": "floe-dbz.public.orders",
        "dbz.public.customers": "floe-dbz.public.customers",
    }
    assert got["msk_group_arns"] == [
        f"{group}/floe-dbz.public.customers",
        f"{group}/floe-dbz.public.orders",
    ]
    assert got["msk_floe_dlq_topic_arns"] == [
        f"{topic}/dbz.public.customers.dlq",
        f"{topic}/dbz.public.orders.dlq",
    ]
    assert got["msk_dlq_topic_arns"] == got["msk_floe_dlq_topic_arns"] + [f"{topic}/floe.failed-batches"]
    assert got["source_access_configurations"] == []
    assert got["secret_arns"] == [KEY_SECRET]
    assert got["sqs_send_arns"] == []
    assert got["dlq_s3_object_arns"] == []
    assert got["on_failure_kind"] == "kafka"
    assert got["secretsmanager_service"] == "secretsmanager.eu-west-1.amazonaws.com"
    assert got["floe_environment"] == {
        "FLOE__SINK__SNOWFLAKE__ACCOUNT": "myorg-myaccount",
        "FLOE__SINK__SNOWFLAKE__USER": "FLOE",
        "FLOE__SINK__SNOWFLAKE__DATABASE": "ANALYTICS",
        "FLOE__SINK__SNOWFLAKE__SCHEMA": "CDC",
        "FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN": KEY_SECRET,
        "FLOE__DLQ__KIND": "kafka",
        "FLOE__DLQ__TOPIC": "{topic}.dlq",
        "FLOE__LAMBDA__KAFKA_AUTH": "msk-iam",
        "RUST_LOG": "info",
    }


def test_optional_snowflake_settings_and_log_level(harness):
    got = evaluate(
        harness,
        {
            "snowflake_account_url": "https://myorg-myaccount.privatelink.snowflakecomputing.com",
            "snowflake_warehouse": "LOAD_WH",
            "snowflake_role": "FLOE_LOADER",
            "log_level": "info,floe=debug",
            "consumer_group_id_prefix": "cdc",
            "dlq_topic": "floe.dead-letters",
        },
    )
    environ = got["floe_environment"]
    assert environ["FLOE__SINK__SNOWFLAKE__ACCOUNT_URL"] == "https://myorg-myaccount.privatelink.snowflakecomputing.com"
    assert environ["FLOE__SINK__SNOWFLAKE__WAREHOUSE"] == "LOAD_WH"
    assert environ["FLOE__SINK__SNOWFLAKE__ROLE"] == "FLOE_LOADER"
    assert environ["RUST_LOG"] == "info,floe=debug"
    assert environ["FLOE__DLQ__TOPIC"] == "floe.dead-letters"
    assert got["consumer_group_ids"]["dbz.public.orders"] == "cdc-dbz.public.orders"
    # One dead-letter topic for every source topic: one ARN.
    assert got["msk_floe_dlq_topic_arns"] == [f"arn:aws:kafka:eu-west-1:{ACCOUNT}:topic/cdc/{CLUSTER_UUID}/floe.dead-letters"]


def test_self_managed_with_scram(harness):
    got = evaluate(
        harness,
        {
            "kafka_kind": "self-managed",
            "msk_cluster_arn": None,
            "kafka_bootstrap_servers": ["kafka-1.internal:9096", "kafka-2.internal:9096"],
            "kafka_scram_secret_arn": SCRAM_SECRET,
        },
    )
    assert got["kafka_auth"] == "scram-sha-512"
    assert got["source_access_configurations"] == [
        {"type": "SASL_SCRAM_512_AUTH", "uri": SCRAM_SECRET},
        {"type": "VPC_SUBNET", "uri": "subnet:subnet-0a1b2c3d"},
        {"type": "VPC_SUBNET", "uri": "subnet:subnet-4e5f6a7b"},
        {"type": "VPC_SECURITY_GROUP", "uri": "security_group:sg-0a1b2c3d"},
    ]
    for arns in ("msk_source_topic_arns", "msk_group_arns", "msk_dlq_topic_arns"):
        assert got[arns] == [], arns
    assert got["secret_arns"] == [KEY_SECRET, SCRAM_SECRET]
    assert got["floe_environment"]["FLOE__LAMBDA__KAFKA_AUTH"] == "scram-sha-512"
    assert got["floe_environment"]["FLOE_KAFKA_SCRAM_SECRET_ARN"] == SCRAM_SECRET


def test_msk_with_scram_needs_no_kafka_cluster_grants(harness):
    got = evaluate(harness, {"kafka_auth": "scram-sha-512", "kafka_scram_secret_arn": SCRAM_SECRET})
    assert got["source_access_configurations"] == [{"type": "SASL_SCRAM_512_AUTH", "uri": SCRAM_SECRET}]
    assert got["msk_source_topic_arns"] == [] and got["msk_dlq_topic_arns"] == []


def test_sqs_dead_letters_to_an_existing_queue(harness):
    queue = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:floe-letters"
    failed = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:floe-failed-batches"
    got = evaluate(harness, {"dlq_kind": "sqs", "dlq_sqs_queue_arn": queue, "on_failure_destination": failed})
    environ = got["floe_environment"]
    assert environ["FLOE__DLQ__KIND"] == "sqs"
    assert environ["FLOE__DLQ__SQS_QUEUE_URL"] == f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/floe-letters"
    assert "FLOE__DLQ__TOPIC" not in environ
    assert got["sqs_send_arns"] == [queue, failed]
    assert got["dlq_topics"] == {} and got["msk_dlq_topic_arns"] == []
    assert got["on_failure_kind"] == "sqs"


def test_sqs_dead_letters_to_the_created_queue(harness):
    got = evaluate(harness, {"dlq_kind": "sqs", "create_dlq_queue": True})
    assert got["floe_environment"]["FLOE__DLQ__SQS_QUEUE_URL"] == CREATED_QUEUE_URL
    assert got["sqs_send_arns"] == [CREATED_QUEUE_ARN]


def test_s3_dead_letters(harness):
    got = evaluate(
        harness,
        {
            "dlq_kind": "s3",
            "dlq_s3_bucket": "floe-dead-letters",
            "on_failure_destination": "arn:aws:s3:::floe-failed-batches",
        },
    )
    environ = got["floe_environment"]
    assert environ["FLOE__DLQ__S3_BUCKET"] == "floe-dead-letters"
    assert environ["FLOE__DLQ__S3_PREFIX"] == "floe-dlq/"
    assert "FLOE__DLQ__SQS_QUEUE_URL" not in environ and "FLOE__DLQ__TOPIC" not in environ
    assert got["on_failure_kind"] == "s3"
    assert got["sqs_send_arns"] == []
    assert got["dlq_s3_object_arns"] == ["arn:aws:s3:::floe-dead-letters/floe-dlq/*"]


def test_created_snowflake_secret(harness):
    got = evaluate(
        harness,
        {
            "create_snowflake_secret": True,
            "snowflake_private_key_secret_arn": None,
            "snowflake_private_key_pem": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        },
    )
    assert got["floe_environment"]["FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN"] == CREATED_SECRET
    assert got["secret_arns"] == [CREATED_SECRET]
