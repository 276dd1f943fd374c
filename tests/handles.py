"""A sync ``Client`` or an ``AsyncClient`` behind coroutine methods, so one test covers both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtcache import AsyncClient, Client


class Handle:
    """Either client (``kind`` ``"sync"`` or ``"async"``); any method, by name, as a coroutine."""

    def __init__(self, kind: str, socket_path: str, **options: Any) -> None:
        self.kind = kind
        cls = Client if kind == "sync" else AsyncClient
        self.client: Any = cls(socket_path, spawn=False, **options)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return await result if self.kind == "async" else result

        return call
