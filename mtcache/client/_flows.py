"""What each cache call does, written once for both clients.

Every flow is a generator of pure logic (sans I/O, as httpcore and h11 do it):
it yields a :class:`Call` when it needs the coordinator and receives the reply
(None when the coordinator is unavailable), or yields :data:`COMPUTE` when it
needs the caller's function run and receives ``(True, value)`` or ``(False,
exception)``. :class:`~mtcache.Client` drives flows with blocking calls and
:class:`~mtcache.AsyncClient` with ``await``; neither holds logic of its own.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from mtcache.protocol import Op, Status

from ._core import MISSING, ClientCore

__all__ = ["COMPUTE", "Call", "Flow", "compute_flow", "delete_flow", "get_flow", "set_flow"]


@dataclass(frozen=True, slots=True)
class Call:
    """One request to the coordinator: ``op`` with ``args``; ``timeout`` None
    means the client's request timeout."""

    op: int
    args: tuple[Any, ...] = ()
    timeout: float | None = None


class _Compute:
    """Marker: run the caller's function now."""


COMPUTE = _Compute()

Flow = Generator[Any, Any, Any]


def get_flow(core: ClientCore, key: str, default: Any) -> Flow:
    """After a near miss (``key`` already checked): the mirror, then the socket."""
    value = core.from_mirror(key)
    if value is not MISSING:
        return value
    reply = yield Call(Op.GET, (key,))
    if reply is None or reply[1] != Status.OK:
        return default
    value = core.accept_value(key, reply[2], reply[3], reply[4])
    return default if value is MISSING else value


def set_flow(core: ClientCore, key: str, value: Any, seconds: float) -> Flow:
    """Encode (raising for a bad value before anything changes), store, keep a near copy."""
    data = core.encode(value)
    core.near.discard(key)
    reply = yield Call(Op.SET, (key, data, seconds))
    if reply is None:
        core.counters["skipped_writes"] += 1
        return None
    # the near copy is a decoded copy: the caller may go on mutating its object
    core.near.put(key, core.codec.decode(data), data, reply[2], seconds)
    return None


def delete_flow(core: ClientCore, key: str) -> Flow:
    """Remove from every tier; True if some tier held the key."""
    core.near.discard(key)
    reply = yield Call(Op.DELETE, (key,))
    if reply is None:
        core.counters["skipped_writes"] += 1
        return False
    return bool(reply[2])


def compute_flow(core: ClientCore, key: str, seconds: float, wait: float) -> Flow:
    """After near and mirror missed: the value from the coordinator, or this
    caller computes it under the key's lease and fills it; without a coordinator
    it computes it alone."""
    reply = yield Call(Op.LEASE, (key, wait), wait + core.request_timeout)
    if reply is None:
        return (yield from _compute_locally(core, key))
    outcome = core.lease_outcome(key, reply)
    if not isinstance(outcome, bytes):
        if outcome.value is not MISSING:
            return outcome.value
        return (yield from _compute_locally(core, key))
    token = outcome
    core.counters["computes"] += 1
    ok, result = yield COMPUTE
    if not ok:
        # free the lease at once, for the next waiter (also on KeyboardInterrupt or a cancel)
        yield Call(Op.FAIL, (key, token, *core.failure(result)))
        if isinstance(result, Exception):
            raise core.compute_error(key, result) from result
        raise result
    try:
        data = core.encode(result)
    except (TypeError, ValueError) as exc:
        yield Call(Op.FAIL, (key, token, *core.failure(exc)))
        raise
    core.filled(key, result, data, seconds, (yield Call(Op.FILL, (key, token, data, seconds))))
    return result


def _compute_locally(core: ClientCore, key: str) -> Flow:
    core.counters["local_computes"] += 1
    ok, result = yield COMPUTE
    if ok:
        return result
    if isinstance(result, Exception):
        raise core.compute_error(key, result) from result
    raise result
