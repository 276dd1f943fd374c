"""Settings priority (explicit > environment > .env in cwd > default), URL checks
and password redaction, from the outside."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from mtcache.config import DEFAULT_REDIS_URL, Settings, redact_url, resolve_redis_url
from mtcache.redis_urls import parse_sentinel_url


def write_env(directory: Path, **values: str) -> None:
    lines = [f"{name}={value}" for name, value in values.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n")


# --- priority ---------------------------------------------------------------------------------------------------------

# (setting, variable, explicit, from environment, from .env, default), values as Settings holds them
PRIORITY_CASES = [
    ("redis_url", "REDIS_URL", "redis://explicit:1", "redis://env:2", "redis://dotenv:3", DEFAULT_REDIS_URL),
    ("l1_capacity", "MTCACHE_L1_CAPACITY", 11, 22, 33, 2_000),
    ("l1_ttl", "MTCACHE_L1_TTL", 1.5, 2.5, 3.5, 300.0),
    ("l2_ttl", "MTCACHE_L2_TTL", 10.0, 20.0, 30.0, 3600.0),
    ("stream_maxlen", "MTCACHE_STREAM_MAXLEN", 100, 200, 300, 1_000),
    ("namespace", "MTCACHE_NAMESPACE", "explicit", "env", "dotenv", "default"),
    ("near_max_bytes", "MTCACHE_NEAR_MAX_BYTES", 1_000, 2_000, 3_000, 128 * 1024 * 1024),
    ("near_capacity", "MTCACHE_NEAR_CAPACITY", 10, 20, 30, 65_536),
]


@pytest.mark.parametrize(("name", "var", "explicit", "env", "dotenv", "default"), PRIORITY_CASES)
def test_priority_explicit_env_dotenv_default(
    tmp_path: Path, name: str, var: str, explicit: object, env: object, dotenv: object, default: object
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_env(tmp_path, **{var: str(dotenv)})
    environ = {var: str(env)}

    assert getattr(Settings.load(environ=environ, cwd=tmp_path, **{name: explicit}), name) == explicit
    assert getattr(Settings.load(environ=environ, cwd=tmp_path), name) == env
    assert getattr(Settings.load(environ={}, cwd=tmp_path), name) == dotenv
    assert getattr(Settings.load(environ={}, cwd=empty), name) == default


@pytest.mark.parametrize(("name", "var", "explicit", "env", "dotenv", "default"), PRIORITY_CASES)
def test_values_read_from_text_get_the_setting_type(
    tmp_path: Path, name: str, var: str, explicit: object, env: object, dotenv: object, default: object
) -> None:
    write_env(tmp_path, **{var: str(dotenv)})
    assert type(getattr(Settings.load(environ={}, cwd=tmp_path), name)) is type(default)
    assert type(getattr(Settings.load(environ={var: str(env)}, cwd=tmp_path), name)) is type(default)


def test_resolve_redis_url_priority(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_env(tmp_path, REDIS_URL="redis://dotenv:3")
    environ = {"REDIS_URL": "redis://env:2"}
    assert resolve_redis_url("redis://explicit:1", environ=environ, cwd=tmp_path) == "redis://explicit:1"
    assert resolve_redis_url(None, environ=environ, cwd=tmp_path) == "redis://env:2"
    assert resolve_redis_url(environ={}, cwd=tmp_path) == "redis://dotenv:3"
    assert resolve_redis_url(environ={}, cwd=empty) == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379"


def test_explicit_none_means_not_given(tmp_path: Path) -> None:
    settings = Settings.load(environ={"MTCACHE_L1_CAPACITY": "5"}, cwd=tmp_path, l1_capacity=None)
    assert settings.l1_capacity == 5


def test_defaults(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, cwd=tmp_path)
    assert settings.redis_url == "redis://127.0.0.1:6379"
    assert settings.l1_capacity == 2_000
    assert (settings.l1_ttl, settings.l2_ttl, settings.stream_maxlen) == (300.0, 3600.0, 1_000)
    assert settings.namespace == "default"
    assert settings.socket_path.endswith("default.sock")


def test_environ_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTCACHE_L1_CAPACITY", "77")
    assert Settings.load(cwd=tmp_path).l1_capacity == 77


def test_dotenv_is_not_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTCACHE_NAMESPACE", raising=False)
    write_env(tmp_path, MTCACHE_NAMESPACE="fromfile")
    assert Settings.load(environ={}, cwd=tmp_path).namespace == "fromfile"
    assert "MTCACHE_NAMESPACE" not in os.environ


def test_dotenv_only_from_cwd(tmp_path: Path) -> None:
    write_env(tmp_path, MTCACHE_L1_CAPACITY="9")
    child = tmp_path / "child"
    child.mkdir()
    assert Settings.load(environ={}, cwd=child).l1_capacity == 2_000


def test_mirror_cap_follows_the_l1_bounds_unless_given(tmp_path: Path) -> None:
    derived = Settings.load(environ={}, cwd=tmp_path, l1_max_bytes=10_000_000, l1_capacity=1_000)
    assert derived.l1_shm_bytes >= 2 * 10_000_000 + 4 * 64 * 1_000
    assert Settings.load(environ={}, cwd=tmp_path, l1_shm_bytes=0).l1_shm_bytes == 0
    assert Settings.load(environ={"MTCACHE_L1_SHM_BYTES": "12345678"}, cwd=tmp_path).l1_shm_bytes == 12_345_678
    with pytest.raises(ValueError, match="l1_shm_bytes"):
        Settings.load(environ={}, cwd=tmp_path, l1_shm_bytes=-2)


def test_explicit_socket_path_wins(tmp_path: Path) -> None:
    path = str(tmp_path / "my.sock")
    environ = {"MTCACHE_SOCKET": "/elsewhere.sock"}
    assert Settings.load(environ=environ, cwd=tmp_path, socket_path=path).socket_path == path
    assert Settings.load(environ=environ, cwd=tmp_path).socket_path == "/elsewhere.sock"


def test_unknown_explicit_setting_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="l1_capactiy"):
        Settings.load(environ={}, cwd=tmp_path, l1_capactiy=5)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, cwd=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.l1_capacity = 1  # type: ignore[misc]


# --- URLs -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://user:secret@cache.example:6380/2",
        "redis://:secret@cache.example/0",
        "redis://[::1]:6379/1",
        "rediss://user:secret@cache.example:6380/3",
        "unix:///run/redis/redis.sock",
        "unix://user:secret@/run/redis/redis.sock?db=4",
        "rediss://app:secret@cache.example:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/c.pem"
        "&ssl_keyfile=/etc/k.pem&ssl_cert_reqs=required",
        "rediss://cache.example?ssl_cert_reqs=none&ssl_check_hostname=false",
    ],
)
def test_accepted_urls(tmp_path: Path, url: str) -> None:
    assert Settings.load(environ={}, cwd=tmp_path, redis_url=url).redis_url == url
    assert resolve_redis_url(environ={"REDIS_URL": url}, cwd=tmp_path) == url


@pytest.mark.parametrize("url", ["http://cache.example:6379", "localhost:6379", "tcp://h:1", "memcached://h"])
def test_bad_scheme_is_a_value_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="scheme"):
        Settings.load(environ={}, cwd=tmp_path, redis_url=url)
    with pytest.raises(ValueError, match="scheme"):
        resolve_redis_url(environ={"REDIS_URL": url}, cwd=tmp_path)


def test_bad_scheme_error_does_not_show_the_password(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scheme") as info:
        resolve_redis_url("http://user:hunter2@cache.example", environ={}, cwd=tmp_path)
    assert "hunter2" not in str(info.value)


def test_empty_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Settings(redis_url="")


# --- redaction --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:hunter2@cache.example:6380/2", "redis://user:***@cache.example:6380/2"),
        ("redis://:hunter2@cache.example/0", "redis://:***@cache.example/0"),
        ("rediss://u:hunter2@[::1]:6379", "rediss://u:***@[::1]:6379"),
        ("unix://u:hunter2@/run/redis.sock?db=1", "unix://u:***@/run/redis.sock?db=1"),
        ("redis://user@cache.example:6379", "redis://user@cache.example:6379"),
        ("redis://cache.example:6379/0", "redis://cache.example:6379/0"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "hunter2" not in redact_url(url)


def test_repr_of_settings_hides_the_password(tmp_path: Path) -> None:
    settings = Settings.load(environ={"REDIS_URL": "rediss://app:hunter2@cache.example:6380/1"}, cwd=tmp_path)
    text = repr(settings)
    assert "hunter2" not in text
    assert "rediss://app:***@cache.example:6380/1" in text
    assert "l1_capacity=2000" in text
    assert settings.redacted_redis_url == "rediss://app:***@cache.example:6380/1"
    assert settings.redis_url == "rediss://app:hunter2@cache.example:6380/1"  # the real one is still there


# --- bad values -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("MTCACHE_L1_CAPACITY", "lots"),
        ("MTCACHE_L1_CAPACITY", "1.5"),
        ("MTCACHE_L1_MAX_BYTES", "64MB"),
        ("MTCACHE_L1_TTL", "5min"),
        ("MTCACHE_REDIS_TIMEOUT", "fast"),
        ("MTCACHE_STREAM_MAXLEN", "1e3"),
    ],
)
@pytest.mark.parametrize("source", ["environ", "dotenv"])
def test_unparseable_value_names_the_variable(tmp_path: Path, var: str, raw: str, source: str) -> None:
    environ: dict[str, str] = {}
    if source == "environ":
        environ[var] = raw
    else:
        write_env(tmp_path, **{var: raw})
    with pytest.raises(ValueError, match=var):
        Settings.load(environ=environ, cwd=tmp_path)


@pytest.mark.parametrize(
    ("var", "name", "raw"),
    [
        ("MTCACHE_L1_CAPACITY", "l1_capacity", "0"),
        ("MTCACHE_L1_CAPACITY", "l1_capacity", "-3"),
        ("MTCACHE_L1_TTL", "l1_ttl", "-5"),
        ("MTCACHE_L1_TTL", "l1_ttl", "nan"),
        ("MTCACHE_L2_TTL", "l2_ttl", "inf"),
        ("MTCACHE_NAMESPACE", "namespace", "a:b"),
        ("MTCACHE_NEAR_MAX_BYTES", "near_max_bytes", "-1"),
        ("MTCACHE_NEAR_CAPACITY", "near_capacity", "-1"),
    ],
)
def test_out_of_range_env_value_is_a_value_error_naming_the_setting(
    tmp_path: Path, var: str, name: str, raw: str
) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.load(environ={var: raw}, cwd=tmp_path)


def test_out_of_range_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MTCACHE_L1_TTL"):
        Settings.load(environ={"MTCACHE_L1_TTL": "-5"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("l1_capacity", 0),
        ("l1_capacity", True),
        ("l1_capacity", 2.0),
        ("l1_max_bytes", -1),
        ("l1_ttl", 0),
        ("l2_ttl", float("nan")),
        ("lease_ttl", float("inf")),
        ("redis_timeout", False),
        ("namespace", "with:colon"),
        ("near_max_bytes", -1),
        ("near_max_bytes", 1.5),
        ("near_capacity", True),
    ],
)
def test_bad_explicit_value_names_the_setting(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.load(environ={}, cwd=tmp_path, **{name: value})


def test_url_with_invalid_port_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        Settings.load(environ={}, cwd=tmp_path, redis_url="redis://user:hunter2@cache.example:99999")


def test_password_in_query_string_is_redacted(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, cwd=tmp_path, redis_url="redis://cache.example:6379/0?password=hunter2")
    assert "hunter2" not in repr(settings)


# --- limits that must agree ------------------------------------------------------------------------------------------


def test_max_value_bytes_above_the_frame_limit_is_refused_naming_both(tmp_path: Path) -> None:
    from mtcache.protocol import MAX_FRAME, MAX_VALUE_LIMIT

    assert Settings.load(environ={"MTCACHE_MAX_VALUE_BYTES": str(MAX_VALUE_LIMIT)}, cwd=tmp_path)
    with pytest.raises(ValueError) as exc:
        Settings.load(environ={"MTCACHE_MAX_VALUE_BYTES": str(MAX_FRAME)}, cwd=tmp_path)
    message = str(exc.value)
    assert "MTCACHE_MAX_VALUE_BYTES" in message and "MAX_FRAME" in message
    assert f"{MAX_VALUE_LIMIT:,}" in message


def test_client_refuses_max_value_bytes_above_the_frame_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtcache import Client

    monkeypatch.setenv("MTCACHE_MAX_VALUE_BYTES", str(32 * 1024 * 1024))
    with pytest.raises(ValueError, match="MAX_FRAME"):
        Client(str(tmp_path / "c.sock"), spawn=False)


def test_coordinator_refuses_max_value_bytes_above_the_frame_limit(tmp_path: Path) -> None:
    import subprocess
    import sys

    sock = tmp_path / "c.sock"
    run = subprocess.run(
        [sys.executable, "-m", "mtcache.coordinator", "--socket", str(sock), "--no-redis"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "MTCACHE_MAX_VALUE_BYTES": str(32 * 1024 * 1024)},
    )
    assert run.returncode == 2, run.stderr
    assert "MTCACHE_MAX_VALUE_BYTES" in run.stderr and "MAX_FRAME" in run.stderr
    assert not sock.exists()


@pytest.mark.parametrize("raw", ["-1", "nan", "inf"])
def test_idle_exit_must_be_a_non_negative_number(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ValueError, match="MTCACHE_IDLE_EXIT"):
        Settings.load(environ={"MTCACHE_IDLE_EXIT": raw}, cwd=tmp_path)
    assert Settings.load(environ={"MTCACHE_IDLE_EXIT": "0"}, cwd=tmp_path).idle_exit == 0
    assert Settings.load(environ={}, cwd=tmp_path).idle_exit == 600


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://h:1/0?ssl_ca_certs=/etc/ca.pem", "'ssl_ca_certs' but scheme 'redis': TLS needs rediss://"),
        ("unix:///run/r.sock?ssl_certfile=/c.pem", "'ssl_certfile' but scheme 'unix'"),
        ("rediss://h:1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'; expected one of none, optional, required"),
        ("rediss://h:1/0?ssl_ca_cert=/etc/ca.pem", "unknown TLS option 'ssl_ca_cert'"),
        ("rediss://h:1/0?ssl_keyfile=/k.pem", "ssl_keyfile without ssl_certfile"),
        ("rediss://h:1/0?ssl_ca_certs=", "the TLS option 'ssl_ca_certs' is empty"),
        ("rediss://h:1/0?ssl_check_hostname=maybe", "ssl_check_hostname='maybe' is not a boolean"),
    ],
)
def test_a_bad_tls_option_is_a_value_error_naming_it(tmp_path: Path, url: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        Settings.load(environ={}, cwd=tmp_path, redis_url=url)


def test_a_bad_tls_option_error_shows_no_password(tmp_path: Path) -> None:
    url = "rediss://app:hunter2@h:1/0?ssl_keyfile=/k.pem&ssl_password=keypass"
    with pytest.raises(ValueError, match="ssl_keyfile without ssl_certfile") as caught:
        Settings.load(environ={}, cwd=tmp_path, redis_url=url)
    assert "hunter2" not in str(caught.value) and "keypass" not in str(caught.value)
    assert redact_url(url) == "rediss://app:***@h:1/0?ssl_keyfile=/k.pem&ssl_password=***"


def test_tls_sentinel_urls_carry_tls_options_to_the_sentinels_and_the_data_nodes(tmp_path: Path) -> None:
    url = "rediss+sentinel://app:hunter2@h1:26379,h2:26379/mymaster/2?ssl_ca_certs=/ca.pem&ssl_check_hostname=no"
    assert Settings.load(environ={}, cwd=tmp_path, redis_url=url).redis_url == url
    target = parse_sentinel_url(url)
    assert (target.tls, target.tls_options, target.db) == (
        True, {"ssl_ca_certs": "/ca.pem", "ssl_check_hostname": "no"}, 2)
    with pytest.raises(ValueError, match=re.escape("unknown TLS option 'ssl_ca_cert'")) as caught:
        Settings.load(environ={}, cwd=tmp_path, redis_url=url.replace("ssl_ca_certs", "ssl_ca_cert"))
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://n1:7000,n2:7001,[::1]:7002", "redis+cluster://app:hunter2@n1/0",
     "rediss+cluster://app:pw@n1:7000?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"],
)
def test_cluster_urls_are_accepted(tmp_path: Path, url: str) -> None:
    assert Settings.load(environ={}, cwd=tmp_path, redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+cluster://n1:7000/3", "a Redis Cluster has database 0 only; the URL's path is '/3'"),
        ("redis+cluster://n1:port", "node 'n1:port' in the URL has an invalid port 'port'"),
        ("redis+cluster://n1:7000,:7001", "node ':7001' in the URL has no host"),
        ("redis+cluster://n1:7000?ssl_ca_certs=/ca.pem", "'ssl_ca_certs' but scheme 'redis': TLS needs rediss://"),
        ("rediss+cluster://n1:7000?db=2", "takes TLS options (ssl_*) only in its query, got 'db'"),
    ],
)
def test_a_bad_cluster_url_is_a_value_error_naming_the_part(tmp_path: Path, url: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        Settings.load(environ={}, cwd=tmp_path, redis_url=url)


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://s1:26379,s2:26380,[::1]:26381/mymaster", "redis+sentinel://app:hunter2@s1/mymaster/3"],
)
def test_sentinel_urls_are_accepted(tmp_path: Path, url: str) -> None:
    assert Settings.load(environ={}, cwd=tmp_path, redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+sentinel://s1:26379", "needs the service name"),
        ("redis+sentinel://s1:26379/", "needs the service name"),
        ("redis+sentinel://s1:port/mymaster", "sentinel 's1:port' in the URL has an invalid port 'port'"),
        ("redis+sentinel://s1:26379,:26380/mymaster", "sentinel ':26380' in the URL has no host"),
        ("redis+sentinel://app:hunter2@s1/mymaster/x", "takes a database number only, got 'x'"),
        ("redis+sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", "takes no query or fragment (TLS options need rediss"),
        ("rediss+sentinel://s1/mymaster?db=1", "takes TLS options (ssl_*) only in its query, got 'db'"),
    ],
)
def test_a_bad_sentinel_url_is_a_value_error_naming_the_part(tmp_path: Path, url: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as caught:
        Settings.load(environ={}, cwd=tmp_path, redis_url=url)
    assert "hunter2" not in str(caught.value)
