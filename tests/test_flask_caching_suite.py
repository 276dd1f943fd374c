"""Flask-Caching's own tests against mtcache's cachelib backend (issue 14).

The ``tests/`` folder of the installed Flask-Caching's sdist (``pip download --no-binary :all:``,
kept in ``$MTCACHE_TEST_CACHE``, default ``~/.cache/mtcache-tests``) is laid out as links beside
our two files (tests/flask_caching_suite/), and pytest runs there in a process of its own, on a
coordinator and redis-server of this test:

- ``test_mtcache_backend.py``: their backend class ``GenericCacheTests`` (test_backend_cache.py),
  configured as their Redis class is (real sleeps);
- their app-level files, with every app's ``CACHE_TYPE`` on mtcache (``mtcache_plugin.py`` gives
  the fixtures their conftest.py gives): ``cached``, ``memoize``, views, templates, signals,
  subclassing (see APP_FILES; DESELECTED says what is left out and why).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.coordinator_proc import CoordinatorProcess
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SUITE_FILES = ROOT / "tests" / "flask_caching_suite"
CACHE_DIR = Path(os.environ.get("MTCACHE_TEST_CACHE", Path.home() / ".cache" / "mtcache-tests"))
#: Their files that test what an app does with its cache (each app on mtcache here).
APP_FILES = ("test_cache.py", "test_memoize.py", "test_view.py", "test_templates.py", "test_signals.py",
             "test_subclassing.py")
#: Their tests in APP_FILES that do not apply to mtcache's backend, and why.
DESELECTED = {
    "test_cache.py::test_cache_unlink": "needs their Redis server on port 6360 (RedisCache.unlink)",
    "test_cache.py::test_cache_unlink_if_not": "builds a SimpleCache of its own",
    "test_cache.py::test_cache_delete_many_ignored": "builds a SimpleCache of its own",
} | {
    f"test_memoize.py::test_memoize_hashes[{name}]": "test_memoize again over another hash function (Flask-"
    "Caching's, not the backend's), with 5 s of waiting each: one of them runs"
    for name in ("openssl_sha1", "openssl_sha224", "openssl_sha384", "openssl_sha512", "openssl_md5")
}
#: What a skip may say: the clock moved further than mtcache_plugin.LONGEST_WAIT.
ALLOWED_SKIP = "only a fake clock (SimpleCache's) moves that fast"


def _suite_tests() -> Path:
    """The tests folder of the installed Flask-Caching's sdist, downloaded once."""
    version = importlib.metadata.version("flask-caching")
    target = CACHE_DIR / f"flask-caching-{version}-tests"
    if (target / "test_backend_cache.py").exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                                 f"flask-caching=={version}", "-d", tmp], capture_output=True, text=True, timeout=600,
                                check=False)
        if result.returncode != 0:
            pytest.fail(f"pip download flask-caching=={version} failed:\n{result.stdout}\n{result.stderr}")
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            top = tar.getnames()[0].split("/")[0]
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")],
                           filter="data")
        with contextlib.suppress(OSError):  # another run may have published it first
            (Path(tmp) / top / "tests").rename(target)
    return target


@pytest.mark.timeout(600)
def test_flask_caching_suite_passes_on_mtcache(redis_server: RedisServer, tmp_path: Path) -> None:
    pytest.importorskip("flask_caching", reason="flask-caching is in the test extra: pip install -e '.[test]'")
    tests = tmp_path / "tests"
    tests.mkdir()
    for entry in _suite_tests().iterdir():
        if entry.name != "conftest.py":  # it needs pytest-xprocess; mtcache_plugin.py gives its fixtures
            (tests / entry.name).symlink_to(entry)
    shutil.copy(SUITE_FILES / "test_mtcache_backend.py", tests / "test_mtcache_backend.py")
    folder = Path(tempfile.mkdtemp(prefix="mtc-fc-"))  # short: a Unix socket path is limited to ~107 bytes
    coordinator = CoordinatorProcess(folder / "c.sock", redis_url=redis_server.url, namespace="flask-caching")
    coordinator.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTCACHE_")}
        env.update(PYTHONPATH=os.pathsep.join([str(SUITE_FILES), str(ROOT)]), MTCACHE_NAMESPACE="flask-caching",
                   MTCACHE_FLASK_SUITE_SOCKET=coordinator.socket_path)
        cmd = [sys.executable, "-m", "pytest", "-p", "mtcache_plugin", "--noconftest", "-p", "no:cacheprovider",
               "-rs", "-v", "--timeout", "60", "-W", "ignore::pytest.PytestDeprecationWarning",
               "test_mtcache_backend.py", *APP_FILES, *(f"--deselect={test}" for test in DESELECTED)]
        result = subprocess.run(cmd, cwd=tests, env=env, capture_output=True, text=True, timeout=540, check=False)
    finally:
        coordinator.stop()
        shutil.rmtree(folder, ignore_errors=True)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-8000:]
    summary = re.search(r"=+ (\d+) passed(?:, (\d+) skipped)?(?:, (\d+) deselected)?", out)
    assert summary, out[-3000:]
    passed, skipped = int(summary.group(1)), int(summary.group(2) or 0)
    skips = re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.+)$", out, re.M)
    assert all(ALLOWED_SKIP in reason for reason in skips), skips
    assert len(re.findall(r"test_mtcache_backend.py::TestMtcacheCache::\S+ PASSED", out)) == 13  # GenericCacheTests
    assert passed >= 100, out[-3000:]
    print(f"Flask-Caching {importlib.metadata.version('flask-caching')}: {passed} passed, {skipped} skipped, "
          f"{len(DESELECTED)} deselected")
