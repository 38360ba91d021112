"""Structural invariants of the module and its example, from python-hcl2's parse of every
.tf file under terraform/. Each check also runs on a bad snippet, to show it can fail."""

from __future__ import annotations

import re

import pytest

import readme_tables
import tfparse
from tfparse import TERRAFORM_DIR, parse_dir, parse_text

DIRS = tfparse.module_dirs()
IDS = [str(d.relative_to(TERRAFORM_DIR)) for d in DIRS]


def test_every_directory_with_tf_files_is_covered():
    assert TERRAFORM_DIR in DIRS
    assert TERRAFORM_DIR / "examples" / "msk" in DIRS


# ------------------------------------------------------------------ variables and outputs


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_variables_have_type_and_description(path):
    module = parse_dir(path)
    assert module.variables(), f"{path}: no variables parsed"
    assert tfparse.check_variables(module) == []


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_outputs_have_description(path):
    module = parse_dir(path)
    assert module.outputs(), f"{path}: no outputs parsed"
    assert tfparse.check_outputs(module) == []


def test_variable_checks_catch_a_bad_snippet():
    bad = parse_text(
        """
        variable "no_type" { description = "d" }
        variable "no_description" { type = string }
        variable "blank" {
          type        = string
          description = " "
        }
        variable "unbounded" {
          type        = number
          description = "a number without validation"
        }
        output "o" { value = 1 }
        """
    )
    problems = tfparse.check_variables(bad)
    assert any("no_type: no type" in p for p in problems)
    assert any("no_description: no description" in p for p in problems)
    assert any("blank: no description" in p for p in problems)
    assert any("unbounded: a number without validation" in p for p in problems)
    assert tfparse.check_outputs(bad) == ["output o: no description"]


def test_bounded_variables_have_validation(module):
    assert tfparse.check_bounded_variables(module) == []


def test_bounded_variable_check_catches_a_missing_validation():
    bad = parse_text(
        """
        variable "memory_size" {
          type        = number
          description = "m"
          default     = 128
        }
        """
    )
    assert tfparse.check_bounded_variables(bad, names=("memory_size", "timeout")) == [
        "variable memory_size: bounded but without validation",
        "variable timeout: missing",
    ]


def test_sensitive_inputs_are_marked_sensitive(module):
    assert module.variables()["snowflake_private_key_pem"].get("sensitive") is True


# ------------------------------------------------------------------ Lambda function and mappings


def test_function_runtime_architecture_and_environment(module):
    assert module.resources("aws_lambda_function"), "no aws_lambda_function"
    assert tfparse.check_functions(module) == []


def test_function_check_catches_a_bad_snippet():
    bad = parse_text(
        """
        variable "architecture" {
          type        = string
          description = "a"
          default     = "x86_64"
        }
        resource "aws_lambda_function" "f" {
          runtime       = "provided.al2"
          handler       = "main"
          architectures = ["x86_64"]
        }
        """
    )
    problems = tfparse.check_functions(bad)
    assert any("runtime 'provided.al2'" in p for p in problems)
    assert any("handler 'main'" in p for p in problems)
    assert any("architectures is not [var.architecture]" in p for p in problems)
    assert any("environment is not merge" in p for p in problems)
    assert any("no vpc_config" in p for p in problems)
    assert any("defaults to 'x86_64'" in p for p in problems)
    assert any("not validated" in p for p in problems)


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_event_source_mappings_report_batch_item_failures(path):
    assert tfparse.check_event_source_mappings(parse_dir(path)) == []


def test_the_module_has_one_mapping_per_topic(module):
    assert list(module.resources("aws_lambda_event_source_mapping")) == ["this"]


def test_mapping_check_catches_a_bad_snippet():
    bad = parse_text(
        """
        resource "aws_lambda_event_source_mapping" "missing" {
          topics = ["t"]
        }
        resource "aws_lambda_event_source_mapping" "other" {
          for_each                = toset(var.topics)
          topics                  = [each.value]
          function_response_types = ["ReportBatchItemFailures", "Other"]
          provisioned_poller_config {
            minimum_pollers = 1
          }
        }
        """
    )
    problems = tfparse.check_event_source_mappings(bad)
    assert any("missing: function_response_types is []" in p for p in problems)
    assert any("missing: no provisioned_poller_config" in p for p in problems)
    assert any("missing: not one mapping per topic" in p for p in problems)
    assert any("other: function_response_types is ['ReportBatchItemFailures', 'Other']" in p for p in problems)
    assert not any("other: no provisioned" in p or "other: not one mapping" in p for p in problems)


def test_mapping_always_sets_the_kafka_essentials(module):
    esm = module.resources("aws_lambda_event_source_mapping")["this"]
    for attr in (
        "starting_position",
        "batch_size",
        "maximum_batching_window_in_seconds",
        "bisect_batch_on_function_error",
        "maximum_retry_attempts",
        "maximum_record_age_in_seconds",
    ):
        assert esm.get(attr) == f"${{var.{attr}}}", attr
    dynamic = {label for d in esm["dynamic"] for label in d}
    assert {
        "amazon_managed_kafka_event_source_config",
        "self_managed_event_source",
        "self_managed_kafka_event_source_config",
        "source_access_configuration",
        "destination_config",
    } <= dynamic
    pollers = esm["provisioned_poller_config"][0]
    assert pollers == {"minimum_pollers": "${var.minimum_pollers}", "maximum_pollers": "${var.maximum_pollers}"}


# ------------------------------------------------------------------ IAM


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_no_wildcard_on_kafka_or_secrets(path):
    assert tfparse.check_iam(parse_dir(path)) == []


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_star_resource_only_for_ec2(path):
    assert tfparse.check_star_only_for_ec2(parse_dir(path)) == []


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_policies_come_from_policy_documents(path):
    assert tfparse.check_policies_from_documents(parse_dir(path)) == []


def test_the_module_policy_has_the_expected_statements(module):
    sids = [st.raw.get("sid") for st in tfparse.iam_statements(module)]
    assert "MskReadTopics" in sids and "MskConsumerGroups" in sids and "ReadSecrets" in sids
    assert len(sids) == len(set(sids)), f"repeated sids: {sids}"
    by_sid = {st.raw.get("sid"): st for st in tfparse.iam_statements(module)}
    # The only "*" resource: the ec2 network-interface statement.
    stars = [st.raw.get("sid") for st in tfparse.iam_statements(module) if "*" in st.resources]
    assert stars == ["VpcNetworkInterfaces"]
    assert all(a.startswith("ec2:") for a in by_sid["VpcNetworkInterfaces"].actions)
    assert set(by_sid["MskConnect"].actions) == {
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeClusterDynamicConfiguration",
    }
    assert set(by_sid["MskReadTopics"].actions) == {"kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"}
    assert set(by_sid["MskConsumerGroups"].actions) == {"kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"}
    assert set(by_sid["MskWriteDeadLetterTopics"].actions) == {
        "kafka-cluster:WriteData",
        "kafka-cluster:DescribeTopic",
    }
    assert by_sid["MskCreateDeadLetterTopics"].actions == ["kafka-cluster:CreateTopic"]
    assert "var.dlq_create_topics" in by_sid["MskCreateDeadLetterTopics"].extra[0]
    assert by_sid["ReadSecrets"].actions == ["secretsmanager:GetSecretValue"]
    assert by_sid["DecryptSecrets"].actions == ["kms:Decrypt"]
    assert "var.secret_kms_key_arn" in by_sid["DecryptSecrets"].extra[0]


BAD_POLICY = """
locals {
  everything = ["*"]
}
data "aws_iam_policy_document" "bad" {
  statement {
    sid       = "StarKafka"
    actions   = ["kafka-cluster:Connect"]
    resources = ["*"]
  }
  statement {
    sid       = "WildcardAction"
    actions   = ["kafka-cluster:*"]
    resources = ["arn:aws:kafka:eu-west-1:123456789012:cluster/c/u"]
  }
  statement {
    sid       = "AllActions"
    actions   = ["*"]
    resources = ["arn:aws:s3:::b"]
  }
  statement {
    sid       = "WildcardArn"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:*"]
  }
  statement {
    sid       = "StarViaLocal"
    actions   = ["kafka:DescribeClusterV2"]
    resources = local.everything
  }
  statement {
    sid       = "StarForS3"
    actions   = ["s3:PutObject"]
    resources = ["*"]
  }
  dynamic "statement" {
    for_each = var.on ? ["*"] : []
    content {
      sid       = "StarViaForEach"
      actions   = ["kafka-cluster:ReadData"]
      resources = [statement.value]
    }
  }
}
resource "aws_iam_role_policy" "inline" {
  policy = jsonencode({ Statement = [] })
}
"""


def test_iam_checks_catch_a_bad_policy():
    bad = parse_text(BAD_POLICY)
    problems = tfparse.check_iam(bad)
    for sid in ("StarKafka", "WildcardArn", "StarViaLocal", "StarViaForEach"):
        assert any(f"bad.{sid}:" in p and "resource" in p for p in problems), (sid, problems)
    assert any("bad.WildcardAction: wildcard action 'kafka-cluster:*'" in p for p in problems)
    assert any("bad.AllActions: wildcard action '*'" in p for p in problems)
    assert tfparse.check_star_only_for_ec2(bad) == [
        "bad.StarKafka: resource \"*\" for non-ec2 actions ['kafka-cluster:Connect']",
        "bad.StarForS3: resource \"*\" for non-ec2 actions ['s3:PutObject']",
    ]
    assert tfparse.check_policies_from_documents(bad) == [
        "aws_iam_role_policy.inline.policy is not an aws_iam_policy_document's json"
    ]


# ------------------------------------------------------------------ README and example


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_readme_tables_are_generated_and_current(path):
    readme = (path / "README.md").read_text()
    assert readme == readme_tables.render(readme, path), (
        f"{path}/README.md tables are stale: run tests/readme_tables.py"
    )


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_readme_lists_every_variable_and_output(path):
    module = parse_dir(path)
    readme = (path / "README.md").read_text()
    inputs = readme.split("## Inputs", 1)[1].split("## Outputs", 1)[0]
    outputs = readme.split("## Outputs", 1)[1]
    listed_inputs = set(re.findall(r"^\| `([a-z0-9_]+)` \|", inputs, re.M))
    listed_outputs = set(re.findall(r"^\| `([a-z0-9_]+)` \|", outputs, re.M))
    assert listed_inputs == set(module.variables())
    assert listed_outputs == set(module.outputs())
    for name, v in module.variables().items():
        row = re.findall(rf"^\| `{name}` \|(.*)$", inputs, re.M)[0]
        assert readme_tables._cell(v["description"]) in row, name
        assert f"`{tfparse.unwrap(v['type'])}`" in row, name
        assert row.rstrip().endswith("| no |" if "default" in v else "| yes |"), name


def test_readme_check_catches_a_stale_table(tmp_path):
    (tmp_path / "variables.tf").write_text(
        'variable "a" {\n  type        = string\n  description = "A."\n}\n'
    )
    (tmp_path / "outputs.tf").write_text('output "o" {\n  description = "O."\n  value       = 1\n}\n')
    stale = "# x\n\n<!-- BEGIN_TF_DOCS -->\n| `b` | old |\n<!-- END_TF_DOCS -->\n"
    (tmp_path / "README.md").write_text(stale)
    assert readme_tables.main(["--check", str(tmp_path)]) == 1
    assert readme_tables.main([str(tmp_path)]) == 0
    fresh = (tmp_path / "README.md").read_text()
    assert "| `a` | A. | `string` | n/a | yes |" in fresh and "| `o` | O. |" in fresh
    assert "`b`" not in fresh
    assert readme_tables.main(["--check", str(tmp_path)]) == 0


def test_readme_documents_the_environment_contract(module):
    readme = (TERRAFORM_DIR / "README.md").read_text()
    contract = readme.split("## Environment contract", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", contract, re.M))
    managed = _floe_environment_keys(module)
    assert documented == managed
    # ...and `environment` may override none of them.
    condition = module.variables()["environment"]["validation"][0]["condition"]
    assert set(re.findall(r'"([A-Z0-9_]+)"', condition)) == managed


def _floe_environment_keys(module) -> set[str]:
    """The variable names local.floe_environment sets (keys of its object literal)."""
    expr = module.locals()["floe_environment"]
    keys = set(re.findall(r"(?:\{|, )([A-Z][A-Z0-9_]+) = ", expr))
    assert keys, f"no keys in floe_environment: {expr!r}"
    return keys


def test_example_uses_the_module_from_two_levels_up():
    example = parse_dir(TERRAFORM_DIR / "examples" / "msk")
    calls = example.module_calls()
    assert calls, "examples/msk calls no module"
    assert {name: call.get("source") for name, call in calls.items()} == {"floe": "../.."}
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (TERRAFORM_DIR / "examples" / "msk" / name).is_file(), name
    # Every required input of the module is passed.
    module = parse_dir(TERRAFORM_DIR)
    required = {n for n, v in module.variables().items() if "default" not in v}
    assert required <= set(calls["floe"]), required - set(calls["floe"])


@pytest.mark.parametrize("path", DIRS, ids=IDS)
def test_versions_pin_terraform_and_the_aws_provider(path):
    terraform = parse_dir(path).files["versions.tf"]["terraform"][0]
    assert terraform["required_version"] == ">= 1.5.0"
    aws = terraform["required_providers"][0]["aws"]
    assert aws == {"source": "hashicorp/aws", "version": ">= 6.28.0"}
