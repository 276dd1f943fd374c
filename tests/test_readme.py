"""The README contract: it opens with the demo and test commands, and CI runs the same
test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _opening_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)[:2]


def test_readme_opens_with_two_commands() -> None:
    demo, tests = _opening_commands()
    assert "workers/demo.py" in demo
    assert "pytest" in tests
    assert (ROOT / "workers" / "demo.py").is_file()


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = _opening_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_the_metrics_table_lists_every_metric() -> None:
    from mtcache.metrics import METRICS

    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(mtcache_\w+)` \| (\w+) \| ([\w-]+) \| ([\w, ]+) \|", section, re.MULTILINE)
    assert rows == [(m.name, m.kind, m.unit or "-", ", ".join(["namespace", *m.labels])) for m in METRICS]
