"""What users copy uses only the public API: ``workers/``, ``bench/``, ``examples/`` and
the README's code import nothing from mtcache but the names ``mtcache/__init__.py``
exports, so a recipe never depends on an internal module (issue 16, point 8)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mtcache

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("workers", "bench", "examples")
#: files that measure an internal part itself, not the API (and say so)
INTERNAL_ON_PURPOSE = {
    "bench/mirror_bench.py": "measures the shared-memory mirror's reader and writer alone",
    "bench/eviction.py": "replays traces through the coordinator's L1 store itself, beside simulated policies",
    "bench/metrics_cost.py": "measures the statistics' own parts (hot keys, histograms, report parsing) alone",
    "bench/write_path.py": "times the coordinator's own write path, in process, and each of its steps alone",
    "bench/attribution.py": "counts what the coordinator's bare round trip (PING) asks of the kernel, the floor "
                            "of every call",
    "bench/paths.py": "times the coordinator's bare round trip (PING), the floor every call is held against, "
                      "and Redis's CPU for the L2 tier's own write script",
    "bench/lean_hop.py": "builds a lean coordinator from the coordinator's own parts (frames, record, L1, write "
                         "script), the floor of a write in CPython",
}
_README_IMPORT = re.compile(r"^\s*(from\s+(mtcache[\w.]*)\s+import\s+([^#\n]+)|import\s+(mtcache[\w.]*))", re.MULTILINE)


def _python_files() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


def _violations(imports: list[tuple[str, list[str]]]) -> list[str]:
    """``(module, names)`` pairs that reach past ``mtcache``'s exports."""
    public = set(mtcache.__all__)
    found = []
    for module, names in imports:
        if module.startswith("mtcache.contrib."):
            continue  # the framework backends are public where they are (mtcache.contrib.django.MtcacheCache)
        if module != "mtcache":
            found.append(f"imports {module} (not the package's public face)")
            continue
        found += [f"imports {name} from mtcache, which does not export it" for name in names if name not in public]
    return found


def _imports_of(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
            node.module == "mtcache" or node.module.startswith("mtcache.")
        ):
            out.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "mtcache"]
    return out


def test_there_are_files_to_check() -> None:
    files = {path.relative_to(ROOT).as_posix() for path in _python_files()}
    assert {"workers/gunicorn.conf.py", "workers/demo.py", "examples/_support.py", "bench/_util.py"} <= files
    assert set(INTERNAL_ON_PURPOSE) <= files  # an exemption for a file that is gone must go too


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_recipes_import_only_exported_names(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    if rel in INTERNAL_ON_PURPOSE:
        pytest.skip(f"{rel} {INTERNAL_ON_PURPOSE[rel]}")
    assert _violations(_imports_of(path)) == []


def test_readme_code_imports_only_exported_names() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    imports = []
    for block in blocks:
        for match in _README_IMPORT.finditer(block):
            if match.group(2):
                names = [name.strip().split(" as ")[0] for name in match.group(3).strip("() ").split(",")]
                imports.append((match.group(2), [name for name in names if name]))
            else:
                imports.append((match.group(4), []))
    assert ("mtcache", ["start_coordinator", "stop_coordinator"]) in imports  # the gunicorn recipe is seen
    assert _violations(imports) == []


def test_every_exported_name_exists() -> None:
    for name in mtcache.__all__:
        assert hasattr(mtcache, name), name


def test_the_lifecycle_api_is_typed_and_documented() -> None:
    import inspect

    for fn in (mtcache.start_coordinator, mtcache.stop_coordinator):
        signature = inspect.signature(fn)
        assert signature.return_annotation is not inspect.Signature.empty, fn.__name__
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), fn.__name__
        assert fn.__doc__, fn.__name__
