from mtcache import AsyncClient, Client
from tests.coordinator_proc import CoordinatorProcess


def test_sync_roundtrip(coordinator: CoordinatorProcess) -> None:
    with Client(coordinator.socket_path, spawn=False) as c:
        assert c.get("a") is None
        c.set("a", {"x": 1})
        assert c.get("a") == {"x": 1}
        assert c.get_or_compute("b", lambda: [1, 2]) == [1, 2]
        assert c.health().mode == "ok"


async def test_async_roundtrip(coordinator: CoordinatorProcess) -> None:
    async with AsyncClient(coordinator.socket_path, spawn=False) as c:
        await c.set("a", 5)
        assert await c.get("a") == 5
        assert await c.delete("a") is True
        assert await c.get("a", "dflt") == "dflt"
