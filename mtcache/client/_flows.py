"""What each cache call does, written once for both clients.

Every flow is a generator of pure logic (sans I/O, as httpcore and h11 do it):
it yields a :class:`Call` when it needs the coordinator and receives the reply
(None when the request was not sent: no coordinator answers; :data:`UNKNOWN`
when it was sent but no reply came, so it may or may not have been carried
out), or yields :data:`COMPUTE` when it needs the caller's function run and
receives ``(True, value)`` or ``(False, exception)``. :class:`~mtcache.Client` drives flows with blocking calls and
:class:`~mtcache.AsyncClient` with ``await``; neither holds logic of its own.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from mtcache.protocol import Op, Status

from ._core import MISSING, ClientCore

__all__ = ["COMPUTE", "UNKNOWN", "Call", "Flow", "compute_flow", "delete_flow", "get_flow", "set_flow"]


@dataclass(frozen=True, slots=True)
class Call:
    """One request to the coordinator: ``op`` with ``args``; ``timeout`` None
    means the client's request timeout. With ``reply=False`` the request is sent
    and not waited for (the flow receives None)."""

    op: int
    args: tuple[Any, ...] = ()
    timeout: float | None = None
    reply: bool = True


class _Unknown:
    """Marker: the request was sent, but no reply came."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


class _Compute:
    """Marker: run the caller's function now."""


COMPUTE = _Compute()

Flow = Generator[Any, Any, Any]


def get_flow(core: ClientCore, key: str, default: Any) -> Flow:
    """After a near miss (``key`` already checked): the mirror, then the socket."""
    value = core.from_mirror(key)
    if value is not MISSING:
        return value
    reply = yield Call(Op.GET, (key,), core.read_timeout)
    if not isinstance(reply, list) or reply[1] != Status.OK:
        return default
    value = core.accept_value(key, reply[2], reply[3], reply[4])
    return default if value is MISSING else value


def _unacknowledged(core: ClientCore, reply: Any) -> bool:
    """Count a write that got no reply: skipped (never sent) or of unknown outcome."""
    if isinstance(reply, list):
        return False
    core.counters["skipped_writes" if reply is None else "unknown_writes"] += 1
    return True


def set_flow(core: ClientCore, key: str, value: Any, seconds: float) -> Flow:
    """Encode (raising for a bad value before anything changes), store, keep a near
    copy; True once the coordinator acknowledged the write."""
    data = core.encode(value)
    core.near.discard(key)
    reply = yield Call(Op.SET, (key, data, seconds))
    if _unacknowledged(core, reply):
        return False
    if reply[3]:
        # the near copy is a decoded copy: the caller may go on mutating its object
        core.near.put(key, core.codec.decode(data), data, reply[2], seconds)
    return True


def delete_flow(core: ClientCore, key: str) -> Flow:
    """Remove from every tier; True if some tier held the key."""
    core.near.discard(key)
    reply = yield Call(Op.DELETE, (key,))
    if _unacknowledged(core, reply):
        return False
    return bool(reply[2])


def compute_flow(core: ClientCore, key: str, seconds: float, wait: float) -> Flow:
    """After near and mirror missed: the value from the coordinator, or this
    caller computes it under the key's lease and fills it; without a coordinator
    it computes it alone."""
    reply = yield Call(Op.LEASE, (key, wait), wait + core.request_timeout)
    if not isinstance(reply, list):
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
        if isinstance(result, Exception):
            # every waiter gets the same error
            yield Call(Op.FAIL, (key, token, *core.failure(result)))
            raise core.compute_error(key, result) from result
        # cancelled or interrupted: nothing is wrong with the key, the next waiter
        # computes it (not waited for: a cancelled caller must not wait on a reply)
        yield Call(Op.RELEASE, (key, token), reply=False)
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
