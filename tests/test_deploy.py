"""The deployment examples (``examples/deploy/``) name only settings and flags that exist,
and keep what a host service needs: the application's user, a private socket folder, the
Redis URL out of the command line, a shared /dev/shm and PID namespace (issue 16, point 6)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path

from mtcache import Settings
from mtcache.cli import _coordinator_parser

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
FILES = ("mtcache.service", "Dockerfile", "compose.yaml")


def _text(name: str) -> str:
    return (DEPLOY / name).read_text()


def test_every_setting_named_exists() -> None:
    known = set(Settings._ENV.values())
    for name in FILES:
        named = set(re.findall(r"\b(MTCACHE_[A-Z_]+|REDIS_URL)\b", _text(name)))
        assert named, name
        assert named <= known, (name, named - known)


def test_the_coordinator_command_lines_parse() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys as written
    unit.read_string(_text("mtcache.service"))
    commands = [shlex.split(unit["Service"]["ExecStart"])]
    commands += [json.loads(match) for match in re.findall(r"^CMD (\[.*\])$", _text("Dockerfile"), re.MULTILINE)]
    assert len(commands) == 2
    for command in commands:
        assert Path(command[0]).name == "mtcache-coordinator"
        args = _coordinator_parser().parse_args(command[1:])
        assert args.redis_url is None  # the URL comes from the environment, never the command line
        assert args.idle_exit == 0 and not args.detach  # a service: in the foreground, never exits when idle


def test_the_unit_runs_as_the_applications_user_in_a_private_folder() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys as written
    unit.read_string(_text("mtcache.service"))
    service = unit["Service"]
    assert service["User"] and service["RuntimeDirectory"] == "mtcache"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert re.search(r"^Environment=MTCACHE_SOCKET=/run/mtcache/\S+\.sock$", _text("mtcache.service"), re.MULTILINE)
    assert "PrivateDevices" not in service  # a private /dev/shm would hide the version table from workers
    assert service["KillSignal"] == "SIGTERM"


def test_compose_shares_what_workers_need() -> None:
    compose = _text("compose.yaml")
    assert 'ipc: "service:mtcache"' in compose and 'pid: "service:mtcache"' in compose
    assert len(re.findall(r'^    user: "1000"$', compose, re.MULTILINE)) == 2  # both services, one uid
    assert len(re.findall(r"^      - mtcache-run:/run/mtcache$", compose, re.MULTILINE)) == 2
    dockerfile = _text("Dockerfile")
    assert "install -d -m 0700 -o app -g app /run/mtcache" in dockerfile and "USER app" in dockerfile
