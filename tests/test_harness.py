from tests.redis_server import RedisServer


def test_redis_server_starts_answers_and_restarts_empty(redis_server: RedisServer) -> None:
    with redis_server.client() as c:
        c.set("k", "v")
        assert c.get("k") == b"v"
    redis_server.restart()
    with redis_server.client() as c:
        assert c.get("k") is None


def test_aof_server_keeps_data_across_restart(redis_server_aof: RedisServer) -> None:
    with redis_server_aof.client() as c:
        c.set("k", "v")
    redis_server_aof.restart()
    with redis_server_aof.client() as c:
        assert c.get("k") == b"v"
