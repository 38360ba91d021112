"""The Inputs and Outputs tables of a module's README, generated from its .tf files.

    readme_tables.py [--check] DIR...

Replaces what README.md in each DIR holds between the BEGIN_TF_DOCS and END_TF_DOCS
markers with tables of every variable (name, description, type, default, required) and
every output (name, description), in file order. With --check nothing is written, and
the exit status is 1 when a README differs from what would be written (test_structure.py
runs the same comparison).
"""

from __future__ import annotations

import json
import pathlib
import sys

from tfparse import TERRAFORM_DIR, parse_dir, unwrap

BEGIN = "<!-- BEGIN_TF_DOCS -->"
END = "<!-- END_TF_DOCS -->"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _default(variable: dict) -> str:
    if "default" not in variable:
        return "n/a"
    value = variable["default"]
    if isinstance(value, str):
        return _code(json.dumps(unwrap(value)))
    return _code(json.dumps(value, separators=(", ", ": ")))


def tables(path: pathlib.Path) -> str:
    module = parse_dir(path)
    lines = [
        "## Inputs",
        "",
        "| Name | Description | Type | Default | Required |",
        "|------|-------------|------|---------|:--------:|",
    ]
    for name, v in module.variables().items():
        description = _cell(v.get("description", ""))
        if v.get("sensitive"):
            description += " (sensitive)"
        lines.append(
            f"| {_code(name)} | {description} | {_code(_cell(unwrap(v.get('type', 'any'))))} "
            f"| {_cell(_default(v))} | {'no' if 'default' in v else 'yes'} |"
        )
    lines += ["", "## Outputs", "", "| Name | Description |", "|------|-------------|"]
    for name, o in module.outputs().items():
        lines.append(f"| {_code(name)} | {_cell(o.get('description', ''))} |")
    return "\n".join(lines)


def render(readme: str, path: pathlib.Path) -> str:
    """The README text with the generated tables between the markers."""
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{path}/README.md lacks the {BEGIN} ... {END} markers")
    return f"{head}{BEGIN}\n{tables(path)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    dirs = [pathlib.Path(a) for a in argv if a != "--check"] or [
        TERRAFORM_DIR,
        TERRAFORM_DIR / "examples" / "msk",
    ]
    status = 0
    for d in dirs:
        readme = d / "README.md"
        old = readme.read_text()
        new = render(old, d)
        if new == old:
            continue
        if check:
            print(f"{readme}: Inputs/Outputs tables are out of date (run {sys.argv[0]} {d})")
            status = 1
        else:
            readme.write_text(new)
            print(f"{readme}: tables rewritten")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
