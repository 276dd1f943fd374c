"""The type of one Redis Streams entry, apart from the stream helpers (which load redis-py): the
clients' annotations name it, and a worker that never uses streams does not load redis-py."""

from __future__ import annotations

from typing import Any

__all__ = ["Entry"]

#: One stream entry: its id and its fields. Values are ``str``, or ``bytes``
#: when read with ``decode=False``.
Entry = tuple[str, dict[str, Any]]
