"""The architecture contracts in pyproject.toml cover every module: a new agent module is
forbidden to the collector unless it joins agent.contract (lint-imports does the checking;
this test keeps its module lists complete)."""

from __future__ import annotations

import ast
import sys
import tomllib

from tests.conftest import ROOT


def _agent_modules() -> set[str]:
    names = set()
    for path in (ROOT / "agent").iterdir():
        if path.name.startswith("_") or path.name == "contract":
            continue
        if path.suffix == ".py" or (path / "__init__.py").is_file():
            names.add(f"agent.{path.stem}")
    return names


def _contracts() -> dict[str, dict[str, object]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in doc["tool"]["importlinter"]["contracts"]}


def test_the_collector_is_forbidden_every_agent_module_but_the_contract() -> None:
    contract = _contracts()["The collector imports only agent.contract from the agent"]
    assert set(contract["forbidden_modules"]) == _agent_modules()  # type: ignore[arg-type]


def test_the_contract_is_forbidden_the_rest_of_the_agent() -> None:
    name = "The contract stands alone: agent.contract imports nothing else of Sinyal"
    forbidden = set(_contracts()[name]["forbidden_modules"])  # type: ignore[arg-type]
    assert _agent_modules() <= forbidden
    assert {"collector", "grafana"} <= forbidden


def test_the_contract_package_imports_only_stdlib_and_yaml() -> None:
    allowed_roots = {"agent", "yaml", "__future__"}
    for path in (ROOT / "agent" / "contract").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            for root in roots:
                assert root in allowed_roots or root in sys.stdlib_module_names, (path, root)
