"""Every script in bench/ starts as its docstring says (``.venv/bin/python bench/<name>.py``): ``--help``
answers its usage. bench/http.py, first on sys.path for a script beside it, once stood in for the standard
library's http and stopped bench/frameworks.py before it began."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(path for path in BENCH.glob("*.py") if 'if __name__ == "__main__":' in path.read_text())


def test_there_are_scripts() -> None:
    assert {"http.py", "paths.py", "frameworks.py", "attribution.py"} <= {path.name for path in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_a_script_answers_help(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                          check=False, cwd=BENCH.parent)
    missing = re.search(r"No module named '([\w.]+)'", done.stderr)
    if done.returncode and missing and importlib.util.find_spec(missing.group(1).split(".")[0]) is None:
        pytest.skip(f"needs {missing.group(1)} (the bench extra)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
