"""Django's own cache test suite against ``mtcache.contrib.django.MtcacheCache`` (issue 14).

For each Django version: the ``tests/`` folder of its sdist (``pip download --no-binary :all:``),
a Python environment with that Django, our settings module and ``tests_mtcache.py`` laid beside
Django's tests (tests/django_suite/), a coordinator on a fresh redis-server, and Django's own
``runtests.py cache.tests_mtcache``. The versions:

- 4.2 LTS, on this interpreter, with that Django installed into a folder of its own that comes
  first on ``PYTHONPATH``;
- the Django the ``test`` extra installed (the newest one this Python runs: 5.2 on 3.11);
- the newest Django, which needs Python 3.12: on a venv of the first Python 3.12+ found (on
  ``PATH`` or under pyenv); skipped, saying so, where there is none.

Downloads and environments are kept in ``$MTCACHE_TEST_CACHE`` (default ``~/.cache/mtcache-tests``),
so only the first run pays for them. The runs start together and wait side by side (Django's
suite mostly sleeps through its expiry tests); each version is one pytest test.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer, redis_binary

ROOT = Path(__file__).resolve().parent.parent
SUITE_FILES = ROOT / "tests" / "django_suite"
CACHE_DIR = Path(os.environ.get("MTCACHE_TEST_CACHE", Path.home() / ".cache" / "mtcache-tests"))
LTS = "4.2.30"
#: The newest Django; it needs Python 3.12+.
NEWEST = "6.1.3"
VERSIONS = ("lts", "installed", "newest")
SETUP_TIMEOUT = 600  # seconds for one download or install
RUN_TIMEOUT = 600  # seconds for one version's suite
#: What a skip of ours may say: Django's own culling skip (no MAX_ENTRIES alias, as for its Redis
#: backend) and the reasons tests_mtcache.SKIPS gives.
ALLOWED_SKIPS = ("Culling isn't implemented.", "checks which method of the real backend", "pickles an unevaluated")


@dataclass
class DjangoEnv:
    """A Python that runs one Django version, and the sdist's tests for it."""

    label: str
    version: str
    python: str
    pythonpath: list[str]
    tests: Path | None = None


@dataclass
class SuiteRun:
    """One version's ``runtests.py`` run."""

    env: DjangoEnv | None
    skip_reason: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    coordinator: CoordinatorProcess | None = None
    started: float = 0.0
    elapsed: float = 0.0
    outcome: dict[str, object] = field(default_factory=dict)


def _check(cmd: list[str]) -> None:
    """Run a setup command; fail the test with its output if it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=SETUP_TIMEOUT, check=False)
    if result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        pytest.fail(f"{' '.join(cmd)} exited with {result.returncode}:\n{output}")


def _publish(build: Path, target: Path) -> None:
    """Move a finished ``build`` to ``target`` (another run may have published it first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        build.rename(target)


def _sdist_tests(env: DjangoEnv) -> Path:
    """The ``tests/`` folder of Django ``env.version``'s sdist, downloaded once."""
    target = CACHE_DIR / f"django-{env.version}-tests"
    if (target / "runtests.py").exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        _check([env.python, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                f"django=={env.version}", "-d", tmp])
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
            tar.extractall(tmp, members=members, filter="data")
        _publish(Path(tmp) / top / "tests", target)
    return target


def _lts_env() -> DjangoEnv:
    """Django 4.2 in a folder of its own, first on PYTHONPATH (the venv's asgiref and sqlparse serve it)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    target = CACHE_DIR / f"site-django-{LTS}-{tag}"
    if not (target / "django").is_dir():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=CACHE_DIR))
        _check([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(build), f"django=={LTS}"])
        _publish(build, target)
        shutil.rmtree(build, ignore_errors=True)
    return DjangoEnv("lts", LTS, sys.executable, [str(target), str(ROOT)])


def _installed_env() -> DjangoEnv:
    try:
        version = importlib.metadata.version("django")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("django is not installed: it is in the test extra (pip install -e '.[test]')")
    return DjangoEnv("installed", version, sys.executable, [str(ROOT)])


def _python_312() -> str | None:
    """The first Python 3.12+ that runs: this one, one on PATH, or one under pyenv."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(glob.glob(str(pyenv / "versions" / "3.1[2-9]*" / "bin" / "python3")), reverse=True)
    for candidate in [sys.executable, "python3.14", "python3.13", "python3.12", *found]:
        path = shutil.which(candidate)
        if path is None:
            continue
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return path
    return None


def _newest_env() -> DjangoEnv | str:
    """A venv of a Python 3.12+ with the newest Django and mtcache's dependencies (mtcache itself
    from this checkout, on PYTHONPATH); or why there is none."""
    python = _python_312()
    if python is None:
        return f"Django {NEWEST} needs Python 3.12+, and none was found on PATH or under pyenv"
    tag = subprocess.run([python, "-c", "import sys; print(f'py{sys.version_info.major}{sys.version_info.minor}')"],
                         capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    target = CACHE_DIR / f"venv-django-{NEWEST}-{tag}"
    if not (target / "ready").exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        _check([python, "-m", "venv", str(target)])
        dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        _check([str(target / "bin" / "python"), "-m", "pip", "install", "-q", f"django=={NEWEST}", *dependencies])
        (target / "ready").touch()
    return DjangoEnv("newest", NEWEST, str(target / "bin" / "python"), [str(ROOT)])


def _overlay(tests: Path, into: Path) -> Path:
    """Django's tests folder as links, with our settings module and test module added: the cached
    sdist stays as it was downloaded, and concurrent runs never write into it."""
    into.mkdir(parents=True)
    for entry in tests.iterdir():
        if entry.name not in ("cache", "runtests.py"):
            (into / entry.name).symlink_to(entry)
    # a copy, not a link: Python puts the folder of the script's real path first on sys.path
    shutil.copy(tests / "runtests.py", into / "runtests.py")
    (into / "cache").mkdir()
    for entry in (tests / "cache").iterdir():
        (into / "cache" / entry.name).symlink_to(entry)
    shutil.copy(SUITE_FILES / "mtcache_settings.py", into / "mtcache_settings.py")
    shutil.copy(SUITE_FILES / "tests_mtcache.py", into / "cache" / "tests_mtcache.py")
    return into


def _prepare(label: str) -> DjangoEnv | str:
    if label == "lts":
        env = _lts_env()
    elif label == "installed":
        env = _installed_env()
    else:
        newest = _newest_env()
        if isinstance(newest, str):
            return newest
        env = newest
    env.tests = _sdist_tests(env)
    return env


def _start(run: SuiteRun, redis_url: str, workdir: Path) -> None:
    env = run.env
    assert env is not None and env.tests is not None
    folder = Path(tempfile.mkdtemp(prefix="mtc-dj-"))  # short: a Unix socket path is limited to ~107 bytes
    run.coordinator = CoordinatorProcess(folder / "c.sock", redis_url=redis_url, namespace=f"django-{env.label}")
    run.coordinator.start()
    tests = _overlay(env.tests, workdir / f"tests-{env.label}")
    run.log = workdir / f"django-{env.label}.log"
    variables = {k: v for k, v in os.environ.items() if not k.startswith(("MTCACHE_", "DJANGO_"))}
    variables.update(PYTHONPATH=os.pathsep.join(env.pythonpath), MTCACHE_NAMESPACE=run.coordinator.namespace,
                     MTCACHE_DJANGO_SUITE_SOCKET=run.coordinator.socket_path, PYTHONDONTWRITEBYTECODE="1")
    cmd = [env.python, "runtests.py", "cache.tests_mtcache", "--settings=mtcache_settings", "--parallel=1",
           "--noinput", "-v", "2"]
    with open(run.log, "wb") as log:
        run.proc = subprocess.Popen(cmd, cwd=tests, env=variables, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
    run.started = time.monotonic()


@pytest.fixture(scope="session")
def django_suite_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SuiteRun]]:
    """Every version's environment prepared (cached), then every suite started at once."""
    if redis_binary() is None:
        pytest.skip("redis-server is not on PATH")
    workdir = tmp_path_factory.mktemp("django-suite")
    redis = RedisServer(workdir / "redis")
    redis.start()
    runs: dict[str, SuiteRun] = {}
    try:
        for label in VERSIONS:
            env = _prepare(label)
            runs[label] = SuiteRun(None, skip_reason=env) if isinstance(env, str) else SuiteRun(env)
        for run in runs.values():
            if run.env is not None:
                _start(run, redis.url, workdir)
        yield runs
    finally:
        for run in runs.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
            if run.coordinator is not None:
                run.coordinator.stop()
                shutil.rmtree(Path(run.coordinator.socket_path).parent, ignore_errors=True)
        redis.stop()


def _outcome(text: str) -> dict[str, object]:
    """Counts from runtests' verbose output: tests run, skipped (by reason), failed."""
    ran = re.search(r"^Ran (\d+) tests? in ([\d.]+)s$", text, re.M)
    reasons = Counter(m.group(1) for m in re.finditer(r"skipped [\"'](.+?)[\"']$", text, re.M))
    return {
        "ran": int(ran.group(1)) if ran else 0,
        "skipped": sum(reasons.values()),
        "skip_reasons": dict(reasons),
        "ok": bool(re.search(r"^OK( \(skipped=\d+\))?$", text, re.M)),
    }


@pytest.mark.timeout(SETUP_TIMEOUT + RUN_TIMEOUT)
@pytest.mark.parametrize("label", VERSIONS)
def test_django_cache_suite_passes(django_suite_runs: dict[str, SuiteRun], label: str) -> None:
    run = django_suite_runs[label]
    if run.env is None:
        pytest.skip(run.skip_reason)
    assert run.proc is not None and run.log is not None
    try:
        run.proc.wait(timeout=max(1.0, RUN_TIMEOUT - (time.monotonic() - run.started)))
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()
    run.elapsed = time.monotonic() - run.started
    text = run.log.read_text(errors="replace")
    outcome = _outcome(text)
    assert run.proc.returncode == 0 and outcome["ok"], text[-6000:]
    skip_reasons = outcome["skip_reasons"]
    assert isinstance(skip_reasons, dict)
    unexpected = [reason for reason in skip_reasons if not reason.startswith(ALLOWED_SKIPS)]
    assert not unexpected, f"skips that tests_mtcache.py does not account for: {unexpected}"
    ran, skipped = outcome["ran"], outcome["skipped"]
    assert isinstance(ran, int) and isinstance(skipped, int)
    assert ran >= 140, text[-3000:]  # both batteries and the retargeted classes ran
    assert "MtcacheAsyncApiTests" in text and "MtcacheCacheMiddlewareTest" in text
    print(f"Django {run.env.version}: {ran} tests, {ran - skipped} passed, {skipped} skipped "
          f"({skip_reasons}) in {run.elapsed:.1f} s")
