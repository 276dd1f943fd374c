"""What each cache call does, written once for both clients.

Every flow is a generator of pure logic (sans I/O, as httpcore and h11 do it):
it yields a :class:`Call` when it needs the coordinator and receives the reply
(None when the request was not sent: no coordinator answers; :data:`UNKNOWN`
when it was sent but no reply came, so it may or may not have been carried
out), or yields a :class:`Compute` when it needs the caller's function run and
receives ``(True, value)`` or ``(False, exception)``. :class:`~mtcache.Client`
drives flows with blocking calls and :class:`~mtcache.AsyncClient` with
``await``; neither holds logic of its own.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from mtcache.errors import CacheTimeout, ComputeError, CoordinatorUnavailable, L2Error
from mtcache.protocol import MAX_BATCH, Op, Status

from ._core import MISSING, ClientCore, Stale
from .policy import Policy

#: Counters stay within +-2**53: Redis runs them in Lua, whose numbers are doubles.
COUNTER_LIMIT = 2**53

__all__ = [
    "UNKNOWN",
    "Call",
    "Compute",
    "Flow",
    "add_flow",
    "compute_flow",
    "delete_flow",
    "delete_many_flow",
    "exists_flow",
    "get_flow",
    "get_many_flow",
    "incr_flow",
    "invalidate_tags_flow",
    "refresh_flow",
    "set_flow",
    "set_many_flow",
    "touch_flow",
    "ttl_flow",
]


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


#: How a holder's CacheTimeout (its hard timeout) travels to the waiters.
_TIMEOUT_NAME = f"{CacheTimeout.__module__}.{CacheTimeout.__qualname__}"
#: How a value the holder's codec refused travels to the waiters: the same TypeError / ValueError there.
_CODEC_REFUSED = {"mtcache.codec.TypeError": TypeError, "mtcache.codec.ValueError": ValueError}


@dataclass(frozen=True, slots=True)
class Compute:
    """Run the caller's function now. Past ``hard`` seconds it is abandoned: the flow
    receives ``(False, CacheTimeout)``. Past ``soft`` seconds (set only when a stale
    value is at hand) the driver hands ``stale`` to the caller at once and carries the
    rest of the flow out in the background when the function ends."""

    soft: float | None = None
    hard: float | None = None
    stale: Any = MISSING

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


def _unacknowledged(core: ClientCore, reply: Any, writes: int = 1) -> bool:
    """Count writes that got no reply: skipped (never sent) or of unknown outcome."""
    if isinstance(reply, list):
        return False
    core.counters["skipped_writes" if reply is None else "unknown_writes"] += writes
    return True


def set_flow(core: ClientCore, key: str, value: Any, seconds: float | None, tags: tuple[str, ...] = ()) -> Flow:
    """Encode (raising for a bad value before anything changes), store, keep a near
    copy; True once the coordinator acknowledged the write."""
    data = core.encode(value)
    core.near.discard(key)
    if core.write_behind:
        reply = yield Call(Op.SET_BEHIND, (key, data, seconds, core.write_behind_max_delay, list(tags)))
    else:
        reply = yield Call(Op.SET, (key, data, seconds, list(tags)))
    if _unacknowledged(core, reply):
        return False
    if reply[3]:
        # the near copy is a decoded copy: the caller may go on mutating its object
        core.near.put(key, core.codec.decode(data), data, reply[2], core.nominal(seconds))
    return True


def delete_flow(core: ClientCore, key: str) -> Flow:
    """Remove from every tier; True if some tier held the key."""
    core.near.discard(key)
    if core.write_behind:
        reply = yield Call(Op.DELETE_BEHIND, (key, core.write_behind_max_delay))
    else:
        reply = yield Call(Op.DELETE, (key,))
    if _unacknowledged(core, reply):
        return False
    return bool(reply[2])


def compute_flow(core: ClientCore, key: str, seconds: float | None, wait: float, policy: Policy) -> Flow:
    """After near and mirror missed: the value from the coordinator, or this
    caller computes it under the key's lease and fills it; without a coordinator
    it computes it alone. With fail-safe, a failure of the source (here or in the
    worker computing it) gives the stale value instead of the error."""
    soft = policy.soft_timeout or 0.0
    reply = yield Call(Op.LEASE, (key, wait, policy.stale_for, soft), wait + core.request_timeout)
    if not isinstance(reply, list):
        return (yield from _compute_locally(core, key, policy))
    status = reply[1]
    if status == Status.OK:
        value = core.accept_value(key, reply[2], reply[3], reply[4])
        return value if value is not MISSING else (yield from _compute_locally(core, key, policy))
    stale = core.decode_stale(key, reply[-1])
    if status == Status.COMPUTE_ERROR:
        if stale is not MISSING:
            return Stale(stale)
        if reply[2] == _TIMEOUT_NAME:  # the holder abandoned it at its hard timeout: the same error here
            raise CacheTimeout(f"the computation of {key!r} passed its hard timeout and was abandoned")
        if reply[2] in _CODEC_REFUSED:  # its value could not be encoded: the holder's error, here too
            raise _CODEC_REFUSED[reply[2]](reply[3])
        raise ComputeError(key, reply[2], reply[3])
    if status == Status.TIMEOUT:
        if stale is not MISSING:
            return Stale(stale)
        raise CacheTimeout(f"gave up waiting for another worker to compute {key!r}")
    return (yield from _compute_and_fill(core, key, reply[2], seconds, policy, stale))


def refresh_flow(core: ClientCore, key: str, seconds: float | None, policy: Policy, version: int) -> Flow:
    """An eager refresh of ``key`` (its copy at ``version`` is close to going stale): compute it
    in the background under the key's lease if nobody does already. Returns nothing."""
    core.counters["eager_refreshes"] += 1
    reply = yield Call(Op.REFRESH, (key, version, policy.stale_for))
    if isinstance(reply, list) and reply[1] == Status.BUSY:
        core.refresh_busy(key, version)
    if isinstance(reply, list) and reply[1] == Status.GRANTED:
        # the current value stands in if the refresh fails (fail-safe keeps it fresh a while longer)
        stale = core.decode_stale(key, reply[-1])
        yield from _compute_and_fill(core, key, reply[2], seconds, policy, stale, background=True)


def _compute_and_fill(
    core: ClientCore, key: str, token: bytes, seconds: float | None, policy: Policy, stale: Any, *,
    background: bool = False,
) -> Flow:
    core.counters["computes"] += 1
    soft = policy.soft_timeout if stale is not MISSING and not background else None
    ok, result = yield Compute(soft, policy.hard_timeout, stale)
    if not ok:
        if not isinstance(result, Exception):
            # cancelled or interrupted: nothing is wrong with the key, the next waiter
            # computes it (not waited for: a cancelled caller must not wait on a reply)
            yield Call(Op.RELEASE, (key, token), reply=False)
            raise result
        if stale is not MISSING and policy.fail_safe:
            # fail-safe: everyone takes the stale value, fresh again for a while
            core.counters["fail_safe_activations"] += 1
            yield Call(Op.FAIL, (key, token, *core.failure(result), policy.fail_safe_throttle))
            return Stale(stale)
        # every waiter gets the same error
        yield Call(Op.FAIL, (key, token, *core.failure(result), 0.0))
        if isinstance(result, CacheTimeout):
            raise result
        raise core.compute_error(key, result) from result
    try:
        core.refuse_coroutine(result)
        data = core.encode(result)
    except (TypeError, ValueError) as exc:
        yield Call(Op.FAIL, (key, token, f"mtcache.codec.{type(exc).__name__}", str(exc), 0.0))
        raise
    ttl = policy.ttl(seconds)
    store = result is not None or policy.cache_none
    reply = yield Call(Op.FILL, (key, token, data, ttl, policy.stale_for, store, list(policy.tags)))
    if store:
        core.filled(key, result, data, ttl, reply)
    return result


def _compute_locally(core: ClientCore, key: str, policy: Policy) -> Flow:
    core.counters["local_computes"] += 1
    ok, result = yield Compute(None, policy.hard_timeout)
    if ok:
        return result
    if not isinstance(result, Exception):
        raise result
    if policy.explicit_fail_safe and policy.fail_safe:
        # no coordinator vouches for this copy: served only because this call asked for fail-safe
        stale = core.near.stale(key, policy.fail_safe)
        if stale is not MISSING:
            core.counters["fail_safe_activations"] += 1
            return Stale(stale)
    if isinstance(result, CacheTimeout):
        raise result
    raise core.compute_error(key, result) from result


# -- batches and small operations (issue 13) ---------------------------------------------------------


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]


def get_many_flow(core: ClientCore, keys: list[str]) -> Flow:
    """``{key: value}`` for the keys found (in the order given), from near and the mirror, the rest in
    one request per :data:`~mtcache.protocol.MAX_BATCH` keys."""
    found: dict[str, Any] = {}
    missing: list[str] = []
    for key in dict.fromkeys(keys):
        value = core.near.get(key)
        if value is MISSING:
            value = core.from_mirror(key)
        if value is MISSING:
            missing.append(key)
        else:
            found[key] = value
    for chunk in _chunks(missing):
        reply = yield Call(Op.GET_MANY, (chunk,), core.read_timeout)
        if not isinstance(reply, list) or reply[1] != Status.OK:
            continue
        asked = set(chunk)
        for key, data, version, ttl in reply[2]:
            if key in asked:  # a coordinator's reply is not trusted: only what was asked for
                value = core.accept_value(key, data, version, ttl)
                if value is not MISSING:
                    found[key] = value
    return {key: found[key] for key in dict.fromkeys(keys) if key in found}


def set_many_flow(
    core: ClientCore, items: list[tuple[str, Any]], seconds: float | None, tags: tuple[str, ...] = ()
) -> Flow:
    """Encode every value (raising for a bad one before anything changes), then store them in one
    request per :data:`~mtcache.protocol.MAX_BATCH`; True once every write was acknowledged."""
    encoded = [(key, core.encode(value)) for key, value in items]
    for key, _ in encoded:
        core.near.discard(key)
    acknowledged = True
    for chunk in _chunks(encoded):
        reply = yield Call(Op.SET_MANY, ([[key, data, seconds, list(tags)] for key, data in chunk],))
        if _unacknowledged(core, reply, len(chunk)) or len(reply[2]) != len(chunk):
            acknowledged = False
            continue
        for (key, data), (version, kept) in zip(chunk, reply[2], strict=True):
            if kept:
                core.near.put(key, core.codec.decode(data), data, version, core.nominal(seconds))
    return acknowledged


def delete_many_flow(core: ClientCore, keys: list[str]) -> Flow:
    """Remove every key from every tier; how many of them some tier held (as far as acknowledged)."""
    unique = list(dict.fromkeys(keys))
    for key in unique:
        core.near.discard(key)
    held = 0
    for chunk in _chunks(unique):
        reply = yield Call(Op.DELETE_MANY, (chunk,))
        if not _unacknowledged(core, reply, len(chunk)):
            held += reply[2]
    return held


def add_flow(core: ClientCore, key: str, value: Any, seconds: float | None, tags: tuple[str, ...] = ()) -> Flow:
    """Store ``value`` only if ``key`` has no live value; True if it was stored."""
    data = core.encode(value)
    reply = yield Call(Op.ADD, (key, data, seconds, list(tags)))
    if _unacknowledged(core, reply) or not reply[2]:
        return False
    core.near.put(key, core.codec.decode(data), data, reply[3], core.nominal(seconds))
    return True


#: What a refused INCR raises, by the coordinator's kind.
_REFUSED = {"type": TypeError, "range": ValueError}


def incr_flow(core: ClientCore, key: str, delta: int) -> Flow:
    """Add ``delta`` to the integer value of ``key`` in Redis; the new value (see :meth:`mtcache.Client.incr`)."""
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise TypeError(f"delta must be an int, not {type(delta).__name__}: {delta!r}")
    if not -COUNTER_LIMIT <= delta <= COUNTER_LIMIT:
        raise ValueError(f"delta must be within +-2**53 (a counter's range), got {delta!r}")
    if not core.counts:
        raise TypeError(f"incr and decr keep counters as msgpack integers: they need a codec that reads them, "
                        f"such as msgpack (this client uses {core.codec.name!r})")
    core.near.discard(key)
    reply = yield Call(Op.INCR, (key, delta))
    if not isinstance(reply, list):
        core.counters["skipped_writes" if reply is None else "unknown_writes"] += 1
        raise CoordinatorUnavailable(
            f"incr of {key!r} needs the coordinator, which did not answer"
            + ("" if reply is None else " (the increment may or may not have been made)"))
    if reply[1] == Status.REFUSED:
        raise _REFUSED.get(reply[2], L2Error)(reply[3])
    return reply[2]


def touch_flow(core: ClientCore, key: str, seconds: float | None) -> Flow:
    """Give the live value of ``key`` a new TTL; True if there was one."""
    reply = yield Call(Op.TOUCH, (key, seconds))
    if _unacknowledged(core, reply):
        return False
    return bool(reply[2])


def ttl_flow(core: ClientCore, key: str) -> Flow:
    """Seconds ``key`` stays fresh, as its coordinator knows it (math.inf: FOREVER); None if absent."""
    reply = yield Call(Op.GET, (key,), core.read_timeout)
    if not isinstance(reply, list) or reply[1] != Status.OK:
        return None
    core.accept_value(key, reply[2], reply[3], reply[4])
    return float(reply[4])


def invalidate_tags_flow(core: ClientCore, tags: tuple[str, ...]) -> Flow:
    """Kill every entry carrying one of ``tags``, on every host; True once Redis has it (else the
    coordinator keeps it for Redis, or, counted as skipped, no coordinator answered)."""
    if not tags:
        return True
    reply = yield Call(Op.INVALIDATE_TAGS, (list(tags),))
    if _unacknowledged(core, reply):
        return False
    return bool(reply[2])


def exists_flow(core: ClientCore, key: str) -> Flow:
    """Whether ``key`` has a live value (a near copy or the mirror answer first)."""
    if core.near.get(key) is not MISSING or core.from_mirror(key) is not MISSING:
        return True
    reply = yield Call(Op.GET, (key,), core.read_timeout)
    return isinstance(reply, list) and reply[1] == Status.OK
