"""The README contract: it opens with the demo and test commands, and CI runs the same
test command."""

from __future__ import annotations

import argparse
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


# -- the CLI synopsis ---------------------------------------------------------------------

_OPTION = re.compile(r"(--[a-z0-9-]+)(?: ([A-Z][A-Z:]*))?")


def _synopsis() -> dict[str, list[tuple[str, str | None]]]:
    """The README's "### Command line" block: command -> its options (flag, metavar) in order.
    A command is ``mtcache-coordinator`` or ``mtcache <subcommand>`` (``mtcache`` alone for
    the top-level options); an indented line goes on the command above it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^### Command line\n\n```text\n(.*?)\n```", text, re.DOTALL | re.MULTILINE)
    assert block, "the README has no '### Command line' synopsis"
    commands: dict[str, list[tuple[str, str | None]]] = {}
    current = ""
    for line in block.group(1).splitlines():
        if not line.startswith(" "):
            words = line.split()
            current = words[0] if words[1].startswith("-") or words[1].startswith("[") else " ".join(words[:2])
            assert current not in commands, f"{current} is listed twice"
            commands[current] = []
        commands[current] += [(flag, metavar or None) for flag, metavar in _OPTION.findall(line)]
    return commands


def _parser_options(parser: argparse.ArgumentParser) -> list[tuple[str, str | None]]:
    options = []
    for action in parser._actions:
        flags = [flag for flag in action.option_strings if flag.startswith("--") and flag != "--help"]
        if flags:
            options.append((flags[0], action.metavar if action.nargs != 0 else None))
    return options


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_cli_synopsis_lists_every_command_and_flag() -> None:
    from mtcache.cli import _coordinator_parser, _main_parser

    synopsis = _synopsis()
    expected = {"mtcache-coordinator": _coordinator_parser(), "mtcache": _main_parser()}
    expected.update({f"mtcache {name}": sub for name, sub in _subparsers(_main_parser()).items()})
    assert sorted(synopsis) == sorted(expected)
    for command, parser in expected.items():
        assert sorted(synopsis[command]) == sorted(_parser_options(parser)), command
def test_the_metrics_table_lists_every_metric() -> None:
    from mtcache.metrics import METRICS

    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(mtcache_\w+)` \| (\w+) \| ([\w-]+) \| ([\w, ]+) \|", section, re.MULTILINE)
    assert rows == [(m.name, m.kind, m.unit or "-", ", ".join(["namespace", *m.labels])) for m in METRICS]


def test_the_readme_gives_the_minimal_acl_the_tests_run_under() -> None:
    from mtcache.config import MINIMAL_ACL

    text = (ROOT / "README.md").read_text()
    assert f"ACL SETUSER mtcache-app on >PASSWORD {MINIMAL_ACL}\n" in text
