"""Stamps: one order for every write to a key, on every tier and every host.

A stamp is a hybrid logical clock reading (Kulkarni et al., "Logical Physical
Clocks", 2014) joined with the id of the coordinator that issued it::

    stamp = hlc << 32 | node        hlc = wall-clock microseconds, or the last hlc + 1

``hlc`` never goes backwards on one coordinator, follows the wall clock while
the clock moves, and counts on when it does not (two writes in one microsecond
take two; the logical counter is folded into the microseconds, so a burst
borrows the next ones). Microseconds, not milliseconds: two writes made one
after the other on two hosts of one clock are ordered by time, not by their
node ids, unless they fall in the same microsecond. A coordinator also *observes* the stamps
it reads from other hosts (stream entries, L2 records), so a write made after
it has seen another host's write always gets a larger stamp, whatever the two
clocks say. ``node`` (31 random bits per coordinator process) breaks ties, so
two writes never compare equal unless they are the same write.

Why an HLC rather than Redis' ``TIME`` or a counter in Redis: a stamp must be
issued when Redis does not answer (writes made during an outage are ordered
against the ones other hosts made meanwhile), and it must cost nothing on the
write path. What remains is clock skew: two hosts whose clocks disagree by *d*
order their concurrent writes (less than *d* apart, with no causal link) by
their clocks, not by real time. The coordinator measures its skew against
Redis' ``TIME`` at connect and reports it in ``health()``.

Redis holds a stamp as 26 decimal digits (16 for ``hlc``, 10 for ``node``) so
that Lua compares two stamps exactly: both parts are below 2**53 (microseconds
reach 2**53 in the year 2255).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

__all__ = ["HybridClock", "format_stamp", "parse_stamp", "stamp_ms"]

_NODE_BITS = 32
#: The largest ``hlc`` that Lua (doubles) still compares exactly.
_HLC_LIMIT = 1 << 53
#: Width of a stamp in Redis: ``hlc`` in 16 digits, ``node`` in 10.
STAMP_DIGITS = 26


class HybridClock:
    """Issues stamps (see the module docstring). Not thread-safe: the coordinator
    uses it from its event loop."""

    def __init__(self, node: int | None = None, *, wall_us: Callable[[], int] | None = None) -> None:
        self.node = secrets.randbelow((1 << 31) - 1) + 1 if node is None else node
        if not 0 < self.node < 1 << 31:
            raise ValueError(f"node must be in 1..2**31-1, got {self.node!r}")
        self._wall_us = wall_us or (lambda: time.time_ns() // 1_000)
        self._last = 0

    def now(self) -> int:
        """A new stamp, larger than every stamp issued or observed before."""
        hlc = max(self._wall_us(), self._last + 1)
        self._last = hlc
        return hlc << _NODE_BITS | self.node

    def observe(self, stamp: int) -> None:
        """Another host's stamp was seen: later stamps of this clock are larger."""
        hlc = stamp >> _NODE_BITS
        if hlc > self._last:
            self._last = hlc

    def observe_ms(self, wall_ms: int) -> None:
        """A wall-clock time seen elsewhere (a stream entry id, Redis ``TIME``)."""
        hlc = wall_ms * 1000
        if hlc > self._last:
            self._last = hlc


def stamp_ms(stamp: int) -> int:
    """The wall-clock milliseconds of ``stamp`` (its physical part)."""
    return (stamp >> _NODE_BITS) // 1000


def format_stamp(stamp: int) -> bytes:
    """``stamp`` as Redis holds it: 26 ASCII digits.

    :raises ValueError: the stamp does not fit (a clock beyond the year 2248).
    """
    hlc, node = stamp >> _NODE_BITS, stamp & ((1 << _NODE_BITS) - 1)
    if stamp < 0 or hlc >= _HLC_LIMIT:
        raise ValueError(f"stamp {stamp} is out of range")
    return b"%016d%010d" % (hlc, node)


def parse_stamp(data: bytes) -> int:
    """The stamp in 26 ASCII digits (see :func:`format_stamp`).

    :raises ValueError: ``data`` is not 26 digits, or its parts are out of range.
    """
    if len(data) != STAMP_DIGITS or not data.isdigit():
        raise ValueError(f"malformed stamp {data[:32]!r}")
    hlc, node = int(data[:16]), int(data[16:])
    if hlc >= _HLC_LIMIT or node >= 1 << _NODE_BITS:
        raise ValueError(f"stamp {data!r} is out of range")
    return hlc << _NODE_BITS | node
