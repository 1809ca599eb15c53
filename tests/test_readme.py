"""The README keeps exactly two set-up commands, and CI runs the README's test command."""

from __future__ import annotations

import re

from repo_paths import REPO_ROOT


def _setup_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_setup_commands() -> None:
    cmds = _setup_commands()
    assert len(cmds) == 2, cmds
    assert all("\n" not in c for c in cmds)
    assert cmds[0].endswith("ctcovid demo")
    assert "pytest" in cmds[1]


def test_readme_installs_pinned_torch_before_the_package() -> None:
    for cmd in _setup_commands():
        assert cmd.index("torch==2.13.0") < cmd.index("-e ")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci
