"""The framework example apps under gunicorn (4 sync workers, the coordinator started in the master by
workers/gunicorn.conf.py), each on mtcache's backend for its framework: a cold key asked by 32
concurrent requests is computed once. workers/django_app: the view's ``cache.get_or_set`` is
``get_or_compute``; workers/flask_app.py: Flask-Caching with the cachelib backend. The helpers are
tests/test_integrations.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mtcache.client.spawn import can_connect
from tests.coordinator_proc import kill_spawned
from tests.redis_server import RedisServer, free_port
from tests.test_integrations import _burst, _check_burst, _env, _start, _stop, _wait_until_serving


@pytest.mark.parametrize(
    ("label", "needs", "app"),
    [("django", "django", "workers.django_app.wsgi:application"), ("flask", "flask_caching", "workers.flask_app:app")],
)
def test_a_framework_app_under_gunicorn_computes_a_cold_key_once(
    redis_server: RedisServer, short_tmp: Path, tmp_path: Path, label: str, needs: str, app: str
) -> None:
    pytest.importorskip(needs, reason=f"{needs} is in the test extra: pip install -e '.[test]'")
    socket_path = short_tmp / "c.sock"
    base = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "gunicorn.log"
    cmd = [sys.executable, "-m", "gunicorn", "-c", "workers/gunicorn.conf.py", "-b", base.removeprefix("http://"),
           "-w", "4", "--no-control-socket", app]
    proc = _start(cmd, _env(short_tmp, redis_server.url), log_path)
    try:
        _wait_until_serving(base, proc, log_path)
        assert can_connect(str(socket_path))  # on_starting started the coordinator on MTCACHE_SOCKET
        answers = _burst(f"{base}/quote/acme")
    finally:
        status = _stop(proc)
        if socket_path.exists():
            kill_spawned(str(socket_path))  # clean up after a failed on_exit
    _check_burst(answers, short_tmp, label)
    assert status == 0, log_path.read_text(errors="replace")
