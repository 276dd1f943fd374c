"""workers/flask_app.py: Flask with Flask-Caching on mtcache's backend under gunicorn (4 sync
workers, the coordinator started in the master by workers/gunicorn.conf.py): a cold key asked by
32 concurrent requests is computed once. The helpers are tests/test_integrations.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mtcache.client.spawn import can_connect
from tests.coordinator_proc import kill_spawned
from tests.redis_server import RedisServer, free_port
from tests.test_integrations import _burst, _check_burst, _env, _start, _stop, _wait_until_serving


def test_flask_under_gunicorn_computes_a_cold_key_once(
    redis_server: RedisServer, short_tmp: Path, tmp_path: Path
) -> None:
    pytest.importorskip("flask_caching", reason="flask-caching is in the test extra: pip install -e '.[test]'")
    socket_path = short_tmp / "c.sock"
    base = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "gunicorn.log"
    cmd = [sys.executable, "-m", "gunicorn", "-c", "workers/gunicorn.conf.py", "-b", base.removeprefix("http://"),
           "-w", "4", "--no-control-socket", "workers.flask_app:app"]
    proc = _start(cmd, _env(short_tmp, redis_server.url), log_path)
    try:
        _wait_until_serving(base, proc, log_path)
        assert can_connect(str(socket_path))  # on_starting started the coordinator on MTCACHE_SOCKET
        answers = _burst(f"{base}/quote/acme")
    finally:
        status = _stop(proc)
        if socket_path.exists():
            kill_spawned(str(socket_path))  # clean up after a failed on_exit
    _check_burst(answers, short_tmp, "flask")
    assert status == 0, log_path.read_text(errors="replace")
