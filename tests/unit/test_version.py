"""agent.contract.version: the version is stated once; the installed package, both CLIs and
every user-agent string carry that one value."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest

from agent.cli import main as agent_main
from agent.contract import version
from collector.cli import main as collector_main
from tests.conftest import ROOT


def test_pyproject_reads_the_version_from_the_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"]
    assert "version" not in project["project"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "agent.contract.version.__version__"}


def test_installed_distribution_has_the_modules_version() -> None:
    assert importlib.metadata.version("sinyal") == version.__version__


def test_user_agents_carry_the_version() -> None:
    assert f"sinyal-agent/{version.__version__}" == version.AGENT_USER_AGENT
    assert f"sinyal-collector/{version.__version__}" == version.COLLECTOR_USER_AGENT


@pytest.mark.parametrize(("main", "name"), [(agent_main, "sinyal-agent"),
                                            (collector_main, "sinyal-collector")])  # fmt: skip
def test_both_clis_print_it(main: object, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])  # type: ignore[operator]
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {version.__version__}"
