"""Parse the Terraform module with python-hcl2 and check its invariants.

Each check_* function takes a parsed module (see `parse_dir` / `parse_text`) and returns a
list of problems, empty when the module is fine, so that the tests can run every check
both on the real module and on deliberately bad snippets.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Iterator

import hcl2

TERRAFORM_DIR = pathlib.Path(__file__).resolve().parent.parent

_OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)

# Action prefixes that must never be granted on resource "*" (nor on any wildcard ARN).
RESTRICTED_PREFIXES = ("kafka-cluster:", "kafka:", "secretsmanager:")

# Variables whose values are bounded: each must carry a validation block.
BOUNDED_VARIABLES = (
    "architecture",
    "memory_size",
    "timeout",
    "batch_size",
    "maximum_batching_window_in_seconds",
    "minimum_pollers",
    "maximum_pollers",
    "maximum_retry_attempts",
    "maximum_record_age_in_seconds",
    "log_retention_days",
    "dlq_kind",
    "starting_position",
    "kafka_auth",
    "kafka_kind",
    "on_failure_destination",
    "reserved_concurrent_executions",
    "snowflake_secret_recovery_window_in_days",
)


@dataclasses.dataclass
class Module:
    """One directory's .tf files, merged per top-level block type."""

    path: pathlib.Path
    files: dict[str, dict]  # file name -> parsed content

    def blocks(self, kind: str) -> Iterator[tuple[str, dict]]:
        """(file name, block) for every top-level block of `kind` (e.g. "variable")."""
        for name, content in self.files.items():
            for block in content.get(kind, []):
                yield name, block

    def variables(self) -> dict[str, dict]:
        return {n: b for _, blk in self.blocks("variable") for n, b in blk.items()}

    def outputs(self) -> dict[str, dict]:
        return {n: b for _, blk in self.blocks("output") for n, b in blk.items()}

    def locals(self) -> dict[str, Any]:
        return {n: v for _, blk in self.blocks("locals") for n, v in blk.items()}

    def resources(self, rtype: str, kind: str = "resource") -> dict[str, dict]:
        """Resources (or data sources, kind="data") of one type, by name."""
        found = {}
        for _, blk in self.blocks(kind):
            for t, named in blk.items():
                if t == rtype:
                    found.update(named)
        return found

    def module_calls(self) -> dict[str, dict]:
        return {n: b for _, blk in self.blocks("module") for n, b in blk.items()}


def parse_text(text: str, name: str = "snippet.tf") -> Module:
    return Module(pathlib.Path("."), {name: hcl2.loads(text, serialization_options=_OPTIONS)})


def parse_dir(path: pathlib.Path) -> Module:
    files = {
        f.name: hcl2.loads(f.read_text(), serialization_options=_OPTIONS)
        for f in sorted(path.glob("*.tf"))
    }
    return Module(path, files)


def module_dirs() -> list[pathlib.Path]:
    """The module and every example under terraform/ (each directory holding .tf files)."""
    dirs = {f.parent for f in TERRAFORM_DIR.rglob("*.tf") if ".terraform" not in f.parts}
    return sorted(dirs)


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def unwrap(expr: Any) -> Any:
    """"${x}" -> "x" (python-hcl2 wraps expressions); anything else unchanged."""
    if isinstance(expr, str) and expr.startswith("${") and expr.endswith("}"):
        return expr[2:-1]
    return expr


# ------------------------------------------------------------------ IAM


@dataclasses.dataclass
class Statement:
    where: str  # "<data source>.<sid or index>"
    actions: list[str]
    resources: list[Any]  # strings: literals, or "${...}" expressions
    extra: list[str]  # text that the resources draw on (for_each, locals)
    raw: dict


def _expr_locals(text: str) -> set[str]:
    return set(re.findall(r"\blocal\.([A-Za-z0-9_]+)", text))


def _local_text(module: Module, names: set[str], depth: int = 3) -> list[str]:
    """The definitions of the named locals (and of the locals they use), as text."""
    defs = module.locals()
    seen, out, todo = set(), [], set(names)
    for _ in range(depth):
        nxt = set()
        for n in todo - seen:
            seen.add(n)
            if n in defs:
                text = repr(defs[n])
                out.append(text)
                nxt |= _expr_locals(text)
        todo = nxt
    return out


def iam_statements(module: Module) -> Iterator[Statement]:
    """Every statement of every aws_iam_policy_document, static or dynamic."""
    for doc_name, doc in module.resources("aws_iam_policy_document", kind="data").items():
        for i, st in enumerate(as_list(doc.get("statement"))):
            res = as_list(st.get("resources"))
            yield Statement(
                f"{doc_name}.{st.get('sid', i)}",
                as_list(st.get("actions")),
                res,
                _local_text(module, _expr_locals(repr(res))),
                st,
            )
        for dyn in as_list(doc.get("dynamic")):
            for label, body in dyn.items():
                if label != "statement":
                    continue
                for_each = str(body.get("for_each", ""))
                for content in as_list(body.get("content")):
                    res = as_list(content.get("resources"))
                    text = repr(res) + for_each
                    yield Statement(
                        f"{doc_name}.{content.get('sid', 'dynamic')}",
                        as_list(content.get("actions")),
                        res,
                        [for_each, *_local_text(module, _expr_locals(text))],
                        content,
                    )


_STAR = re.compile(r'(^\*$)|("\*")|(\'\*\')')


def _is_star(value: Any) -> bool:
    return isinstance(value, str) and value.strip() == "*"


def check_iam(module: Module) -> list[str]:
    problems = []
    for st in iam_statements(module):
        for key in ("not_actions", "not_resources", "not_principals"):
            if key in st.raw:
                problems.append(f"{st.where}: uses {key}")
        for action in st.actions:
            if not isinstance(action, str) or "*" in action:
                problems.append(f"{st.where}: wildcard action {action!r}")
        restricted = [a for a in st.actions if isinstance(a, str) and a.startswith(RESTRICTED_PREFIXES)]
        if not restricted:
            continue
        if not st.resources:
            problems.append(f"{st.where}: {restricted} without resources")
        for r in st.resources:
            if _is_star(r) or (isinstance(r, str) and "*" in r):
                problems.append(f"{st.where}: {restricted} on wildcard resource {r!r}")
        # "*" hidden in the for_each of a dynamic statement or in a local it reads.
        for text in st.extra:
            if _STAR.findall(text) or "'*'" in text:
                problems.append(f"{st.where}: {restricted} on a resource list that holds \"*\"")
    return problems


def check_star_only_for_ec2(module: Module) -> list[str]:
    """Resource "*" is allowed on ec2 actions only."""
    problems = []
    for st in iam_statements(module):
        if any(_is_star(r) for r in st.resources):
            others = [a for a in st.actions if not str(a).startswith("ec2:")]
            if others:
                problems.append(f"{st.where}: resource \"*\" for non-ec2 actions {others}")
    return problems


def check_policies_from_documents(module: Module) -> list[str]:
    """Every IAM policy comes from an aws_iam_policy_document (so check_iam sees it)."""
    problems = []
    for rtype, attr in (
        ("aws_iam_role_policy", "policy"),
        ("aws_iam_policy", "policy"),
        ("aws_iam_role", "assume_role_policy"),
    ):
        for name, res in module.resources(rtype).items():
            value = str(res.get(attr, ""))
            if not re.fullmatch(r"\$\{data\.aws_iam_policy_document\.[A-Za-z0-9_]+\.json\}", value):
                problems.append(f"{rtype}.{name}.{attr} is not an aws_iam_policy_document's json")
    for name in module.resources("aws_iam_role_policy_attachment"):
        problems.append(f"aws_iam_role_policy_attachment.{name}: managed policies are broader than this module's own")
    return problems


# ------------------------------------------------------------------ Lambda


def check_event_source_mappings(module: Module) -> list[str]:
    problems = []
    for name, esm in module.resources("aws_lambda_event_source_mapping").items():
        types = as_list(esm.get("function_response_types"))
        if types != ["ReportBatchItemFailures"]:
            problems.append(
                f"aws_lambda_event_source_mapping.{name}: function_response_types is {types!r}, "
                'not ["ReportBatchItemFailures"]'
            )
        if not as_list(esm.get("provisioned_poller_config")):
            problems.append(f"aws_lambda_event_source_mapping.{name}: no provisioned_poller_config")
        if esm.get("topics") != ["${each.value}"] or "toset(var.topics)" not in str(esm.get("for_each")):
            problems.append(f"aws_lambda_event_source_mapping.{name}: not one mapping per topic of var.topics")
    return problems


def check_functions(module: Module) -> list[str]:
    problems = []
    for name, fn in module.resources("aws_lambda_function").items():
        where = f"aws_lambda_function.{name}"
        if fn.get("runtime") != "provided.al2023":
            problems.append(f"{where}: runtime {fn.get('runtime')!r}, not provided.al2023")
        if fn.get("handler") != "bootstrap":
            problems.append(f"{where}: handler {fn.get('handler')!r}, not bootstrap")
        if fn.get("architectures") != ["${var.architecture}"]:
            problems.append(f"{where}: architectures is not [var.architecture]")
        environment = as_list(fn.get("environment"))
        variables = environment[0].get("variables") if environment else None
        if variables != "${merge(var.environment, local.floe_environment)}":
            problems.append(f"{where}: environment is not merge(var.environment, local.floe_environment)")
        if not as_list(fn.get("vpc_config")):
            problems.append(f"{where}: no vpc_config")
    arch = module.variables().get("architecture")
    if arch is None:
        problems.append("no architecture variable")
    else:
        if arch.get("default") != "arm64":
            problems.append(f"architecture defaults to {arch.get('default')!r}, not arm64")
        conditions = " ".join(str(v.get("condition")) for v in as_list(arch.get("validation")))
        if '"arm64"' not in conditions or '"x86_64"' not in conditions:
            problems.append("architecture is not validated against arm64/x86_64")
    return problems


# ------------------------------------------------------------------ variables / outputs


def check_variables(module: Module) -> list[str]:
    problems = []
    for name, v in module.variables().items():
        if "type" not in v:
            problems.append(f"variable {name}: no type")
        if not str(v.get("description", "")).strip():
            problems.append(f"variable {name}: no description")
        if unwrap(v.get("type")) == "number" and not as_list(v.get("validation")):
            problems.append(f"variable {name}: a number without validation")
    return problems


def check_bounded_variables(module: Module, names=BOUNDED_VARIABLES) -> list[str]:
    variables = module.variables()
    problems = []
    for name in names:
        if name not in variables:
            problems.append(f"variable {name}: missing")
        elif not as_list(variables[name].get("validation")):
            problems.append(f"variable {name}: bounded but without validation")
    return problems


def check_outputs(module: Module) -> list[str]:
    return [
        f"output {name}: no description"
        for name, o in module.outputs().items()
        if not str(o.get("description", "")).strip()
    ]
