"""The exceptions mtcache raises.

Every error mtcache raises on its own account derives from :class:`CacheError`.
Where callers would reasonably catch a builtin family, the class also derives
from it (``CacheTimeout`` is a ``TimeoutError``, ``CoordinatorUnavailable`` an
``OSError``), as anyio's ``ConnectionFailed(OSError)`` does. Low-level errors are
translated at the boundary with ``raise X(...) from exc``.

Bad input from the caller is not a cache fault: it raises the builtin
``TypeError`` or ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CacheTimeout",
    "ComputeError",
    "CoordinatorUnavailable",
    "L2Error",
    "ProtocolError",
    "UntrustedSocket",
]


class CacheError(Exception):
    """Base class of every error that mtcache raises on its own account."""


class CoordinatorUnavailable(CacheError, OSError):
    """The coordinator could not be reached, or went away during a request."""


class UntrustedSocket(CoordinatorUnavailable, PermissionError):
    """The coordinator socket, its folder or the process serving it belongs to
    another user (or the folder is open to others): the client refuses to use it.
    A :class:`CoordinatorUnavailable`, so a client degrades (and logs this message
    once) as for a missing coordinator."""


class ProtocolError(CacheError):
    """A frame on the coordinator socket was malformed, too large or of another
    protocol version."""


class L2Error(CacheError):
    """Redis (the L2 tier) failed: unreachable, timed out, or answered an error.

    The redis-py exception that caused it is chained as ``__cause__``.
    """


class CacheTimeout(CacheError, TimeoutError):
    """A wait had a deadline and the deadline passed (a lease wait, a request)."""


class ComputeError(CacheError):
    """The function passed to ``get_or_compute`` raised, in this process or in
    the process that held the lease for the key.

    ``exc_type`` is the qualified name of the original exception's type and
    ``exc_message`` its message; when the function raised in this very process,
    the original exception is also chained as ``__cause__``.
    """

    def __init__(self, key: str, exc_type: str, exc_message: str) -> None:
        super().__init__(f"computing {key!r} raised {exc_type}: {exc_message}")
        self.key = key
        self.exc_type = exc_type
        self.exc_message = exc_message
