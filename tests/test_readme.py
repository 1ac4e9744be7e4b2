"""The README's Quick start holds exactly two commands, and CI runs its test command verbatim."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_quick_start_has_the_two_commands():
    cmds = _quick_start_commands()
    assert len(cmds) == 2, cmds
    assert "experiments/run.py --object skull" in cmds[0] and "pip install" in cmds[0]
    assert "pytest" in cmds[1] and "pip install" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = _quick_start_commands()[1]
    assert test_cmd in ci.splitlines()
